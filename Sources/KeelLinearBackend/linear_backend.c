/*
 * linear_backend.c - "keel-linear", the example Keel plugin backend.
 *
 * A different model family from the built-in ONNX backend: a linear model
 *     scores = features · Wᵀ + b
 * read from a small text format (documented in docs/PLUGINS.md):
 *
 *     keel-linear 1
 *     features: f1,f2,...,fK
 *     outputs: y1,...,yM
 *     weights:
 *     <M lines of K floats>
 *     bias: <M floats>
 *     meta <key> <value...>        (optional, repeated)
 *
 * Blank lines and lines whose first non-blank character is '#' are ignored.
 * Input "features" [N (dynamic "assets"), K] -> output "scores" [N, M].
 *
 * Everything here is static except the single entry point keel_backend_get_api.
 * The file is untrusted: every problem is KEEL_ERR_PARSE (or KEEL_ERR_UNSUPPORTED
 * for a well-formed header of a future format version) with the line number,
 * and no byte sequence can crash the parser or make it allocate more than a
 * small multiple of the file size.
 */
#include "include/keel_linear_backend.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LIN_MAX_DIM ((size_t)1 << 16)   /* bound on K and on M */
#define LIN_MAX_NUMBER_CHARS 64         /* longest numeric token accepted */
#define LIN_FORMAT_VERSION 1

static const char LIN_INPUT_NAME[] = "features";
static const char LIN_OUTPUT_NAME[] = "scores";
static const char LIN_BATCH_DIM[] = "assets";

/* ---- model ------------------------------------------------------------------ */

typedef struct lin_meta {
    char *key;
    char *value;
} lin_meta;

typedef struct lin_model {
    size_t k;            /* features */
    size_t m;            /* outputs */
    float *weights;      /* m * k, row-major: row j = weights of output j */
    float *bias;         /* m */
    lin_meta *meta;      /* keel.features, keel.outputs, then the file's meta lines */
    size_t n_meta;
    char *node_name;     /* "linear" */
    char *node_op;       /* "Linear" */
} lin_model;

typedef struct lin_instance {
    const lin_model *model;
    float *out;          /* capacity_rows * m floats */
    size_t capacity_rows;
} lin_instance;

static void lin_model_destroy(lin_model *model) {
    if (model == NULL) return;
    for (size_t i = 0; i < model->n_meta; i++) {
        free(model->meta[i].key);
        free(model->meta[i].value);
    }
    free(model->meta);
    free(model->weights);
    free(model->bias);
    free(model->node_name);
    free(model->node_op);
    free(model);
}

/* ---- parser ----------------------------------------------------------------- */

typedef struct lin_parser {
    const char *pos;      /* start of the next unread line */
    const char *end;      /* end of input */
    size_t line_no;       /* number of the current line (1-based) */
    const char *ls, *le;  /* current line, without the line terminator */
    const char *src;      /* source name for messages */
    keel_error *err;
} lin_parser;

static keel_status lin_parse_error(lin_parser *p, const char *what) {
    return keel_error_set(p->err, KEEL_ERR_PARSE, "%s: line %zu: %s", p->src, p->line_no, what);
}

static bool lin_is_blank(char c) { return c == ' ' || c == '\t'; }

static void lin_trim(const char **s, const char **e) {
    while (*s < *e && lin_is_blank(**s)) (*s)++;
    while (*e > *s && lin_is_blank((*e)[-1])) (*e)--;
}

static bool lin_line_is_ignorable(const char *s, const char *e) {
    lin_trim(&s, &e);
    return s == e || *s == '#';
}

/* Reads the next line into p->ls/p->le. Returns 1 on success, 0 at end of input,
 * or a negative value after filling the error (control character in the line). */
static int lin_next_raw_line(lin_parser *p) {
    if (p->pos >= p->end) return 0;
    const char *s = p->pos;
    const char *nl = memchr(s, '\n', (size_t)(p->end - s));
    const char *e = nl != NULL ? nl : p->end;
    p->pos = nl != NULL ? nl + 1 : p->end;
    p->line_no++;
    if (e > s && e[-1] == '\r') e--;
    for (const char *c = s; c < e; c++) {
        unsigned char u = (unsigned char)*c;
        if ((u < 0x20 && u != '\t') || u == 0x7f) {
            char msg[96];
            snprintf(msg, sizeof msg, "control character 0x%02x in column %zu", u,
                     (size_t)(c - s) + 1);
            lin_parse_error(p, msg);
            return -1;
        }
    }
    p->ls = s;
    p->le = e;
    return 1;
}

