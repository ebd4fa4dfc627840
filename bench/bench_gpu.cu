/* bench/bench_gpu.cu: times the GPU engine (run.cu, linked in) through engine.h, and the machine's
 * limits it is measured against: device-to-device copy bandwidth and the fp16 tensor-core GEMM rate.
 *
 *   bench_gpu model.bin [reps] [cases]
 *
 * Prints one line per case: prefill of 512/2048/8192-token prompts (fed in engine_prefill_chunk pieces),
 * prefill of single short prompts ("short": 16, 32 and 64 tokens, each from a reset slot; where the
 * token-by-token and the chunked Mamba-2 SSM cross over), decode with 1 sequence, and batched decode
 * with 1/8/64 sequences, each three ways: the logits copied out (engine_step), only each row's
 * argmax ("ids": engine_step_argmax, greedy generation), and only each row's token sampled on the
 * device at temperature 1 with top-p 0.9 ("top-p": engine_step_sample, sampled generation's
 * defaults; random weights give near-flat rows, the most candidates to sort); each with its floor:
 *   decode:  (weight bytes + the states read and written) / copy bandwidth, per step (the file's
 *            bytes: q8_0 and q4_0 weights count 34/32 and 18/32 bytes, their scales included)
 *   prefill: 2 * (parameters of the matrices outside the embedding) FLOPs per token / GEMM rate
 * Medians of reps runs. cases (default "prefill,short,decode1,decode8,decode64") picks some of them.
 * BENCH_PROFILE=1: no timing; each case is warmed up, then one prefill chunk or two decode steps (of
 * each of the three ends) run between cudaProfilerStart and cudaProfilerStop (for ncu
 * --profile-from-start off). */
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

extern "C" {
#include "engine.h"
}

#define CHECK(call)                                                                                \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) { fprintf(stderr, "%s: %s\n", #call, cudaGetErrorString(e_)); exit(1); } \
    } while (0)

static double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(double *v, int n) {
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Device-to-device copy, bytes read + written per second (as targets.md counts it). */
static double copy_bandwidth(void) {
    const size_t bytes = (size_t)2 << 30;
    void *a, *b;
    CHECK(cudaMalloc(&a, bytes));
    CHECK(cudaMalloc(&b, bytes));
    CHECK(cudaMemset(a, 1, bytes));
    cudaEvent_t t0, t1;
    CHECK(cudaEventCreate(&t0));
    CHECK(cudaEventCreate(&t1));
    double r[10];
    for (int i = 0; i < 12; i++) {
        CHECK(cudaEventRecord(t0));
        CHECK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
        CHECK(cudaEventRecord(t1));
        CHECK(cudaEventSynchronize(t1));
        float ms;
        CHECK(cudaEventElapsedTime(&ms, t0, t1));
        if (i >= 2) r[i - 2] = 2.0 * bytes / (ms * 1e-3);
    }
    CHECK(cudaFree(a));
    CHECK(cudaFree(b));
    return median(r, 10);
}

/* fp16 GEMM, fp32 accumulation, 8192^3, FLOP/s. */
static double gemm_rate(void) {
    const int n = 8192;
    void *a, *b, *c;
    CHECK(cudaMalloc(&a, (size_t)n * n * 2));
    CHECK(cudaMalloc(&b, (size_t)n * n * 2));
    CHECK(cudaMalloc(&c, (size_t)n * n * 4));
    CHECK(cudaMemset(a, 0x3c, (size_t)n * n * 2)); /* some finite halves */
    CHECK(cudaMemset(b, 0x3c, (size_t)n * n * 2));
    cublasHandle_t h;
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) { fprintf(stderr, "cublasCreate failed\n"); exit(1); }
    const float one = 1, zero = 0;
    cudaEvent_t t0, t1;
    CHECK(cudaEventCreate(&t0));
    CHECK(cudaEventCreate(&t1));
    double r[5];
    for (int i = 0; i < 7; i++) {
        CHECK(cudaEventRecord(t0));
        if (cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &one, a, CUDA_R_16F, n, b, CUDA_R_16F, n, &zero, c,
                         CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
            fprintf(stderr, "cublasGemmEx failed\n");
            exit(1);
        }
        CHECK(cudaEventRecord(t1));
        CHECK(cudaEventSynchronize(t1));
        float ms;
        CHECK(cudaEventElapsedTime(&ms, t0, t1));
        if (i >= 2) r[i - 2] = 2.0 * n * n * (double)n / (ms * 1e-3);
    }
    cublasDestroy(h);
    CHECK(cudaFree(a));
    CHECK(cudaFree(b));
    CHECK(cudaFree(c));
    return median(r, 5);
}

/* Parameters of the matrices outside the embedding (model.h: in_proj, x_proj, dt_proj, out_proj;
 * lm_head when untied): the prefill's GEMMs, whatever their dtype. */
static double matrix_params(const Config *c) {
    const double D = c->d_model, E = c->d_inner, N = c->d_state;
    double layer;
    if (c->arch == ARCH_MAMBA2)
        layer = (2 * E + 2.0 * c->n_groups * N + c->n_heads) * D + D * E;
    else
        layer = 2 * E * D + (c->dt_rank + 2 * N) * E + E * c->dt_rank + D * E;
    return c->n_layer * layer + (c->tied ? 0.0 : (double)c->vocab_rows * D);
}

