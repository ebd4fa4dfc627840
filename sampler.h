/* sampler.h: picking the next token from a row of logits, and stop strings; used alike by
 * generation (cli.c), batch mode (batch.c) and chat.
 *
 * The order of operations follows mamba_ssm's generation (utils/generation.py: decode, sample):
 *   1. repetition penalty (--repeat-penalty R): the logit x of every token id that occurs among the
 *      tokens seen so far (the prompt's and the generated ones; with --repeat-last-n N only the last
 *      N of them) becomes x / R when x > 0 and x * R otherwise; each id once, however often it occurs
 *   2. temperature 0: the most likely token (argmax), after the penalty; nothing below applies
 *   3. top-k (-k K): the K largest logits are kept (ties by lower id)
 *   4. min-p (--min-p P): tokens whose probability at temperature 1 is below P times the top token's
 *      are dropped, i.e. logit < max logit + ln P
 *   5. temperature T: probabilities exp((x - max) / T) over what is kept (sampler_exp: the same bits
 *      on the host and on the GPU, whose engine_step_sample picks tokens on the device)
 *   6. top-p (-p P): the most likely tokens whose mass (renormalized over what is kept) reaches P
 *   7. a draw u in [0, 1) from the sequence's xorshift* generator picks the token whose interval of
 *      cumulative probability holds u * (kept mass), in the order the candidates are kept (most
 *      likely first once top-k or top-p sorted them, else by id)
 * mamba_ssm applies min-p only without top-k, and then ignores top-p; and its min-p code compares the
 * raw logits with P (its max_prob * P threshold is computed but unused). Here every filter composes,
 * and min-p is the threshold that code meant. Only ids below vocab_size are candidates: the padded
 * rows of the logits are never picked. With the penalty at 1 and min-p at 0 the draws are those of
 * the sampler before these options existed; the probabilities, since sampler_exp replaced the C
 * library's expf (2026-12-02), within an ulp of what they were, so a seed's tokens differ only where
 * a draw falls within that of a boundary. */
#ifndef SAMPLER_H
#define SAMPLER_H

#include "util.h" /* Str */

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

typedef struct {
    float prob;
    int id;
} Candidate;

/* The settings of one sequence (the command line's, or a batch line's). */
typedef struct {
    float temperature;    /* 0 = greedy */
    float top_p;          /* (0, 1]; 1 = off */
    int top_k;            /* 0 = off */
    float min_p;          /* [0, 1]; 0 = off */
    float repeat_penalty; /* > 0; 1 = off */
    int repeat_last_n;    /* tokens the penalty looks back on; 0 = all of them */
} SamplerParams;

/* exp(x) for the probabilities of step 5 (x <= 0), the same bits on the host and on a GPU: every step
 * is one IEEE operation (fmaf, not a multiply and an add a compiler may fuse or not), so sampler.c and
 * cuda/sample.cuh, which picks tokens on the device, order and sum the same probabilities. (The C
 * library's expf and CUDA's round differently in the last bit now and then: enough, over a near-flat
 * row, to reorder candidates of nearly equal probability and so change the token of a seed.) Cody-
 * Waite reduction x = k ln2 + r, |r| <= ln2/2, and Cephes' polynomial for exp(r): within 2 ulp of
 * exp (tests/test_sampler.py); 0 below -104 (under the smallest float) and for NaN. */
