/* Packed dense layers: matrix products whose right-hand side is a constant of
 * the model (the weights of Gemm and MatMul layers), run by Keel's own AVX-512
 * (or AVX2) kernels instead of cblas_sgemm.
 *
 * Why: a policy network multiplies a small activation matrix (one row per
 * asset) by the same weight matrices on every call. cblas_sgemm repacks those
 * weights on every call and, at 10 or 100 rows, spends more time in its call
 * overhead and packing than in arithmetic; and it runs whatever kernels
 * OpenBLAS chose, which an operator may have pinned to older ones
 * (OPENBLAS_CORETYPE). Here the weights are packed once, when the model loads,
 * into column panels of 64 floats (four 16-float vectors), and a 6-row by
 * 64-column register tile runs over them with the bias, alpha and a fused ReLU
 * applied before the tile is stored. Nothing is allocated at run time.
 *
 * When: the CPU supports AVX-512F (or, with the 6-row by 16-column tile of the
 * AVX2 kernel, AVX2 and FMA), the environment variable KEEL_GEMM is not
 * "blas", and the layer is no larger than KEEL_DENSE_MAX_DIM in K and N.
 * KEEL_GEMM=avx2 chooses the AVX2 kernel on an AVX-512 CPU (tests, and
 * comparisons). Otherwise every product goes through cblas_sgemm as before. Every path is
 * checked against the same ONNX Runtime references in the conformance tests,
 * and this kernel against a double-precision reference in the C tests. */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define KEEL_DENSE_X86 1
#else
#define KEEL_DENSE_X86 0
#endif

#define PANEL 64  /* columns per packed panel: four 16-float vectors */
#define MR 6      /* rows per register tile: 6 x 4 accumulators + 4 weights + 1 broadcast <= 32 registers */

enum { ISA_AVX512 = 1, ISA_AVX2 = 2 };

struct keel_dense {
    size_t k, n;       /* y[m,n] = alpha * a[m,k] . B[k,n] + bias[n] */
    size_t panels;     /* ceil(n / PANEL) */
    float *packed;     /* n > 1: [panels][k][PANEL]; n == 1: B as k floats. Zero padded, 64-byte aligned */
    float *bias;       /* [panels * PANEL] (beta * C broadcast to a row, zeros without C) */
    float alpha;
    int relu;
    int isa;           /* ISA_AVX512 or ISA_AVX2, chosen when packed */
};

#if KEEL_DENSE_X86
static bool cpu_has_avx2_fma(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#endif

/* The kernel set this process packs for now (0: none), and why none. */
static int current_isa(const char **why) {
#if KEEL_DENSE_X86
    const char *mode = getenv("KEEL_GEMM");
    if (mode != NULL && strcmp(mode, "blas") == 0) { *why = "KEEL_GEMM=blas"; return 0; }
    bool avx2 = mode != NULL && strcmp(mode, "avx2") == 0;
    if (!avx2 && keel_cpu_has_avx512()) return ISA_AVX512;
    if (cpu_has_avx2_fma()) return ISA_AVX2;
    *why = "no AVX-512F or AVX2+FMA";
    return 0;
#else
    *why = "not an x86-64 CPU";
    return 0;
#endif
}

const char *keel_dense_off_reason(void) {
    const char *why = NULL;
    return current_isa(&why) ? NULL : why;
}

const char *keel_dense_isa_name(void) {
    const char *why = NULL;
    switch (current_isa(&why)) {
    case ISA_AVX512: return "AVX-512";
    case ISA_AVX2: return "AVX2";
    default: return NULL;
    }
}

keel_status keel_dense_create(size_t k, size_t n, const float *b, int trans_b, float alpha, const float *c,
                              size_t c_count, float beta, int relu, keel_dense **out, keel_error *err) {
    *out = NULL;
    const char *why = NULL;
    int isa = current_isa(&why);
    if (isa == 0) return keel_error_set(err, KEEL_ERR_UNSUPPORTED, "the packed dense kernels are off: %s", why);
    if (k == 0 || n == 0 || k > KEEL_DENSE_MAX_DIM || n > KEEL_DENSE_MAX_DIM)
        return keel_error_set(err, KEEL_ERR_UNSUPPORTED, "dense layer %zux%zu is outside the packed kernels' range", k, n);
    if (c != NULL && c_count != 1 && c_count != n)
        return keel_error_set(err, KEEL_ERR_UNSUPPORTED, "bias of %zu values does not broadcast to a row of %zu", c_count, n);
    keel_dense *d = calloc(1, sizeof *d);
    if (d == NULL) return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "out of memory packing a dense layer");
    d->k = k;
    d->n = n;
    d->panels = (n + PANEL - 1) / PANEL;
    d->alpha = alpha;
    d->relu = relu ? 1 : 0;
    d->isa = isa;
    /* k, n <= KEEL_DENSE_MAX_DIM (4096): these products cannot overflow */
    size_t packed_count = keel_dense_footprint(k, n) - d->panels * PANEL;
    d->packed = keel_aligned_alloc(packed_count * sizeof(float));
    d->bias = keel_aligned_alloc(d->panels * PANEL * sizeof(float));
    if (d->packed == NULL || d->bias == NULL) {
        keel_dense_free(d);
        return keel_error_set(err, KEEL_ERR_OUT_OF_MEMORY, "out of memory packing a dense layer");
    }
    memset(d->packed, 0, packed_count * sizeof(float));
    memset(d->bias, 0, d->panels * PANEL * sizeof(float));
    /* B(p, j) is b[p*n + j], or b[j*k + p] when B is stored transposed */
    if (n == 1) {
        memcpy(d->packed, b, k * sizeof(float)); /* [k,1] and [1,k] are both k contiguous floats */
    } else {
        for (size_t pn = 0; pn < d->panels; pn++)
            for (size_t p = 0; p < k; p++) {
                float *dst = d->packed + (pn * k + p) * PANEL;
                for (size_t j = 0; j < PANEL && pn * PANEL + j < n; j++) {
                    size_t col = pn * PANEL + j;
                    dst[j] = trans_b ? b[col * k + p] : b[p * n + col];
                }
            }
    }
    if (c != NULL && beta != 0.0f)
        for (size_t j = 0; j < n; j++) d->bias[j] = beta * (c_count == 1 ? c[0] : c[j]);
    *out = d;
    return KEEL_OK;
}

