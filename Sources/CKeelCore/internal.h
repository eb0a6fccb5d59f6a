/* Internal declarations of the Keel C core. Not part of the public API. */
#ifndef KEEL_INTERNAL_H
#define KEEL_INTERNAL_H

#include "keel.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- the built-in ONNX/OpenBLAS backend ------------------------------------- */

/* Function table of the built-in backend (backend_onnx.c). */
const keel_backend_api *keel_onnx_backend_api(void);
/* Cap an ONNX instance's working memory (0 = default). */
void keel_onnx_instance_set_memory_limit(void *instance, uint64_t bytes);
/* One-time process set-up of OpenBLAS threads (idempotent, thread-safe). */
void keel_blas_init_once(void);

/* ---- graph IR ---------------------------------------------------------------- */

enum keel_value_kind { KV_INPUT = 0, KV_CONST = 1, KV_NODE = 2 };

typedef struct kv_value {
    char *name;
    int kind;              /* enum keel_value_kind */
    int32_t dtype;         /* KEEL_DTYPE_FLOAT32 or (constants only) KEEL_DTYPE_INT64 */
    uint32_t rank;         /* for constants and inputs: the declared/actual rank */
    int64_t dims[KEEL_MAX_RANK];
    size_t count;          /* element count of constants */
    float *fdata;          /* constant float data (64-byte aligned, owned) */
    int64_t *idata;        /* constant int64 data (owned) */
    int producer;          /* node index producing it, or -1 */
} kv_value;

/* Operators. Keep in sync with the table in onnx_ops.c. */
typedef enum keel_op {
    OP_GEMM, OP_MATMUL, OP_ADD, OP_SUB, OP_MUL, OP_DIV,
    OP_RELU, OP_LEAKYRELU, OP_TANH, OP_SIGMOID, OP_SOFTMAX, OP_LOGSOFTMAX,
    OP_EXP, OP_LOG, OP_SQRT, OP_CLIP, OP_CONCAT, OP_RESHAPE, OP_FLATTEN,
    OP_TRANSPOSE, OP_IDENTITY, OP_CONSTANT, OP_REDUCESUM, OP_REDUCEMEAN,
    OP_LAYERNORM,
    OP_COUNT_
} keel_op;

/* Attributes, parsed and checked at load time. */
typedef struct kn_attrs {
    int64_t axis;           /* Softmax, LogSoftmax, Concat, Flatten, LayerNormalization */
    float alpha, beta;      /* Gemm alpha/beta, LeakyRelu alpha */
    int trans_a, trans_b;   /* Gemm */
    float epsilon;          /* LayerNormalization */
    float clip_min, clip_max; /* Clip (opset < 11) */
    int keepdims;           /* Reduce* */
    int noop_with_empty_axes; /* Reduce* */
    int has_axes;           /* Reduce* axes given as attribute */
    uint32_t n_axes;
    int64_t axes[KEEL_MAX_RANK];
    uint32_t n_perm;        /* Transpose; 0 = reverse */
    int64_t perm[KEEL_MAX_RANK];
    int allowzero;          /* Reshape */
    int legacy_softmax;     /* Softmax/LogSoftmax with opset < 13: coerce to 2-D */
    int fused_relu;         /* Gemm: a following Relu is applied in this node's epilogue */
    int relu_fused_away;    /* Relu: its producer applies it; this node only aliases */
} kn_attrs;

typedef struct keel_dense keel_dense; /* packed dense layer (dense.c) */

typedef struct kn_node {
    char *name;             /* the node's name, or "#<index>" when it has none */
    char *op_type;
    keel_op op;
    uint32_t n_in, n_out;
    int *in;                /* value indices; -1 for an omitted optional input */
    int *out;
    kn_attrs a;
    keel_dense *dense;      /* Gemm/MatMul by constant weights: packed at load (NULL = cblas_sgemm) */
} kn_node;

typedef struct kv_meta { char *key; char *value; } kv_meta;

typedef struct keel_onnx_model {
    kv_value *values;
    size_t n_values;
    kn_node *nodes;         /* in a valid topological order */
    size_t n_nodes;
    int *exec;              /* indices of nodes to execute (Constant nodes excluded) */
    size_t n_exec;
    int *inputs;            /* model inputs (graph inputs that are not initializers) */
    size_t n_inputs;
    int *outputs;
    size_t n_outputs;
    keel_tensor_info *input_info;
    keel_tensor_info *output_info;
    char **dim_param_storage; /* owned strings referenced by *_info */
    size_t n_dim_param_storage;
    kv_meta *meta;
    size_t n_meta;
    kv_meta props[6];       /* producer, producer_version, ir_version, opset, graph, kernels */
    size_t n_props;
    int64_t opset;
    int64_t ir_version;
    char *producer;
    char *graph_name;
    uint64_t parameter_count;
} keel_onnx_model;

/* onnx_loader.c: decode + validate. On success *out is owned by the caller
 * (keel_onnx_model_free). */
keel_status keel_onnx_model_load(const void *bytes, size_t len, const char *source,
                                 keel_onnx_model **out, keel_error *err);
void keel_onnx_model_free(keel_onnx_model *m);

/* ---- execution ---------------------------------------------------------------- */

typedef struct kr_shape {
    uint32_t rank;
    int64_t d[KEEL_MAX_RANK];
    size_t count;
} kr_shape;