/* Next line that is neither blank nor a comment. Same return values. */
static int lin_next_line(lin_parser *p) {
    for (;;) {
        int r = lin_next_raw_line(p);
        if (r <= 0) return r;
        if (!lin_line_is_ignorable(p->ls, p->le)) return 1;
    }
}

/* Requires a next significant line; reports "expected <what>" at end of input. */
static keel_status lin_expect_line(lin_parser *p, const char *what) {
    int r = lin_next_line(p);
    if (r < 0) return KEEL_ERR_PARSE;
    if (r == 0) {
        p->line_no++; /* the missing line would be the one after the last */
        char msg[128];
        snprintf(msg, sizeof msg, "unexpected end of file, expected %s", what);
        return lin_parse_error(p, msg);
    }
    return KEEL_OK;
}

/* Splits off the next blank-separated token of [*s, e). Returns false if none. */
static bool lin_token(const char **s, const char *e, const char **ts, const char **te) {
    while (*s < e && lin_is_blank(**s)) (*s)++;
    if (*s == e) return false;
    *ts = *s;
    while (*s < e && !lin_is_blank(**s)) (*s)++;
    *te = *s;
    return true;
}

static bool lin_token_equals(const char *ts, const char *te, const char *word) {
    size_t n = strlen(word);
    return (size_t)(te - ts) == n && memcmp(ts, word, n) == 0;
}

/* Parses one finite float token. Fills the error on failure. */
static keel_status lin_parse_float(lin_parser *p, const char *ts, const char *te, float *out) {
    char buf[LIN_MAX_NUMBER_CHARS + 1];
    size_t n = (size_t)(te - ts);
    char msg[160];
    if (n > LIN_MAX_NUMBER_CHARS) {
        snprintf(msg, sizeof msg, "number in column %zu is longer than %d characters",
                 (size_t)(ts - p->ls) + 1, LIN_MAX_NUMBER_CHARS);
        return lin_parse_error(p, msg);
    }
    memcpy(buf, ts, n);
    buf[n] = '\0';
    char *stop = NULL;
    errno = 0;
    float v = strtof(buf, &stop);
    if (stop != buf + n || n == 0) {
        snprintf(msg, sizeof msg, "'%s' in column %zu is not a number", buf,
                 (size_t)(ts - p->ls) + 1);
        return lin_parse_error(p, msg);
    }
    if (!isfinite(v)) {
        snprintf(msg, sizeof msg, "'%s' in column %zu is not a finite float32 number", buf,
                 (size_t)(ts - p->ls) + 1);
        return lin_parse_error(p, msg);
    }
    *out = v;
    return KEEL_OK;
}

/* Parses exactly `count` floats from [s, e) into out. */
static keel_status lin_parse_floats(lin_parser *p, const char *s, const char *e, float *out,
                                    size_t count, const char *what) {
    const char *ts, *te;
    size_t i = 0;
    char msg[160];
    while (lin_token(&s, e, &ts, &te)) {
        if (i == count) {
            snprintf(msg, sizeof msg, "%s: more than the expected %zu numbers", what, count);
            return lin_parse_error(p, msg);
        }
        keel_status st = lin_parse_float(p, ts, te, &out[i]);
        if (st != KEEL_OK) return st;
        i++;
    }
    if (i != count) {
        snprintf(msg, sizeof msg, "%s: expected %zu numbers, found %zu", what, count, i);
        return lin_parse_error(p, msg);
    }
    return KEEL_OK;
}

/* "label: rest" -> rest (trimmed). Fills the error if the line does not start so. */
static keel_status lin_section(lin_parser *p, const char *label, const char **rs, const char **re) {
    const char *s = p->ls, *e = p->le;
    lin_trim(&s, &e);
    size_t n = strlen(label);
    if ((size_t)(e - s) < n || memcmp(s, label, n) != 0) {
        char msg[128];
        snprintf(msg, sizeof msg, "expected a line starting with '%s'", label);
        return lin_parse_error(p, msg);
    }
    s += n;
    lin_trim(&s, &e);
    *rs = s;
    *re = e;
    return KEEL_OK;
}

