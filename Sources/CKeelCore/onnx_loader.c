/* ONNX loader: bytes in, a validated graph (keel_onnx_model) out, or an error
 * naming the problem: the node, the op, the tensor, or the byte offset.
 *
 * Decoding is done by libprotobuf-c against proto/onnx/onnx-subset.proto. When
 * it fails, a second pass (diagnose_wire) walks the bytes with the same message
 * descriptors to say where and why. Every size read from the file is checked
 * for overflow and against the bytes actually present, so memory stays bounded
 * by a small multiple of the file size. */
#include "internal.h"
#include "onnx-subset.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MIN_OPSET 7
#define MAX_OPSET 22

_Static_assert(sizeof(float) == 4, "float must be 32-bit");
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "Keel reads ONNX raw_data in place and needs a little-endian target"
#endif

/* ---- wire-format diagnosis ------------------------------------------------------ */

typedef struct wire_diag {
    size_t offset;
    char what[200];
    char path[200];
} wire_diag;

static bool read_varint(const uint8_t *p, size_t len, size_t *pos, uint64_t *v) {
    uint64_t r = 0;
    for (int i = 0; i < 10; i++) {
        if (*pos >= len) return false;
        uint8_t b = p[(*pos)++];
        if (i == 9 && b > 1) return false;
        r |= (uint64_t)(b & 0x7f) << (7 * i);
        if ((b & 0x80) == 0) {
            *v = r;
            return true;
        }
    }
    return false;
}

static int expected_wire(ProtobufCType t) {
    switch (t) {
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_BOOL: case PROTOBUF_C_TYPE_ENUM:
        return 0;
    case PROTOBUF_C_TYPE_FIXED64: case PROTOBUF_C_TYPE_SFIXED64: case PROTOBUF_C_TYPE_DOUBLE:
        return 1;
    case PROTOBUF_C_TYPE_FIXED32: case PROTOBUF_C_TYPE_SFIXED32: case PROTOBUF_C_TYPE_FLOAT:
        return 5;
    default:
        return 2;
    }
}

static void path_push(char *path, size_t cap, const char *name, unsigned idx, bool repeated) {
    size_t n = strlen(path);
    if (n >= cap - 1) return;
    if (repeated)
        snprintf(path + n, cap - n, "%s%s[%u]", n ? "." : "", name, idx);
    else
        snprintf(path + n, cap - n, "%s%s", n ? "." : "", name);
}

/* Returns true and fills *d at the first malformed spot; false if the bytes
 * look well-formed to this scanner. base: offset of p in the whole file. */
static bool diagnose_wire(const ProtobufCMessageDescriptor *desc, const uint8_t *p, size_t len,
                          size_t base, int depth, wire_diag *d) {
    unsigned counts[64] = {0};
    size_t pos = 0;
    size_t path_len = strlen(d->path);
    while (pos < len) {
        size_t field_start = pos;
        uint64_t tag;
        if (!read_varint(p, len, &pos, &tag)) {
            d->offset = base + field_start;
            snprintf(d->what, sizeof d->what, "truncated or malformed field tag");
            return true;
        }
        uint32_t num = (uint32_t)(tag >> 3);
        int wire = (int)(tag & 7);
        if (num == 0 || (tag >> 3) > 536870911u) {
            d->offset = base + field_start;
            snprintf(d->what, sizeof d->what, "invalid field number %llu", (unsigned long long)(tag >> 3));
            return true;
        }
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(desc, num);
        size_t value_start = pos;
        size_t sub_len = 0;
        switch (wire) {
        case 0: {
            uint64_t v;
            if (!read_varint(p, len, &pos, &v)) {
                d->offset = base + value_start;
                snprintf(d->what, sizeof d->what, "truncated varint in field %u", num);
                goto named;
            }
            break;
        }
        case 1:
            if (len - pos < 8) {
                d->offset = base + value_start;
                snprintf(d->what, sizeof d->what, "truncated 8-byte value in field %u", num);
                goto named;
            }
            pos += 8;
            break;
        case 5:
            if (len - pos < 4) {
                d->offset = base + value_start;
                snprintf(d->what, sizeof d->what, "truncated 4-byte value in field %u", num);
                goto named;
            }
            pos += 4;
            break;
        case 2: {
            uint64_t l;
            if (!read_varint(p, len, &pos, &l)) {
                d->offset = base + value_start;
                snprintf(d->what, sizeof d->what, "truncated length of field %u", num);
                goto named;
            }
            if (l > len - pos) {
                d->offset = base + value_start;
                snprintf(d->what, sizeof d->what,
                         "field %u declares %llu bytes but only %zu remain", num,
                         (unsigned long long)l, len - pos);
                goto named;
            }
            value_start = pos;
            sub_len = (size_t)l;
            pos += sub_len;
            break;
        }
        default:
            d->offset = base + field_start;
            snprintf(d->what, sizeof d->what, "unsupported wire type %d in field %u", wire, num);
            goto named;
        }
        if (f == NULL) continue; /* unknown field: skipped by the decoder too */
        {
            size_t fi = (size_t)(f - desc->fields);
            unsigned idx = fi < 64 ? counts[fi]++ : 0;
            int want = expected_wire(f->type);
            bool packed_ok = f->label == PROTOBUF_C_LABEL_REPEATED && want != 2 && wire == 2;
            if (wire != want && !packed_ok) {
                path_push(d->path, sizeof d->path, f->name, idx, f->label == PROTOBUF_C_LABEL_REPEATED);
                d->offset = base + field_start;
                snprintf(d->what, sizeof d->what, "wire type %d where %s expects %d", wire, f->name, want);
                return true;
            }
            if (packed_ok) {
                size_t q = 0;
                while (q < sub_len) {
                    if (want == 0) {
                        uint64_t v;
                        if (!read_varint(p + value_start, sub_len, &q, &v)) {
                            path_push(d->path, sizeof d->path, f->name, idx, true);
                            d->offset = base + value_start + q;
                            snprintf(d->what, sizeof d->what, "malformed varint in packed field");
                            return true;
                        }
                    } else {
                        size_t w = want == 1 ? 8 : 4;
                        if (sub_len - q < w) {
                            path_push(d->path, sizeof d->path, f->name, idx, true);
                            d->offset = base + value_start + q;
                            snprintf(d->what, sizeof d->what, "packed field length %zu is not a multiple of %zu",
                                     sub_len, w);
                            return true;
                        }
                        q += w;
                    }
                }
            }
            if (f->type == PROTOBUF_C_TYPE_MESSAGE && wire == 2 && depth < 16) {
                path_push(d->path, sizeof d->path, f->name, idx, f->label == PROTOBUF_C_LABEL_REPEATED);
                if (diagnose_wire(f->descriptor, p + value_start, sub_len, base + value_start, depth + 1, d))
                    return true;
                d->path[path_len] = '\0';
            }
        }
        continue;
    named:
        if (f != NULL) {
            size_t fi = (size_t)(f - desc->fields);
            path_push(d->path, sizeof d->path, f->name, fi < 64 ? counts[fi] : 0,
                      f->label == PROTOBUF_C_LABEL_REPEATED);
        }
        return true;
    }
    return false;
}

/* ---- name table ----------------------------------------------------------------- */

