/* tests/engine_dump.c: drives one engine (link it with run.c or run.cu) through every entry point
 * of engine.h on fixed pseudo-random tokens, and writes each row of logits and some states to a
 * file, so that two engines can be compared section by section (tests/gpu_check.sh).
 *
 *   engine_dump model.bin out.bin [--quick]
 *
 * out.bin is a list of records: char name[32], int32 rows, int32 cols, float data[rows * cols].
 * Sections:
 *   tokens_prefill    the tokens of prefill_all and stepwise (as floats)
 *   prefill_all       a prompt through engine_prefill with all_logits, slot 4
 *   stepwise          the same prompt through engine_step, one token at a time, slot 0
 *   long_last         a prompt of LONG_HEAD tokens and some more, fed in chunks (engine_prefill_chunk),
 *                     slot 1: the last rows of the head and of the whole
 *   prompts           slots 0..S-1 each prefilled with its own prompt (last rows)
 *   state_slot3       slot 3's state after its prompt (engine_get_state)
 *   prompts_many      the same prompts in the same slots through one engine_prefill_many (last rows)
 *   state_slot3_many  slot 3's state after that (the decode sections below start from these states)
 *   batch_all         decode steps with all S slots at once (S > 8: the GPU's GEMM path)
 *   batch3, batch8    decode steps with 3 and 8 slots (the GPU's GEMV path)
 *   state_copy        slots 0, 1, 2 given slot 5's state (set_state, copy_state, copy_state), then one
 *                     step of 6 slots with one token for all: rows 0, 1, 2 and 5 must be identical
 *   reset_step        slot 0 reset, then one step: the logits of that token from a fresh state
 *   argmax            a step of all S slots twice from the same states: row 0 the argmax of each
 *                     row of engine_step's logits (the host's logits_argmax), row 1 engine_step_argmax's
 *   sample            the same for engine_step_sample: steps of all S slots (3 a setting), then of slot 0 alone,
 *                     each row with its own settings (DRAWS, rotated over the rows), draw and, for
 *                     some, a repetition penalty on 49 ids (the row's argmax among them); row 0
 *                     sampler_penalize and sampler_pick on engine_step's logits, row 1 engine_step_sample's
 *   prompts_many5     slots 0..4 reset and given their prompts again in one engine_prefill_many (the
 *                     GPU's lm_head then a GEMV of 5 sequences, where prompts_many's 11 take the GEMM)
 *   batch2            decode steps with 2 slots (the GPU's GEMV path)
 * (The last two come last, so that the sections before them keep their tokens.) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"
#include "sampler.h"

/* SLOTS: slots of the engine. LONG_HEAD: long_last's head, a multiple of every engine's prefill
 * chunk: one full chunk of the GPU's (the chunk graph's replay, on another slot than the one it was
 * captured on), four of the CPU's. */
enum { SLOTS = 11, LONG_HEAD = 2048 };

static FILE *out;
static int vocab_rows;

static void record(const char *name, const float *data, int rows, int cols) {
    char n[32] = {0};
    strncpy(n, name, sizeof n - 1);
    int dims[2] = {rows, cols};
    if (fwrite(n, 1, 32, out) != 32 || fwrite(dims, 4, 2, out) != 2 ||
        fwrite(data, sizeof(float), (size_t)rows * cols, out) != (size_t)rows * cols) {
        fprintf(stderr, "engine_dump: write failed\n");
        exit(1);
    }
}

