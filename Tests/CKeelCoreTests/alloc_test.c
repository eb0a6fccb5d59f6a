/* Proves that a run at the same input shapes allocates nothing: malloc and
 * friends are interposed (glibc's __libc_* functions) and counted while
 * repeated runs execute. Built WITHOUT sanitizers (they interpose malloc too).
 * Prints the plain "N passed, N failed" line. */
#include "testlib.h"

#include <stdatomic.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static atomic_long g_allocs = 0;
static atomic_int g_counting = 0;

static void count(void) { if (atomic_load(&g_counting)) atomic_fetch_add(&g_allocs, 1); }
void *malloc(size_t n) { count(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { count(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { count(); return __libc_realloc(p, n); }
void *aligned_alloc(size_t al, size_t n) { count(); return __libc_memalign(al, n); }
int posix_memalign(void **p, size_t al, size_t n) { count(); *p = __libc_memalign(al, n); return *p ? 0 : 12; }
void *memalign(size_t al, size_t n) { count(); return __libc_memalign(al, n); }
void free(void *p) { __libc_free(p); }

static long runs_allocations(keel_session *s, int n, int feats, int times) {
    float *x = __libc_malloc(sizeof(float) * (size_t)n * (size_t)feats);
    for (int i = 0; i < n * feats; i++) x[i] = (float)(i % 13) * 0.1f - 0.5f;
    keel_tensor in = {x, 2, {n, feats}}, out;
    keel_error err;
    if (keel_session_run(s, &in, 1, &out, 1, &err) != KEEL_OK) { __libc_free(x); return -1; } /* warm-up: may plan */
    atomic_store(&g_allocs, 0);
    atomic_store(&g_counting, 1);
    for (int t = 0; t < times; t++)
        if (keel_session_run(s, &in, 1, &out, 1, &err) != KEEL_OK) { atomic_store(&g_counting, 0); __libc_free(x); return -1; }
    atomic_store(&g_counting, 0);
    __libc_free(x);
    return atomic_load(&g_allocs);
}

/* The same through keel_session_bind / keel_session_run_bound. */
static long bound_runs_allocations(keel_session *s, int n, int feats, int times) {
    float *x = __libc_malloc(sizeof(float) * (size_t)n * (size_t)feats);
    float *y = __libc_malloc(sizeof(float) * (size_t)n);
    for (int i = 0; i < n * feats; i++) x[i] = (float)(i % 7) * 0.2f - 0.5f;
    keel_tensor in = {x, 2, {n, feats}}, out = {y, 2, {n, 1}};
    keel_error err;
    long result = -1;
    if (keel_session_bind(s, &in, 1, &out, 1, &err) == KEEL_OK && keel_session_run_bound(s, &err) == KEEL_OK) {
        atomic_store(&g_allocs, 0);
        atomic_store(&g_counting, 1);
        int t = 0;
        while (t < times && keel_session_run_bound(s, &err) == KEEL_OK) t++;
        atomic_store(&g_counting, 0);
        result = t == times ? atomic_load(&g_allocs) : -1;
    }
    __libc_free(x);
    __libc_free(y);
    return result;
}

int main(void) {
    t_current = "alloc";
    /* policy-shaped MLP: [N,32] -> 64 -> 64 -> 1 with Gemm/Relu, then Softmax over assets */
    enum { FEAT = 32, HID = 64 };
    static float w1[FEAT * HID], b1[HID], w2[HID * HID], b2[HID], w3[HID], b3[1];
    unsigned s = 1;
    for (size_t i = 0; i < sizeof w1 / 4; i++) w1[i] = t_rand(&s) * 0.2f;
    for (size_t i = 0; i < sizeof w2 / 4; i++) w2[i] = t_rand(&s) * 0.2f;
    for (size_t i = 0; i < sizeof w3 / 4; i++) w3[i] = t_rand(&s) * 0.2f;
    mb b;
    mb_init(&b, 17);
    mb_input(&b, "x", 2, (int64_t[]){-1, FEAT});
    mb_output(&b, "y", 2, (int64_t[]){-1, 1});
    mb_init_f(&b, "w1", 2, (int64_t[]){FEAT, HID}, w1, 1);
    mb_init_f(&b, "b1", 1, (int64_t[]){HID}, b1, 1);
    mb_init_f(&b, "w2", 2, (int64_t[]){HID, HID}, w2, 1);
    mb_init_f(&b, "b2", 1, (int64_t[]){HID}, b2, 1);
    mb_init_f(&b, "w3", 2, (int64_t[]){HID, 1}, w3, 1);
    mb_init_f(&b, "b3", 1, (int64_t[]){1}, b3, 1);
    mb_node(&b, "Gemm", "l1", "x,w1,b1", "h1");
    mb_node(&b, "Relu", "a1", "h1", "r1");
    mb_node(&b, "Gemm", "l2", "r1,w2,b2", "h2");
    mb_node(&b, "Relu", "a2", "h2", "r2");
    mb_node(&b, "Gemm", "l3", "r2,w3,b3", "z");
    Onnx__NodeProto *sm = mb_node(&b, "Softmax", "sm", "z", "y");
    mb_attr_i(&b, sm, "axis", 0);
    size_t len;
    uint8_t *buf = mb_pack(&b, &len);
    mb_free(&b);
    keel_error err;
    keel_model *m = NULL;
    keel_status st = keel_model_load_bytes(NULL, buf, len, "alloc", &m, &err);
    free(buf);
    CHECK_STATUS(st, KEEL_OK, err);
    if (!m) return t_report();
    keel_session *sess;
    keel_session_create(m, &sess, &err);
    int sizes[] = {10, 100, 1000, 100, 10};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        long a = runs_allocations(sess, sizes[i], FEAT, 200);
        CHECK(a == 0, "N=%d: 200 repeated runs made %ld allocations", sizes[i], a);
        long ab = bound_runs_allocations(sess, sizes[i], FEAT, 200);
        CHECK(ab == 0, "N=%d: 200 repeated bound runs made %ld allocations", sizes[i], ab);
    }
    keel_session_free(sess);
    keel_model_free(m);
    return t_report();
}