typedef struct name_map {
    int *slots;   /* value index or -1 */
    size_t cap;   /* power of two */
    const kv_value *values;
} name_map;

static uint64_t hash_str(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static bool map_init(name_map *m, size_t n, const kv_value *values) {
    size_t cap = 16;
    while (cap < 2 * n + 2) cap <<= 1;
    m->slots = malloc(cap * sizeof *m->slots);
    if (m->slots == NULL) return false;
    for (size_t i = 0; i < cap; i++) m->slots[i] = -1;
    m->cap = cap;
    m->values = values;
    return true;
}

static int map_find(const name_map *m, const char *name) {
    size_t i = (size_t)hash_str(name) & (m->cap - 1);
    while (m->slots[i] >= 0) {
        if (strcmp(m->values[m->slots[i]].name, name) == 0) return m->slots[i];
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

static void map_insert(name_map *m, const char *name, int idx) {
    size_t i = (size_t)hash_str(name) & (m->cap - 1);
    while (m->slots[i] >= 0) i = (i + 1) & (m->cap - 1);
    m->slots[i] = idx;
}

/* ---- op table ------------------------------------------------------------------- */

typedef struct op_def {
    const char *name;
    keel_op op;
    uint32_t min_in, max_in, min_out, max_out;
} op_def;

static const op_def OPS[] = {
    {"Gemm", OP_GEMM, 2, 3, 1, 1},
    {"MatMul", OP_MATMUL, 2, 2, 1, 1},
    {"Add", OP_ADD, 2, 2, 1, 1},
    {"Sub", OP_SUB, 2, 2, 1, 1},
    {"Mul", OP_MUL, 2, 2, 1, 1},
    {"Div", OP_DIV, 2, 2, 1, 1},
    {"Relu", OP_RELU, 1, 1, 1, 1},
    {"LeakyRelu", OP_LEAKYRELU, 1, 1, 1, 1},
    {"Tanh", OP_TANH, 1, 1, 1, 1},
    {"Sigmoid", OP_SIGMOID, 1, 1, 1, 1},
    {"Softmax", OP_SOFTMAX, 1, 1, 1, 1},
    {"LogSoftmax", OP_LOGSOFTMAX, 1, 1, 1, 1},
    {"Exp", OP_EXP, 1, 1, 1, 1},
    {"Log", OP_LOG, 1, 1, 1, 1},
    {"Sqrt", OP_SQRT, 1, 1, 1, 1},
    {"Clip", OP_CLIP, 1, 3, 1, 1},
    {"Concat", OP_CONCAT, 1, 4096, 1, 1},
    {"Reshape", OP_RESHAPE, 2, 2, 1, 1},
    {"Flatten", OP_FLATTEN, 1, 1, 1, 1},
    {"Transpose", OP_TRANSPOSE, 1, 1, 1, 1},
    {"Identity", OP_IDENTITY, 1, 1, 1, 1},
    {"Constant", OP_CONSTANT, 0, 0, 1, 1},
    {"ReduceSum", OP_REDUCESUM, 1, 2, 1, 1},
    {"ReduceMean", OP_REDUCEMEAN, 1, 2, 1, 1},
    {"LayerNormalization", OP_LAYERNORM, 2, 3, 1, 3},
};

static const op_def *find_op(const char *name) {
    for (size_t i = 0; i < sizeof OPS / sizeof OPS[0]; i++)
        if (strcmp(OPS[i].name, name) == 0) return &OPS[i];
    return NULL;
}

/* ---- helpers -------------------------------------------------------------------- */

typedef struct load_ctx {
    const char *source;
    keel_onnx_model *m;
    keel_error *err;
    int64_t opset;
} load_ctx;

static const char *src(const load_ctx *c) { return c->source ? c->source : "model"; }

static const char *node_label(const keel_onnx_model *m, size_t i, char *buf, size_t cap) {
    const kn_node *n = &m->nodes[i];
    if (n->name && n->name[0])
        snprintf(buf, cap, "node '%s' (%s)", n->name, n->op_type);
    else
        snprintf(buf, cap, "node #%zu (%s)", i, n->op_type);
    return buf;
}

static const char *dtype_name(int32_t t) {
    static const char *names[] = {"UNDEFINED", "FLOAT", "UINT8", "INT8", "UINT16", "INT16", "INT32", "INT64",
                                  "STRING", "BOOL", "FLOAT16", "DOUBLE", "UINT32", "UINT64", "COMPLEX64",
                                  "COMPLEX128", "BFLOAT16"};
    if (t >= 0 && t < (int32_t)(sizeof names / sizeof names[0])) return names[t];
    return "unknown";
}

/* Convert a TensorProto into a constant value. what: "initializer 'w'" etc. */
static keel_status tensor_to_value(load_ctx *c, const Onnx__TensorProto *t, const char *what, kv_value *v) {
    keel_error *err = c->err;
    if (t->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL || t->n_external_data > 0)
        return keel_error_set(err, KEEL_ERR_UNSUPPORTED,
                              "%s: %s keeps its data in an external file; Keel needs weights inside the model "
                              "(re-export with save_as_external_data=False)", src(c), what);
    int32_t dt = t->has_data_type ? t->data_type : 0;
    if (dt != KEEL_DTYPE_FLOAT32 && dt != KEEL_DTYPE_INT64)
        return keel_error_set(err, KEEL_ERR_UNSUPPORTED,
                              "%s: %s has data type %s (%d); Keel runs float32 models (int64 only for shapes and axes)",
                              src(c), what, dtype_name(dt), dt);
    if (t->n_dims > KEEL_MAX_RANK)
        return keel_error_set(err, KEEL_ERR_UNSUPPORTED, "%s: %s has rank %zu; the maximum is %d", src(c), what,
                              t->n_dims, KEEL_MAX_RANK);
    size_t count = 1;
    for (size_t i = 0; i < t->n_dims; i++) {
        if (t->dims[i] < 0)
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: %s has negative dimension %lld at axis %zu",
                                  src(c), what, (long long)t->dims[i], i);
        if ((uint64_t)t->dims[i] > KEEL_MAX_ELEMENTS || !keel_mul_size(count, (size_t)t->dims[i], &count) ||
            count > KEEL_MAX_ELEMENTS)
            return keel_error_set(err, KEEL_ERR_LIMIT, "%s: %s declares more than %zu elements", src(c), what,
                                  (size_t)KEEL_MAX_ELEMENTS);
        v->dims[i] = t->dims[i];
    }
    v->rank = (uint32_t)t->n_dims;
    v->count = count;
    v->dtype = dt;
    v->kind = KV_CONST;
    size_t esize = dt == KEEL_DTYPE_FLOAT32 ? 4 : 8;
    size_t bytes = count * esize;
    const void *from = NULL;
    if (t->has_raw_data) {
        if (t->raw_data.len != bytes)
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL,
                                  "%s: %s has %zu bytes of raw_data but its %zu elements of %s need %zu",
                                  src(c), what, t->raw_data.len, count, dtype_name(dt), bytes);
        from = t->raw_data.data;
    } else if (dt == KEEL_DTYPE_FLOAT32) {
        if (t->n_float_data != count)
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL,
                                  "%s: %s has %zu float_data values but its dims hold %zu", src(c), what,
                                  t->n_float_data, count);
        from = t->float_data;
    } else {
        if (t->n_int64_data != count)
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL,
                                  "%s: %s has %zu int64_data values but its dims hold %zu", src(c), what,
                                  t->n_int64_data, count);
        from = t->int64_data;
    }
    if (count == 0) return KEEL_OK;
    void *dst = keel_aligned_alloc(bytes);
    if (dst == NULL) return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory for %s", src(c), what);
    memcpy(dst, from, bytes);
    if (dt == KEEL_DTYPE_FLOAT32) v->fdata = dst; else v->idata = dst;
    return KEEL_OK;
}

