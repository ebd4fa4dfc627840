/* sampler.c: see sampler.h for what it does and in which order. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sampler.h"
#include "util.h"

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) die(EXIT_RUNTIME, "out of memory");
    return p;
}

void sampler_init(Sampler *s, int vocab_size, const SamplerParams *p, uint64_t seed, Candidate *cand, float *penalized) {
    *s = (Sampler){.vocab_size = vocab_size, .p = *p, .rng = seed ? seed : 0x9E3779B97F4A7C15ULL};
    s->owns_scratch = !cand;
    s->cand = cand ? cand : xcalloc(SAMPLER_CAND(vocab_size), sizeof *s->cand);
    if (p->repeat_penalty != 1.0f) {
        s->penalized = penalized ? penalized : xcalloc(vocab_size, sizeof *s->penalized);
        s->count = xcalloc(vocab_size, sizeof *s->count);
        s->seen_ids = xcalloc(vocab_size, sizeof *s->seen_ids);
        s->seen_at = xcalloc(vocab_size, sizeof *s->seen_at);
        if (p->repeat_last_n > 0) s->window = xcalloc(p->repeat_last_n, sizeof *s->window);
    }
}

void sampler_free(Sampler *s) {
    if (s->owns_scratch) { free(s->cand); free(s->penalized); }
    free(s->count);
    free(s->window);
    free(s->seen_ids);
    free(s->seen_at);
    *s = (Sampler){0};
}

void sampler_use_scratch(Sampler *s, Candidate *cand, float *penalized) {
    if (s->owns_scratch) return;
    s->cand = cand;
    if (s->penalized) s->penalized = penalized;
}

/* The ids with a count keep a place in seen_ids: added when the count leaves 0, and when it comes
 * back to 0 the last of the list takes the place. */
static void count_add(Sampler *s, int id, int by) {
    if (s->count[id] == 0) {
        s->seen_at[id] = s->n_seen_ids;
        s->seen_ids[s->n_seen_ids++] = id;
    }
    if ((s->count[id] += by) == 0) {
        int last = s->seen_ids[--s->n_seen_ids];
        s->seen_ids[s->seen_at[id]] = last;
        s->seen_at[last] = s->seen_at[id];
    }
}

void sampler_accept(Sampler *s, int id) {
    if (!s->count || id < 0 || id >= s->vocab_size) return;
    int n = s->p.repeat_last_n;
    if (n > 0) { /* the window slides: the token n back leaves it */
        int *slot = &s->window[s->seen % n];
        if (s->seen >= n) count_add(s, *slot, -1);
        *slot = id;
    }
    count_add(s, id, 1);
    s->seen++;
}

static uint32_t random_u32(uint64_t *state) { /* xorshift* */
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1DULL) >> 32);
}
static float random_f32(uint64_t *state) { return (random_u32(state) >> 8) / 16777216.0f; }

int sampler_is_greedy(const Sampler *s) { return s->p.temperature == 0.0f && !s->count; }

/* Sorts the m candidates c[0..m), which come in increasing id order, by probability, largest first,
 * ties by lower id; tmp: room for m more. A stable radix sort, 11 bits a pass, on the probability's
 * bits (non-negative floats order as their bits do), complemented for the descending order; a pass
 * whose digit all of them share is skipped. (bench/bench_sampler.c, 50,280 ids, a 2-core AMD EPYC:
 * top-p 0.9 over flat logits, 37,862 candidates kept and sorted, took 6.5-10 ms a row with qsort and
 * 0.8-0.9 ms with this; top-k 40, the whole vocabulary sorted, 7.9-9.5 ms and 0.57 ms.) */
static void sort_desc(Candidate *c, int m, Candidate *tmp) {
    enum { BITS = 11, DIGITS = 1 << BITS };
    Candidate *src = c, *dst = tmp;
    for (int shift = 0; shift < 32; shift += BITS) {
        int at[DIGITS] = {0};
        for (int i = 0; i < m; i++) {
            uint32_t key;
            memcpy(&key, &src[i].prob, sizeof key);
            at[(~key >> shift) & (DIGITS - 1)]++;
        }
        int shared = 0;
        for (int d = 0, sum = 0; d < DIGITS; d++) {
            shared |= at[d] == m;
            int n = at[d];
            at[d] = sum;
            sum += n;
        }
        if (shared) continue;
        for (int i = 0; i < m; i++) {
            uint32_t key;
            memcpy(&key, &src[i].prob, sizeof key);
            dst[at[(~key >> shift) & (DIGITS - 1)]++] = src[i];
        }
        Candidate *t = src;
        src = dst;
        dst = t;
    }
    if (src != c) memcpy(c, src, (size_t)m * sizeof *c);
}

/* The bin of a probability in (0, 1]: 0 for 1, one more every 1/16 octave below. */
static int prob_bin(float p, int bins) {
    uint32_t bits;
    memcpy(&bits, &p, sizeof bits);
    uint32_t b = (0x3F800000u - bits) >> 19;
    return b < (uint32_t)bins ? (int)b : bins - 1;
}

static SampleDraw draw_of(Sampler *s) {
    const SamplerParams *p = &s->p;
    SampleDraw d = {.temperature = p->temperature, .top_p = p->top_p, .top_k = p->top_k,
                    .min_gap = p->min_p > 0 ? logf(p->min_p) : -INFINITY, .penalty = p->repeat_penalty,
                    .n_pen = s->n_seen_ids, .pen = s->seen_ids};
    if (p->temperature != 0.0f) d.u = random_f32(&s->rng); /* 7., drawn before the filters: they draw nothing */
    return d;
}

void sampler_draw(Sampler *s, SampleDraw *d) { *d = draw_of(s); }

