/* Executor of the built-in backend: shape inference, memory planning and the
 * operator kernels.
 *
 * A session plans once per distinct set of input shapes: it infers every
 * tensor's shape, precomputes each node's loop bounds and strides, and lays
 * out all intermediate tensors in one arena, reusing memory of tensors that
 * are no longer needed. A run with the same shapes as the previous one skips
 * planning and allocates nothing. Matrix products go through cblas_sgemm,
 * except products by constant weights on AVX-512 or AVX2 CPUs (dense.c). */
#include "internal.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- shape helpers ------------------------------------------------------------- */

typedef struct shape_ctx {
    const keel_onnx_model *m;
    kr_shape *shapes;   /* per value */
    kr_node *rt;        /* per node */
    keel_error *err;
} shape_ctx;

static const char *label_of(const keel_onnx_model *m, int ni, char *buf, size_t cap) {
    const kn_node *n = &m->nodes[ni];
    if (n->name && n->name[0])
        snprintf(buf, cap, "node '%s' (%s)", n->name, n->op_type);
    else
        snprintf(buf, cap, "node #%d (%s)", ni, n->op_type);
    return buf;
}

static void fmt_shape(const kr_shape *s, char *buf, size_t cap) {
    size_t n = 0;
    n += (size_t)snprintf(buf + n, cap - n, "[");
    for (uint32_t i = 0; i < s->rank && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? "," : "", (long long)s->d[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

static keel_status shape_err(shape_ctx *c, int ni, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static keel_status shape_err(shape_ctx *c, int ni, const char *fmt, ...) {
    char label[320], msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return keel_error_set(c->err, KEEL_ERR_SHAPE, "%s: %s", label_of(c->m, ni, label, sizeof label), msg);
}

/* Set shape and count; fails when the element count is too large. */
static bool set_shape(kr_shape *s, uint32_t rank, const int64_t *d) {
    size_t count = 1;
    for (uint32_t i = 0; i < rank; i++) {
        if (d[i] < 0 || (uint64_t)d[i] > KEEL_MAX_ELEMENTS) return false;
        if (!keel_mul_size(count, (size_t)d[i], &count) || count > KEEL_MAX_ELEMENTS) return false;
    }
    s->rank = rank;
    for (uint32_t i = 0; i < rank; i++) s->d[i] = d[i];
    s->count = count;
    return true;
}

static size_t prod(const int64_t *d, uint32_t from, uint32_t to) {
    size_t p = 1;
    for (uint32_t i = from; i < to; i++) p *= (size_t)d[i];
    return p; /* callers pass dims of a shape whose total count fits */
}

static bool norm_axis(int64_t axis, uint32_t rank, bool allow_rank, uint32_t *out) {
    int64_t r = (int64_t)rank;
    int64_t hi = allow_rank ? r : r - 1;
    if (axis < -r || axis > hi) return false;
    *out = (uint32_t)(axis < 0 ? axis + r : axis);
    return true;
}

#define IN_SHAPE(k) (&c->shapes[n->in[(k)]])
#define OUT_SHAPE(k) (&c->shapes[n->out[(k)]])
#define SET_OUT(k, rank, dims) \
    do { if (!set_shape(OUT_SHAPE(k), (rank), (dims))) return shape_err(c, ni, "output %u would hold more than %zu elements", (unsigned)(k), (size_t)KEEL_MAX_ELEMENTS); } while (0)

static keel_status infer_binary(shape_ctx *c, int ni) {
    const kn_node *n = &c->m->nodes[ni];
    kr_node *r = &c->rt[ni];
    const kr_shape *a = IN_SHAPE(0), *b = IN_SHAPE(1);
    uint32_t rank = a->rank > b->rank ? a->rank : b->rank;
    int64_t d[KEEL_MAX_RANK], da[KEEL_MAX_RANK], db[KEEL_MAX_RANK];
    for (uint32_t i = 0; i < rank; i++) {
        int64_t x = i + a->rank >= rank ? a->d[i + a->rank - rank] : 1;
        int64_t y = i + b->rank >= rank ? b->d[i + b->rank - rank] : 1;
        da[i] = x;
        db[i] = y;
        if (x == y || y == 1) d[i] = x;
        else if (x == 1) d[i] = y;
        else {
            char sa[200], sb[200];
            fmt_shape(a, sa, sizeof sa);
            fmt_shape(b, sb, sizeof sb);
            return shape_err(c, ni, "cannot broadcast %s with %s (axis %u: %lld vs %lld)", sa, sb, i,
                             (long long)x, (long long)y);
        }
    }
    SET_OUT(0, rank, d);
    const kr_shape *o = OUT_SHAPE(0);
    bool a_full = a->count == o->count, b_full = b->count == o->count;
    if (a_full && b_full) r->bcast_kind = 0;
    else if (b->count == 1 && a_full) r->bcast_kind = 1;
    else if (a->count == 1 && b_full) r->bcast_kind = 2;
    else {
        /* b repeats a row over the leading axes? */
        uint32_t lead = 0;
        while (lead < rank && db[lead] == 1) lead++;
        bool row = a_full && lead > 0;
        for (uint32_t i = lead; i < rank && row; i++) row = db[i] == d[i];
        if (row && b->count > 0) {
            r->bcast_kind = 3;
            r->row = b->count;
        } else {
            r->bcast_kind = 4;
            int64_t s1 = 1, s2 = 1;
            for (int i = (int)rank - 1; i >= 0; i--) {
                r->sa[i] = da[i] == 1 ? 0 : s1;
                r->sb[i] = db[i] == 1 ? 0 : s2;
                s1 *= da[i];
                s2 *= db[i];
            }
        }
    }
    return KEEL_OK;
}

static keel_status infer_matmul(shape_ctx *c, int ni) {
    const kn_node *n = &c->m->nodes[ni];
    kr_node *r = &c->rt[ni];
    const kr_shape *a = IN_SHAPE(0), *b = IN_SHAPE(1);
    if (a->rank == 0 || b->rank == 0) return shape_err(c, ni, "MatMul operands must have rank >= 1");
    int64_t M = a->rank >= 2 ? a->d[a->rank - 2] : 1;
    int64_t K = a->d[a->rank - 1];
    int64_t K2 = b->rank >= 2 ? b->d[b->rank - 2] : b->d[0];
    int64_t N = b->rank >= 2 ? b->d[b->rank - 1] : 1;
    if (K != K2) {
        char sa[200], sb[200];
        fmt_shape(a, sa, sizeof sa);
        fmt_shape(b, sb, sizeof sb);
        return shape_err(c, ni, "inner dimensions differ: %s x %s", sa, sb);
    }
    uint32_t ra = a->rank >= 2 ? a->rank - 2 : 0, rb = b->rank >= 2 ? b->rank - 2 : 0;
    uint32_t br = ra > rb ? ra : rb;
    int64_t d[KEEL_MAX_RANK + 2];
    size_t batch = 1;
    int64_t sa = 1, sb = 1;
    /* batch strides in units of whole matrices */
    for (int i = (int)br - 1; i >= 0; i--) {
        int64_t x = (uint32_t)i + ra >= br ? a->d[i + ra - br] : 1;
        int64_t y = (uint32_t)i + rb >= br ? b->d[i + rb - br] : 1;
        if (x != y && x != 1 && y != 1) return shape_err(c, ni, "batch dimensions %lld and %lld do not broadcast", (long long)x, (long long)y);
        d[i] = x == 1 ? y : x;
        r->batch_d[i] = d[i];
        r->batch_sa[i] = x == 1 ? 0 : sa;
        r->batch_sb[i] = y == 1 ? 0 : sb;
        sa *= x;
        sb *= y;
        batch *= (size_t)d[i];
    }
    uint32_t rank = br;
    if (a->rank >= 2) d[rank++] = M;
    if (b->rank >= 2) d[rank++] = N;
    if (rank > KEEL_MAX_RANK) return shape_err(c, ni, "result rank %u exceeds %d", rank, KEEL_MAX_RANK);
    SET_OUT(0, rank, d);
    r->m = (size_t)M;
    r->n = (size_t)N;
    r->k = (size_t)K;
    r->batch = batch;
    r->batch_rank = br;
    r->a_bs = (size_t)(M * K);
    r->b_bs = (size_t)(K * N);
    /* Fold A's batch into M when B is shared by every batch and A is dense. */
    r->fold_batch = rb == 0 && (size_t)sa == batch;
    return KEEL_OK;
}

static keel_status infer_gemm(shape_ctx *c, int ni) {
    const kn_node *n = &c->m->nodes[ni];
    kr_node *r = &c->rt[ni];
    const kr_shape *a = IN_SHAPE(0), *b = IN_SHAPE(1);
    if (a->rank != 2 || b->rank != 2) return shape_err(c, ni, "Gemm needs 2-D A and B, got ranks %u and %u", a->rank, b->rank);
    int64_t M = n->a.trans_a ? a->d[1] : a->d[0];
    int64_t K = n->a.trans_a ? a->d[0] : a->d[1];
    int64_t K2 = n->a.trans_b ? b->d[1] : b->d[0];
    int64_t N = n->a.trans_b ? b->d[0] : b->d[1];
    if (K != K2) {
        char sa[200], sb[200];
        fmt_shape(a, sa, sizeof sa);
        fmt_shape(b, sb, sizeof sb);
        return shape_err(c, ni, "A %s%s and B %s%s have different inner dimensions (%lld vs %lld)", sa,
                         n->a.trans_a ? "ᵀ" : "", sb, n->a.trans_b ? "ᵀ" : "", (long long)K, (long long)K2);
    }
    int64_t d[2] = {M, N};
    SET_OUT(0, 2, d);
    r->m = (size_t)M;
    r->n = (size_t)N;
    r->k = (size_t)K;
    r->gemm_c_kind = 0;
    if (n->n_in > 2 && n->in[2] >= 0) {
        const kr_shape *cs = IN_SHAPE(2);
        if (cs->count == 1 && cs->rank <= 2) r->gemm_c_kind = 1;
        else if ((cs->rank == 1 && cs->d[0] == N) || (cs->rank == 2 && cs->d[0] == 1 && cs->d[1] == N)) r->gemm_c_kind = 2;
        else if (cs->rank == 2 && cs->d[0] == M && cs->d[1] == 1) r->gemm_c_kind = 3;
        else if (cs->rank == 2 && cs->d[0] == M && cs->d[1] == N) r->gemm_c_kind = 4;
        else {
            char s[200];
            fmt_shape(cs, s, sizeof s);
            return shape_err(c, ni, "C %s does not broadcast to [%lld,%lld]", s, (long long)M, (long long)N);
        }
    }
    return KEEL_OK;
}

static keel_status infer_reduce(shape_ctx *c, int ni) {
    const kn_node *n = &c->m->nodes[ni];
    kr_node *r = &c->rt[ni];
    const kr_shape *x = IN_SHAPE(0);
    int64_t axes[KEEL_MAX_RANK];
    uint32_t n_axes = 0;
    if (n->a.has_axes) {
        n_axes = n->a.n_axes;
        memcpy(axes, n->a.axes, n_axes * sizeof(int64_t));
    } else if (n->n_in > 1 && n->in[1] >= 0) {
        const kv_value *av = &c->m->values[n->in[1]];
        if (av->count > KEEL_MAX_RANK) return shape_err(c, ni, "axes has %zu entries", av->count);
        n_axes = (uint32_t)av->count;
        if (n_axes) memcpy(axes, av->idata, n_axes * sizeof(int64_t));
    }
    bool reduce[KEEL_MAX_RANK] = {false};
    r->reduce_copy = 0;
    if (n_axes == 0) {
        if (n->a.noop_with_empty_axes) {
            r->reduce_copy = 1;
            SET_OUT(0, x->rank, x->d);
            return KEEL_OK;
        }
        for (uint32_t i = 0; i < x->rank; i++) reduce[i] = true;
    }
    for (uint32_t i = 0; i < n_axes; i++) {
        uint32_t ax;
        if (!norm_axis(axes[i], x->rank, false, &ax)) return shape_err(c, ni, "axis %lld is out of range for rank %u", (long long)axes[i], x->rank);
        if (reduce[ax]) return shape_err(c, ni, "axis %u is listed twice", ax);
        reduce[ax] = true;
    }
    int64_t d[KEEL_MAX_RANK];
    uint32_t rank = 0;
    size_t rc = 1;
    for (uint32_t i = 0; i < x->rank; i++) {
        if (reduce[i]) {
            rc *= (size_t)x->d[i];
            if (n->a.keepdims) d[rank++] = 1;
        } else {
            d[rank++] = x->d[i];
        }
    }
    SET_OUT(0, rank, d);
    r->reduce_count = rc;
    /* output stride for each input axis (0 on reduced axes) */
    int64_t s = 1;
    for (int i = (int)x->rank - 1; i >= 0; i--) {
        if (reduce[i]) r->st[i] = 0;
        else {
            r->st[i] = s;
            s *= x->d[i];
        }
    }
    return KEEL_OK;
}

static keel_status infer_reshape(shape_ctx *c, int ni) {
    const kn_node *n = &c->m->nodes[ni];
    const kr_shape *x = IN_SHAPE(0);
    const kv_value *sv = &c->m->values[n->in[1]];
    if (sv->rank != 1) return shape_err(c, ni, "shape tensor must be 1-D, has rank %u", sv->rank);
    if (sv->count > KEEL_MAX_RANK) return shape_err(c, ni, "target rank %zu exceeds %d", sv->count, KEEL_MAX_RANK);
    int64_t d[KEEL_MAX_RANK];
    int infer = -1;
    size_t known = 1;
    bool has_zero = false;
    for (uint32_t i = 0; i < sv->count; i++) {
        int64_t v = sv->idata[i];
        if (v == -1) {
            if (infer >= 0) return shape_err(c, ni, "shape has more than one -1");
            infer = (int)i;
            d[i] = 1;
            continue;
        }
        if (v < -1) return shape_err(c, ni, "shape entry %lld is invalid", (long long)v);
        if (v == 0 && !n->a.allowzero) {
            if (i >= x->rank) return shape_err(c, ni, "shape entry %u is 0 (copy) but the input has rank %u", i, x->rank);
            v = x->d[i];
        }
        if (v == 0) has_zero = true;
        d[i] = v;
        if ((uint64_t)v > KEEL_MAX_ELEMENTS || !keel_mul_size(known, (size_t)v, &known) || known > KEEL_MAX_ELEMENTS)
            return shape_err(c, ni, "target shape is too large");
    }
    if (infer >= 0) {
        if (has_zero || known == 0) return shape_err(c, ni, "cannot infer -1 next to a zero dimension");
        if (x->count % known != 0) return shape_err(c, ni, "cannot reshape %zu elements with known size %zu", x->count, known);
        d[infer] = (int64_t)(x->count / known);
        known = x->count;
    }
    if (known != x->count) {
        char s[200];
        fmt_shape(x, s, sizeof s);
        return shape_err(c, ni, "cannot reshape %s (%zu elements) to %zu elements", s, x->count, known);
    }
    SET_OUT(0, (uint32_t)sv->count, d);
    return KEEL_OK;
}

static keel_status infer_node(shape_ctx *c, int ni) {
    const kn_node *n = &c->m->nodes[ni];
    kr_node *r = &c->rt[ni];
    const kr_shape *x = IN_SHAPE(0);
    uint32_t ax;
    switch (n->op) {
    case OP_ADD: case OP_SUB: case OP_MUL: case OP_DIV:
        return infer_binary(c, ni);
    case OP_MATMUL:
        return infer_matmul(c, ni);
    case OP_GEMM:
        return infer_gemm(c, ni);
    case OP_RELU: case OP_LEAKYRELU: case OP_TANH: case OP_SIGMOID: case OP_EXP: case OP_LOG: case OP_SQRT:
    case OP_IDENTITY:
        SET_OUT(0, x->rank, x->d);
        return KEEL_OK;
    case OP_CLIP:
        for (uint32_t k = 1; k < n->n_in; k++)
            if (n->in[k] >= 0 && c->shapes[n->in[k]].count != 1)
                return shape_err(c, ni, "Clip %s must be a single value", k == 1 ? "min" : "max");
        SET_OUT(0, x->rank, x->d);
        return KEEL_OK;
    case OP_SOFTMAX: case OP_LOGSOFTMAX:
        if (x->rank == 0) return shape_err(c, ni, "input must have rank >= 1");
        if (!norm_axis(n->a.axis, x->rank, false, &ax)) return shape_err(c, ni, "axis %lld is out of range for rank %u", (long long)n->a.axis, x->rank);
        r->outer = prod(x->d, 0, ax);
        if (n->a.legacy_softmax) {
            r->mid = prod(x->d, ax, x->rank);
            r->inner = 1;
        } else {
            r->mid = (size_t)x->d[ax];
            r->inner = prod(x->d, ax + 1, x->rank);
        }
        SET_OUT(0, x->rank, x->d);
        return KEEL_OK;
    case OP_CONCAT: {
        if (x->rank == 0) return shape_err(c, ni, "cannot concatenate scalars");
        if (!norm_axis(n->a.axis, x->rank, false, &ax)) return shape_err(c, ni, "axis %lld is out of range for rank %u", (long long)n->a.axis, x->rank);
        int64_t d[KEEL_MAX_RANK];
        memcpy(d, x->d, sizeof d);
        int64_t total = 0;
        for (uint32_t k = 0; k < n->n_in; k++) {
            const kr_shape *s = IN_SHAPE(k);
            if (s->rank != x->rank) return shape_err(c, ni, "input %u has rank %u, input 0 has %u", k, s->rank, x->rank);
            for (uint32_t i = 0; i < x->rank; i++)
                if (i != ax && s->d[i] != x->d[i]) return shape_err(c, ni, "input %u differs on axis %u (%lld vs %lld)", k, i, (long long)s->d[i], (long long)x->d[i]);
            total += s->d[ax];
            if (total > (int64_t)KEEL_MAX_ELEMENTS) return shape_err(c, ni, "result is too large");
        }
        d[ax] = total;
        SET_OUT(0, x->rank, d);
        r->outer = prod(x->d, 0, ax);
        r->inner = prod(x->d, ax + 1, x->rank);
        return KEEL_OK;
    }
    case OP_RESHAPE:
        return infer_reshape(c, ni);
    case OP_FLATTEN: {
        if (!norm_axis(n->a.axis, x->rank, true, &ax)) return shape_err(c, ni, "axis %lld is out of range for rank %u", (long long)n->a.axis, x->rank);
        int64_t d[2] = {(int64_t)prod(x->d, 0, ax), (int64_t)prod(x->d, ax, x->rank)};
        SET_OUT(0, 2, d);
        return KEEL_OK;
    }
    case OP_TRANSPOSE: {
        int64_t perm[KEEL_MAX_RANK];
        if (n->a.n_perm == 0) {
            for (uint32_t i = 0; i < x->rank; i++) perm[i] = x->rank - 1 - i;
        } else {
            if (n->a.n_perm != x->rank) return shape_err(c, ni, "perm has %u entries for rank %u", n->a.n_perm, x->rank);
            bool seen[KEEL_MAX_RANK] = {false};
            for (uint32_t i = 0; i < x->rank; i++) {
                int64_t p = n->a.perm[i];
                if (p < 0 || p >= (int64_t)x->rank || seen[p]) return shape_err(c, ni, "perm is not a permutation of 0..%u", x->rank - 1);
                seen[p] = true;
                perm[i] = p;
            }
        }
        int64_t in_st[KEEL_MAX_RANK] = {0}, d[KEEL_MAX_RANK] = {0};
        int64_t s = 1;
        for (int i = (int)x->rank - 1; i >= 0; i--) {
            in_st[i] = s;
            s *= x->d[i];
        }
        for (uint32_t i = 0; i < x->rank; i++) {
            d[i] = x->d[perm[i]];
            r->st[i] = in_st[perm[i]];
        }
        SET_OUT(0, x->rank, d);
        return KEEL_OK;
    }
    case OP_REDUCESUM: case OP_REDUCEMEAN:
        return infer_reduce(c, ni);
    case OP_LAYERNORM: {
        if (x->rank == 0) return shape_err(c, ni, "input must have rank >= 1");
        if (!norm_axis(n->a.axis, x->rank, false, &ax)) return shape_err(c, ni, "axis %lld is out of range for rank %u", (long long)n->a.axis, x->rank);
        r->outer = prod(x->d, 0, ax);
        r->mid = prod(x->d, ax, x->rank);
        for (uint32_t k = 1; k < n->n_in; k++) {
            if (n->in[k] < 0) continue;
            size_t cnt = c->shapes[n->in[k]].count;
            if (cnt != r->mid && cnt != 1)
                return shape_err(c, ni, "%s has %zu elements; the normalized axes hold %zu", k == 1 ? "Scale" : "B", cnt, r->mid);
        }
        SET_OUT(0, x->rank, x->d);
        int64_t d[KEEL_MAX_RANK];
        for (uint32_t i = 0; i < x->rank; i++) d[i] = i < ax ? x->d[i] : 1;
        for (uint32_t k = 1; k < n->n_out; k++)
            if (n->out[k] >= 0) SET_OUT(k, x->rank, d);
        return KEEL_OK;
    }
    case OP_CONSTANT: case OP_COUNT_:
        break;
    }
    return keel_error_set(c->err, KEEL_ERR_INTERNAL, "no shape rule for op %d", (int)n->op);
}

/* Infer all shapes from inputs (already in shapes[]) and constants. */
static keel_status infer_all(shape_ctx *c) {
    const keel_onnx_model *m = c->m;
    for (size_t v = 0; v < m->n_values; v++) {
        const kv_value *val = &m->values[v];
        if (val->kind == KV_CONST) {
            c->shapes[v].rank = val->rank;
            memcpy(c->shapes[v].d, val->dims, sizeof val->dims);
            c->shapes[v].count = val->count;
        }
    }
    for (size_t e = 0; e < m->n_exec; e++) {
        keel_status st = infer_node(c, m->exec[e]);
        if (st != KEEL_OK) return st;
    }
    return KEEL_OK;
}

keel_status keel_onnx_shape_check(const keel_onnx_model *m, const kr_shape *input_shapes, kr_shape *output_shapes,
                                  keel_error *err) {
    kr_shape *shapes = calloc(m->n_values ? m->n_values : 1, sizeof *shapes);
    kr_node *rt = calloc(m->n_nodes ? m->n_nodes : 1, sizeof *rt);
    if (!shapes || !rt) {
        free(shapes);
        free(rt);
        return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    for (size_t i = 0; i < m->n_inputs; i++) shapes[m->inputs[i]] = input_shapes[i];
    shape_ctx c = {m, shapes, rt, err};
    keel_status st = infer_all(&c);
    if (st == KEEL_OK && output_shapes != NULL)
        for (size_t o = 0; o < m->n_outputs; o++) output_shapes[o] = shapes[m->outputs[o]];
    free(shapes);
    free(rt);
    return st;
}

/* ---- sessions: planning ----------------------------------------------------------- */

static bool is_alias_op(const kn_node *n, const kr_node *r) {
    return n->op == OP_RESHAPE || n->op == OP_FLATTEN || n->op == OP_IDENTITY ||
           (n->op == OP_RELU && n->a.relu_fused_away) ||
           ((n->op == OP_REDUCESUM || n->op == OP_REDUCEMEAN) && r->reduce_copy);
}

#define ALIGN64(x) (((x) + 63) & ~(size_t)63)

typedef struct block { size_t off, size; size_t last; } block;

static int cmp_block(const void *x, const void *y) {
    const block *a = x, *b = y;
    return a->off < b->off ? -1 : a->off > b->off;
}

static keel_status plan(keel_onnx_session *s, const keel_tensor *inputs, keel_error *err) {
    const keel_onnx_model *m = s->m;
    s->planned = false;
    for (size_t i = 0; i < m->n_inputs; i++) {
        kr_shape *sh = &s->shapes[m->inputs[i]];
        sh->rank = inputs[i].rank;
        memcpy(sh->d, inputs[i].shape, sizeof sh->d);
        sh->count = prod(inputs[i].shape, 0, inputs[i].rank);
    }
    shape_ctx c = {m, s->shapes, s->rt, err};
    keel_status st = infer_all(&c);
    if (st != KEEL_OK) return st;

    /* storage roots and lifetimes (positions in the exec list) */
    size_t nv = m->n_values;
    size_t *last = calloc(nv ? nv : 1, sizeof(size_t));
    block *blocks = calloc(nv ? nv : 1, sizeof(block));
    block *live = calloc(nv ? nv : 1, sizeof(block));
    if (!last || !blocks || !live) {
        free(last); free(blocks); free(live);
        return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "out of memory planning a run");
    }
    for (size_t v = 0; v < nv; v++) s->alias[v] = -1;
    for (size_t e = 0; e < m->n_exec; e++) {
        const kn_node *n = &m->nodes[m->exec[e]];
        if (is_alias_op(n, &s->rt[m->exec[e]])) {
            int src = n->in[0];
            s->alias[n->out[0]] = s->alias[src] >= 0 ? s->alias[src] : src;
        }
    }
    for (size_t e = 0; e < m->n_exec; e++) {
        const kn_node *n = &m->nodes[m->exec[e]];
        for (uint32_t k = 0; k < n->n_in; k++) {
            int v = n->in[k];
            if (v < 0) continue;
            int root = s->alias[v] >= 0 ? s->alias[v] : v;
            if (last[root] < e) last[root] = e;
        }
    }
    for (size_t o = 0; o < m->n_outputs; o++) {
        int v = m->outputs[o];
        int root = s->alias[v] >= 0 ? s->alias[v] : v;
        last[root] = SIZE_MAX;
    }
    /* greedy first-fit over live blocks; a plain bump layout for huge graphs */
    bool greedy = m->n_exec <= 4096;
    size_t n_blocks = 0, need = 0;
    for (size_t v = 0; v < nv; v++) s->offset[v] = SIZE_MAX;
    for (size_t e = 0; e < m->n_exec; e++) {
        const kn_node *n = &m->nodes[m->exec[e]];
        if (is_alias_op(n, &s->rt[m->exec[e]])) continue;
        for (uint32_t k = 0; k < n->n_out; k++) {
            int v = n->out[k];
            if (v < 0) continue;
            size_t size = ALIGN64(s->shapes[v].count * sizeof(float));
            if (size == 0) size = 64;
            if (last[v] < e) last[v] = e; /* unused outputs still need a place to be written */
            size_t off = 0;
            if (greedy) {
                size_t nl = 0;
                for (size_t b = 0; b < n_blocks; b++)
                    if (blocks[b].last >= e) live[nl++] = blocks[b];
                qsort(live, nl, sizeof(block), cmp_block);
                for (size_t b = 0; b < nl; b++) {
                    if (off + size <= live[b].off) break;
                    if (live[b].off + live[b].size > off) off = live[b].off + live[b].size;
                }
            } else {
                off = need;
            }
            blocks[n_blocks++] = (block){off, size, last[v]};
            s->offset[v] = off;
            if (off + size > need) need = off + size;
        }
    }
    free(last); free(blocks); free(live);
    for (size_t o = 0; o < m->n_outputs; o++) {
        int v = m->outputs[o];
        int root = s->alias[v] >= 0 ? s->alias[v] : v;
        s->out_copy[o] = SIZE_MAX;
        if (m->values[root].kind == KV_INPUT) {
            size_t size = ALIGN64(s->shapes[v].count * sizeof(float));
            s->out_copy[o] = need;
            need += size ? size : 64;
        }
    }

    uint64_t limit = s->memory_limit ? s->memory_limit : KEEL_DEFAULT_MAX_SESSION_BYTES;
    if ((uint64_t)need > limit)
        return keel_error_set(err, KEEL_ERR_LIMIT, "this run needs %zu bytes of working memory, over the %llu-byte limit",
                              need, (unsigned long long)limit);
    if (need > s->arena_cap) {
        unsigned char *a = keel_aligned_alloc(need);
        if (a == NULL) return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes of working memory", need);
        keel_aligned_free(s->arena);
        s->arena = a;
        s->arena_cap = need;
    }
    s->arena_need = need;
    for (size_t v = 0; v < nv; v++) {
        if (s->offset[v] != SIZE_MAX) s->ptr[v] = (const float *)(s->arena + s->offset[v]);
        else if (m->values[v].kind == KV_CONST) s->ptr[v] = m->values[v].fdata;
    }
    for (size_t i = 0; i < m->n_inputs; i++) s->planned_inputs[i] = s->shapes[m->inputs[i]];
    s->planned = true;
    return KEEL_OK;
}

keel_status keel_onnx_session_create(const keel_onnx_model *m, keel_onnx_session **out, keel_error *err) {
    *out = NULL;
    keel_onnx_session *s = calloc(1, sizeof *s);
    if (s == NULL) return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    s->m = m;
    size_t nv = m->n_values ? m->n_values : 1;
    s->shapes = calloc(nv, sizeof *s->shapes);
    s->ptr = calloc(nv, sizeof *s->ptr);
    s->offset = calloc(nv, sizeof *s->offset);
    s->alias = calloc(nv, sizeof *s->alias);
    s->rt = calloc(m->n_nodes ? m->n_nodes : 1, sizeof *s->rt);
    s->planned_inputs = calloc(m->n_inputs ? m->n_inputs : 1, sizeof *s->planned_inputs);
    s->out_copy = calloc(m->n_outputs ? m->n_outputs : 1, sizeof *s->out_copy);
    if (!s->shapes || !s->ptr || !s->offset || !s->alias || !s->rt || !s->planned_inputs || !s->out_copy) {
        keel_onnx_session_free(s);
        return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "out of memory");
    }
    *out = s;
    return KEEL_OK;
}

void keel_onnx_session_free(keel_onnx_session *s) {
    if (s == NULL) return;
    free(s->shapes);
    free(s->ptr);
    free(s->offset);
    free(s->alias);
    free(s->rt);
    free(s->planned_inputs);
    free(s->out_copy);
    keel_aligned_free(s->arena);
    free(s);
}

/* ---- kernels --------------------------------------------------------------------- */

static inline float *W(const float *p) { return (float *)p; } /* arena outputs are writable */

static void k_binary(keel_op op, const kr_node *r, const kr_shape *os, const float *a, const float *b, float *y) {
    size_t n = os->count;
#define BIN_LOOP(EXPR)                                                                          \
    switch (r->bcast_kind) {                                                                    \
    case 0: for (size_t i = 0; i < n; i++) { float x = a[i], z = b[i]; y[i] = (EXPR); } break;  \
    case 1: { float z = b[0]; for (size_t i = 0; i < n; i++) { float x = a[i]; y[i] = (EXPR); } } break; \
    case 2: { float x = a[0]; for (size_t i = 0; i < n; i++) { float z = b[i]; y[i] = (EXPR); } } break; \
    case 3: { size_t row = r->row; for (size_t o = 0; o < n; o += row) { const float *ar = a + o; float *yr = y + o; \
                for (size_t i = 0; i < row; i++) { float x = ar[i], z = b[i]; yr[i] = (EXPR); } } } break; \
    default: {                                                                                  \
        uint32_t rank = os->rank;                                                               \
        int64_t idx[KEEL_MAX_RANK] = {0};                                                       \
        size_t last = rank ? (size_t)os->d[rank - 1] : 1;                                       \
        int64_t sa_l = rank ? r->sa[rank - 1] : 0, sb_l = rank ? r->sb[rank - 1] : 0;           \
        size_t oa = 0, ob = 0;                                                                  \
        for (size_t o = 0; o < n; o += last) {                                                  \
            for (size_t i = 0; i < last; i++) { float x = a[oa + i * sa_l], z = b[ob + i * sb_l]; y[o + i] = (EXPR); } \
            for (int ax = (int)rank - 2; ax >= 0; ax--) {                                       \
                idx[ax]++; oa += r->sa[ax]; ob += r->sb[ax];                                    \
                if (idx[ax] < os->d[ax]) break;                                                 \
                oa -= r->sa[ax] * idx[ax]; ob -= r->sb[ax] * idx[ax]; idx[ax] = 0;              \
            }                                                                                   \
        }                                                                                       \
    } }
    switch (op) {
    case OP_ADD: BIN_LOOP(x + z); break;
    case OP_SUB: BIN_LOOP(x - z); break;
    case OP_MUL: BIN_LOOP(x * z); break;
    default: BIN_LOOP(x / z); break;
    }
#undef BIN_LOOP
}

/* y = alpha * op(a) * op(b) + beta * y, row-major. Single-column and single-row
 * products go through cblas_sgemv, which skips sgemm's packing overhead. */
static void sgemm(bool ta, bool tb, size_t m, size_t n, size_t k, float alpha, const float *a, const float *b,
                  float beta, float *y) {
    if (m == 0 || n == 0) return;
    if (k == 0) {
        for (size_t i = 0; i < m * n; i++) y[i] = beta == 0.0f ? 0.0f : beta * y[i];
        return;
    }
    if (n == 1) {
        /* y[m] = op(a)[m,k] . b[k]; a is stored [m,k] (or [k,m] when transposed) */
        cblas_sgemv(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, (blasint)(ta ? k : m), (blasint)(ta ? m : k),
                    alpha, a, (blasint)(ta ? m : k), b, 1, beta, y, 1);
        return;
    }
    if (m == 1) {
        /* y[n] = a[k] . op(b)[k,n] = op(b)^T a; b is stored [k,n] (or [n,k] when transposed) */
        cblas_sgemv(CblasRowMajor, tb ? CblasNoTrans : CblasTrans, (blasint)(tb ? n : k), (blasint)(tb ? k : n),
                    alpha, b, (blasint)(tb ? k : n), a, 1, beta, y, 1);
        return;
    }
    size_t lda = ta ? m : k, ldb = tb ? k : n;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (blasint)m,
                (blasint)n, (blasint)k, alpha, a, (blasint)lda, b, (blasint)ldb, beta, y, (blasint)n);
}

/* The packed kernel applies when the planned product is the one it was packed for. */
static bool dense_fits(const kn_node *n, const kr_node *r) {
    return n->dense != NULL && keel_dense_k(n->dense) == r->k && keel_dense_n(n->dense) == r->n;
}

static void k_matmul(const kn_node *nd, const kr_node *r, const float *a, const float *b, float *y) {
    if (r->fold_batch && dense_fits(nd, r)) {
        keel_dense_run(nd->dense, r->batch * r->m, a, y);
        return;
    }
    if (r->fold_batch) {
        sgemm(false, false, r->batch * r->m, r->n, r->k, 1.0f, a, b, 0.0f, y);
        return;
    }
    int64_t idx[KEEL_MAX_RANK] = {0};
    size_t oa = 0, ob = 0;
    for (size_t bi = 0; bi < r->batch; bi++) {
        sgemm(false, false, r->m, r->n, r->k, 1.0f, a + oa * r->a_bs, b + ob * r->b_bs, 0.0f, y + bi * r->m * r->n);
        for (int ax = (int)r->batch_rank - 1; ax >= 0; ax--) {
            idx[ax]++;
            oa += (size_t)r->batch_sa[ax];
            ob += (size_t)r->batch_sb[ax];
            if (idx[ax] < r->batch_d[ax]) break;
            oa -= (size_t)(r->batch_sa[ax] * idx[ax]);
            ob -= (size_t)(r->batch_sb[ax] * idx[ax]);
            idx[ax] = 0;
        }
    }
}

static void k_gemm(const kn_node *n, const kr_node *r, const float *a, const float *b, const float *cc, float *y) {
    size_t m = r->m, nn = r->n;
    if (dense_fits(n, r)) { /* bias, alpha, beta and the fused ReLU are in the packed layer */
        keel_dense_run(n->dense, m, a, y);
        return;
    }
    bool relu = n->a.fused_relu;
    int ck = (r->gemm_c_kind != 0 && n->a.beta != 0.0f) ? r->gemm_c_kind : 0;
    if (ck == 2 && n->a.beta == 1.0f) {
        /* The common layer: bias row + optional ReLU in one pass after the product. */
        sgemm(n->a.trans_a, n->a.trans_b, m, nn, r->k, n->a.alpha, a, b, 0.0f, y);
        for (size_t i = 0; i < m; i++) {
            float *row = y + i * nn;
            if (relu) {
                for (size_t j = 0; j < nn; j++) { float v = row[j] + cc[j]; row[j] = v < 0.0f ? 0.0f : v; }
            } else {
                for (size_t j = 0; j < nn; j++) row[j] += cc[j];
            }
        }
        return;
    }
    float beta = 0.0f;
    if (ck != 0) {
        beta = n->a.beta;
        switch (ck) {
        case 1: for (size_t i = 0; i < m * nn; i++) y[i] = cc[0]; break;
        case 2: for (size_t i = 0; i < m; i++) memcpy(y + i * nn, cc, nn * sizeof(float)); break;
        case 3: for (size_t i = 0; i < m; i++) for (size_t j = 0; j < nn; j++) y[i * nn + j] = cc[i]; break;
        default: memcpy(y, cc, m * nn * sizeof(float)); break;
        }
    }
    sgemm(n->a.trans_a, n->a.trans_b, m, nn, r->k, n->a.alpha, a, b, beta, y);
    if (relu)
        for (size_t i = 0; i < m * nn; i++) y[i] = y[i] < 0.0f ? 0.0f : y[i];
}

static void k_softmax(bool log_out, const kr_node *r, const float *x, float *y) {
    size_t mid = r->mid, inner = r->inner;
    for (size_t o = 0; o < r->outer; o++) {
        for (size_t in = 0; in < inner; in++) {
            const float *xs = x + o * mid * inner + in;
            float *ys = y + o * mid * inner + in;
            float mx = -INFINITY;
            for (size_t i = 0; i < mid; i++) if (xs[i * inner] > mx) mx = xs[i * inner];
            double sum = 0.0;
            if (log_out) {
                for (size_t i = 0; i < mid; i++) sum += exp((double)(xs[i * inner] - mx));
                float ls = (float)log(sum);
                for (size_t i = 0; i < mid; i++) ys[i * inner] = xs[i * inner] - mx - ls;
            } else {
                for (size_t i = 0; i < mid; i++) {
                    float e = expf(xs[i * inner] - mx);
                    ys[i * inner] = e;
                    sum += e;
                }
                float inv = (float)(1.0 / sum);
                for (size_t i = 0; i < mid; i++) ys[i * inner] *= inv;
            }
        }
    }
}

static void k_transpose(const kr_node *r, const kr_shape *os, const float *x, float *y) {
    uint32_t rank = os->rank;
    size_t n = os->count;
    if (n == 0) return;
    if (rank <= 1) {
        memcpy(y, x, n * sizeof(float));
        return;
    }
    int64_t idx[KEEL_MAX_RANK] = {0};
    size_t last = (size_t)os->d[rank - 1];
    int64_t sl = r->st[rank - 1];
    size_t off = 0;
    for (size_t o = 0; o < n; o += last) {
        for (size_t i = 0; i < last; i++) y[o + i] = x[off + i * (size_t)sl];
        for (int ax = (int)rank - 2; ax >= 0; ax--) {
            idx[ax]++;
            off += (size_t)r->st[ax];
            if (idx[ax] < os->d[ax]) break;
            off -= (size_t)(r->st[ax] * idx[ax]);
            idx[ax] = 0;
        }
    }
}

static void k_reduce(bool mean, const kr_node *r, const kr_shape *xs, const kr_shape *os, const float *x, float *y) {
    memset(y, 0, os->count * sizeof(float));
    uint32_t rank = xs->rank;
    if (xs->count > 0) {
        if (rank == 0) {
            y[0] = x[0];
        } else {
            int64_t idx[KEEL_MAX_RANK] = {0};
            size_t last = (size_t)xs->d[rank - 1];
            int64_t sl = r->st[rank - 1];
            size_t off = 0;
            for (size_t i0 = 0; i0 < xs->count; i0 += last) {
                if (sl == 0) {
                    float acc = 0.0f;
                    for (size_t i = 0; i < last; i++) acc += x[i0 + i];
                    y[off] += acc;
                } else {
                    for (size_t i = 0; i < last; i++) y[off + i * (size_t)sl] += x[i0 + i];
                }
                for (int ax = (int)rank - 2; ax >= 0; ax--) {
                    idx[ax]++;
                    off += (size_t)r->st[ax];
                    if (idx[ax] < xs->d[ax]) break;
                    off -= (size_t)(r->st[ax] * idx[ax]);
                    idx[ax] = 0;
                }
            }
        }
    }
    if (mean && r->reduce_count > 0) {
        float inv = 1.0f / (float)r->reduce_count;
        for (size_t i = 0; i < os->count; i++) y[i] *= inv;
    }
}

static void k_layernorm(const kn_node *n, const kr_node *r, const float *x, const float *scale, size_t scale_n,
                        const float *bias, size_t bias_n, float *y, float *mean_out, float *inv_out) {
    size_t mid = r->mid;
    float eps = n->a.epsilon;
    for (size_t o = 0; o < r->outer; o++) {
        const float *xs = x + o * mid;
        float *ys = y + o * mid;
        double sum = 0.0;
        for (size_t i = 0; i < mid; i++) sum += xs[i];
        float mu = mid ? (float)(sum / (double)mid) : 0.0f;
        double var = 0.0;
        for (size_t i = 0; i < mid; i++) {
            double d = (double)xs[i] - mu;
            var += d * d;
        }
        float inv = 1.0f / sqrtf((mid ? (float)(var / (double)mid) : 0.0f) + eps);
        for (size_t i = 0; i < mid; i++) {
            float v = (xs[i] - mu) * inv * scale[scale_n == 1 ? 0 : i];
            if (bias) v += bias[bias_n == 1 ? 0 : i];
            ys[i] = v;
        }
        if (mean_out) mean_out[o] = mu;
        if (inv_out) inv_out[o] = inv;
    }
}

static void run_node(keel_onnx_session *s, int ni) {
    const keel_onnx_model *m = s->m;
    const kn_node *n = &m->nodes[ni];
    const kr_node *r = &s->rt[ni];
    const float **P = s->ptr;
    const float *x = P[n->in[0]];
    int o0 = n->out[0];
    float *y = W(P[o0]);
    size_t cnt = s->shapes[o0].count;
    switch (n->op) {
    case OP_ADD: case OP_SUB: case OP_MUL: case OP_DIV:
        k_binary(n->op, r, &s->shapes[o0], x, P[n->in[1]], y);
        break;
    case OP_MATMUL:
        k_matmul(n, r, x, P[n->in[1]], y);
        break;
    case OP_GEMM:
        k_gemm(n, r, x, P[n->in[1]], n->n_in > 2 && n->in[2] >= 0 ? P[n->in[2]] : NULL, y);
        break;
    case OP_RELU:
        if (n->a.relu_fused_away) P[o0] = x;
        else for (size_t i = 0; i < cnt; i++) y[i] = x[i] < 0.0f ? 0.0f : x[i]; /* NaN stays NaN */
        break;
    case OP_LEAKYRELU: {
        float al = n->a.alpha;
        for (size_t i = 0; i < cnt; i++) y[i] = x[i] >= 0.0f ? x[i] : al * x[i];
        break;
    }
    case OP_TANH:
        for (size_t i = 0; i < cnt; i++) y[i] = tanhf(x[i]);
        break;
    case OP_SIGMOID:
        for (size_t i = 0; i < cnt; i++) {
            float v = x[i];
            y[i] = v >= 0.0f ? 1.0f / (1.0f + expf(-v)) : expf(v) / (1.0f + expf(v));
        }
        break;
    case OP_EXP:
        for (size_t i = 0; i < cnt; i++) y[i] = expf(x[i]);
        break;
    case OP_LOG:
        for (size_t i = 0; i < cnt; i++) y[i] = logf(x[i]);
        break;
    case OP_SQRT:
        for (size_t i = 0; i < cnt; i++) y[i] = sqrtf(x[i]);
        break;
    case OP_CLIP: {
        float lo = n->a.clip_min, hi = n->a.clip_max;
        if (m->opset >= 11) {
            lo = n->n_in > 1 && n->in[1] >= 0 ? P[n->in[1]][0] : -FLT_MAX;
            hi = n->n_in > 2 && n->in[2] >= 0 ? P[n->in[2]][0] : FLT_MAX;
        }
        for (size_t i = 0; i < cnt; i++) {
            float v = x[i];
            float t = v < lo ? lo : v; /* max first, then min: min > max gives max, as ONNX says */
            y[i] = t > hi ? hi : t;
        }
        break;
    }
    case OP_SOFTMAX: case OP_LOGSOFTMAX:
        k_softmax(n->op == OP_LOGSOFTMAX, r, x, y);
        break;
    case OP_CONCAT: {
        size_t inner = r->inner;
        float *dst = y;
        for (size_t o = 0; o < r->outer; o++)
            for (uint32_t k = 0; k < n->n_in; k++) {
                const kr_shape *ks = &s->shapes[n->in[k]];
                uint32_t ax = 0;
                /* the concat axis: where this input's dims differ from the output (or recompute) */
                int64_t axis = n->a.axis < 0 ? n->a.axis + (int64_t)ks->rank : n->a.axis;
                ax = (uint32_t)axis;
                size_t chunk = (size_t)ks->d[ax] * inner;
                if (chunk) memcpy(dst, P[n->in[k]] + o * chunk, chunk * sizeof(float));
                dst += chunk;
            }
        break;
    }
    case OP_RESHAPE: case OP_FLATTEN: case OP_IDENTITY:
        P[o0] = x;
        break;
    case OP_TRANSPOSE:
        k_transpose(r, &s->shapes[o0], x, y);
        break;
    case OP_REDUCESUM: case OP_REDUCEMEAN:
        if (r->reduce_copy) P[o0] = x;
        else k_reduce(n->op == OP_REDUCEMEAN, r, &s->shapes[n->in[0]], &s->shapes[o0], x, y);
        break;
    case OP_LAYERNORM: {
        const float *bias = n->n_in > 2 && n->in[2] >= 0 ? P[n->in[2]] : NULL;
        size_t bias_n = bias ? s->shapes[n->in[2]].count : 0;
        float *mo = n->n_out > 1 && n->out[1] >= 0 ? W(P[n->out[1]]) : NULL;
        float *io = n->n_out > 2 && n->out[2] >= 0 ? W(P[n->out[2]]) : NULL;
        k_layernorm(n, r, x, P[n->in[1]], s->shapes[n->in[1]].count, bias, bias_n, y, mo, io);
        break;
    }
    case OP_CONSTANT: case OP_COUNT_:
        break;
    }
}

keel_status keel_onnx_session_run(keel_onnx_session *s, const keel_tensor *inputs, size_t n_inputs,
                                  keel_tensor *outputs, size_t n_outputs, keel_error *err) {
    const keel_onnx_model *m = s->m;
    if (n_inputs != m->n_inputs)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "the model takes %zu inputs, %zu were given", m->n_inputs, n_inputs);
    if (n_outputs != m->n_outputs)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "the model has %zu outputs, room for %zu was given", m->n_outputs, n_outputs);
    bool same = s->planned;
    for (size_t i = 0; i < n_inputs; i++) {
        const keel_tensor *t = &inputs[i];
        const keel_tensor_info *info = &m->input_info[i];
        if (t->rank != info->rank)
            return keel_error_set(err, KEEL_ERR_SHAPE, "input '%s' must have rank %u, got %u", info->name, info->rank, t->rank);
        size_t count = 1;
        for (uint32_t k = 0; k < t->rank; k++) {
            int64_t d = t->shape[k];
            if (d < 0 || (uint64_t)d > KEEL_MAX_ELEMENTS || !keel_mul_size(count, (size_t)d, &count) || count > KEEL_MAX_ELEMENTS)
                return keel_error_set(err, KEEL_ERR_SHAPE, "input '%s' has invalid or too large dimension %lld at axis %u",
                                      info->name, (long long)d, k);
            if (info->dims[k] >= 0 && d != info->dims[k])
                return keel_error_set(err, KEEL_ERR_SHAPE, "input '%s' axis %u must be %lld, got %lld", info->name, k,
                                      (long long)info->dims[k], (long long)d);
        }
        if (t->data == NULL && count > 0)
            return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "input '%s' has NULL data", info->name);
        if (same) {
            const kr_shape *p = &s->planned_inputs[i];
            if (p->rank != t->rank || memcmp(p->d, t->shape, t->rank * sizeof(int64_t)) != 0) same = false;
        }
    }
    if (!same) {
        keel_status st = plan(s, inputs, err);
        if (st != KEEL_OK) return st;
    }
    static const float empty = 0.0f;
    for (size_t i = 0; i < n_inputs; i++) s->ptr[m->inputs[i]] = inputs[i].data ? inputs[i].data : &empty;
    for (size_t e = 0; e < m->n_exec; e++) run_node(s, m->exec[e]);
    for (size_t o = 0; o < n_outputs; o++) {
        int v = m->outputs[o];
        const kr_shape *sh = &s->shapes[v];
        if (s->out_copy[o] != SIZE_MAX) {
            float *copy = (float *)(s->arena + s->out_copy[o]);
            if (sh->count) memcpy(copy, s->ptr[v], sh->count * sizeof(float));
            outputs[o].data = copy;
        } else {
            outputs[o].data = s->ptr[v];
        }
        outputs[o].rank = sh->rank;
        memset(outputs[o].shape, 0, sizeof outputs[o].shape);
        memcpy(outputs[o].shape, sh->d, sh->rank * sizeof(int64_t));
    }
    return KEEL_OK;
}
