/*
 * keel.h - Keel inference core, host API.
 *
 * Objects (all opaque):
 *   keel_backend  a backend: the built-in ONNX/OpenBLAS one, or a plugin loaded
 *                 from a shared library through the ABI in keel_backend.h.
 *   keel_model    a loaded, validated, immutable model. Safe to share between
 *                 threads; every query below may run concurrently.
 *   keel_session  an execution context owning all working memory for runs of
 *                 one model. NOT thread-safe: one run at a time per session;
 *                 use one session per thread (they are cheap).
 *
 * Conventions:
 *   - Functions return keel_status and take an optional (NULL ok) caller-owned
 *     keel_error *err, filled only on failure.
 *   - Passing NULL where a pointer is required returns KEEL_ERR_INVALID_ARGUMENT;
 *     it never crashes. *_free functions accept NULL.
 *   - Strings returned by a query are owned by the object queried and valid
 *     until that object is freed.
 *   - Untrusted input (model bytes, input shapes) never aborts the process: every
 *     problem is a status code with a message naming the node, op, tensor or
 *     byte offset involved.
 */
#ifndef KEEL_H
#define KEEL_H

#include "keel_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct keel_backend keel_backend;
typedef struct keel_model keel_model;
typedef struct keel_session keel_session;

/* Default limits. A model file larger than this is refused (KEEL_ERR_LIMIT). */
#define KEEL_DEFAULT_MAX_MODEL_BYTES ((uint64_t)1 << 30)
/* Default cap on one session's working memory (KEEL_ERR_LIMIT beyond it). */
#define KEEL_DEFAULT_MAX_SESSION_BYTES ((uint64_t)1 << 30)

/* ---- library ---------------------------------------------------------------- */

/* Version of the core, e.g. "0.1.0". Static storage. Thread-safe. */
const char *keel_version_string(void);

/* Threads OpenBLAS may use for one matrix product, process-wide. Keel sets 1 the
 * first time a backend is used unless this was called first or the environment
 * variable KEEL_BLAS_THREADS holds a positive number. n < 1 is
 * KEEL_ERR_INVALID_ARGUMENT. Call at start-up, not while runs are in flight. */
keel_status keel_blas_set_threads(int n, keel_error *err);
/* Threads OpenBLAS currently uses. Thread-safe. */
int keel_blas_threads(void);

/* Name of the kernel set OpenBLAS chose or was told to use (OPENBLAS_CORETYPE),
 * e.g. "Haswell" or "Cooperlake". Static storage. Thread-safe. */
const char *keel_blas_core_name(void);

/* 1 when this CPU supports AVX-512F, else 0. Thread-safe. */
int keel_cpu_has_avx512(void);

/* ---- backends --------------------------------------------------------------- */

/* The built-in ONNX/OpenBLAS backend. Static storage; never freed. Thread-safe. */
const keel_backend *keel_backend_builtin(void);

/* Load a plugin backend from a shared library. path non-NULL. The library must
 * export KEEL_BACKEND_ENTRY_POINT; its table's ABI major must equal this host's
 * and its minor must not be newer (KEEL_ERR_VERSION otherwise, with both
 * versions in the message). On success the caller owns *out and frees it with
 * keel_backend_free after every model loaded through it has been freed.
 * Thread-safe. */
keel_status keel_backend_open(const char *path, keel_backend **out, keel_error *err);

/* Unload a plugin backend. NULL and the built-in backend are no-ops. */
void keel_backend_free(keel_backend *backend);

/* Backend's name and version strings (owned by the backend). NULL if backend is NULL. */
const char *keel_backend_name(const keel_backend *backend);
const char *keel_backend_version(const keel_backend *backend);
/* ABI version the backend was built with. 0 if backend is NULL. */
uint32_t keel_backend_abi_major(const keel_backend *backend);
uint32_t keel_backend_abi_minor(const keel_backend *backend);

/* ---- models ----------------------------------------------------------------- */

/* Read, decode and validate a model file. backend: NULL selects the built-in
 * backend. path non-NULL. The file may be replaced or deleted afterwards: the
 * model keeps no reference to it. The caller owns *out (keel_model_free).
 * Thread-safe. */
keel_status keel_model_load_file(const keel_backend *backend, const char *path,
                                 keel_model **out, keel_error *err);

/* Same from memory. bytes borrowed for the call; may be NULL only if len == 0.
 * source_name (NULL ok) is used in messages. */
keel_status keel_model_load_bytes(const keel_backend *backend, const void *bytes, size_t len,
                                  const char *source_name, keel_model **out, keel_error *err);