void sampler_penalize(const SampleDraw *d, float *x) {
    float r = d->penalty;
    for (int j = 0; j < d->n_pen; j++) {
        int i = d->pen[j];
        x[i] = x[i] > 0 ? x[i] / r : x[i] * r;
    }
}

/* Steps 2-7 for the draw d; *kept: the candidates the draw chose among (cand[0..*kept)). */
static int pick(const SampleDraw *d, const float *logits, int n, Candidate *c, int *kept) {
    *kept = 0;
    if (d->temperature == 0.0f) return logits_argmax(logits, n); /* 2. */
    float maxl = logits[logits_argmax(logits, n)];
    double sum = 0;
    int m = n;
    if (d->min_gap > -INFINITY) { /* 4. (before top-k here: both keep the largest logits, so they commute) */
        m = 0;
        for (int i = 0; i < n; i++) {
            if (logits[i] - maxl < d->min_gap) continue;
            c[m].id = i;
            c[m].prob = sampler_exp((logits[i] - maxl) / d->temperature); /* 5. */
            sum += c[m++].prob;
        }
    } else {
        for (int i = 0; i < n; i++) {
            c[i].id = i;
            c[i].prob = sampler_exp((logits[i] - maxl) / d->temperature); /* 5. */
            sum += c[i].prob;
        }
    }
    int sorted = 0;
    if (d->top_k > 0 && d->top_k < m) { /* 3. the temperature keeps the order, so this is top-k of the logits */
        sort_desc(c, m, c + n);
        sorted = 1;
        m = d->top_k;
        sum = 0;
        for (int i = 0; i < m; i++) sum += c[i].prob;
    }
    if (d->top_p < 1.0f) { /* 6. */
        if (m == n) {
            /* Sort only the candidates that can be in the nucleus. Bin them by probability (16 bins
             * an octave, from the float's bits: a larger probability never lands in a later bin),
             * find the bin where the mass from the top reaches top_p, and keep the bins up to it:
             * the kept set holds the whole nucleus, usually a few hundred candidates. */
            enum { BINS = 4096 };
            double mass[BINS] = {0}, target = d->top_p * sum, cum = 0;
            for (int i = 0; i < n; i++) mass[prob_bin(c[i].prob, BINS)] += c[i].prob;
            int last = 0;
            for (cum = mass[0]; cum < target && last < BINS - 1;) cum += mass[++last];
            int k = 0;
            for (int i = 0; i < n; i++)
                if (prob_bin(c[i].prob, BINS) <= last) c[k++] = c[i];
            m = k;
            sort_desc(c, m, c + n);
        } else if (!sorted) {
            sort_desc(c, m, c + n);
        }
        double cum = 0, target = d->top_p * sum;
        int keep = m;
        for (int i = 0; i < m; i++) {
            cum += c[i].prob;
            if (cum >= target) { keep = i + 1; break; }
        }
        m = keep;
        sum = 0;
        for (int i = 0; i < m; i++) sum += c[i].prob;
    }
    *kept = m;
    double r = d->u * sum, cum = 0; /* 7. */
    for (int i = 0; i < m; i++) {
        cum += c[i].prob;
        if (r < cum) return c[i].id;
    }
    return c[m - 1].id;
}

int sampler_pick(const SampleDraw *d, const float *logits, int n, Candidate *cand) {
    int kept;
    return pick(d, logits, n, cand, &kept);
}

int sampler_sample(Sampler *s, const float *logits) {
    int n = s->vocab_size;
    s->kept = 0;
    s->last_u = -1;
    SampleDraw d = draw_of(s);
    if (d.n_pen) { /* 1. the repetition penalty, on a copy */
        memcpy(s->penalized, logits, (size_t)n * sizeof *s->penalized);
        sampler_penalize(&d, s->penalized);
        logits = s->penalized;
    }
    if (d.temperature != 0.0f) s->last_u = d.u;
    return pick(&d, logits, n, s->cand, &s->kept);
}

/* ----------------------------------------------------------------------------------------------
 * Stop strings. */

void stop_text_init(StopText *st, char *const *strings, int count) {
    *st = (StopText){.strings = strings, .count = count};
}

void stop_text_free(StopText *st) {
    free(st->held.s);
    *st = (StopText){0};
}

int stop_text_put(StopText *st, const char *text, size_t n, TextFn out, void *ctx) {
    if (!st->count) { if (n) out(ctx, text, n); return 0; }
    str_put(&st->held, text, n);
    char *h = st->held.s;
    size_t len = st->held.n, first = len;
    /* Held text never holds a whole stop string, so a match ends in the new text; the earliest one wins. */
    for (int k = 0; k < st->count; k++) {
        size_t sl = strlen(st->strings[k]);
        char *at = sl <= len ? memmem(h, len, st->strings[k], sl) : NULL;
        if (at && (size_t)(at - h) < first) first = (size_t)(at - h);
    }
    if (first < len) {
        if (first) out(ctx, h, first);
        st->held.n = 0;
        return 1;
    }
    /* The longest tail that is the start of some stop string stays; the text before it goes out. */
    size_t hold = 0;
    for (int k = 0; k < st->count; k++) {
        size_t sl = strlen(st->strings[k]);
        for (size_t t = (sl - 1 < len ? sl - 1 : len); t > hold; t--)
            if (!memcmp(h + len - t, st->strings[k], t)) { hold = t; break; }
    }
    if (len - hold) out(ctx, h, len - hold);
    memmove(h, h + len - hold, hold);
    st->held.n = hold;
    return 0;
}

void stop_text_flush(StopText *st, TextFn out, void *ctx) {
    if (st->held.n) out(ctx, st->held.s, st->held.n);
    st->held.n = 0;
}