/* Whether the comma-separated list has this case. */
static int wanted(const char *list, const char *name) {
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == 0)) return 1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: bench_gpu model.bin [reps] [cases]\n"); return 2; }
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (reps < 1 || reps > 100) reps = 5;
    const char *cases = argc > 3 ? argv[3] : "prefill,short,decode1,decode8,decode64";
    const int profile = getenv("BENCH_PROFILE") && !strcmp(getenv("BENCH_PROFILE"), "1");
    Model m;
    char err[512];
    if (model_open(&m, argv[1], err, sizeof err) != 0) { fprintf(stderr, "%s\n", err); return 1; }
    const Config *c = &m.config;
    const int max_seqs = 64;
    double t = bench_now();
    Engine *e = engine_new(&m, 0, max_seqs, err, sizeof err);
    if (!e) { fprintf(stderr, "%s\n", err); return 1; }
    double load_s = bench_now() - t;
    const double wbytes = (double)model_weight_bytes(c);
    const double sbytes = (double)engine_state_floats(e) * 4;
    const double params = matrix_params(c);
    const double bw = copy_bandwidth(), rate = gemm_rate();
    printf("# %s | %s: d_model %d, n_layer %d, %s, weights %.3f GB, state %.2f MB a sequence, load %.2f s\n",
           engine_name(e), argv[1], c->d_model, c->n_layer, dtype_name(c->dtype), wbytes / 1e9, sbytes / 1e6, load_s);
    printf("# copy bandwidth %.0f GB/s (read + write), fp16 GEMM %.0f TFLOP/s (8192^3)\n", bw / 1e9, rate / 1e12);
    printf("%-22s %12s %12s %8s\n", "case", "tok/s", "floor tok/s", "of floor");

    const int maxlen = 8192;
    int *toks = (int *)malloc(sizeof(int) * maxlen);
    for (int i = 0; i < maxlen; i++) toks[i] = (int)((i * 2654435761u) % (unsigned)c->vocab_size);
    double r[100];

    const int chunk = engine_prefill_chunk(e);
    if (profile && wanted(cases, "prefill")) {
        for (int k = 0; k < 2; k++) engine_prefill(e, 0, toks, chunk, 0); /* warm-up */
        CHECK(cudaProfilerStart());
        engine_prefill(e, 0, toks, chunk, 0);
        CHECK(cudaProfilerStop());
    }
    const int lens[3] = {512, 2048, 8192};
    for (int li = 0; li < 3 && !profile && wanted(cases, "prefill"); li++) {
        int len = lens[li];
        for (int k = -1; k < reps; k++) { /* one run to warm up */
            engine_reset(e, 0);
            t = bench_now();
            for (int i = 0; i < len; i += chunk) engine_prefill(e, 0, toks + i, len - i < chunk ? len - i : chunk, 0);
            if (k >= 0) r[k] = len / (bench_now() - t);
        }
        double floor = rate / (2 * params);
        char name[32];
        snprintf(name, sizeof name, "prefill %d", len);
        double v = median(r, reps);
        printf("%-22s %12.0f %12.0f %7.0f%%\n", name, v, floor, 100 * v / floor);
    }

    const int shorts[3] = {16, 32, 64}, prompts = 32;
    for (int li = 0; li < 3 && !profile && wanted(cases, "short"); li++) {
        int len = shorts[li];
        for (int k = -1; k < reps; k++) { /* one run to warm up */
            t = bench_now();
            for (int i = 0; i < prompts; i++) {
                engine_reset(e, 0);
                engine_prefill(e, 0, toks + i, len, 0);
            }
            if (k >= 0) r[k] = (double)prompts * len / (bench_now() - t);
        }
        char name[32];
        snprintf(name, sizeof name, "prompt of %d tokens", len);
        double v = median(r, reps), floor = rate / (2 * params);
        printf("%-22s %12.0f %12.0f %7.0f%%\n", name, v, floor, 100 * v / floor);
    }

    const int batches[3] = {1, 8, 64};
    for (int bi = 0; bi < 3; bi++) {
        int nb = batches[bi], steps = nb == 1 ? 256 : 64;
        char name[32];
        snprintf(name, sizeof name, "decode%d", nb);
        if (!wanted(cases, name)) continue;
        for (int s = 0; s < nb; s++) {
            engine_reset(e, s);
            engine_prefill(e, s, toks + s, 16, 0);
        }
        int tk[64], ids[64];
        SampleDraw d[64];
        for (int s = 0; s < nb; s++) {
            tk[s] = toks[100 + s];
            d[s] = (SampleDraw){1.0f, 0.9f, -INFINITY, (s + 0.5f) / nb, 0}; /* temperature 1, top-p 0.9 */
        }
        static const char *const ends[3] = {"", " ids", " top-p"};
        for (int end = 0; end < 3; end++) {
            /* the same token each step: the state moves on, the work does not depend on it */
            auto step = [&]() {
                if (end == 0) engine_step(e, tk, nb);
                else if (end == 1) engine_step_argmax(e, tk, nb, ids);
                else engine_step_sample(e, tk, nb, d, ids);
            };
            for (int k = 0; k < 8; k++) step(); /* graph capture, warm-up */
            if (profile) {
                CHECK(cudaProfilerStart());
                for (int k = 0; k < 2; k++) step();
                CHECK(cudaProfilerStop());
                continue;
            }
            for (int k = 0; k < reps; k++) {
                t = bench_now();
                for (int i = 0; i < steps; i++) step();
                r[k] = (double)steps * nb / (bench_now() - t);
            }
            double floor = nb * bw / (wbytes + 2 * nb * sbytes);
            snprintf(name, sizeof name, "decode batch %d%s", nb, ends[end]);
            double v = median(r, reps);
            printf("%-22s %12.0f %12.0f %7.0f%%\n", name, v, floor, 100 * v / floor);
        }
    }
    free(toks);
    engine_free(e);
    model_close(&m);
    return 0;
}
