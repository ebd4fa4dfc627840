/* bench/bench_sampler.c: the host sampler (sampler.c) alone, time per sampled row on a
 * GPT-NeoX-sized vocabulary (50,280), at temperature 1 with the default top-p 0.9, with top-k 40,
 * and with top-p 0.9 after min-p 0.05, over two kinds of rows:
 *   flat:   logits uniform in [-1, 1], as a model with random weights gives (bench/make_synth.py):
 *           top-p keeps about 38,000 candidates, all of which are sorted
 *   peaked: logits 8 * N(0, 1), a few hundred candidates in the nucleus, nearer a trained model's
 * Batch mode on the GPU samples every row of a step on the host (engine_step's logits), so this is
 * what a sampled run pays a row on top of the decode.
 *
 *   make bench/bench_sampler && ./bench/bench_sampler [rows]      (default 200 rows a case) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "sampler.h"
#include "util.h" /* now_s */

static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static double uniform(void) { /* in [0, 1) */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return ((rng * 0x2545F4914F6CDD1DULL) >> 11) * 0x1.0p-53;
}
static double normal(void) { /* Box-Muller */
    double u = uniform(), v = uniform();
    return sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v);
}

int main(int argc, char **argv) {
    enum { V = 50280 };
    const int rows = argc > 1 ? atoi(argv[1]) : 200;
    if (rows < 1) { fprintf(stderr, "usage: bench_sampler [rows >= 1]\n"); return 2; }
    float *flat = malloc(sizeof(float) * V * rows), *peaked = malloc(sizeof(float) * V * rows);
    if (!flat || !peaked) { fprintf(stderr, "bench_sampler: out of memory\n"); return 1; }
    for (long i = 0; i < (long)V * rows; i++) {
        flat[i] = (float)(2 * uniform() - 1);
        peaked[i] = (float)(8 * normal());
    }
    const struct { const char *name; SamplerParams p; } cases[] = {
        {"top-p 0.9", {.temperature = 1.0f, .top_p = 0.9f, .repeat_penalty = 1.0f}},
        {"top-k 40", {.temperature = 1.0f, .top_p = 1.0f, .top_k = 40, .repeat_penalty = 1.0f}},
        {"min-p 0.05, top-p 0.9", {.temperature = 1.0f, .top_p = 0.9f, .min_p = 0.05f, .repeat_penalty = 1.0f}},
    };
    printf("%-24s %-8s %12s %10s\n", "case", "rows", "us a row", "kept");
    for (int k = 0; k < 3; k++)
        for (int f = 0; f < 2; f++) {
            const float *logits = f ? peaked : flat;
            Sampler s;
            sampler_init(&s, V, &cases[k].p, 1, NULL, NULL);
            long kept = 0, sink = 0;
            double t = now_s();
            for (int r = 0; r < rows; r++) {
                sink += sampler_sample(&s, logits + (size_t)r * V);
                kept += s.kept;
            }
            t = now_s() - t;
            printf("%-24s %-8s %12.1f %10ld%s\n", cases[k].name, f ? "peaked" : "flat", 1e6 * t / rows, kept / rows,
                   sink < 0 ? "!" : "");
            sampler_free(&s);
        }
    free(flat);
    free(peaked);
    return 0;
}
