/*
 * keel_backend.h - Keel inference backend plugin ABI.
 *
 * A backend is a shared library that exports ONE symbol, KEEL_BACKEND_ENTRY_POINT
 * ("keel_backend_get_api"), of type keel_backend_get_api_fn. The host calls it
 * with its own ABI version; the backend returns a pointer to a static, immutable
 * function table (keel_backend_api) or NULL when it cannot serve that host.
 *
 * Versioning rules (the same contract as OrtGetApiBase / the Triton backend API):
 *   - abi_major changes only when an existing entry changes meaning or signature.
 *     The host refuses a table whose abi_major differs from its own.
 *   - abi_minor grows when entries are APPENDED to the end of the table. The host
 *     refuses a table whose abi_minor is newer than its own (it cannot know what
 *     the newer entries promise); an older minor is accepted and the host never
 *     reads past struct_size.
 *   - Entries are only ever appended. Nothing is removed or reordered.
 *
 * Ownership, NULL and thread rules are stated on every entry. In short:
 *   - A backend model handle is immutable after model_load returns; every
 *     model_* query on it may be called from any number of threads at once.
 *   - An instance is single-threaded: at most one instance_run at a time per
 *     instance. Different instances of the same model may run concurrently.
 *   - Every function that can fail returns a keel_status and takes an optional
 *     (may be NULL) caller-owned keel_error that it fills on failure.
 *   - Strings returned by the backend are owned by the object they describe
 *     (model or table) and stay valid until that object is freed.
 */
#ifndef KEEL_BACKEND_H
#define KEEL_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define KEEL_BACKEND_ABI_MAJOR 1u
#define KEEL_BACKEND_ABI_MINOR 0u
#define KEEL_BACKEND_ENTRY_POINT "keel_backend_get_api"

/* Maximum tensor rank anywhere in Keel. */
#define KEEL_MAX_RANK 8
/* Size of the message buffer in keel_error, including the terminating NUL. */
#define KEEL_ERROR_MESSAGE_SIZE 512

/* Status codes. Stable numbers: they cross the ABI and the Swift wrapper. */
typedef enum keel_status {
    KEEL_OK = 0,
    KEEL_ERR_INVALID_ARGUMENT = 1, /* a caller passed NULL, a bad index, a bad shape */
    KEEL_ERR_IO = 2,               /* a file could not be opened or read */
    KEEL_ERR_PARSE = 3,            /* bytes are not a well-formed model file */
    KEEL_ERR_INVALID_MODEL = 4,    /* decoded, but the graph is inconsistent */
    KEEL_ERR_UNSUPPORTED = 5,      /* valid ONNX that Keel does not run (op, dtype, attribute) */
    KEEL_ERR_SHAPE = 6,            /* input or intermediate shapes do not fit */
    KEEL_ERR_OUT_OF_MEMORY = 7,    /* an allocation failed */
    KEEL_ERR_LIMIT = 8,            /* a configured size limit would be exceeded */
    KEEL_ERR_VERSION = 9,          /* plugin ABI version mismatch */
    KEEL_ERR_PLUGIN = 10,          /* a plugin could not be loaded or is malformed */
    KEEL_ERR_INTERNAL = 11         /* a bug in Keel: please report it */
} keel_status;

/* Caller-owned error report. Functions fill it only on failure; a NULL pointer
 * means "I do not want details". message is always NUL-terminated. */
typedef struct keel_error {
    keel_status status;
    char message[KEEL_ERROR_MESSAGE_SIZE];
} keel_error;

/* Element types, numbered as ONNX TensorProto.DataType. Only FLOAT32 flows
 * through graphs; INT64 appears only in constant shape/axes tensors. */
enum { KEEL_DTYPE_FLOAT32 = 1, KEEL_DTYPE_INT64 = 7 };

/* Description of a graph input or output. All pointers are owned by the model
 * that produced the description and valid until it is freed. */
typedef struct keel_tensor_info {
    const char *name;
    int32_t elem_type;                       /* KEEL_DTYPE_* */
    uint32_t rank;
    int64_t dims[KEEL_MAX_RANK];             /* -1 where the dimension is dynamic */
    const char *dim_params[KEEL_MAX_RANK];   /* symbolic name ("batch") or NULL */
} keel_tensor_info;

/* A dense, row-major float32 tensor view. The struct never owns data:
 *  - as an input, data points to caller memory of prod(shape) floats that must
 *    stay valid for the duration of the call;
 *  - as an output, data points into instance-owned memory valid until the next
 *    run on that instance or until the instance is freed. */
typedef struct keel_tensor {
    const float *data;
    uint32_t rank;
    int64_t shape[KEEL_MAX_RANK];
} keel_tensor;