/* Free a model. NULL is a no-op. Every session of the model must be freed first. */
void keel_model_free(keel_model *model);

/* SHA-256 of the model's bytes as 64 lowercase hex characters. */
const char *keel_model_sha256(const keel_model *model);
/* The backend that loaded the model. */
const keel_backend *keel_model_backend(const keel_model *model);

size_t keel_model_input_count(const keel_model *model);   /* 0 if model is NULL */
size_t keel_model_output_count(const keel_model *model);  /* 0 if model is NULL */
keel_status keel_model_input_info(const keel_model *model, size_t index, keel_tensor_info *out,
                                  keel_error *err);
keel_status keel_model_output_info(const keel_model *model, size_t index, keel_tensor_info *out,
                                   keel_error *err);

/* Metadata (ONNX metadata_props: keel.kind, keel.features, keel.version, ...). */
size_t keel_model_metadata_count(const keel_model *model);
keel_status keel_model_metadata_entry(const keel_model *model, size_t index, const char **key,
                                      const char **value, keel_error *err);
/* Value for key, or NULL when absent (or model/key NULL). */
const char *keel_model_metadata_lookup(const keel_model *model, const char *key);

/* Backend-defined descriptive properties (ONNX: producer, producer_version,
 * ir_version, opset, graph), for inspection. */
size_t keel_model_property_count(const keel_model *model);
keel_status keel_model_property_entry(const keel_model *model, size_t index, const char **key,
                                      const char **value, keel_error *err);
/* Value for key, or NULL when absent (or model/key NULL). */
const char *keel_model_property_lookup(const keel_model *model, const char *key);

/* Structure, for inspection. */
size_t keel_model_node_count(const keel_model *model);
keel_status keel_model_node_info(const keel_model *model, size_t index, const char **name,
                                 const char **op_type, keel_error *err);
uint64_t keel_model_parameter_count(const keel_model *model);

/* ---- sessions --------------------------------------------------------------- */

/* Create a session for model. The model must outlive the session. The caller
 * owns *out (keel_session_free). Thread-safe with respect to the model. */
keel_status keel_session_create(const keel_model *model, keel_session **out, keel_error *err);

/* Free a session. NULL is a no-op. */
void keel_session_free(keel_session *session);

/* Run the model. inputs: one view per model input, in input order (n_inputs
 * must equal keel_model_input_count). outputs: caller array of n_outputs ==
 * keel_model_output_count structs, filled with views into session memory that
 * stay valid until the next run or keel_session_free.
 * Shapes may differ from run to run wherever the model declares a dynamic
 * dimension. After the first run at a given set of input shapes, a run with
 * the same shapes allocates nothing. Not thread-safe per session. */
keel_status keel_session_run(keel_session *session, const keel_tensor *inputs, size_t n_inputs,
                             keel_tensor *outputs, size_t n_outputs, keel_error *err);

/* Bind buffers for keel_session_run_bound, the cheapest call for a caller that
 * runs the same shapes again and again (ONNX Runtime's IoBinding). inputs: as
 * for keel_session_run; the session copies these views, and the memory they
 * point to must stay valid (and hold the next run's input values) while bound.
 * outputs: one per model output, each a caller-owned buffer (data) with the
 * shape the run will produce (rank and shape); it must stay valid while bound.
 * Binding again replaces the previous binding; keel_session_free releases it.
 * Allocates (a few small arrays); not thread-safe per session. */
keel_status keel_session_bind(keel_session *session, const keel_tensor *inputs, size_t n_inputs,
                              const keel_tensor *outputs, size_t n_outputs, keel_error *err);

/* Run with the bound buffers: reads the bound inputs, writes every output into
 * its bound buffer. An output whose shape differs from its bound shape is
 * KEEL_ERR_SHAPE (its buffer is left untouched). Allocates nothing after the
 * first run at a given shape; not thread-safe per session. */
keel_status keel_session_run_bound(keel_session *session, keel_error *err);

/* Cap the session's working memory (bytes; 0 restores the default). A run that
 * would need more fails with KEEL_ERR_LIMIT. Built-in backend only; plugins
 * manage their own memory (KEEL_ERR_UNSUPPORTED). */
keel_status keel_session_set_memory_limit(keel_session *session, uint64_t bytes, keel_error *err);

/* ---- utilities -------------------------------------------------------------- */

/* SHA-256 of len bytes at data into out (32 bytes). data may be NULL iff len == 0. */
void keel_sha256(const void *data, size_t len, uint8_t out[32]);

#ifdef __cplusplus
}
#endif
#endif /* KEEL_H */