size_t keel_dense_footprint(size_t k, size_t n) {
    size_t panels = (n + PANEL - 1) / PANEL;
    return (n == 1 ? k : panels * k * PANEL) + panels * PANEL;
}

void keel_dense_free(keel_dense *d) {
    if (d == NULL) return;
    keel_aligned_free(d->packed);
    keel_aligned_free(d->bias);
    free(d);
}

size_t keel_dense_k(const keel_dense *d) { return d->k; }
size_t keel_dense_n(const keel_dense *d) { return d->n; }

#if KEEL_DENSE_X86

#define AVX512 __attribute__((target("avx512f")))
#define INLINE static inline __attribute__((always_inline))

/* One tile: rows [0, mr) of a (row stride k) times one packed panel, nv of its
 * four vectors, the last one stored under `last` (a mask of valid columns). mr
 * and nv are compile-time constants at every call, so the loops unroll and the
 * accumulators stay in registers. */
AVX512 INLINE void tile(const float *a, size_t k, const float *panel, const float *bias, float alpha, int relu,
                        float *y, size_t ldy, int mr, int nv, __mmask16 last) {
    __m512 acc[MR][4];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) acc[r][v] = _mm512_setzero_ps();
    const float *arow[MR];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) arow[r] = a + (size_t)r * k;
    for (size_t p = 0; p < k; p++) {
        const float *bp = panel + p * PANEL;
        __m512 bv[4];
#pragma GCC unroll 4
        for (int v = 0; v < nv; v++) bv[v] = _mm512_load_ps(bp + 16 * v);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            __m512 av = _mm512_set1_ps(arow[r][p]);
#pragma GCC unroll 4
            for (int v = 0; v < nv; v++) acc[r][v] = _mm512_fmadd_ps(av, bv[v], acc[r][v]);
        }
    }
    const __m512 zero = _mm512_setzero_ps();
    const __m512 al = _mm512_set1_ps(alpha);
#pragma GCC unroll 4
    for (int v = 0; v < nv; v++) {
        __m512 bb = _mm512_load_ps(bias + 16 * v);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            __m512 x = acc[r][v];
            if (alpha != 1.0f) x = _mm512_mul_ps(x, al);
            x = _mm512_add_ps(x, bb);
            if (relu) x = _mm512_max_ps(zero, x); /* max(0, NaN) is NaN, as in the reference ReLU */
            float *dst = y + (size_t)r * ldy + 16 * v;
            if (v == nv - 1) _mm512_mask_storeu_ps(dst, last, x);
            else _mm512_storeu_ps(dst, x);
        }
    }
}

typedef void (*tile_fn)(const float *, size_t, const float *, const float *, float, int, float *, size_t, __mmask16);

