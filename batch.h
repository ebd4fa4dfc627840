/* batch.h: batch generation (-f), saved states (--state-in, --state-out) and the benchmark mode
 * (--bench), implemented in batch.c; and the pieces of cli.c that batch.c reuses (the sampler,
 * feed, die), so that a batch line samples exactly as ./run -i does. */
#ifndef BATCH_H
#define BATCH_H

#include <stdint.h>
#include <stdio.h>

#include "engine.h"
#include "tokenizer.h"

/* Exit codes, as documented in README.md. EXIT_SOME_FAILED: batch mode wrote every line, but some
 * of them are error objects. */
enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_SOME_FAILED = 3 };

/* ----------------------------------------------------------------------------------------------
 * From cli.c. */

/* The sampler: temperature, then top-k, then top-p, as mamba_ssm's generation does. */
typedef struct {
    float prob;
    int id;
} Candidate;

typedef struct {
    int vocab_size;
    float temperature, top_p;
    int top_k;
    uint64_t rng;
    Candidate *cand; /* vocab_size of them, allocated once */
} Sampler;

int sample(Sampler *s, const float *logits);
/* The bytes that token id completes in stream ds (whole UTF-8 characters), in a buffer of cli.c's
 * that is reused: valid until the next call. */
const char *decode_token(const Tokenizer *tok, DecodeStream *ds, int id, size_t *len);

/* Feeds n tokens of slot seq through the engine (prefill in chunks, or one decode step at a time
 * on slot 0 with stepwise) and returns the last row of logits (NULL when n is 0). */
typedef void (*RowFn)(void *ctx, long pos, const float *row);
const float *feed(Engine *e, int seq, const int *ids, long n, int stepwise, int vocab_rows, RowFn on_rows, void *ctx);

/* "error: ..." on stderr, then exit(code). */
void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
double now_s(void);

/* ----------------------------------------------------------------------------------------------
 * batch.c */

#define BATCH_MAX_LIST 32

typedef struct {
    const char *input;            /* -f FILE, "-" = stdin; NULL: not batch mode */
    enum { FMT_AUTO, FMT_TEXT, FMT_JSONL } format;
    int max_batch;                /* -b N; 0 = not given */
    const char *state_in, *state_out;
    int bench;                    /* --bench */
    int bench_prompt[BATCH_MAX_LIST], n_bench_prompt;
    int bench_gen[BATCH_MAX_LIST], n_bench_gen;
    int bench_batch[BATCH_MAX_LIST], n_bench_batch;
} BatchOpts;

/* The sampling and length settings of the command line: defaults for every batch line. */
typedef struct {
    float temperature, top_p;
    int top_k, steps, ignore_eos, quiet;
    uint64_t seed;
} GenParams;

/* If argv[*i] is one of batch.c's flags, consumes it (and its value: *i advances) and returns 1. */
int batch_parse_flag(BatchOpts *o, int argc, char **argv, int *i);
/* The help lines of those flags. */
void batch_usage(FILE *f);
/* Usage errors (exit 2) for flags that do not go together; fills in defaults. */
void batch_check_args(BatchOpts *o, int has_prompt, int other_mode, int ids, int stepwise, int has_logits);
/* The number of engine slots the mode needs: -b in batch mode, the largest batch with --bench, else 1. */
int batch_max_seqs(const BatchOpts *o);

/* Batch mode: one JSON object per input line on stdout, in input order. Returns EXIT_OK, or
 * EXIT_SOME_FAILED when some lines are error objects; dies on errors that stop the run. */
int batch_run(const BatchOpts *o, const Model *m, Tokenizer *tok, Engine *e, const GenParams *g);

/* --bench: the sweep, as one JSON document on stdout. */
int bench_run(const BatchOpts *o, const Model *m, const char *model_path, Engine *e, int quiet);

/* Saved states (format in batch.c). state_save writes slot seq's state, the number of tokens it has
 * consumed and the logits row of its last token; state_load checks the file against the model
 * (dies with a one-line error, exit 1, on a foreign, truncated or corrupt file), sets slot seq, and
 * returns the saved logits row (malloc'd; the caller frees it) and the token count in *n_tokens. */
void state_save(const char *path, const Model *m, Engine *e, int seq, long n_tokens, const float *logits);
float *state_load(const char *path, const Model *m, Engine *e, int seq, long *n_tokens);

#endif