static char *lin_strndup(const char *s, size_t n) {
    char *r = malloc(n + 1);
    if (r == NULL) return NULL;
    if (n > 0) memcpy(r, s, n);
    r[n] = '\0';
    return r;
}

static keel_status lin_oom(lin_parser *p) {
    return keel_error_set(p->err, KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory", p->src);
}

/* Appends a metadata entry (copies key and value). */
static keel_status lin_add_meta(lin_parser *p, lin_model *model, size_t *cap, const char *ks,
                                size_t kn, const char *vs, size_t vn) {
    for (size_t i = 0; i < model->n_meta; i++) {
        if (strlen(model->meta[i].key) == kn && memcmp(model->meta[i].key, ks, kn) == 0) {
            char msg[128];
            snprintf(msg, sizeof msg, "duplicate metadata key '%.*s'",
                     (int)(kn > 64 ? 64 : kn), ks);
            return lin_parse_error(p, msg);
        }
    }
    if (model->n_meta == *cap) {
        size_t ncap = *cap == 0 ? 8 : *cap * 2;
        lin_meta *nm = realloc(model->meta, ncap * sizeof *nm);
        if (nm == NULL) return lin_oom(p);
        model->meta = nm;
        *cap = ncap;
    }
    char *k = lin_strndup(ks, kn);
    char *v = lin_strndup(vs, vn);
    if (k == NULL || v == NULL) {
        free(k);
        free(v);
        return lin_oom(p);
    }
    model->meta[model->n_meta].key = k;
    model->meta[model->n_meta].value = v;
    model->n_meta++;
    return KEEL_OK;
}

/* Parses "a,b,c" (the rest of a features:/outputs: line): names are non-empty,
 * blank-free after trimming and unique. Stores the normalised, comma-joined list
 * as metadata entry meta_key and the count in *count. */
static keel_status lin_name_list(lin_parser *p, lin_model *model, size_t *cap, const char *s,
                                 const char *e, const char *section, const char *meta_key,
                                 size_t *count) {
    char msg[192];
    if (s == e) {
        snprintf(msg, sizeof msg, "'%s' lists no names", section);
        return lin_parse_error(p, msg);
    }
    /* The joined list is never longer than the line. */
    char *joined = malloc((size_t)(e - s) + 1);
    if (joined == NULL) return lin_oom(p);
    size_t jn = 0, n = 0;
    const char *item = s;
    for (;;) {
        const char *comma = memchr(item, ',', (size_t)(e - item));
        const char *ie = comma != NULL ? comma : e;
        const char *is = item;
        lin_trim(&is, &ie);
        if (is == ie) {
            free(joined);
            snprintf(msg, sizeof msg, "'%s': name %zu is empty", section, n + 1);
            return lin_parse_error(p, msg);
        }
        for (const char *c = is; c < ie; c++) {
            if (lin_is_blank(*c)) {
                free(joined);
                snprintf(msg, sizeof msg, "'%s': name %zu contains a blank", section, n + 1);
                return lin_parse_error(p, msg);
            }
        }
        /* Uniqueness: compare against the names already joined (linear scan of
         * a bounded list; quadratic only in the number of names on one line). */
        size_t len = (size_t)(ie - is);
        for (size_t off = 0; off < jn;) {
            const char *c = memchr(joined + off, ',', jn - off);
            size_t l = c != NULL ? (size_t)(c - (joined + off)) : jn - off;
            if (l == len && memcmp(joined + off, is, len) == 0) {
                free(joined);
                snprintf(msg, sizeof msg, "'%s': duplicate name '%.*s'", section,
                         (int)(len > 64 ? 64 : len), is);
                return lin_parse_error(p, msg);
            }
            off += l + 1;
        }
        n++;
        if (n > LIN_MAX_DIM) {
            free(joined);
            snprintf(msg, sizeof msg, "'%s': more than %zu names", section, LIN_MAX_DIM);
            return lin_parse_error(p, msg);
        }
        if (jn > 0) joined[jn++] = ',';
        memcpy(joined + jn, is, len);
        jn += len;
        if (comma == NULL) break;
        item = comma + 1;
    }
    keel_status st = lin_add_meta(p, model, cap, meta_key, strlen(meta_key), joined, jn);
    free(joined);
    if (st != KEEL_OK) return st;
    *count = n;
    return KEEL_OK;
}

static keel_status lin_parse(lin_parser *p, lin_model *model) {
    size_t meta_cap = 0;
    keel_status st;
    const char *s, *e, *ts, *te;
    char msg[192];

    /* Magic and version. */
    if ((st = lin_expect_line(p, "'keel-linear 1'")) != KEEL_OK) return st;
    s = p->ls;
    e = p->le;
    if (!lin_token(&s, e, &ts, &te) || !lin_token_equals(ts, te, "keel-linear"))
        return lin_parse_error(p, "not a keel-linear file (expected 'keel-linear 1')");
    if (!lin_token(&s, e, &ts, &te))
        return lin_parse_error(p, "missing format version after 'keel-linear'");
    {
        char *stop = NULL;
        char vbuf[16];
        size_t vn = (size_t)(te - ts);
        if (vn >= sizeof vbuf) return lin_parse_error(p, "format version is not a small integer");
        memcpy(vbuf, ts, vn);
        vbuf[vn] = '\0';
        errno = 0;
        long v = strtol(vbuf, &stop, 10);
        if (stop != vbuf + vn || vbuf[0] == '+' || vbuf[0] == '-' || errno != 0)
            return lin_parse_error(p, "format version is not a small integer");
        if (v != LIN_FORMAT_VERSION)
            return keel_error_set(p->err, KEEL_ERR_UNSUPPORTED,
                                  "%s: line %zu: keel-linear format version %ld is not supported "
                                  "(this backend reads version %d)",
                                  p->src, p->line_no, v, LIN_FORMAT_VERSION);
    }
    if (lin_token(&s, e, &ts, &te)) return lin_parse_error(p, "trailing characters after the version");

    /* Names. */
    if ((st = lin_expect_line(p, "'features:'")) != KEEL_OK) return st;
    if ((st = lin_section(p, "features:", &s, &e)) != KEEL_OK) return st;
    if ((st = lin_name_list(p, model, &meta_cap, s, e, "features", "keel.features", &model->k)) != KEEL_OK)
        return st;
    if ((st = lin_expect_line(p, "'outputs:'")) != KEEL_OK) return st;
    if ((st = lin_section(p, "outputs:", &s, &e)) != KEEL_OK) return st;
    if ((st = lin_name_list(p, model, &meta_cap, s, e, "outputs", "keel.outputs", &model->m)) != KEEL_OK)
        return st;

    /* Weights. Every number takes at least two bytes of the file (a digit and a
     * separator, except the last), so a claimed K*M larger than the file cannot
     * be honest: refuse before allocating. */
    if ((st = lin_expect_line(p, "'weights:'")) != KEEL_OK) return st;
    if ((st = lin_section(p, "weights:", &s, &e)) != KEEL_OK) return st;
    if (s != e) return lin_parse_error(p, "trailing characters after 'weights:'");
    size_t k = model->k, m = model->m;
    if (m != 0 && k > SIZE_MAX / sizeof(float) / m) return lin_parse_error(p, "weights too large");
    size_t n_weights = k * m;
    size_t remaining = (size_t)(p->end - p->pos);
    if (n_weights > remaining / 2 + 1) {
        snprintf(msg, sizeof msg,
                 "%zu outputs x %zu features need %zu weights, more than the rest of the file "
                 "can hold", m, k, n_weights);
        return lin_parse_error(p, msg);
    }
    model->weights = malloc(n_weights * sizeof(float));
    model->bias = malloc(m * sizeof(float));
    if (model->weights == NULL || model->bias == NULL) return lin_oom(p);
    for (size_t j = 0; j < m; j++) {
        snprintf(msg, sizeof msg, "weights row %zu of %zu", j + 1, m);
        if ((st = lin_expect_line(p, msg)) != KEEL_OK) return st;
        /* A row must not look like the bias line: a clearer message for "too few rows". */
        s = p->ls;
        e = p->le;
        if (lin_token(&s, e, &ts, &te) && te - ts >= 5 && memcmp(ts, "bias:", 5) == 0) {
            snprintf(msg, sizeof msg, "found 'bias:' but only %zu of %zu weight rows", j, m);
            return lin_parse_error(p, msg);
        }
        snprintf(msg, sizeof msg, "weights row %zu", j + 1);
        if ((st = lin_parse_floats(p, p->ls, p->le, model->weights + j * k, k, msg)) != KEEL_OK)
            return st;
    }

    /* Bias. */
    if ((st = lin_expect_line(p, "'bias:'")) != KEEL_OK) return st;
    if ((st = lin_section(p, "bias:", &s, &e)) != KEEL_OK) {
        /* Probably an extra weights row: say so. */
        const char *a = p->ls, *x, *y;
        float dummy;
        lin_parser quiet = *p;
        quiet.err = NULL;
        if (lin_token(&a, p->le, &x, &y) && lin_parse_float(&quiet, x, y, &dummy) == KEEL_OK) {
            snprintf(msg, sizeof msg, "expected 'bias:' after %zu weight rows, found another row", m);
            return lin_parse_error(p, msg);
        }
        return st;
    }
    if ((st = lin_parse_floats(p, s, e, model->bias, m, "bias")) != KEEL_OK) return st;

    /* Optional metadata, then nothing else. */
    for (;;) {
        int r = lin_next_line(p);
        if (r < 0) return KEEL_ERR_PARSE;
        if (r == 0) break;
        s = p->ls;
        e = p->le;
        if (!lin_token(&s, e, &ts, &te) || !lin_token_equals(ts, te, "meta"))
            return lin_parse_error(p, "unexpected content after 'bias:' (only 'meta <key> <value>' lines may follow)");
        const char *ks, *ke;
        if (!lin_token(&s, e, &ks, &ke)) return lin_parse_error(p, "'meta' line without a key");
        if (lin_token_equals(ks, ke, "keel.features") || lin_token_equals(ks, ke, "keel.outputs"))
            return lin_parse_error(p, "metadata keys keel.features and keel.outputs are set by the "
                                      "'features:' and 'outputs:' lines");
        const char *vs = s, *ve = e;
        lin_trim(&vs, &ve);
        if ((st = lin_add_meta(p, model, &meta_cap, ks, (size_t)(ke - ks), vs, (size_t)(ve - vs))) != KEEL_OK)
            return st;
    }

    model->node_name = lin_strndup("linear", 6);
    model->node_op = lin_strndup("Linear", 6);
    if (model->node_name == NULL || model->node_op == NULL) return lin_oom(p);
    return KEEL_OK;
}

/* ---- ABI entries: models ------------------------------------------------------ */

static keel_status lin_model_load(const void *bytes, size_t len, const char *source_name,
                                  void **out_model, keel_error *err) {
    if (out_model == NULL)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "model_load: out_model is NULL");
    *out_model = NULL;
    if (bytes == NULL && len != 0)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "model_load: bytes is NULL");
    const char *src = source_name != NULL ? source_name : "<memory>";
    if (len == 0) return keel_error_set(err, KEEL_ERR_PARSE, "%s: line 1: empty file", src);
    lin_model *model = calloc(1, sizeof *model);
    if (model == NULL) return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "%s: out of memory", src);
    lin_parser p = {
        .pos = bytes, .end = (const char *)bytes + len, .line_no = 0, .src = src, .err = err,
    };
    keel_status st = lin_parse(&p, model);
    if (st != KEEL_OK) {
        lin_model_destroy(model);
        return st;
    }
    *out_model = model;
    return KEEL_OK;
}

