/* Tiny test harness and ONNX model builder for the C core tests.
 * Models are built with the protobuf-c structs generated from
 * proto/onnx/onnx-subset.proto and packed to bytes, so the tests exercise the
 * same decoding path as real files. */
#ifndef KEEL_TESTLIB_H
#define KEEL_TESTLIB_H

#include "keel.h"
#include "onnx-subset.pb-c.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#pragma GCC diagnostic ignored "-Wunused-function"

static int t_passed = 0, t_failed = 0;
static const char *t_current = "";

#define CHECK(cond, ...)                                                        \
    do {                                                                        \
        if (cond) { t_passed++; }                                               \
        else {                                                                  \
            t_failed++;                                                         \
            fprintf(stderr, "FAIL %s (%s:%d): ", t_current, __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fprintf(stderr, "\n");                                              \
        }                                                                       \
    } while (0)

#define CHECK_STATUS(st, want, err)                                             \
    CHECK((st) == (want), "status %d (%s), want %d: %s", (int)(st),             \
          keel_status_name(st), (int)(want), (err).message)

#define TEST(name) static void name(void)
#define RUN(name) do { t_current = #name; name(); } while (0)

static int t_report(void) {
    printf("%d passed, %d failed\n", t_passed, t_failed);
    return t_failed == 0 ? 0 : 1;
}

/* ---- model builder: every allocation is tracked and freed by mb_free ---------- */

typedef struct mb {
    void **ptrs;
    size_t n, cap;
    Onnx__NodeProto **nodes; size_t n_nodes;
    Onnx__TensorProto **inits; size_t n_inits;
    Onnx__ValueInfoProto **inputs; size_t n_inputs;
    Onnx__ValueInfoProto **outputs; size_t n_outputs;
    Onnx__StringStringEntryProto **meta; size_t n_meta;
    int64_t opset;
} mb;

static void *mb_alloc(mb *b, size_t size) {
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 64;
        b->ptrs = realloc(b->ptrs, b->cap * sizeof(void *));
    }
    void *p = calloc(1, size ? size : 1);
    b->ptrs[b->n++] = p;
    return p;
}

static char *mb_str(mb *b, const char *s) {
    char *d = mb_alloc(b, strlen(s) + 1);
    strcpy(d, s);
    return d;
}

static void mb_init(mb *b, int64_t opset) {
    memset(b, 0, sizeof *b);
    b->opset = opset;
    b->nodes = mb_alloc(b, 256 * sizeof(void *));
    b->inits = mb_alloc(b, 256 * sizeof(void *));
    b->inputs = mb_alloc(b, 32 * sizeof(void *));
    b->outputs = mb_alloc(b, 32 * sizeof(void *));
    b->meta = mb_alloc(b, 32 * sizeof(void *));
}

static void mb_free(mb *b) {
    for (size_t i = 0; i < b->n; i++) free(b->ptrs[i]);
    free(b->ptrs);
}

/* Float initializer; raw selects raw_data vs float_data. */
static Onnx__TensorProto *mb_init_f(mb *b, const char *name, uint32_t rank, const int64_t *dims, const float *data,
                                    int raw) {
    Onnx__TensorProto *t = mb_alloc(b, sizeof *t);
    onnx__tensor_proto__init(t);
    t->name = mb_str(b, name);
    t->has_data_type = 1;
    t->data_type = KEEL_DTYPE_FLOAT32;
    t->n_dims = rank;
    t->dims = mb_alloc(b, (rank ? rank : 1) * sizeof(int64_t));
    size_t count = 1;
    for (uint32_t i = 0; i < rank; i++) { t->dims[i] = dims[i]; count *= (size_t)dims[i]; }
    if (raw) {
        t->has_raw_data = 1;
        t->raw_data.len = count * sizeof(float);
        t->raw_data.data = mb_alloc(b, count * sizeof(float));
        if (count) memcpy(t->raw_data.data, data, count * sizeof(float));
    } else {
        t->n_float_data = count;
        t->float_data = mb_alloc(b, count * sizeof(float));
        if (count) memcpy(t->float_data, data, count * sizeof(float));
    }
    b->inits[b->n_inits++] = t;
    return t;
}

static Onnx__TensorProto *mb_init_i64(mb *b, const char *name, size_t count, const int64_t *vals) {
    Onnx__TensorProto *t = mb_alloc(b, sizeof *t);
    onnx__tensor_proto__init(t);
    t->name = mb_str(b, name);
    t->has_data_type = 1;
    t->data_type = KEEL_DTYPE_INT64;
    t->n_dims = 1;
    t->dims = mb_alloc(b, sizeof(int64_t));
    t->dims[0] = (int64_t)count;
    t->n_int64_data = count;
    t->int64_data = mb_alloc(b, count * sizeof(int64_t));
    memcpy(t->int64_data, vals, count * sizeof(int64_t));
    b->inits[b->n_inits++] = t;
    return t;
}

