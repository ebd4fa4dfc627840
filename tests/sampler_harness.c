/* sampler_harness.c: sampler.c alone, on inputs the tests choose (tests/test_sampler.py builds it).
 *
 *   sampler_harness sample T K P MIN_P PENALTY LAST_N SEED V
 *       stdin: records of i32 n_history, i32 history[n_history], f32 logits[V]; record r samples with
 *       seed SEED + r after accepting the history. stdout, a record a line:
 *       "token u kept id... " (u: the draw, -1 when greedy; the ids the draw chose among, in order)
 *   sampler_harness drawpick T K P MIN_P PENALTY LAST_N SEED V
 *       the same records; stdout, a record a line: "A B", A the token sampler_sample picks, B the one
 *       sampler_draw, sampler_penalize (on a copy of the row) and sampler_pick pick from a second
 *       sampler in the same state (what the engines' engine_step_sample does)
 *   sampler_harness exp
 *       stdout: "ulp N" the largest distance in ulps between sampler_exp(x) and exp(x) rounded to float,
 *       over every 97th float in [-104, 0] and the ends, then "zero Z": 1 when -inf, NaN and -105 give 0
 *   sampler_harness stop STRING...
 *       stdin: chunks of u32 length + bytes. stdout, for each chunk (and the final flush): u32 length
 *       + the bytes handed out + u8 (1: a stop string completed, 2: the flush) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"

static void out_bytes(void *ctx, const char *text, size_t n) {
    char **buf = ctx; /* collects into a malloc'd buffer prefixed by its length */
    size_t have;
    memcpy(&have, *buf, sizeof have);
    *buf = realloc(*buf, sizeof have + have + n);
    memcpy(*buf + sizeof have + have, text, n);
    have += n;
    memcpy(*buf, &have, sizeof have);
}

static void emit(char *buf, unsigned char flag) {
    size_t have;
    memcpy(&have, buf, sizeof have);
    unsigned len = (unsigned)have;
    fwrite(&len, 4, 1, stdout);
    fwrite(buf + sizeof have, 1, have, stdout);
    fwrite(&flag, 1, 1, stdout);
}

/* The distance in ulps between two finite floats of one sign (or zero). */
static long ulps(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    return labs((long)ia - (long)ib);
}

int main(int argc, char **argv) {
    if (argc == 2 && !strcmp(argv[1], "exp")) { /* negative floats: bits from -0 (0x80000000) to -104 */
        long worst = 0;
        for (uint32_t b = 0x80000000u;; b = b + 97 < 0xC2D00000u ? b + 97 : 0xC2D00000u) {
            float x;
            memcpy(&x, &b, 4);
            long d = ulps(sampler_exp(x), (float)exp((double)x));
            if (d > worst) worst = d;
            if (b == 0xC2D00000u) break;
        }
        printf("ulp %ld\nzero %d\n", worst, sampler_exp(-INFINITY) == 0 && sampler_exp(NAN) == 0 && sampler_exp(-105.0f) == 0);
        return 0;
    }
    if (argc >= 2 && !strcmp(argv[1], "stop")) {
        StopText st;
        stop_text_init(&st, argv + 2, argc - 2);
        unsigned len;
        int stopped = 0;
        while (!stopped && fread(&len, 4, 1, stdin) == 1) {
            char *chunk = malloc(len + 1);
            if (fread(chunk, 1, len, stdin) != len) return 1;
            char *buf = calloc(1, sizeof(size_t));
            stopped = stop_text_put(&st, chunk, len, out_bytes, &buf);
            emit(buf, (unsigned char)stopped);
            free(buf);
            free(chunk);
        }
        if (!stopped) {
            char *buf = calloc(1, sizeof(size_t));
            stop_text_flush(&st, out_bytes, &buf);
            emit(buf, 2);
            free(buf);
        }
        stop_text_free(&st);
        return 0;
    }
    if (argc != 10 || (strcmp(argv[1], "sample") && strcmp(argv[1], "drawpick"))) {
        fprintf(stderr, "usage: see sampler_harness.c\n");
        return 2;
    }
    const int drawpick = !strcmp(argv[1], "drawpick");
    SamplerParams p = {.temperature = strtof(argv[2], NULL), .top_k = atoi(argv[3]), .top_p = strtof(argv[4], NULL),
                       .min_p = strtof(argv[5], NULL), .repeat_penalty = strtof(argv[6], NULL), .repeat_last_n = atoi(argv[7])};
    unsigned long long seed = strtoull(argv[8], NULL, 10);
    int V = atoi(argv[9]);
    float *logits = malloc(V * sizeof(float));
    int n_hist;
    for (int r = 0; fread(&n_hist, 4, 1, stdin) == 1; r++) {
        int *hist = malloc((n_hist + 1) * sizeof(int));
        if (fread(hist, 4, n_hist, stdin) != (size_t)n_hist || fread(logits, 4, V, stdin) != (size_t)V) return 1;
        Sampler s;
        sampler_init(&s, V, &p, seed + r, NULL, NULL);
        for (int i = 0; i < n_hist; i++) sampler_accept(&s, hist[i]);
        int t = sampler_sample(&s, logits);
        if (drawpick) {
            Sampler s2;
            sampler_init(&s2, V, &p, seed + r, NULL, NULL);
            for (int i = 0; i < n_hist; i++) sampler_accept(&s2, hist[i]);
            SampleDraw d;
            sampler_draw(&s2, &d);
            float *row = malloc(V * sizeof(float));
            memcpy(row, logits, V * sizeof(float));
            sampler_penalize(&d, row);
            printf("%d %d\n", t, sampler_pick(&d, row, V, s2.cand));
            free(row);
            sampler_free(&s2);
        } else {
            printf("%d %.9g", t, s.last_u);
            for (int i = 0; i < s.kept; i++) printf(" %d", s.cand[i].id);
            printf("\n");
        }
        sampler_free(&s);
        free(hist);
    }
    free(logits);
    return 0;
}