static void lin_model_free(void *model) { lin_model_destroy(model); }

static size_t lin_model_input_count(const void *model) { return model != NULL ? 1 : 0; }
static size_t lin_model_output_count(const void *model) { return model != NULL ? 1 : 0; }

static keel_status lin_describe(const lin_model *model, size_t i, keel_tensor_info *out,
                                keel_error *err, const char *name, size_t width,
                                const char *which) {
    if (model == NULL || out == NULL)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "%s_info: NULL argument", which);
    if (i != 0)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT,
                              "%s index %zu out of range (the model has 1)", which, i);
    memset(out, 0, sizeof *out);
    out->name = name;
    out->elem_type = KEEL_DTYPE_FLOAT32;
    out->rank = 2;
    out->dims[0] = -1;
    out->dim_params[0] = LIN_BATCH_DIM;
    out->dims[1] = (int64_t)width;
    out->dim_params[1] = NULL;
    return KEEL_OK;
}

static keel_status lin_model_input_info(const void *model, size_t i, keel_tensor_info *out,
                                        keel_error *err) {
    const lin_model *mo = model;
    return lin_describe(mo, i, out, err, LIN_INPUT_NAME, mo != NULL ? mo->k : 0, "input");
}

static keel_status lin_model_output_info(const void *model, size_t i, keel_tensor_info *out,
                                         keel_error *err) {
    const lin_model *mo = model;
    return lin_describe(mo, i, out, err, LIN_OUTPUT_NAME, mo != NULL ? mo->m : 0, "output");
}