#ifdef __CUDACC__
#define SAMPLER_HD __host__ __device__
#else
#define SAMPLER_HD
#endif
SAMPLER_HD static inline float sampler_exp(float x) {
    if (!(x >= -104.0f)) return 0.0f;
    const float k = rintf(x * 1.44269504f);
    float r = fmaf(k, -0.693145751953125f, x); /* ln2's high bits: k times them is exact */
    r = fmaf(k, -1.428606765330187e-6f, r);    /* and its low bits */
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    const float y = fmaf(p, r * r, r) + 1.0f;
    int n = (int)k;
    float scale = 1.0f; /* 2^n as two exact factors when n is below the normal floats' */
    if (n < -126) { scale = 0x1p-64f; n += 64; }
    uint32_t bits = (uint32_t)(n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return y * two_n * scale;
}

/* The Candidates of a sampler's scratch: one per id, and as many again for sorting them. */
#define SAMPLER_CAND(vocab_size) (2 * (size_t)(vocab_size))

typedef struct {
    int vocab_size;
    SamplerParams p;
    uint64_t rng;
    Candidate *cand;     /* SAMPLER_CAND(vocab_size) of them: scratch, possibly shared between samplers */
    float *penalized;    /* vocab_size logits with the penalty applied: scratch, possibly shared */
    int owns_scratch;
    int *count;          /* per id: occurrences among the tokens the penalty looks back on (NULL: no penalty) */
    int *window;         /* with repeat_last_n: the last repeat_last_n tokens, a ring */
    int *seen_ids;       /* the ids whose count is not 0, n_seen_ids of them, in no order (the penalty's list) */
    int *seen_at;        /* per id: its place in seen_ids while its count is not 0 */
    int n_seen_ids;
    long seen;           /* tokens accepted so far */
    /* what the last sampler_sample did, for tests: the draw, and the candidates it kept (cand[0..kept)) */
    float last_u;
    int kept;
} Sampler;

/* What sampler_sample needs beyond a row of logits, for a row sampled elsewhere (on the GPU:
 * engine_step_sample): the settings, the draw, taken from the sequence's generator beforehand, and
 * the repetition penalty's ids; a greedy sampler (temperature 0) draws nothing, as sampler_sample
 * does not. */
typedef struct {
    float temperature, top_p;
    float min_gap; /* min-p as a logit gap: logits below max + ln(min_p) are dropped; -INFINITY: off */
    float u;       /* the draw in [0, 1) (step 7); 0 when greedy */
    int top_k;
    float penalty; /* step 1 on the ids pen[0..n_pen), each once; n_pen 0: none */
    int n_pen;
    const int *pen; /* the sampler's list (host memory), valid until its next sampler_accept */
} SampleDraw;

/* seed 0 is replaced by a fixed nonzero one (xorshift cannot start from 0). cand (SAMPLER_CAND of
 * them) and penalized (vocab_size): scratch to share between samplers used one at a time (batch
 * mode), or NULL to own them. Dies on running out of memory. */
void sampler_init(Sampler *s, int vocab_size, const SamplerParams *p, uint64_t seed, Candidate *cand, float *penalized);
void sampler_free(Sampler *s);
/* The temperature-0 choice: the lowest id among those of the largest of v[0..n). Inline, so that
 * the CPU engine's engine_step_argmax (run.c) shares it without linking the sampler. */
static inline int logits_argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}
/* Whether s picks by logits_argmax alone (temperature 0, no penalty): then a caller may ask the
 * engine for each row's argmax (engine_step_argmax) instead of its logits. */
int sampler_is_greedy(const Sampler *s);
/* Points s at other scratch of the same sizes (batch mode samples its rows on several threads at
 * once, each sampler with its thread's scratch); penalized is used only with a penalty. */
void sampler_use_scratch(Sampler *s, Candidate *cand, float *penalized);
/* Fills d for s's next token, taking the draw from s's generator as sampler_sample would: after it,
 * sampler_pick(d, row) on the row sampler_penalize(d, row) left is the token sampler_sample(s, row)
 * would have returned. */
void sampler_draw(Sampler *s, SampleDraw *d);
/* Step 1: d's repetition penalty applied to a row of logits, in place. */
void sampler_penalize(const SampleDraw *d, float *logits);
/* Whether the penalty lists of nseq draws fit a vocabulary of V ids (at most V ids, each in 0..V-1),
 * else a message in msg: the engines check before applying them (engine_step_sample). Inline, as
 * logits_argmax, so that the GPU engine needs no more of the sampler than this header. */
static inline int sampler_draws_valid(const SampleDraw *d, int nseq, int V, char *msg, size_t len) {
    for (int i = 0; i < nseq; i++) {
        if (d[i].n_pen < 0 || d[i].n_pen > V || (d[i].n_pen && !d[i].pen)) {
            snprintf(msg, len, "row %d has %d penalized ids (0..%d)", i, d[i].n_pen, V);
            return 0;
        }
        for (int j = 0; j < d[i].n_pen; j++)
            if (d[i].pen[j] < 0 || d[i].pen[j] >= V) {
                snprintf(msg, len, "penalized id %d outside 0..%d", d[i].pen[j], V - 1);
                return 0;
            }
    }
    return 1;
}
/* The token d picks from a row of logits (n real ids), penalized already: steps 2-7 above.
 * cand: SAMPLER_CAND(n) scratch. */
int sampler_pick(const SampleDraw *d, const float *logits, int n, Candidate *cand);
/* A token of the sequence (prompt or generated), for the repetition penalty. */
void sampler_accept(Sampler *s, int id);
/* The next token for a row of logits (vocab_size used; the row is not changed). */
int sampler_sample(Sampler *s, const float *logits);

/* Stop strings over streamed text. Text goes in as it is decoded; what can no longer be the start of
 * a stop string comes out at once, and only a tail that could still begin one is held back. When a
 * stop string is complete, the text before it comes out and the rest is dropped. Byte-wise: a tail
 * held back may end inside a character, and a stop string may end inside one. */
typedef struct {
    char *const *strings;
    int count;
    Str held; /* the tail that could still begin a stop string */
} StopText;

typedef void (*TextFn)(void *ctx, const char *text, size_t n);

/* strings: count stop strings, none empty, kept by the caller. */
void stop_text_init(StopText *st, char *const *strings, int count);
/* Returns 1 when a stop string was completed (generation should end), else 0. */
int stop_text_put(StopText *st, const char *text, size_t n, TextFn out, void *ctx);
/* At the end of the text: hands out what was held back. */
void stop_text_flush(StopText *st, TextFn out, void *ctx);
void stop_text_free(StopText *st);

#endif