typedef struct keel_backend_api keel_backend_api;

struct keel_backend_api {
    /* ---- header: present in every version ---------------------------------- */
    uint32_t abi_major;      /* KEEL_BACKEND_ABI_MAJOR the backend was built with */
    uint32_t abi_minor;      /* KEEL_BACKEND_ABI_MINOR the backend was built with */
    size_t struct_size;      /* sizeof(keel_backend_api) the backend was built with */
    const char *name;        /* short identifier, e.g. "onnx-openblas"; static storage */
    const char *version;     /* backend's own version string; static storage */

    /* ---- ABI 1.0 ------------------------------------------------------------ */

    /* Decode and validate a model from bytes. bytes: non-NULL unless len == 0,
     * borrowed for the duration of the call (the backend copies what it keeps).
     * source_name: optional (NULL ok) name for messages, e.g. the file path.
     * On success *out_model receives a handle the caller frees with model_free.
     * Thread-safe: may be called concurrently. */
    keel_status (*model_load)(const void *bytes, size_t len, const char *source_name,
                              void **out_model, keel_error *err);

    /* Free a model. NULL is a no-op. All instances of the model must have been
     * freed first. Not concurrent with any other use of the same model. */
    void (*model_free)(void *model);

    /* Number of graph inputs / outputs the caller feeds / receives. model non-NULL.
     * Thread-safe. */
    size_t (*model_input_count)(const void *model);
    size_t (*model_output_count)(const void *model);

    /* Describe input / output i (0-based). model and out non-NULL; i out of range
     * is KEEL_ERR_INVALID_ARGUMENT. Strings in *out are owned by the model.
     * Thread-safe. */
    keel_status (*model_input_info)(const void *model, size_t i, keel_tensor_info *out,
                                    keel_error *err);
    keel_status (*model_output_info)(const void *model, size_t i, keel_tensor_info *out,
                                     keel_error *err);

    /* Metadata key/value pairs (ONNX metadata_props or the backend's own).
     * key and value non-NULL; the strings are owned by the model. Thread-safe. */
    size_t (*model_metadata_count)(const void *model);
    keel_status (*model_metadata_entry)(const void *model, size_t i, const char **key,
                                        const char **value, keel_error *err);

    /* Structure summary for inspection: nodes (operators) and their op types,
     * and the number of learned parameters (scalars). Strings owned by the model.
     * Thread-safe. */
    size_t (*model_node_count)(const void *model);
    keel_status (*model_node_info)(const void *model, size_t i, const char **name,
                                   const char **op_type, keel_error *err);
    uint64_t (*model_parameter_count)(const void *model);

    /* Create an execution instance. The model must outlive the instance.
     * Thread-safe with respect to the model. Free with instance_free. */
    keel_status (*instance_create)(const void *model, void **out_instance, keel_error *err);

    /* Free an instance. NULL is a no-op. */
    void (*instance_free)(void *instance);

    /* Run once. inputs: n_inputs == model_input_count views, in input order.
     * outputs: caller array of n_outputs == model_output_count structs that the
     * backend fills with views into instance memory (valid until the next run
     * or instance_free). One call at a time per instance. */
    keel_status (*instance_run)(void *instance, const keel_tensor *inputs, size_t n_inputs,
                                keel_tensor *outputs, size_t n_outputs, keel_error *err);

    /* Descriptive properties of the model as a whole, defined by the backend
     * (the ONNX backend: producer, producer_version, ir_version, opset, graph;
     * other backends their own, e.g. format). For inspection only: nothing may
     * depend on a property to run. key and value non-NULL; strings owned by the
     * model. Thread-safe. */
    size_t (*model_property_count)(const void *model);
    keel_status (*model_property_entry)(const void *model, size_t i, const char **key,
                                        const char **value, keel_error *err);

    /* Append new entries for ABI 1.1 and later below this line, never above. */
};

/* Human-readable name of a status code ("invalid model", ...). Static storage.
 * Thread-safe. */
const char *keel_status_name(keel_status status);

/* Fill err (if non-NULL) with status and a printf-style message, truncated to
 * fit; returns status so callers can write `return keel_error_set(...)`.
 * Thread-safe (err is caller-owned). */
keel_status keel_error_set(keel_error *err, keel_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The single exported symbol. host_abi_major/minor: the host's version, so a
 * backend that supports several can pick. Returns a pointer to static storage
 * or NULL if the backend cannot serve this host. Must be thread-safe. */
typedef const keel_backend_api *(*keel_backend_get_api_fn)(uint32_t host_abi_major,
                                                            uint32_t host_abi_minor);

#ifdef __cplusplus
}
#endif
#endif /* KEEL_BACKEND_H */