static const Onnx__AttributeProto *find_attr(const Onnx__NodeProto *np, const char *name) {
    for (size_t i = 0; i < np->n_attribute; i++)
        if (np->attribute[i]->name && strcmp(np->attribute[i]->name, name) == 0) return np->attribute[i];
    return NULL;
}

static keel_status attr_type_error(load_ctx *c, const char *label, const char *name, const char *want) {
    return keel_error_set(c->err, KEEL_ERR_INVALID_MODEL, "%s: %s attribute '%s' must be of type %s", src(c), label,
                          name, want);
}

static keel_status attr_int(load_ctx *c, const Onnx__NodeProto *np, const char *label, const char *name,
                            int64_t def, int64_t *out) {
    const Onnx__AttributeProto *a = find_attr(np, name);
    *out = def;
    if (a == NULL) return KEEL_OK;
    if (!(a->type == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT ||
          (a->type == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED && a->has_i)))
        return attr_type_error(c, label, name, "INT");
    *out = a->i;
    return KEEL_OK;
}

static keel_status attr_float(load_ctx *c, const Onnx__NodeProto *np, const char *label, const char *name,
                              float def, float *out) {
    const Onnx__AttributeProto *a = find_attr(np, name);
    *out = def;
    if (a == NULL) return KEEL_OK;
    if (!(a->type == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT ||
          (a->type == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED && a->has_f)))
        return attr_type_error(c, label, name, "FLOAT");
    *out = a->f;
    return KEEL_OK;
}

/* INTS attribute into out[KEEL_MAX_RANK]; *present tells whether it was there. */
static keel_status attr_ints(load_ctx *c, const Onnx__NodeProto *np, const char *label, const char *name,
                             int64_t *out, uint32_t *n, int *present) {
    const Onnx__AttributeProto *a = find_attr(np, name);
    *n = 0;
    *present = 0;
    if (a == NULL) return KEEL_OK;
    if (!(a->type == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS ||
          a->type == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED))
        return attr_type_error(c, label, name, "INTS");
    if (a->n_ints > KEEL_MAX_RANK)
        return keel_error_set(c->err, KEEL_ERR_INVALID_MODEL, "%s: %s attribute '%s' has %zu values; at most %d",
                              src(c), label, name, a->n_ints, KEEL_MAX_RANK);
    for (size_t i = 0; i < a->n_ints; i++) out[i] = a->ints[i];
    *n = (uint32_t)a->n_ints;
    *present = 1;
    return KEEL_OK;
}

/* Parse and check the attributes of node i. */
static keel_status parse_attrs(load_ctx *c, size_t i, const Onnx__NodeProto *np) {
    kn_node *n = &c->m->nodes[i];
    kn_attrs *a = &n->a;
    char label[320];
    node_label(c->m, i, label, sizeof label);
    keel_status st = KEEL_OK;
    int64_t v = 0;
    int present = 0;
    switch (n->op) {
    case OP_GEMM:
        if ((st = attr_float(c, np, label, "alpha", 1.0f, &a->alpha))) return st;
        if ((st = attr_float(c, np, label, "beta", 1.0f, &a->beta))) return st;
        if ((st = attr_int(c, np, label, "transA", 0, &v))) return st;
        a->trans_a = v != 0;
        if ((st = attr_int(c, np, label, "transB", 0, &v))) return st;
        a->trans_b = v != 0;
        break;
    case OP_LEAKYRELU:
        if ((st = attr_float(c, np, label, "alpha", 0.01f, &a->alpha))) return st;
        break;
    case OP_SOFTMAX:
    case OP_LOGSOFTMAX:
        a->legacy_softmax = c->opset < 13;
        if ((st = attr_int(c, np, label, "axis", a->legacy_softmax ? 1 : -1, &a->axis))) return st;
        break;
    case OP_CONCAT:
        if (find_attr(np, "axis") == NULL)
            return keel_error_set(c->err, KEEL_ERR_INVALID_MODEL, "%s: %s has no 'axis' attribute", src(c), label);
        if ((st = attr_int(c, np, label, "axis", 0, &a->axis))) return st;
        break;
    case OP_FLATTEN:
        if ((st = attr_int(c, np, label, "axis", 1, &a->axis))) return st;
        break;
    case OP_LAYERNORM:
        if ((st = attr_int(c, np, label, "axis", -1, &a->axis))) return st;
        if ((st = attr_float(c, np, label, "epsilon", 1e-5f, &a->epsilon))) return st;
        if ((st = attr_int(c, np, label, "stash_type", 1, &v))) return st;
        if (v != 1)
            return keel_error_set(c->err, KEEL_ERR_UNSUPPORTED, "%s: %s stash_type %lld is not supported (only 1, float)",
                                  src(c), label, (long long)v);
        break;
    case OP_CLIP:
        if (c->opset < 11) {
            if ((st = attr_float(c, np, label, "min", -3.402823466e38f, &a->clip_min))) return st;
            if ((st = attr_float(c, np, label, "max", 3.402823466e38f, &a->clip_max))) return st;
        }
        break;
    case OP_TRANSPOSE:
        if ((st = attr_ints(c, np, label, "perm", a->perm, &a->n_perm, &present))) return st;
        break;
    case OP_RESHAPE:
        if ((st = attr_int(c, np, label, "allowzero", 0, &v))) return st;
        a->allowzero = v != 0;
        break;
    case OP_REDUCESUM:
    case OP_REDUCEMEAN:
        if ((st = attr_int(c, np, label, "keepdims", 1, &v))) return st;
        a->keepdims = v != 0;
        if ((st = attr_int(c, np, label, "noop_with_empty_axes", 0, &v))) return st;
        a->noop_with_empty_axes = v != 0;
        if ((st = attr_ints(c, np, label, "axes", a->axes, &a->n_axes, &present))) return st;
        a->has_axes = present;
        if (present && ((n->op == OP_REDUCESUM && c->opset >= 13) || (n->op == OP_REDUCEMEAN && c->opset >= 18)))
            return keel_error_set(c->err, KEEL_ERR_INVALID_MODEL,
                                  "%s: %s uses the 'axes' attribute, which opset %lld replaced by an input",
                                  src(c), label, (long long)c->opset);
        break;
    default:
        break;
    }
    /* Attributes Keel cannot honour are refused rather than ignored. */
    for (size_t k = 0; k < np->n_attribute; k++) {
        const Onnx__AttributeProto *at = np->attribute[k];
        if (at->ref_attr_name && at->ref_attr_name[0])
            return keel_error_set(c->err, KEEL_ERR_UNSUPPORTED, "%s: %s attribute '%s' refers to a function attribute",
                                  src(c), label, at->name ? at->name : "");
    }
    return KEEL_OK;
}