static size_t lin_model_metadata_count(const void *model) {
    return model != NULL ? ((const lin_model *)model)->n_meta : 0;
}

static keel_status lin_model_metadata_entry(const void *model, size_t i, const char **key,
                                            const char **value, keel_error *err) {
    const lin_model *mo = model;
    if (mo == NULL || key == NULL || value == NULL)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "metadata_entry: NULL argument");
    if (i >= mo->n_meta)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT,
                              "metadata index %zu out of range (the model has %zu)", i, mo->n_meta);
    *key = mo->meta[i].key;
    *value = mo->meta[i].value;
    return KEEL_OK;
}

static size_t lin_model_node_count(const void *model) { return model != NULL ? 1 : 0; }

static keel_status lin_model_node_info(const void *model, size_t i, const char **name,
                                       const char **op_type, keel_error *err) {
    const lin_model *mo = model;
    if (mo == NULL || name == NULL || op_type == NULL)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "node_info: NULL argument");
    if (i != 0)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT,
                              "node index %zu out of range (the model has 1)", i);
    *name = mo->node_name;
    *op_type = mo->node_op;
    return KEEL_OK;
}

static uint64_t lin_model_parameter_count(const void *model) {
    const lin_model *mo = model;
    if (mo == NULL) return 0;
    return (uint64_t)mo->m * (uint64_t)mo->k + (uint64_t)mo->m;
}