/* Value info; a negative dim becomes the symbolic dimension "N". */
static Onnx__ValueInfoProto *mb_vi(mb *b, const char *name, uint32_t rank, const int64_t *dims) {
    Onnx__ValueInfoProto *v = mb_alloc(b, sizeof *v);
    onnx__value_info_proto__init(v);
    v->name = mb_str(b, name);
    Onnx__TypeProto *tp = mb_alloc(b, sizeof *tp);
    onnx__type_proto__init(tp);
    Onnx__TypeProto__Tensor *tt = mb_alloc(b, sizeof *tt);
    onnx__type_proto__tensor__init(tt);
    tt->has_elem_type = 1;
    tt->elem_type = KEEL_DTYPE_FLOAT32;
    Onnx__TensorShapeProto *sh = mb_alloc(b, sizeof *sh);
    onnx__tensor_shape_proto__init(sh);
    sh->n_dim = rank;
    sh->dim = mb_alloc(b, (rank ? rank : 1) * sizeof(void *));
    for (uint32_t i = 0; i < rank; i++) {
        Onnx__TensorShapeProto__Dimension *d = mb_alloc(b, sizeof *d);
        onnx__tensor_shape_proto__dimension__init(d);
        if (dims[i] >= 0) {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            d->dim_value = dims[i];
        } else {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            d->dim_param = mb_str(b, "N");
        }
        sh->dim[i] = d;
    }
    tt->shape = sh;
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    tp->tensor_type = tt;
    v->type = tp;
    return v;
}

static void mb_input(mb *b, const char *name, uint32_t rank, const int64_t *dims) {
    b->inputs[b->n_inputs++] = mb_vi(b, name, rank, dims);
}
static void mb_output(mb *b, const char *name, uint32_t rank, const int64_t *dims) {
    b->outputs[b->n_outputs++] = mb_vi(b, name, rank, dims);
}

static void mb_meta(mb *b, const char *k, const char *v) {
    Onnx__StringStringEntryProto *e = mb_alloc(b, sizeof *e);
    onnx__string_string_entry_proto__init(e);
    e->key = mb_str(b, k);
    e->value = mb_str(b, v);
    b->meta[b->n_meta++] = e;
}

/* Node with inputs/outputs given as comma-separated names ("" entries allowed). */
static Onnx__NodeProto *mb_node(mb *b, const char *op, const char *name, const char *ins, const char *outs) {
    Onnx__NodeProto *n = mb_alloc(b, sizeof *n);
    onnx__node_proto__init(n);
    n->op_type = mb_str(b, op);
    n->name = mb_str(b, name);
    const char *lists[2] = {ins, outs};
    for (int w = 0; w < 2; w++) {
        char **arr = mb_alloc(b, 64 * sizeof(char *));
        size_t cnt = 0;
        const char *p = lists[w];
        while (p && *p) {
            const char *c = strchr(p, ',');
            size_t len = c ? (size_t)(c - p) : strlen(p);
            char *s = mb_alloc(b, len + 1);
            memcpy(s, p, len);
            arr[cnt++] = s;
            p = c ? c + 1 : NULL;
        }
        if (w == 0) { n->input = arr; n->n_input = cnt; }
        else { n->output = arr; n->n_output = cnt; }
    }
    n->attribute = mb_alloc(b, 16 * sizeof(void *));
    b->nodes[b->n_nodes++] = n;
    return n;
}

static void mb_attr_i(mb *b, Onnx__NodeProto *n, const char *name, int64_t v) {
    Onnx__AttributeProto *a = mb_alloc(b, sizeof *a);
    onnx__attribute_proto__init(a);
    a->name = mb_str(b, name);
    a->has_type = 1;
    a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
    a->has_i = 1;
    a->i = v;
    n->attribute[n->n_attribute++] = a;
}

static void mb_attr_f(mb *b, Onnx__NodeProto *n, const char *name, float v) {
    Onnx__AttributeProto *a = mb_alloc(b, sizeof *a);
    onnx__attribute_proto__init(a);
    a->name = mb_str(b, name);
    a->has_type = 1;
    a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT;
    a->has_f = 1;
    a->f = v;
    n->attribute[n->n_attribute++] = a;
}

static void mb_attr_ints(mb *b, Onnx__NodeProto *n, const char *name, size_t cnt, const int64_t *v) {
    Onnx__AttributeProto *a = mb_alloc(b, sizeof *a);
    onnx__attribute_proto__init(a);
    a->name = mb_str(b, name);
    a->has_type = 1;
    a->type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS;
    a->n_ints = cnt;
    a->ints = mb_alloc(b, cnt * sizeof(int64_t));
    memcpy(a->ints, v, cnt * sizeof(int64_t));
    n->attribute[n->n_attribute++] = a;
}

/* Pack the model; caller frees the returned buffer with free(). */
static uint8_t *mb_pack(mb *b, size_t *len) {
    Onnx__GraphProto g;
    onnx__graph_proto__init(&g);
    g.name = "test";
    g.node = b->nodes; g.n_node = b->n_nodes;
    g.initializer = b->inits; g.n_initializer = b->n_inits;
    g.input = b->inputs; g.n_input = b->n_inputs;
    g.output = b->outputs; g.n_output = b->n_outputs;
    Onnx__OperatorSetIdProto op;
    onnx__operator_set_id_proto__init(&op);
    op.domain = "";
    op.has_version = 1;
    op.version = b->opset;
    Onnx__OperatorSetIdProto *ops[1] = {&op};
    Onnx__ModelProto m;
    onnx__model_proto__init(&m);
    m.has_ir_version = 1;
    m.ir_version = 8;
    m.producer_name = "keel-tests";
    m.opset_import = ops;
    m.n_opset_import = b->opset > 0 ? 1 : 0;
    m.graph = &g;
    m.metadata_props = b->meta;
    m.n_metadata_props = b->n_meta;
    *len = onnx__model_proto__get_packed_size(&m);
    uint8_t *buf = malloc(*len ? *len : 1);
    onnx__model_proto__pack(&m, buf);
    return buf;
}

/* Deterministic pseudo-random floats in [-1, 1). */
static float t_rand(unsigned *state) {
    *state = *state * 1664525u + 1013904223u;
    return (float)((*state >> 8) & 0xffff) / 32768.0f - 1.0f;
}

#endif