/* Build a constant value from a Constant node's attribute. */
static keel_status constant_value(load_ctx *c, size_t i, const Onnx__NodeProto *np, kv_value *v) {
    char label[320];
    node_label(c->m, i, label, sizeof label);
    if (np->n_attribute != 1)
        return keel_error_set(c->err, KEEL_ERR_INVALID_MODEL, "%s: %s must have exactly one value attribute, has %zu",
                              src(c), label, np->n_attribute);
    const Onnx__AttributeProto *a = np->attribute[0];
    const char *an = a->name ? a->name : "";
    if (strcmp(an, "value") == 0) {
        if (a->t == NULL) return attr_type_error(c, label, an, "TENSOR");
        char what[400];
        snprintf(what, sizeof what, "%s value", label);
        return tensor_to_value(c, a->t, what, v);
    }
    v->kind = KV_CONST;
    if (strcmp(an, "value_float") == 0 || strcmp(an, "value_floats") == 0) {
        bool one = an[11] == '\0';
        size_t cnt = one ? 1 : a->n_floats;
        if (one && !(a->type == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT || a->has_f))
            return attr_type_error(c, label, an, "FLOAT");
        v->dtype = KEEL_DTYPE_FLOAT32;
        v->rank = one ? 0 : 1;
        v->dims[0] = (int64_t)cnt;
        v->count = cnt;
        if (cnt) {
            v->fdata = keel_aligned_alloc(cnt * sizeof(float));
            if (!v->fdata) return keel_error_set(c->err, KEEL_ERR_OUT_OF_MEMORY, "out of memory");
            if (one) v->fdata[0] = a->f; else memcpy(v->fdata, a->floats, cnt * sizeof(float));
        }
        return KEEL_OK;
    }
    if (strcmp(an, "value_int") == 0 || strcmp(an, "value_ints") == 0) {
        bool one = an[9] == '\0';
        size_t cnt = one ? 1 : a->n_ints;
        if (one && !(a->type == ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT || a->has_i))
            return attr_type_error(c, label, an, "INT");
        v->dtype = KEEL_DTYPE_INT64;
        v->rank = one ? 0 : 1;
        v->dims[0] = (int64_t)cnt;
        v->count = cnt;
        if (cnt) {
            v->idata = keel_aligned_alloc(cnt * sizeof(int64_t));
            if (!v->idata) return keel_error_set(c->err, KEEL_ERR_OUT_OF_MEMORY, "out of memory");
            if (one) v->idata[0] = a->i; else memcpy(v->idata, a->ints, cnt * sizeof(int64_t));
        }
        return KEEL_OK;
    }
    return keel_error_set(c->err, KEEL_ERR_UNSUPPORTED, "%s: Constant attribute '%s' is not supported", src(c), an);
}

/* Declared type of a graph input/output into info (dims) and value. */
static keel_status value_info(load_ctx *c, const Onnx__ValueInfoProto *vi, const char *role, bool need_shape,
                              keel_tensor_info *info, bool *has_shape) {
    const char *name = vi->name ? vi->name : "";
    *has_shape = false;
    info->name = NULL;
    info->elem_type = KEEL_DTYPE_FLOAT32;
    info->rank = 0;
    if (vi->type == NULL || vi->type->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE) {
        if (!need_shape && vi->type == NULL) return KEEL_OK;
        return keel_error_set(c->err, KEEL_ERR_UNSUPPORTED, "%s: graph %s '%s' is not a tensor", src(c), role, name);
    }
    const Onnx__TypeProto__Tensor *tt = vi->type->tensor_type;
    int32_t et = tt->has_elem_type ? tt->elem_type : 0;
    if (et != KEEL_DTYPE_FLOAT32 && !(et == 0 && !need_shape))
        return keel_error_set(c->err, KEEL_ERR_UNSUPPORTED,
                              "%s: graph %s '%s' has element type %s (%d); Keel runs float32 models only", src(c),
                              role, name, dtype_name(et), et);
    if (tt->shape == NULL) {
        if (need_shape)
            return keel_error_set(c->err, KEEL_ERR_UNSUPPORTED,
                                  "%s: graph %s '%s' declares no shape; Keel needs at least its rank", src(c), role,
                                  name);
        return KEEL_OK;
    }
    if (tt->shape->n_dim > KEEL_MAX_RANK)
        return keel_error_set(c->err, KEEL_ERR_UNSUPPORTED, "%s: graph %s '%s' has rank %zu; the maximum is %d", src(c),
                              role, name, tt->shape->n_dim, KEEL_MAX_RANK);
    info->rank = (uint32_t)tt->shape->n_dim;
    for (size_t k = 0; k < tt->shape->n_dim; k++) {
        const Onnx__TensorShapeProto__Dimension *d = tt->shape->dim[k];
        info->dims[k] = -1;
        info->dim_params[k] = NULL;
        if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) {
            if (d->dim_value < 0 || (uint64_t)d->dim_value > KEEL_MAX_ELEMENTS)
                return keel_error_set(c->err, KEEL_ERR_INVALID_MODEL,
                                      "%s: graph %s '%s' declares dimension %lld at axis %zu", src(c), role, name,
                                      (long long)d->dim_value, k);
            info->dims[k] = d->dim_value;
        } else if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM && d->dim_param &&
                   d->dim_param[0]) {
            char *p = keel_strdup(d->dim_param);
            if (p == NULL) return keel_error_set(c->err, KEEL_ERR_OUT_OF_MEMORY, "out of memory");
            keel_onnx_model *m = c->m;
            m->dim_param_storage[m->n_dim_param_storage++] = p;
            info->dim_params[k] = p;
        }
    }
    *has_shape = true;
    return KEEL_OK;
}

/* ---- model free ------------------------------------------------------------------ */

static const kv_value *const_float(const keel_onnx_model *m, int v) {
    if (v < 0) return NULL;
    const kv_value *val = &m->values[v];
    return val->kind == KV_CONST && val->dtype == KEEL_DTYPE_FLOAT32 && val->fdata != NULL ? val : NULL;
}

/* Give every Gemm (A not transposed, B constant, C absent or a constant scalar
 * or row) and every MatMul by a constant 2-D B a packed copy of its weights.
 * Layers outside the kernels' range keep cblas_sgemm. Only running out of
 * memory is an error. */