/* Per-node parameters computed by the planner for the current input shapes. */
typedef struct kr_node {
    /* generic */
    size_t outer, mid, inner;   /* softmax, concat, layernorm, flatten helpers */
    /* broadcasting binary ops: output shape and input strides (0 = broadcast) */
    int bcast_kind;             /* 0 same shape, 1 b scalar, 2 a scalar, 3 b row, 4 general */
    size_t row;                 /* for bcast_kind 3: length of the repeated row */
    int64_t sa[KEEL_MAX_RANK], sb[KEEL_MAX_RANK];
    /* matmul / gemm */
    size_t m, n, k, batch;
    int a_batch_stride_zero, b_batch_stride_zero;
    int fold_batch;             /* MatMul: B is 2-D, fold A's batch into M */
    size_t a_bs, b_bs;          /* per-batch strides in elements */
    uint32_t batch_rank;
    int64_t batch_d[KEEL_MAX_RANK];
    int64_t batch_sa[KEEL_MAX_RANK], batch_sb[KEEL_MAX_RANK];
    int gemm_c_kind;            /* 0 none, 1 scalar, 2 row [n], 3 column [m,1], 4 full [m,n] */
    /* transpose / reduce: input strides permuted or output strides */
    int64_t st[KEEL_MAX_RANK];
    size_t reduce_count;
    int reduce_copy;            /* reduce with empty axes and noop: copy */
    float clip_lo, clip_hi;     /* resolved at run for dynamic Clip inputs */
} kr_node;

typedef struct keel_onnx_session {
    const keel_onnx_model *m;
    kr_shape *shapes;           /* per value, for the current plan */
    const float **ptr;          /* per value, for the current run */
    size_t *offset;             /* per value: offset into arena, SIZE_MAX for none */
    int *alias;                 /* per value: value whose storage it shares, or -1 */
    kr_node *rt;                /* per node */
    unsigned char *arena;
    size_t arena_cap;
    size_t arena_need;
    bool planned;
    kr_shape *planned_inputs;   /* input shapes of the current plan */
    size_t *out_copy;           /* per model output: arena offset of a copy, or SIZE_MAX.
                                   Outputs whose storage would be a caller's input buffer
                                   (Identity/Reshape/Flatten of an input, or the input
                                   itself) are copied so every output lives in the session. */
    uint64_t memory_limit;
} keel_onnx_session;

keel_status keel_onnx_session_create(const keel_onnx_model *m, keel_onnx_session **out,
                                     keel_error *err);
void keel_onnx_session_free(keel_onnx_session *s);
keel_status keel_onnx_session_run(keel_onnx_session *s, const keel_tensor *inputs,
                                  size_t n_inputs, keel_tensor *outputs, size_t n_outputs,
                                  keel_error *err);
/* Shape-check the graph with input shapes in `input_shapes` (no data). Used by
 * the loader to validate static shapes. output_shapes (NULL ok) receives the
 * shape of every model output. */
keel_status keel_onnx_shape_check(const keel_onnx_model *m, const kr_shape *input_shapes,
                                  kr_shape *output_shapes, keel_error *err);

/* ---- packed dense layers (dense.c) -------------------------------------------------- */

/* keel_dense (declared with the graph IR): a matrix product by a constant
 * right-hand side, packed once for Keel's own AVX-512 or AVX2 kernel:
 * y[m,n] = alpha * a[m,k] . B[k,n] + beta * C, then ReLU when relu. Immutable
 * after creation: shared by every session of a model. */

/* Largest K and N packed; larger layers go through cblas_sgemm. */
#define KEEL_DENSE_MAX_DIM 4096

/* Why models loaded now do not pack their dense layers ("KEEL_GEMM=blas", "no
 * AVX-512F or AVX2+FMA", ...), or NULL when they do: the CPU has AVX-512F (or
 * AVX2 and FMA) and KEEL_GEMM is not "blas" (KEEL_GEMM=avx2 picks the AVX2
 * kernel where both exist). Thread-safe. */
const char *keel_dense_off_reason(void);
/* The kernel set layers packed now use ("AVX-512", "AVX2"), or NULL when off. */
const char *keel_dense_isa_name(void);

/* Pack B ([k,n], or [n,k] when trans_b) and C (NULL, or c_count == 1 or n
 * values, broadcast to a row). 1 <= k, n <= KEEL_DENSE_MAX_DIM. On success the
 * caller owns *out (keel_dense_free). KEEL_ERR_UNSUPPORTED when the packed
 * kernels are off (keel_dense_off_reason). */
keel_status keel_dense_create(size_t k, size_t n, const float *b, int trans_b, float alpha, const float *c,
                              size_t c_count, float beta, int relu, keel_dense **out, keel_error *err);
void keel_dense_free(keel_dense *d);   /* NULL ok */
/* Floats a packed layer of this size holds (weights and bias, with padding). */
size_t keel_dense_footprint(size_t k, size_t n);
size_t keel_dense_k(const keel_dense *d);
size_t keel_dense_n(const keel_dense *d);

/* y[m,n] (row stride n) from a[m,k] (row stride k). Allocates nothing;
 * thread-safe (d is read only). */
void keel_dense_run(const keel_dense *d, size_t m, const float *a, float *y);

/* ---- small utilities ----------------------------------------------------------- */

/* Overflow-checked size arithmetic: return false on overflow. */
static inline bool keel_mul_size(size_t a, size_t b, size_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline bool keel_add_size(size_t a, size_t b, size_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

/* Largest element count Keel accepts for any one tensor (2^31 - 1 floats = 8 GiB). */
#define KEEL_MAX_ELEMENTS ((size_t)INT32_MAX)

void *keel_aligned_alloc(size_t bytes);   /* 64-byte aligned; NULL on failure or 0 */
void keel_aligned_free(void *p);
char *keel_strdup(const char *s);         /* NULL on failure; NULL in -> "" copy */

#endif /* KEEL_INTERNAL_H */
