/*
 * bench_core - latency of the Keel C core alone (no Python, no harness).
 *
 * Usage: bench_core MODEL.onnx [N ...]
 *   MODEL.onnx  a model whose first input is [N (dynamic), F], e.g. the policy
 *               written by `benchmarks/bench_core_vs_ort.py --write-model PATH`
 *               (`make bench-core` does both).
 *   N ...       batch sizes (default 10 100 500 1000).
 *
 * For each N: one session, a warm-up, then per-call timings of
 * keel_session_run with clock_gettime(CLOCK_MONOTONIC); prints median and p99
 * microseconds and the effective GFLOP/s when the model is the Gemm MLP.
 * Then a reference: raw cblas_sgemm 500x64 by 64x64 (the shape of a hidden
 * layer at N=500), and the model's first-layer product (500xF by Fx64), each
 * with its GFLOP/s. One OpenBLAS thread throughout. Last, on CPUs with
 * AVX-512F, the core's floating-point peak: twelve independent chains of
 * 16-float fused multiply-adds (64 flops per cycle on a core with two FMA
 * units), the ceiling any single-threaded product can reach.
 *
 * OpenBLAS picks its kernels from the CPU when it loads, unless the
 * environment variable OPENBLAS_CORETYPE names a kernel set (e.g. Haswell =
 * AVX2 only). The set in use is printed: the numbers depend on it heavily.
 */
#include <cblas.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "keel.h"

#if defined(__x86_64__)
#include <immintrin.h>