#define TILE(R, V)                                                                                              \
    AVX512 static void tile_##R##x##V(const float *a, size_t k, const float *panel, const float *bias,          \
                                      float alpha, int relu, float *y, size_t ldy, __mmask16 last) {          \
        tile(a, k, panel, bias, alpha, relu, y, ldy, R, V, last);                                              \
    }
#define TILES(R) TILE(R, 1) TILE(R, 2) TILE(R, 3) TILE(R, 4)
TILES(1) TILES(2) TILES(3) TILES(4) TILES(5) TILES(6)
#define ROW(R) {tile_##R##x1, tile_##R##x2, tile_##R##x3, tile_##R##x4}
static const tile_fn TILE_FNS[MR][4] = {ROW(1), ROW(2), ROW(3), ROW(4), ROW(5), ROW(6)};

/* n == 1: one dot product per row. */
AVX512 static void dot_rows(const keel_dense *d, size_t m, const float *a, float *y) {
    size_t k = d->k;
    const float *b = d->packed;
    size_t tail = k % 16;
    __mmask16 tmask = (__mmask16)((1u << tail) - 1u);
    float bias = d->bias[0];
    for (size_t i = 0; i < m; i++) {
        const float *row = a + i * k;
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
        size_t p = 0;
        for (; p + 32 <= k; p += 32) {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(row + p), _mm512_loadu_ps(b + p), s0);
            s1 = _mm512_fmadd_ps(_mm512_loadu_ps(row + p + 16), _mm512_loadu_ps(b + p + 16), s1);
        }
        if (p + 16 <= k) {
            s0 = _mm512_fmadd_ps(_mm512_loadu_ps(row + p), _mm512_loadu_ps(b + p), s0);
            p += 16;
        }
        if (tail) s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tmask, row + p), _mm512_maskz_loadu_ps(tmask, b + p), s1);
        float v = _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
        if (d->alpha != 1.0f) v *= d->alpha;
        v += bias;
        y[i] = d->relu && v < 0.0f ? 0.0f : v;
    }
}

AVX512 static void run_avx512(const keel_dense *d, size_t m, const float *a, float *y) {
    if (d->n == 1) {
        dot_rows(d, m, a, y);
        return;
    }
    size_t k = d->k, n = d->n;
    for (size_t pn = 0; pn < d->panels; pn++) {
        size_t col = pn * PANEL;
        size_t cols = n - col < PANEL ? n - col : PANEL;
        int nv = (int)((cols + 15) / 16);
        size_t rem = cols - 16 * (size_t)(nv - 1);
        __mmask16 last = (__mmask16)(rem == 16 ? 0xFFFFu : (1u << rem) - 1u);
        const float *panel = d->packed + pn * k * PANEL;
        const float *bias = d->bias + col;
        size_t i = 0;
        for (; i + MR <= m; i += MR)
            TILE_FNS[MR - 1][nv - 1](a + i * k, k, panel, bias, d->alpha, d->relu, y + i * n + col, n, last);
        if (i < m)
            TILE_FNS[m - i - 1][nv - 1](a + i * k, k, panel, bias, d->alpha, d->relu, y + i * n + col, n, last);
    }
}

/* ---- AVX2 + FMA: 16 registers, so a 6-row by 16-column tile (12
 * accumulators, 2 weight vectors, 1 broadcast) over a 16-column slice of the
 * same 64-column panels. */

#define AVX2 __attribute__((target("avx2,fma")))

AVX2 static inline __m256i avx2_mask(size_t valid) { /* lanes [0, valid) on, valid in 1..8 */
    static const int32_t ramp[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
    return _mm256_loadu_si256((const __m256i *)(ramp + 8 - valid));
}

AVX2 INLINE void tile8(const float *a, size_t k, const float *slice, const float *bias, float alpha, int relu,
                       float *y, size_t ldy, int mr, int nv, size_t last_valid) {
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++)
#pragma GCC unroll 2
        for (int v = 0; v < nv; v++) acc[r][v] = _mm256_setzero_ps();
    const float *arow[MR];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) arow[r] = a + (size_t)r * k;
    for (size_t p = 0; p < k; p++) {
        const float *bp = slice + p * PANEL;
        __m256 bv[2];
#pragma GCC unroll 2
        for (int v = 0; v < nv; v++) bv[v] = _mm256_load_ps(bp + 8 * v);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            __m256 av = _mm256_broadcast_ss(arow[r] + p);
#pragma GCC unroll 2
            for (int v = 0; v < nv; v++) acc[r][v] = _mm256_fmadd_ps(av, bv[v], acc[r][v]);
        }
    }
    const __m256 zero = _mm256_setzero_ps();
    const __m256 al = _mm256_set1_ps(alpha);
    const __m256i mask = avx2_mask(last_valid);
