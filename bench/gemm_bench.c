/* gemm_bench.c: our prefill GEMM against OpenBLAS's sgemm on the projection shapes of mamba-130m
 * (512 prompt tokens), in the same run. It includes run.c to reach its static gemm().
 * Built and run by `make bench`; needs libopenblas-dev. */
#include <cblas.h>
#include <time.h>

#include "../run.c"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

int main(void) {
    int shapes[][3] = {{512, 3072, 768}, {512, 768, 1536}, {512, 80, 1536}, {512, 1536, 48}}; /* T, rows, cols */
    int threads = omp_get_max_threads();
    GemmScratch *scr = calloc(threads, sizeof *scr);
    int ok = 1;
    for (int t = 0; t < threads; t++) { scr[t].pack = alloc_floats(NR * KC, &ok); scr[t].tile = alloc_floats(MR * NR, &ok); }
    printf("%-18s %12s %12s %8s\n", "T x rows x cols", "ours GF/s", "OpenBLAS", "ratio");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int T = shapes[s][0], rows = shapes[s][1], cols = shapes[s][2];
        float *x = alloc_floats((size_t)T * cols, &ok), *w = alloc_floats((size_t)rows * cols, &ok);
        float *o1 = alloc_floats((size_t)T * rows, &ok), *o2 = alloc_floats((size_t)T * rows, &ok);
        for (size_t i = 0; i < (size_t)T * cols; i++) x[i] = (float)((i * 2654435761u) % 1000) / 1000 - 0.5f;
        for (size_t i = 0; i < (size_t)rows * cols; i++) w[i] = (float)((i * 40503u) % 997) / 997 - 0.5f;
        Tensor W = {w, DT_F32};
        double flops = 2.0 * T * rows * cols, best1 = 1e9, best2 = 1e9;
        for (int rep = 0; rep < 7; rep++) {
            double t0 = now();
            gemm(o1, rows, x, cols, T, &W, rows, cols, scr);
            double t1 = now();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, rows, cols, 1.0f, x, cols, w, cols, 0.0f, o2, rows);
            double t2 = now();
            if (t1 - t0 < best1) best1 = t1 - t0;
            if (t2 - t1 < best2) best2 = t2 - t1;
        }
        double maxdiff = 0;
        for (size_t i = 0; i < (size_t)T * rows; i++) maxdiff = fmax(maxdiff, fabs(o1[i] - o2[i]));
        char name[32];
        snprintf(name, sizeof name, "%dx%dx%d", T, rows, cols);
        printf("%-18s %12.1f %12.1f %7.0f%%   (max |diff| %.2g)\n", name, flops / best1 / 1e9, flops / best2 / 1e9,
               100 * best2 / best1, maxdiff);
        free(x); free(w); free(o1); free(o2);
    }
    return 0;
}
