/* bandwidth.c: memory read bandwidth with the OpenMP threads ./run would use, so `make bench`
 * can put decode speed next to its floor (bytes of weights per token / bandwidth). */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../vec.h"

int main(void) {
    size_t bytes = (size_t)1 << 30, n = bytes / sizeof(float);
    float *a = aligned_alloc(64, bytes);
    if (!a) { fprintf(stderr, "error: out of memory\n"); return 1; }
    memset(a, 0, bytes);
    double best = 0;
    float sink = 0;
    for (int rep = 0; rep < 5; rep++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        vfloat total = {0};
#pragma omp parallel
        {
            vfloat s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0}, v;
#pragma omp for schedule(static)
            for (size_t i = 0; i < n; i += 4 * VL) {
                memcpy(&v, a + i, sizeof v); s0 += v;
                memcpy(&v, a + i + VL, sizeof v); s1 += v;
                memcpy(&v, a + i + 2 * VL, sizeof v); s2 += v;
                memcpy(&v, a + i + 3 * VL, sizeof v); s3 += v;
            }
#pragma omp critical
            total += s0 + s1 + s2 + s3;
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double gbs = bytes / ((t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9) / 1e9;
        if (gbs > best) best = gbs;
        sink += total[0];
    }
    printf("%.1f\n", best + sink * 0);
    free(a);
    return 0;
}