static keel_status pack_dense_layers(keel_onnx_model *m, keel_error *err) {
    /* Packed copies may not outgrow the constants they copy: one initializer
     * shared by a thousand Gemm nodes must not become a thousand copies. The
     * budget is twice the model's float constants (padding to 64 columns can
     * double a narrow layer) plus 4 MB; layers beyond it keep cblas_sgemm. */
    size_t budget = (size_t)1 << 20;
    for (size_t v = 0; v < m->n_values; v++)
        if (m->values[v].kind == KV_CONST && m->values[v].dtype == KEEL_DTYPE_FLOAT32)
            budget += 2 * m->values[v].count; /* count <= KEEL_MAX_ELEMENTS: no overflow in 64 bits */
    for (size_t i = 0; i < m->n_nodes; i++) {
        kn_node *nd = &m->nodes[i];
        if ((nd->op != OP_GEMM && nd->op != OP_MATMUL) || nd->n_in < 2) continue;
        const kv_value *b = const_float(m, nd->in[1]);
        if (b == NULL || b->rank != 2) continue;
        bool gemm = nd->op == OP_GEMM;
        if (gemm && nd->a.trans_a) continue;
        int trans_b = gemm && nd->a.trans_b;
        size_t k = (size_t)(trans_b ? b->dims[1] : b->dims[0]);
        size_t n = (size_t)(trans_b ? b->dims[0] : b->dims[1]);
        if (k == 0 || n == 0 || k > KEEL_DENSE_MAX_DIM || n > KEEL_DENSE_MAX_DIM) continue;
        size_t cost = keel_dense_footprint(k, n);
        if (cost > budget) continue;
        const float *c = NULL;
        size_t c_count = 0;
        if (gemm && nd->n_in > 2 && nd->in[2] >= 0 && nd->a.beta != 0.0f) {
            const kv_value *cv = const_float(m, nd->in[2]);
            if (cv == NULL) continue;
            bool scalar = cv->count == 1 && cv->rank <= 2;
            bool row = (cv->rank == 1 && (size_t)cv->dims[0] == n) ||
                       (cv->rank == 2 && cv->dims[0] == 1 && (size_t)cv->dims[1] == n);
            if (!scalar && !row) continue;
            c = cv->fdata;
            c_count = cv->count;
        }
        keel_status st = keel_dense_create(k, n, b->fdata, trans_b, gemm ? nd->a.alpha : 1.0f, c, c_count,
                                           gemm ? nd->a.beta : 0.0f, gemm && nd->a.fused_relu, &nd->dense, NULL);
        if (st == KEEL_ERR_OUT_OF_MEMORY)
            return keel_error_set(err, st, "out of memory packing the weights of node '%s' (%s)", nd->name, nd->op_type);
        if (st == KEEL_OK) budget -= cost;
    }
    return KEEL_OK;
}

void keel_onnx_model_free(keel_onnx_model *m) {
    if (m == NULL) return;
    for (size_t i = 0; i < m->n_values; i++) {
        free(m->values[i].name);
        keel_aligned_free(m->values[i].fdata);
        keel_aligned_free(m->values[i].idata);
    }
    free(m->values);
    for (size_t i = 0; i < m->n_nodes; i++) {
        free(m->nodes[i].name);
        free(m->nodes[i].op_type);
        free(m->nodes[i].in);
        free(m->nodes[i].out);
        keel_dense_free(m->nodes[i].dense);
    }
    free(m->nodes);
    free(m->exec);
    free(m->inputs);
    free(m->outputs);
    free(m->input_info);
    free(m->output_info);
    for (size_t i = 0; i < m->n_dim_param_storage; i++) free(m->dim_param_storage[i]);
    free(m->dim_param_storage);
    for (size_t i = 0; i < m->n_meta; i++) {
        free(m->meta[i].key);
        free(m->meta[i].value);
    }
    free(m->meta);
    for (size_t i = 0; i < m->n_props; i++) {
        free(m->props[i].key);
        free(m->props[i].value);
    }
    free(m->producer);
    free(m->graph_name);
    free(m);
}

/* ---- the loader ------------------------------------------------------------------- */

#define OOM() keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory", src(&c))

static keel_status check_graph(load_ctx *cp, const Onnx__GraphProto *g, name_map *map);

keel_status keel_onnx_model_load(const void *bytes, size_t len, const char *source, keel_onnx_model **out,
                                 keel_error *err) {
    *out = NULL;
    load_ctx c = {source, NULL, err, 0};
    if (len == 0) return keel_error_set(err, KEEL_ERR_PARSE, "%s: file is empty", src(&c));
    Onnx__ModelProto *mp = onnx__model_proto__unpack(NULL, len, bytes);
    if (mp == NULL) {
        wire_diag d;
        memset(&d, 0, sizeof d);
        strcpy(d.path, "model");
        if (diagnose_wire(&onnx__model_proto__descriptor, bytes, len, 0, 0, &d))
            return keel_error_set(err, KEEL_ERR_PARSE, "%s: not a valid ONNX protobuf: %s at byte offset %zu (in %s)",
                                  src(&c), d.what, d.offset, d.path);
        return keel_error_set(err, KEEL_ERR_PARSE,
                              "%s: not a valid ONNX protobuf (%zu bytes could not be decoded)", src(&c), len);
    }
    keel_status st = KEEL_OK;
    keel_onnx_model *m = calloc(1, sizeof *m);
    name_map map = {NULL, 0, NULL};
    if (m == NULL) {
        onnx__model_proto__free_unpacked(mp, NULL);
        return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    c.m = m;

    /* Model header: IR version and the default-domain opset. */
    m->ir_version = mp->has_ir_version ? mp->ir_version : 0;
    if (m->ir_version < 3) {
        st = keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: ir_version %lld is missing or too old (Keel needs >= 3)",
                            src(&c), (long long)m->ir_version);
        goto fail;
    }
    int64_t opset = -1;
    for (size_t i = 0; i < mp->n_opset_import; i++) {
        const char *dom = mp->opset_import[i]->domain ? mp->opset_import[i]->domain : "";
        if (dom[0] == '\0' || strcmp(dom, "ai.onnx") == 0) opset = mp->opset_import[i]->version;
    }
    if (opset < 0) {
        st = keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: no opset_import for the default ONNX domain", src(&c));
        goto fail;
    }
    if (opset < MIN_OPSET || opset > MAX_OPSET) {
        st = keel_error_set(err, KEEL_ERR_UNSUPPORTED, "%s: opset %lld is outside the supported range %d..%d",
                            src(&c), (long long)opset, MIN_OPSET, MAX_OPSET);
        goto fail;
    }
    m->opset = opset;
    c.opset = opset;
    if (mp->graph == NULL) {
        st = keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: the model has no graph", src(&c));
        goto fail;
    }
    m->producer = keel_strdup(mp->producer_name);
    m->graph_name = keel_strdup(mp->graph->name);
    if (!m->producer || !m->graph_name) { st = OOM(); goto fail; }
    {
        char num[2][32];
        snprintf(num[0], sizeof num[0], "%lld", (long long)m->ir_version);
        snprintf(num[1], sizeof num[1], "%lld", (long long)m->opset);
        const char *keys[5] = {"producer", "producer_version", "ir_version", "opset", "graph"};
        const char *vals[5] = {mp->producer_name, mp->producer_version, num[0], num[1], mp->graph->name};
        for (int i = 0; i < 5; i++) {
            m->props[i].key = keel_strdup(keys[i]);
            m->props[i].value = keel_strdup(vals[i]);
            m->n_props = (size_t)i + 1;
            if (!m->props[i].key || !m->props[i].value) { st = OOM(); goto fail; }
        }
    }

    /* Metadata. */
    if (mp->n_metadata_props) {
        m->meta = calloc(mp->n_metadata_props, sizeof *m->meta);
        if (!m->meta) { st = OOM(); goto fail; }
        for (size_t i = 0; i < mp->n_metadata_props; i++) {
            m->meta[i].key = keel_strdup(mp->metadata_props[i]->key);
            m->meta[i].value = keel_strdup(mp->metadata_props[i]->value);
            m->n_meta = i + 1;
            if (!m->meta[i].key || !m->meta[i].value) { st = OOM(); goto fail; }
        }
    }

    st = check_graph(&c, mp->graph, &map);
    if (st != KEEL_OK) goto fail;

    onnx__model_proto__free_unpacked(mp, NULL);
    free(map.slots);
    *out = m;
    return KEEL_OK;
fail:
    onnx__model_proto__free_unpacked(mp, NULL);
    free(map.slots);
    keel_onnx_model_free(m);
    return st;
}