#pragma GCC unroll 2
    for (int v = 0; v < nv; v++) {
        __m256 bb = _mm256_load_ps(bias + 8 * v);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            __m256 x = acc[r][v];
            if (alpha != 1.0f) x = _mm256_mul_ps(x, al);
            x = _mm256_add_ps(x, bb);
            if (relu) x = _mm256_max_ps(zero, x); /* max(0, NaN) is NaN */
            float *dst = y + (size_t)r * ldy + 8 * v;
            if (v == nv - 1 && last_valid < 8) _mm256_maskstore_ps(dst, mask, x);
            else _mm256_storeu_ps(dst, x);
        }
    }
}

typedef void (*tile8_fn)(const float *, size_t, const float *, const float *, float, int, float *, size_t, size_t);

#define TILE8(R, V)                                                                                             \
    AVX2 static void tile8_##R##x##V(const float *a, size_t k, const float *slice, const float *bias,          \
                                     float alpha, int relu, float *y, size_t ldy, size_t last_valid) {        \
        tile8(a, k, slice, bias, alpha, relu, y, ldy, R, V, last_valid);                                       \
    }
#define TILES8(R) TILE8(R, 1) TILE8(R, 2)
TILES8(1) TILES8(2) TILES8(3) TILES8(4) TILES8(5) TILES8(6)
#define ROW8(R) {tile8_##R##x1, tile8_##R##x2}
static const tile8_fn TILE8_FNS[MR][2] = {ROW8(1), ROW8(2), ROW8(3), ROW8(4), ROW8(5), ROW8(6)};

AVX2 static void dot_rows_avx2(const keel_dense *d, size_t m, const float *a, float *y) {
    size_t k = d->k;
    const float *b = d->packed;
    size_t tail = k % 8;
    __m256i tmask = avx2_mask(tail ? tail : 8);
    float bias = d->bias[0];
    for (size_t i = 0; i < m; i++) {
        const float *row = a + i * k;
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
        size_t p = 0;
        for (; p + 16 <= k; p += 16) {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + p), _mm256_loadu_ps(b + p), s0);
            s1 = _mm256_fmadd_ps(_mm256_loadu_ps(row + p + 8), _mm256_loadu_ps(b + p + 8), s1);
        }
        if (p + 8 <= k) {
            s0 = _mm256_fmadd_ps(_mm256_loadu_ps(row + p), _mm256_loadu_ps(b + p), s0);
            p += 8;
        }
        if (tail) s1 = _mm256_fmadd_ps(_mm256_maskload_ps(row + p, tmask), _mm256_maskload_ps(b + p, tmask), s1);
        __m256 s = _mm256_add_ps(s0, s1);
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_movehdup_ps(h));
        float v = _mm_cvtss_f32(h);
        if (d->alpha != 1.0f) v *= d->alpha;
        v += bias;
        y[i] = d->relu && v < 0.0f ? 0.0f : v;
    }
}

AVX2 static void run_avx2(const keel_dense *d, size_t m, const float *a, float *y) {
    if (d->n == 1) {
        dot_rows_avx2(d, m, a, y);
        return;
    }
    size_t k = d->k, n = d->n;
    for (size_t col = 0; col < n; col += 16) {
        size_t cols = n - col < 16 ? n - col : 16;
        int nv = (int)((cols + 7) / 8);
        size_t last_valid = cols - 8 * (size_t)(nv - 1);
        const float *slice = d->packed + (col / PANEL) * k * PANEL + col % PANEL;
        const float *bias = d->bias + col;
        size_t i = 0;
        for (; i + MR <= m; i += MR)
            TILE8_FNS[MR - 1][nv - 1](a + i * k, k, slice, bias, d->alpha, d->relu, y + i * n + col, n, last_valid);
        if (i < m)
            TILE8_FNS[m - i - 1][nv - 1](a + i * k, k, slice, bias, d->alpha, d->relu, y + i * n + col, n,
                                         last_valid);
    }
}

void keel_dense_run(const keel_dense *d, size_t m, const float *a, float *y) {
    if (m == 0) return;
    if (d->isa == ISA_AVX512) run_avx512(d, m, a, y);
    else run_avx2(d, m, a, y);
}

#else /* no x86: keel_dense_create refuses, so no dense layer exists to run */

void keel_dense_run(const keel_dense *d, size_t m, const float *a, float *y) {
    (void)d; (void)m; (void)a; (void)y;
}

#endif