/* Twelve independent FMA chains, unrolled: throughput-bound, not latency-bound. */
__attribute__((target("avx512f"))) static float fma_chains(long iters) {
    __m512 a0 = _mm512_set1_ps(0), a1 = _mm512_set1_ps(1), a2 = _mm512_set1_ps(2), a3 = _mm512_set1_ps(3);
    __m512 a4 = _mm512_set1_ps(4), a5 = _mm512_set1_ps(5), a6 = _mm512_set1_ps(6), a7 = _mm512_set1_ps(7);
    __m512 a8 = _mm512_set1_ps(8), a9 = _mm512_set1_ps(9), a10 = _mm512_set1_ps(10), a11 = _mm512_set1_ps(11);
    const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    for (long t = 0; t < iters; t++) {
        a0 = _mm512_fmadd_ps(a0, b, c); a1 = _mm512_fmadd_ps(a1, b, c); a2 = _mm512_fmadd_ps(a2, b, c);
        a3 = _mm512_fmadd_ps(a3, b, c); a4 = _mm512_fmadd_ps(a4, b, c); a5 = _mm512_fmadd_ps(a5, b, c);
        a6 = _mm512_fmadd_ps(a6, b, c); a7 = _mm512_fmadd_ps(a7, b, c); a8 = _mm512_fmadd_ps(a8, b, c);
        a9 = _mm512_fmadd_ps(a9, b, c); a10 = _mm512_fmadd_ps(a10, b, c); a11 = _mm512_fmadd_ps(a11, b, c);
    }
    __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                             _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
    s = _mm512_add_ps(s, _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
    return _mm512_reduce_add_ps(s);
}
#endif

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Sorts t in place; returns the q-quantile (nearest rank). */
static double quantile_us(uint64_t *t, size_t n, double q) {
    qsort(t, n, sizeof *t, cmp_u64);
    size_t idx = (size_t)(q * (double)(n - 1) + 0.5);
    return (double)t[idx] / 1000.0;
}

static void fill(float *p, size_t n, unsigned seed) {
    uint32_t s = seed * 2654435761u + 1u;
    for (size_t i = 0; i < n; i++) {
        s = s * 1664525u + 1013904223u;
        p[i] = (float)((int32_t)(s >> 8) % 2001 - 1000) / 1000.0f;
    }
}

static size_t iterations_for(int64_t n) {
    size_t it = (size_t)(2000000 / (n > 0 ? n : 1));
    if (it < 2000) it = 2000;
    if (it > 20000) it = 20000;
    return it;
}

static int bench_sgemm(const char *label, int m, int k, int nn) {
    float *a = malloc(sizeof(float) * (size_t)m * k);
    float *b = malloc(sizeof(float) * (size_t)k * nn);
    float *c = malloc(sizeof(float) * (size_t)m * nn);
    size_t iters = 5000;
    uint64_t *t = malloc(sizeof(uint64_t) * iters);
    if (!a || !b || !c || !t) {
        fprintf(stderr, "out of memory\n");
        free(a); free(b); free(c); free(t);
        return 1;
    }
    fill(a, (size_t)m * k, 1);
    fill(b, (size_t)k * nn, 2);
    for (int w = 0; w < 200; w++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, nn, k, 1.0f, a, k, b, nn, 0.0f, c, nn);
    for (size_t i = 0; i < iters; i++) {
        uint64_t t0 = now_ns();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, nn, k, 1.0f, a, k, b, nn, 0.0f, c, nn);
        t[i] = now_ns() - t0;
    }
    double p99 = quantile_us(t, iters, 0.99);
    double med = quantile_us(t, iters, 0.5);
    double gflops = 2.0 * m * k * nn / (med * 1e3);
    printf("| cblas_sgemm %s (%dx%d by %dx%d) | %.2f | %.2f | %.1f |\n", label, m, k, k, nn, med, p99, gflops);
    free(a); free(b); free(c); free(t);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL.onnx [N ...]\n", argv[0]);
        return 2;
    }
    keel_error err;
    if (keel_blas_set_threads(1, &err) != KEEL_OK) {
        fprintf(stderr, "keel_blas_set_threads: %s\n", err.message);
        return 1;
    }
    openblas_set_num_threads(1);

    int64_t default_sizes[] = {10, 100, 500, 1000};
    int64_t sizes[64];
    size_t n_sizes = 0;
    if (argc > 2) {
        for (int i = 2; i < argc && n_sizes < 64; i++) {
            long long v = atoll(argv[i]);
            if (v <= 0) {
                fprintf(stderr, "bad N: %s\n", argv[i]);
                return 2;
            }
            sizes[n_sizes++] = v;
        }
    } else {
        memcpy(sizes, default_sizes, sizeof default_sizes);
        n_sizes = 4;
    }

    keel_model *model = NULL;
    if (keel_model_load_file(NULL, argv[1], &model, &err) != KEEL_OK) {
        fprintf(stderr, "load %s: [%s] %s\n", argv[1], keel_status_name(err.status), err.message);
        return 1;
    }
    keel_tensor_info in0;
    if (keel_model_input_count(model) != 1 || keel_model_input_info(model, 0, &in0, &err) != KEEL_OK ||
        in0.rank != 2 || in0.dims[1] <= 0) {
        fprintf(stderr, "bench_core expects one input of shape [N, F] with static F\n");
        keel_model_free(model);
        return 1;
    }
    int64_t f = in0.dims[1];
    size_t n_out = keel_model_output_count(model);
    keel_tensor *outs = calloc(n_out ? n_out : 1, sizeof *outs);

    /* FLOPs of a Gemm MLP, from the parameter count is not enough: recompute
     * from the policy layout F -> 64 -> 64 -> 1 when it matches. */
    uint64_t params = keel_model_parameter_count(model);
    int is_policy = params == (uint64_t)(f * 64 + 64 + 64 * 64 + 64 + 64 + 1);

    printf("Keel core %s, OpenBLAS %s (kernels: %s), threads %d, model %s (F=%lld, %llu parameters)\n\n",
           keel_version_string(), openblas_get_config(), openblas_get_corename(), keel_blas_threads(), argv[1],
           (long long)f, (unsigned long long)params);
    printf("| what | median us | p99 us | GFLOP/s (median) |\n|:---|---:|---:|---:|\n");

    int rc = 0;
    for (size_t s = 0; s < n_sizes && rc == 0; s++) {
        int64_t n = sizes[s];
        keel_session *sess = NULL;
        float *x = malloc(sizeof(float) * (size_t)(n * f));
        size_t iters = iterations_for(n);
        uint64_t *t = malloc(sizeof(uint64_t) * iters);
        if (!x || !t) {
            fprintf(stderr, "out of memory\n");
            free(x); free(t);
            rc = 1;
            break;
        }
        fill(x, (size_t)(n * f), (unsigned)n);
        keel_tensor in = {.data = x, .rank = 2, .shape = {n, f}};
        if (keel_session_create(model, &sess, &err) != KEEL_OK) {
            fprintf(stderr, "session: %s\n", err.message);
            free(x); free(t);
            rc = 1;
            break;
        }
        for (int w = 0; w < 200 && rc == 0; w++) {
            if (keel_session_run(sess, &in, 1, outs, n_out, &err) != KEEL_OK) {
                fprintf(stderr, "run N=%lld: [%s] %s\n", (long long)n, keel_status_name(err.status), err.message);
                rc = 1;
            }
        }
        volatile float sink = 0.0f;
        for (size_t i = 0; i < iters && rc == 0; i++) {
            uint64_t t0 = now_ns();
            keel_status st = keel_session_run(sess, &in, 1, outs, n_out, &err);
            t[i] = now_ns() - t0;
            if (st != KEEL_OK) {
                fprintf(stderr, "run: %s\n", err.message);
                rc = 1;
            }
            sink += outs[0].data[0];
        }
        (void)sink;
        if (rc == 0) {
            double p99 = quantile_us(t, iters, 0.99);
            double med = quantile_us(t, iters, 0.5);
            if (is_policy) {
                double flops = 2.0 * (double)n * ((double)f * 64 + 64 * 64 + 64);
                printf("| keel_session_run N=%lld (%zu calls) | %.2f | %.2f | %.1f |\n", (long long)n, iters, med, p99,
                       flops / (med * 1e3));
            } else {
                printf("| keel_session_run N=%lld (%zu calls) | %.2f | %.2f | - |\n", (long long)n, iters, med, p99);
            }
        }
        keel_session_free(sess);
        free(x);
        free(t);
    }
    free(outs);
    keel_model_free(model);
    if (rc) return rc;

    rc |= bench_sgemm("hidden layer", 500, 64, 64);
    rc |= bench_sgemm("first layer", 500, (int)f, 64);
#if defined(__x86_64__)
    if (keel_cpu_has_avx512()) {
        long iters = 50000000;
        double best = 0.0;
        volatile float sink = 0.0f;
        for (int rep = 0; rep < 5; rep++) {
            uint64_t t0 = now_ns();
            sink += fma_chains(iters);
            double g = (double)iters * 12 * 32 / (double)(now_ns() - t0);
            if (g > best) best = g;
        }
        (void)sink;
        printf("| AVX-512 FMA peak (12 independent chains, best of 5) | - | - | %.1f |\n", best);
    }
#endif
    printf("\nGFLOP/s counts 2*M*K*N per product (bias and ReLU not counted).\n");
    return rc;
}