/* ---- ABI entries: instances --------------------------------------------------- */

static keel_status lin_instance_create(const void *model, void **out_instance, keel_error *err) {
    if (model == NULL || out_instance == NULL)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "instance_create: NULL argument");
    *out_instance = NULL;
    lin_instance *inst = calloc(1, sizeof *inst);
    if (inst == NULL) return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "instance_create: out of memory");
    inst->model = model;
    *out_instance = inst;
    return KEEL_OK;
}

static void lin_instance_free(void *instance) {
    lin_instance *inst = instance;
    if (inst == NULL) return;
    free(inst->out);
    free(inst);
}

static keel_status lin_instance_run(void *instance, const keel_tensor *inputs, size_t n_inputs,
                                    keel_tensor *outputs, size_t n_outputs, keel_error *err) {
    lin_instance *inst = instance;
    if (inst == NULL || inputs == NULL || outputs == NULL)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "instance_run: NULL argument");
    if (n_inputs != 1)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT,
                              "instance_run: %zu inputs given, the model has 1 (%s)", n_inputs,
                              LIN_INPUT_NAME);
    if (n_outputs != 1)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT,
                              "instance_run: room for %zu outputs given, the model has 1 (%s)",
                              n_outputs, LIN_OUTPUT_NAME);
    const lin_model *mo = inst->model;
    const keel_tensor *x = &inputs[0];
    if (x->rank != 2)
        return keel_error_set(err, KEEL_ERR_SHAPE,
                              "input '%s' has rank %u, expected 2 [assets, %zu]", LIN_INPUT_NAME,
                              x->rank, mo->k);
    if (x->shape[0] < 0 || x->shape[1] < 0)
        return keel_error_set(err, KEEL_ERR_SHAPE, "input '%s' has a negative dimension",
                              LIN_INPUT_NAME);
    if ((uint64_t)x->shape[1] != (uint64_t)mo->k)
        return keel_error_set(err, KEEL_ERR_SHAPE,
                              "input '%s' has shape [%lld, %lld], expected [assets, %zu]",
                              LIN_INPUT_NAME, (long long)x->shape[0], (long long)x->shape[1], mo->k);
    if ((uint64_t)x->shape[0] > SIZE_MAX)
        return keel_error_set(err, KEEL_ERR_LIMIT, "input '%s': too many rows", LIN_INPUT_NAME);
    size_t n = (size_t)x->shape[0];
    size_t k = mo->k, m = mo->m;
    if (m != 0 && n > SIZE_MAX / sizeof(float) / m)
        return keel_error_set(err, KEEL_ERR_LIMIT, "input '%s': %zu rows x %zu outputs is too large",
                              LIN_INPUT_NAME, n, m);
    if (k != 0 && n > SIZE_MAX / sizeof(float) / k)
        return keel_error_set(err, KEEL_ERR_LIMIT, "input '%s': %zu rows x %zu features is too large",
                              LIN_INPUT_NAME, n, k);
    if (x->data == NULL && n * k != 0)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "input '%s' has no data",
                              LIN_INPUT_NAME);

    /* Memory grows only when N grows beyond every earlier run. */
    if (n > inst->capacity_rows) {
        size_t bytes = n * m * sizeof(float);
        float *grown = realloc(inst->out, bytes > 0 ? bytes : 1);
        if (grown == NULL)
            return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY,
                                  "instance_run: cannot allocate %zu bytes for '%s'", bytes,
                                  LIN_OUTPUT_NAME);
        inst->out = grown;
        inst->capacity_rows = n;
    }

    const float *w = mo->weights, *b = mo->bias, *xd = x->data;
    float *y = inst->out;
    for (size_t r = 0; r < n; r++) {
        const float *xr = xd + r * k;
        float *yr = y + r * m;
        for (size_t j = 0; j < m; j++) {
            const float *wj = w + j * k;
            double acc = b[j];
            for (size_t c = 0; c < k; c++) acc += (double)xr[c] * (double)wj[c];
            yr[j] = (float)acc;
        }
    }

    memset(&outputs[0], 0, sizeof outputs[0]);
    outputs[0].data = y;
    outputs[0].rank = 2;
    outputs[0].shape[0] = (int64_t)n;
    outputs[0].shape[1] = (int64_t)m;
    return KEEL_OK;
}