static unsigned long long rng = 0x2545F4914F6CDD1DULL;
static int next_token(int vocab) {
    rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
    return (int)((rng >> 33) % (unsigned long long)vocab);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: engine_dump model.bin out.bin [--quick]\n");
        return 2;
    }
    int quick = argc > 3 && !strcmp(argv[3], "--quick");
    Model m;
    char err[512];
    if (model_open(&m, argv[1], err, sizeof err) != 0) { fprintf(stderr, "engine_dump: %s\n", err); return 1; }
    Engine *e = engine_new(&m, 0, SLOTS, err, sizeof err);
    if (!e) { fprintf(stderr, "engine_dump: %s\n", err); return 1; }
    if (!(out = fopen(argv[2], "wb"))) { fprintf(stderr, "engine_dump: cannot write %s\n", argv[2]); return 1; }
    const Config *c = &m.config;
    vocab_rows = c->vocab_rows;
    const int V = c->vocab_size, n_pre = quick ? 12 : 40, n_long = LONG_HEAD + (quick ? 9 : 88);
    const int steps = quick ? 2 : 4, chunk = engine_prefill_chunk(e);
    if (LONG_HEAD % chunk) { fprintf(stderr, "engine_dump: a prefill chunk of %d tokens\n", chunk); return 1; }
    const size_t row = (size_t)vocab_rows;
    float *buf = malloc(sizeof(float) * row * (n_pre > SLOTS * steps ? n_pre : SLOTS * steps));
    size_t sf = engine_state_floats(e);
    float *st = malloc(sizeof(float) * sf);
    int *toks = malloc(sizeof(int) * n_long);
    if (!buf || !st || !toks) { fprintf(stderr, "engine_dump: out of memory\n"); return 1; }
    printf("engine: %s, %zu state floats a slot\n", engine_name(e), sf);

    /* prefill with all logits vs token-by-token */
    for (int i = 0; i < n_pre; i++) { toks[i] = next_token(V); buf[i] = (float)toks[i]; }
    record("tokens_prefill", buf, 1, n_pre);
    engine_reset(e, 4);
    record("prefill_all", engine_prefill(e, 4, toks, n_pre, 1), n_pre, vocab_rows);
    engine_reset(e, 0);
    for (int i = 0; i < n_pre; i++) memcpy(buf + i * row, engine_step(e, toks + i, 1), row * sizeof(float));
    record("stepwise", buf, n_pre, vocab_rows);

    /* a prompt over more than one chunk */
    for (int i = 0; i < n_long; i++) toks[i] = next_token(V);
    engine_reset(e, 1);
    for (int i = 0; i < LONG_HEAD; i += chunk) memcpy(buf, engine_prefill(e, 1, toks + i, chunk, 0), row * sizeof(float));
    memcpy(buf + row, engine_prefill(e, 1, toks + LONG_HEAD, n_long - LONG_HEAD, 0), row * sizeof(float));
    record("long_last", buf, 2, vocab_rows);

    /* every slot its own prompt (toks: all of them, one after another; 396 tokens, or 121 --quick),
     * one prefill each, then all of them in one engine_prefill_many */
    int slots[SLOTS], lens[SLOTS], at = 0;
    for (int s = 0; s < SLOTS; s++) {
        slots[s] = s;
        lens[s] = 1 + (quick ? 2 : 7) * s;
        for (int i = 0; i < lens[s]; i++) toks[at + i] = next_token(V);
        engine_reset(e, s);
        memcpy(buf + s * row, engine_prefill(e, s, toks + at, lens[s], 0), row * sizeof(float));
        at += lens[s];
    }
    record("prompts", buf, SLOTS, vocab_rows);
    engine_get_state(e, 3, st);
    record("state_slot3", st, 1, (int)sf);
    for (int s = 0; s < SLOTS; s++) engine_reset(e, s);
    record("prompts_many", engine_prefill_many(e, slots, toks, lens, SLOTS), SLOTS, vocab_rows);
    engine_get_state(e, 3, st);
    record("state_slot3_many", st, 1, (int)sf);

    /* batched decode */
    const int batches[3] = {SLOTS, 3, 8};
    const char *names[3] = {"batch_all", "batch3", "batch8"};
    for (int b = 0; b < 3; b++) {
        int nb = batches[b];
        for (int k = 0; k < steps; k++) {
            int t[SLOTS];
            for (int s = 0; s < nb; s++) t[s] = next_token(V);
            memcpy(buf + (size_t)k * nb * row, engine_step(e, t, nb), nb * row * sizeof(float));
        }
        record(names[b], buf, steps * nb, vocab_rows);
    }

    /* state calls */
    engine_get_state(e, 5, st);
    engine_set_state(e, 0, st);
    engine_copy_state(e, 1, 5);
    engine_copy_state(e, 2, 1);
    int t6[6], tok = next_token(V);
    for (int s = 0; s < 6; s++) t6[s] = tok;
    record("state_copy", engine_step(e, t6, 6), 6, vocab_rows);
    engine_reset(e, 0);
    record("reset_step", engine_step(e, &tok, 1), 1, vocab_rows);

    float *states = malloc(sizeof(float) * sf * SLOTS), ids[2][SLOTS];
    int t[SLOTS], picked[SLOTS];
    if (!states) { fprintf(stderr, "engine_dump: out of memory\n"); return 1; }
    for (int s = 0; s < SLOTS; s++) { engine_get_state(e, s, states + s * sf); t[s] = next_token(V); }
    const float *l = engine_step(e, t, SLOTS);
    for (int s = 0; s < SLOTS; s++) ids[0][s] = (float)logits_argmax(l + s * row, V);
    for (int s = 0; s < SLOTS; s++) engine_set_state(e, s, states + s * sf);
    engine_step_argmax(e, t, SLOTS, picked);
    for (int s = 0; s < SLOTS; s++) ids[1][s] = (float)picked[s];
    record("argmax", &ids[0][0], 2, SLOTS);

    /* sampling: settings of every path of sample.cuh (greedy rows among sampled ones, id order with
     * and without min-p, top-k below and above the kept count, top-p over flat and peaked rows) */
    static const SamplerParams DRAWS[] = {
        {.temperature = 1.0f, .top_p = 1.0f},     {.temperature = 1.0f, .top_p = 0.9f},
        {.temperature = 0.3f, .top_p = 0.5f},     {.temperature = 0.05f, .top_p = 0.95f},
        {.temperature = 1.0f, .top_p = 1.0f, .top_k = 40}, {.temperature = 0.7f, .top_p = 0.8f, .top_k = 1000},
        {.temperature = 1.0f, .top_p = 1.0f, .min_p = 0.05f}, {.temperature = 1.0f, .top_p = 0.9f, .top_k = 50, .min_p = 0.01f},
        {.temperature = 2.0f, .top_p = 1.0f, .top_k = 1}, {.temperature = 0.0f, .top_p = 1.0f},
        {.temperature = 1.0f, .top_p = 0.99f, .top_k = 1 << 30}, {.temperature = 0.01f, .top_p = 0.5f},
        {.temperature = 0.5f, .top_p = 1.0f, .min_p = 0.2f, .top_k = 3},
        {.temperature = 0.0f, .top_p = 1.0f, .repeat_penalty = 1.4f},
        {.temperature = 0.9f, .top_p = 0.9f, .min_p = 0.02f, .repeat_penalty = 0.8f}};
    enum { NDRAW = sizeof DRAWS / sizeof DRAWS[0] };
    float picks[2][NDRAW * (3 * SLOTS + 1)];
    enum { NPEN = 48 };
    static int pens[SLOTS][NPEN + 1];
    Candidate *cand = malloc(sizeof(Candidate) * SAMPLER_CAND(V));
    float *pen_row = malloc(sizeof(float) * V);
    if (!cand || !pen_row) { fprintf(stderr, "engine_dump: out of memory\n"); return 1; }
    int n_picks = 0;
    for (int k = 0; k < 4 * NDRAW; k++) {
        int nb = k < 3 * NDRAW ? SLOTS : 1;
        SampleDraw d[SLOTS];
        for (int s = 0; s < nb; s++) {
            const SamplerParams *p = &DRAWS[(k + s) % NDRAW];
            d[s] = (SampleDraw){.temperature = p->temperature, .top_p = p->top_p, .top_k = p->top_k,
                                .min_gap = p->min_p > 0 ? logf(p->min_p) : -INFINITY,
                                .u = p->temperature > 0 ? (float)next_token(1 << 24) / (1 << 24) : 0.0f};
            t[s] = next_token(V);
            engine_set_state(e, s, states + s * sf);
        }
        const float *lk = engine_step(e, t, nb);
        for (int s = 0; s < nb; s++) {
            const SamplerParams *p = &DRAWS[(k + s) % NDRAW];
            if (p->repeat_penalty != 0.0f && p->repeat_penalty != 1.0f) {
                /* distinct ids (97 is prime to V), and the row's argmax among them: the penalty matters */
                int top = logits_argmax(lk + s * row, V), n = 0, has_top = 0;
                for (int j = 0; j < NPEN; j++) {
                    pens[s][n] = (k * 131 + s * 7 + j * 97) % V;
                    has_top |= pens[s][n++] == top;
                }
                if (!has_top) pens[s][n++] = top;
                d[s].penalty = p->repeat_penalty, d[s].n_pen = n, d[s].pen = pens[s];
            }
            memcpy(pen_row, lk + s * row, sizeof(float) * V);
            sampler_penalize(&d[s], pen_row);
            picks[0][n_picks + s] = (float)sampler_pick(&d[s], pen_row, V, cand);
        }
        for (int s = 0; s < nb; s++) engine_set_state(e, s, states + s * sf);
        engine_step_sample(e, t, nb, d, picked);
        for (int s = 0; s < nb; s++) picks[1][n_picks + s] = (float)picked[s];
        n_picks += nb;
    }
    record("sample", &picks[0][0], 2, n_picks); /* n_picks fills each row */
    free(cand);
    free(pen_row);
    free(states);

    for (int s = 0; s < 5; s++) engine_reset(e, s);
    record("prompts_many5", engine_prefill_many(e, slots, toks, lens, 5), 5, vocab_rows);
    for (int k = 0; k < steps; k++) {
        int t2[2];
        for (int s = 0; s < 2; s++) t2[s] = next_token(V);
        memcpy(buf + (size_t)k * 2 * row, engine_step(e, t2, 2), 2 * row * sizeof(float));
    }
    record("batch2", buf, steps * 2, vocab_rows);

    if (fclose(out) != 0) { fprintf(stderr, "engine_dump: write failed\n"); return 1; }
    free(buf); free(st); free(toks);
    engine_free(e);
    model_close(&m);
    return 0;
}