static keel_status add_value(load_ctx *cp, name_map *map, const char *name, int kind, int producer, int *idx,
                             const char *role) {
    keel_onnx_model *m = cp->m;
    keel_error *err = cp->err;
    if (name == NULL || name[0] == '\0')
        return keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: %s has an empty name", src(cp), role);
    int prev = map_find(map, name);
    if (prev >= 0)
        return keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: tensor name '%s' (%s) is defined twice", src(cp),
                              name, role);
    kv_value *v = &m->values[m->n_values];
    memset(v, 0, sizeof *v);
    v->name = keel_strdup(name);
    if (v->name == NULL) return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    v->kind = kind;
    v->dtype = KEEL_DTYPE_FLOAT32;
    v->producer = producer;
    *idx = (int)m->n_values;
    map_insert(map, v->name, *idx);
    m->n_values++;
    return KEEL_OK;
}

/* Which inputs of an op are shape/axes parameters (int64 constants). */
static bool is_shape_slot(keel_op op, uint32_t slot, int64_t opset) {
    if (slot != 1) return false;
    return op == OP_RESHAPE || (op == OP_REDUCESUM && opset >= 13) || (op == OP_REDUCEMEAN && opset >= 18);
}

static keel_status check_graph(load_ctx *cp, const Onnx__GraphProto *g, name_map *map) {
    keel_onnx_model *m = cp->m;
    keel_error *err = cp->err;
    load_ctx c = *cp;
    keel_status st = KEEL_OK;
    char label[320];

    /* Upper bound on values: initializers + inputs + node outputs. */
    size_t n_values_max = g->n_initializer + g->n_input;
    for (size_t i = 0; i < g->n_node; i++)
        if (!keel_add_size(n_values_max, g->node[i]->n_output, &n_values_max)) return OOM();
    size_t n_dims_total = 0;
    if (!keel_mul_size(g->n_input + g->n_output, KEEL_MAX_RANK, &n_dims_total)) return OOM();
    m->values = calloc(n_values_max ? n_values_max : 1, sizeof *m->values);
    m->nodes = calloc(g->n_node ? g->n_node : 1, sizeof *m->nodes);
    m->dim_param_storage = calloc(n_dims_total ? n_dims_total : 1, sizeof(char *));
    if (!m->values || !m->nodes || !m->dim_param_storage) return OOM();
    if (!map_init(map, n_values_max, m->values)) return OOM();

    /* Initializers: constants. */
    for (size_t i = 0; i < g->n_initializer; i++) {
        const Onnx__TensorProto *t = g->initializer[i];
        int idx;
        char role[64];
        snprintf(role, sizeof role, "initializer #%zu", i);
        if ((st = add_value(&c, map, t->name, KV_CONST, -1, &idx, role))) return st;
        char what[300];
        snprintf(what, sizeof what, "initializer '%s'", t->name);
        if ((st = tensor_to_value(&c, t, what, &m->values[idx]))) return st;
        if (m->values[idx].dtype == KEEL_DTYPE_FLOAT32) m->parameter_count += m->values[idx].count;
    }

    /* Graph inputs that are not initializers are the model's inputs. */
    m->inputs = calloc(g->n_input ? g->n_input : 1, sizeof *m->inputs);
    m->input_info = calloc(g->n_input ? g->n_input : 1, sizeof *m->input_info);
    if (!m->inputs || !m->input_info) return OOM();
    for (size_t i = 0; i < g->n_input; i++) {
        const Onnx__ValueInfoProto *vi = g->input[i];
        const char *name = vi->name ? vi->name : "";
        int existing = name[0] ? map_find(map, name) : -1;
        if (existing >= 0 && m->values[existing].kind == KV_CONST) continue; /* initializer default */
        keel_tensor_info info;
        memset(&info, 0, sizeof info);
        bool has_shape;
        if ((st = value_info(&c, vi, "input", true, &info, &has_shape))) return st;
        int idx;
        char role[64];
        snprintf(role, sizeof role, "graph input #%zu", i);
        if ((st = add_value(&c, map, name, KV_INPUT, -1, &idx, role))) return st;
        kv_value *v = &m->values[idx];
        v->rank = info.rank;
        for (uint32_t k = 0; k < info.rank; k++) v->dims[k] = info.dims[k];
        info.name = v->name;
        m->input_info[m->n_inputs] = info;
        m->inputs[m->n_inputs++] = idx;
    }

    /* Nodes: op lookup, outputs, constants. */
    m->n_nodes = g->n_node;
    for (size_t i = 0; i < g->n_node; i++) {
        const Onnx__NodeProto *np = g->node[i];
        kn_node *n = &m->nodes[i];
        n->name = keel_strdup(np->name);
        n->op_type = keel_strdup(np->op_type);
        if (!n->name || !n->op_type) return OOM();
        node_label(m, i, label, sizeof label);
        const char *dom = np->domain ? np->domain : "";
        const op_def *od = NULL;
        if (dom[0] == '\0' || strcmp(dom, "ai.onnx") == 0) od = find_op(n->op_type);
        if (od == NULL) {
            if (dom[0] && strcmp(dom, "ai.onnx") != 0)
                return keel_error_set(err, KEEL_ERR_UNSUPPORTED, "%s: %s: operator '%s' of domain '%s' is not supported",
                                      src(&c), label, n->op_type, dom);
            return keel_error_set(err, KEEL_ERR_UNSUPPORTED,
                                  "%s: %s: operator '%s' is not supported by Keel (supported: Gemm, MatMul, Add, Sub, "
                                  "Mul, Div, Relu, LeakyRelu, Tanh, Sigmoid, Softmax, LogSoftmax, Exp, Log, Sqrt, "
                                  "Clip, Concat, Reshape, Flatten, Transpose, Identity, Constant, ReduceSum, "
                                  "ReduceMean, LayerNormalization)",
                                  src(&c), label, n->op_type);
        }
        if (od->op == OP_LAYERNORM && c.opset < 17)
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: %s needs opset 17 or later (model has %lld)",
                                  src(&c), label, (long long)c.opset);
        n->op = od->op;
        /* Trailing empty input names are absent optional inputs. */
        size_t n_in = np->n_input;
        while (n_in > 0 && (np->input[n_in - 1] == NULL || np->input[n_in - 1][0] == '\0')) n_in--;
        size_t n_out = np->n_output;
        while (n_out > 0 && (np->output[n_out - 1] == NULL || np->output[n_out - 1][0] == '\0')) n_out--;
        if (n_in < od->min_in || n_in > od->max_in)
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: %s has %zu inputs; %s takes %u to %u", src(&c),
                                  label, n_in, od->name, od->min_in, od->max_in);
        if (n_out < od->min_out || n_out > od->max_out)
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: %s has %zu outputs; %s produces %u to %u",
                                  src(&c), label, n_out, od->name, od->min_out, od->max_out);
        n->n_in = (uint32_t)n_in;
        n->n_out = (uint32_t)n_out;
        n->in = calloc(n_in ? n_in : 1, sizeof(int));
        n->out = calloc(n_out ? n_out : 1, sizeof(int));
        if (!n->in || !n->out) return OOM();
        for (size_t k = 0; k < n_out; k++) {
            const char *oname = np->output[k];
            if (oname == NULL || oname[0] == '\0') {
                n->out[k] = -1;
                continue;
            }
            int idx;
            if ((st = add_value(&c, map, oname, od->op == OP_CONSTANT ? KV_CONST : KV_NODE, (int)i, &idx, label)))
                return st;
            n->out[k] = idx;
        }
        if (n->out[0] < 0)
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: %s has no name for its first output", src(&c), label);
        if ((st = parse_attrs(&c, i, np))) return st;
        if (od->op == OP_CONSTANT) {
            kv_value *v = &m->values[n->out[0]];
            if ((st = constant_value(&c, i, np, v))) return st;
            v->producer = (int)i;
            if (v->dtype == KEEL_DTYPE_FLOAT32) m->parameter_count += v->count;
        }
    }

    /* Resolve node inputs; check dtypes per input slot. */
    for (size_t i = 0; i < g->n_node; i++) {
        const Onnx__NodeProto *np = g->node[i];
        kn_node *n = &m->nodes[i];
        node_label(m, i, label, sizeof label);
        for (uint32_t k = 0; k < n->n_in; k++) {
            const char *iname = np->input[k];
            if (iname == NULL || iname[0] == '\0') {
                n->in[k] = -1;
                bool optional = (n->op == OP_CLIP && k >= 1) || (n->op == OP_GEMM && k == 2) ||
                                (n->op == OP_LAYERNORM && k == 2);
                if (!optional)
                    return keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: %s input %u is required but empty",
                                          src(&c), label, k);
                continue;
            }
            int idx = map_find(map, iname);
            if (idx < 0)
                return keel_error_set(err, KEEL_ERR_INVALID_MODEL,
                                      "%s: %s input %u '%s' is not produced by any node, initializer or graph input",
                                      src(&c), label, k, iname);
            n->in[k] = idx;
            const kv_value *v = &m->values[idx];
            bool shape_slot = is_shape_slot(n->op, k, c.opset);
            if (shape_slot && !(v->kind == KV_CONST && v->dtype == KEEL_DTYPE_INT64))
                return keel_error_set(err, KEEL_ERR_UNSUPPORTED,
                                      "%s: %s input %u '%s' must be a constant int64 tensor (computed shapes are not "
                                      "supported)", src(&c), label, k, iname);
            if (!shape_slot && v->dtype != KEEL_DTYPE_FLOAT32)
                return keel_error_set(err, KEEL_ERR_UNSUPPORTED,
                                      "%s: %s input %u '%s' is %s; Keel computes in float32 only", src(&c), label, k,
                                      iname, dtype_name(v->dtype));
        }
        if (n->n_in > 1 && ((n->op == OP_REDUCESUM && c.opset < 13) || (n->op == OP_REDUCEMEAN && c.opset < 18)))
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL,
                                  "%s: %s takes axes as an attribute before opset %d (model has opset %lld)", src(&c),
                                  label, n->op == OP_REDUCESUM ? 13 : 18, (long long)c.opset);
        if (n->op == OP_CLIP && c.opset < 11 && n->n_in > 1)
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: %s takes min/max as attributes before opset 11",
                                  src(&c), label);
    }

    /* Topological order (Kahn); anything left over sits on a cycle. */
    {
        size_t nn = m->n_nodes;
        int *indeg = calloc(nn ? nn : 1, sizeof(int));
        int *order = calloc(nn ? nn : 1, sizeof(int));
        /* consumers adjacency as CSR */
        size_t edges = 0;
        for (size_t i = 0; i < nn; i++) edges += m->nodes[i].n_in;
        int *cstart = calloc(nn + 1, sizeof(int));
        int *clist = calloc(edges ? edges : 1, sizeof(int));
        kn_node *sorted = calloc(nn ? nn : 1, sizeof *sorted);
        int *remap = calloc(nn ? nn : 1, sizeof(int));
        if (!indeg || !order || !cstart || !clist || !sorted || !remap) {
            free(indeg); free(order); free(cstart); free(clist); free(sorted); free(remap);
            return OOM();
        }
        for (size_t i = 0; i < nn; i++)
            for (uint32_t k = 0; k < m->nodes[i].n_in; k++) {
                int v = m->nodes[i].in[k];
                if (v >= 0 && m->values[v].kind == KV_NODE) {
                    indeg[i]++;
                    cstart[m->values[v].producer + 1]++;
                }
            }
        for (size_t i = 0; i < nn; i++) cstart[i + 1] += cstart[i];
        int *fill = calloc(nn ? nn : 1, sizeof(int));
        if (!fill) {
            free(indeg); free(order); free(cstart); free(clist); free(sorted); free(remap);
            return OOM();
        }
        for (size_t i = 0; i < nn; i++)
            for (uint32_t k = 0; k < m->nodes[i].n_in; k++) {
                int v = m->nodes[i].in[k];
                if (v >= 0 && m->values[v].kind == KV_NODE) {
                    int p = m->values[v].producer;
                    clist[cstart[p] + fill[p]++] = (int)i;
                }
            }
        free(fill);
        size_t head = 0, tail = 0;
        for (size_t i = 0; i < nn; i++)
            if (indeg[i] == 0) order[tail++] = (int)i;
        while (head < tail) {
            int u = order[head++];
            for (int e = cstart[u]; e < cstart[u + 1]; e++)
                if (--indeg[clist[e]] == 0) order[tail++] = clist[e];
        }
        if (tail != nn) {
            size_t culprit = 0;
            for (size_t i = 0; i < nn; i++)
                if (indeg[i] > 0) { culprit = i; break; }
            node_label(m, culprit, label, sizeof label);
            free(indeg); free(order); free(cstart); free(clist); free(sorted); free(remap);
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: the graph has a cycle through %s", src(&c), label);
        }
        for (size_t i = 0; i < nn; i++) {
            sorted[i] = m->nodes[order[i]];
            remap[order[i]] = (int)i;
        }
        free(m->nodes);
        m->nodes = sorted;
        for (size_t v = 0; v < m->n_values; v++)
            if (m->values[v].producer >= 0) m->values[v].producer = remap[m->values[v].producer];
        free(indeg); free(order); free(cstart); free(clist); free(remap);
    }

    /* Fuse Relu into a Gemm that feeds only it: the Gemm's epilogue applies it
     * and the Relu node becomes an alias of the Gemm's output. */
    {
        int *uses = calloc(m->n_values ? m->n_values : 1, sizeof(int));
        if (!uses) return OOM();
        for (size_t i = 0; i < m->n_nodes; i++)
            for (uint32_t k = 0; k < m->nodes[i].n_in; k++)
                if (m->nodes[i].in[k] >= 0) uses[m->nodes[i].in[k]]++;
        for (size_t o = 0; o < g->n_output; o++) {
            const char *name = g->output[o]->name ? g->output[o]->name : "";
            int idx = name[0] ? map_find(map, name) : -1;
            if (idx >= 0) uses[idx] += 1000; /* a graph output must keep its pre-Relu value */
        }
        for (size_t i = 0; i < m->n_nodes; i++) {
            kn_node *relu = &m->nodes[i];
            if (relu->op != OP_RELU || relu->in[0] < 0) continue;
            int v = relu->in[0];
            int p = m->values[v].producer;
            if (m->values[v].kind != KV_NODE || p < 0 || uses[v] != 1) continue;
            kn_node *gemm = &m->nodes[p];
            if (gemm->op != OP_GEMM || gemm->a.fused_relu) continue;
            gemm->a.fused_relu = 1;
            relu->a.relu_fused_away = 1;
        }
        free(uses);
    }

    /* Pack the constant weights of Gemm and MatMul layers for the dense kernels,
     * and say which kernels run the products (the "kernels" property). */
    {
        const char *off = keel_dense_off_reason();
        if (off == NULL) {
            keel_status st = pack_dense_layers(m, err);
            if (st != KEEL_OK) return st;
        }
        size_t products = 0, packed = 0;
        for (size_t i = 0; i < m->n_nodes; i++) {
            if (m->nodes[i].op != OP_GEMM && m->nodes[i].op != OP_MATMUL) continue;
            products++;
            packed += m->nodes[i].dense != NULL;
        }
        char value[160];
        if (off == NULL)
            snprintf(value, sizeof value, "%s packed weights for %zu of %zu matrix products, cblas_sgemm for the rest",
                     keel_dense_isa_name(), packed, products);
        else
            snprintf(value, sizeof value, "cblas_sgemm for all %zu matrix products (packed kernels off: %s)", products, off);
        kv_meta *prop = &m->props[m->n_props];
        prop->key = keel_strdup("kernels");
        prop->value = keel_strdup(value);
        m->n_props++;
        if (!prop->key || !prop->value) return OOM();
    }

    /* Execution list: every node but Constant. */
    m->exec = calloc(m->n_nodes ? m->n_nodes : 1, sizeof(int));
    if (!m->exec) return OOM();
    for (size_t i = 0; i < m->n_nodes; i++)
        if (m->nodes[i].op != OP_CONSTANT) m->exec[m->n_exec++] = (int)i;

    /* Graph outputs. */
    if (g->n_output == 0)
        return keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: the graph declares no outputs", src(&c));
    m->outputs = calloc(g->n_output, sizeof *m->outputs);
    m->output_info = calloc(g->n_output, sizeof *m->output_info);
    if (!m->outputs || !m->output_info) return OOM();
    bool *declared = calloc(g->n_output, sizeof(bool));
    if (!declared) return OOM();
    for (size_t i = 0; i < g->n_output; i++) {
        const Onnx__ValueInfoProto *vi = g->output[i];
        const char *name = vi->name ? vi->name : "";
        int idx = name[0] ? map_find(map, name) : -1;
        if (idx < 0) {
            free(declared);
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: graph output '%s' is not produced by any node",
                                  src(&c), name);
        }
        if (m->values[idx].dtype != KEEL_DTYPE_FLOAT32) {
            free(declared);
            return keel_error_set(err, KEEL_ERR_UNSUPPORTED, "%s: graph output '%s' is not float32", src(&c), name);
        }
        for (size_t j = 0; j < i; j++)
            if (m->outputs[j] == idx) {
                free(declared);
                return keel_error_set(err, KEEL_ERR_INVALID_MODEL, "%s: graph output '%s' is listed twice", src(&c),
                                      name);
            }
        if ((st = value_info(&c, vi, "output", false, &m->output_info[i], &declared[i]))) {
            free(declared);
            return st;
        }
        m->output_info[i].name = m->values[idx].name;
        m->outputs[i] = idx;
        m->n_outputs++;
    }

    /* Shape check with concrete sizes for the dynamic dimensions. A model must
     * work for at least one of these sizes; the first failure is reported.
     * Outputs that declare no shape get one inferred from two passing sizes:
     * dimensions that differ between them are dynamic. */
    {
        static const int64_t trial[] = {1, 2, 3, 4, 8};
        size_t ntrial = sizeof trial / sizeof trial[0];
        kr_shape *shapes = calloc(m->n_inputs ? m->n_inputs : 1, sizeof *shapes);
        kr_shape *outs[2];
        outs[0] = calloc(m->n_outputs, sizeof(kr_shape));
        outs[1] = calloc(m->n_outputs, sizeof(kr_shape));
        if (!shapes || !outs[0] || !outs[1]) {
            free(shapes); free(outs[0]); free(outs[1]); free(declared);
            return OOM();
        }
        keel_error first;
        memset(&first, 0, sizeof first);
        keel_status first_st = KEEL_OK;
        int passed = 0;
        for (size_t t = 0; t < ntrial && passed < 2; t++) {
            for (size_t i = 0; i < m->n_inputs; i++) {
                const keel_tensor_info *info = &m->input_info[i];
                shapes[i].rank = info->rank;
                shapes[i].count = 1;
                for (uint32_t k = 0; k < info->rank; k++) {
                    shapes[i].d[k] = info->dims[k] >= 0 ? info->dims[k] : trial[t];
                    shapes[i].count *= (size_t)shapes[i].d[k];
                }
            }
            keel_error e;
            keel_status s = keel_onnx_shape_check(m, shapes, outs[passed], &e);
            if (s == KEEL_OK) passed++;
            else if (first_st == KEEL_OK) { first_st = s; first = e; }
            if (s == KEEL_ERR_OUT_OF_MEMORY || s == KEEL_ERR_INTERNAL) break;
        }
        if (passed > 0) {
            for (size_t o = 0; o < m->n_outputs; o++) {
                if (declared[o]) continue;
                keel_tensor_info *info = &m->output_info[o];
                const kr_shape *a = &outs[0][o], *b = &outs[1][o];
                info->rank = a->rank;
                for (uint32_t k = 0; k < a->rank; k++) {
                    info->dims[k] = (passed == 2 && b->rank == a->rank && b->d[k] == a->d[k]) ? a->d[k] : -1;
                    info->dim_params[k] = NULL;
                }
            }
        }
        free(shapes); free(outs[0]); free(outs[1]);
        if (passed == 0) {
            free(declared);
            if (first_st == KEEL_ERR_SHAPE) first_st = KEEL_ERR_INVALID_MODEL;
            return keel_error_set(err, first_st, "%s: %s", src(&c), first.message);
        }
    }
    free(declared);

    /* Keel metadata: keel.features must match the first input's last dim. */
    for (size_t i = 0; i < m->n_meta; i++) {
        if (strcmp(m->meta[i].key, "keel.features") != 0) continue;
        const char *f = m->meta[i].value;
        size_t count = f[0] ? 1 : 0;
        for (const char *p = f; *p; p++) if (*p == ',') count++;
        if (m->n_inputs == 0 || m->input_info[0].rank == 0)
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL,
                                  "%s: keel.features lists %zu features but the model has no input with a feature axis",
                                  src(&c), count);
        const keel_tensor_info *in0 = &m->input_info[0];
        int64_t last = in0->dims[in0->rank - 1];
        if (last >= 0 && (size_t)last != count)
            return keel_error_set(err, KEEL_ERR_INVALID_MODEL,
                                  "%s: keel.features lists %zu features but input '%s' has %lld on its last axis",
                                  src(&c), count, in0->name, (long long)last);
    }
    return KEEL_OK;
}