/* ---- properties ----------------------------------------------------------------- */

static const char *const LIN_PROPS[][2] = {
    {"format", "keel-linear 1"},
    {"model_family", "linear: scores = features x W^T + b"},
};

static size_t lin_model_property_count(const void *model) {
    (void)model;
    return sizeof LIN_PROPS / sizeof LIN_PROPS[0];
}

static keel_status lin_model_property_entry(const void *model, size_t i, const char **key,
                                            const char **value, keel_error *err) {
    if (model == NULL || key == NULL || value == NULL)
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT, "model_property_entry: NULL argument");
    if (i >= lin_model_property_count(model))
        return keel_error_set(err, KEEL_ERR_INVALID_ARGUMENT,
                              "model_property_entry: index %zu out of range", i);
    *key = LIN_PROPS[i][0];
    *value = LIN_PROPS[i][1];
    return KEEL_OK;
}

/* ---- the table and the entry point ------------------------------------------- */

static const keel_backend_api lin_api = {
    .abi_major = KEEL_BACKEND_ABI_MAJOR,
    .abi_minor = KEEL_BACKEND_ABI_MINOR,
    .struct_size = sizeof(keel_backend_api),
    .name = "keel-linear",
    .version = "1.0.0",
    .model_load = lin_model_load,
    .model_free = lin_model_free,
    .model_input_count = lin_model_input_count,
    .model_output_count = lin_model_output_count,
    .model_input_info = lin_model_input_info,
    .model_output_info = lin_model_output_info,
    .model_metadata_count = lin_model_metadata_count,
    .model_metadata_entry = lin_model_metadata_entry,
    .model_node_count = lin_model_node_count,
    .model_node_info = lin_model_node_info,
    .model_parameter_count = lin_model_parameter_count,
    .instance_create = lin_instance_create,
    .instance_free = lin_instance_free,
    .instance_run = lin_instance_run,
    .model_property_count = lin_model_property_count,
    .model_property_entry = lin_model_property_entry,
};

__attribute__((visibility("default")))
const keel_backend_api *keel_backend_get_api(uint32_t host_abi_major,
                                                        uint32_t host_abi_minor) {
    (void)host_abi_minor; /* a 1.0 table serves every 1.x host */
    if (host_abi_major != KEEL_BACKEND_ABI_MAJOR) return NULL;
    return &lin_api;
}
