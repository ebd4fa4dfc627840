/* batch.h: the flags of batch generation (-f), saved states (--state-in, --state-out) and the
 * benchmark mode (--bench), and batch mode itself (batch.c, on top of feed.h, sampler.h and jsonl.h,
 * so that a batch line samples exactly as ./run -i does); the benchmark is benchmark.c, saved states
 * state.c (state.h). cli.c calls these; they call nothing of cli.c. */
#ifndef BATCH_H
#define BATCH_H

#include <stdint.h>
#include <stdio.h>

#include "engine.h"
#include "sampler.h"
#include "tokenizer.h"

/* ----------------------------------------------------------------------------------------------
 * batch.c */

#define BATCH_MAX_LIST 32
#define MAX_BATCH 1024 /* most sequences decoded together (-b, --bench-batch) */
#define BATCH_MAX_ENGINES 64 /* --gpus */

typedef struct {
    const char *input;            /* -f FILE, "-" = stdin; NULL: not batch mode */
    enum { FMT_AUTO, FMT_TEXT, FMT_JSONL } format;
    int max_batch;                /* -b N; 0 = not given */
    const char *output;           /* -o FILE: lines appended as they finish; NULL: stdout, in order */
    int resume;                   /* --resume: skip the ids already in -o's file */
    long shard_k, shard_n;        /* --shard K/N: only the lines whose index is K mod N (N = 0: all) */
    const char *gpus;             /* --gpus, as given; NULL: one engine, on device 0 */
    long long progress;           /* --progress N: a line on stderr every N generated tokens (0: off) */
    int devices[BATCH_MAX_ENGINES], n_devices; /* --gpus: each engine's device (batch_check_args) */
    const char *state_in, *state_out;
    int bench;                    /* --bench */
    int bench_prompt[BATCH_MAX_LIST], n_bench_prompt;
    int bench_gen[BATCH_MAX_LIST], n_bench_gen;
    int bench_batch[BATCH_MAX_LIST], n_bench_batch;
} BatchOpts;

/* The sampling and length settings of the command line: defaults for every batch line. */
typedef struct {
    SamplerParams sp;
    int steps, ignore_eos, quiet;
    uint64_t seed;
    char **stops; /* --stop strings */
    int n_stops;
} GenParams;

/* If argv[*i] is one of batch.c's flags, consumes it (and its value: *i advances) and returns 1. */
int batch_parse_flag(BatchOpts *o, int argc, char **argv, int *i);
/* The help lines of those flags. */
void batch_usage(FILE *f);
/* Usage errors (exit 2) for flags that do not go together, and --gpus against the engine's devices
 * (engine_devices: ./run has none); fills in defaults. */
void batch_check_args(BatchOpts *o, int has_prompt, int other_mode, int ids, int stepwise, int has_logits);
/* The number of engine slots the mode needs: -b in batch mode, the largest batch with --bench, else 1. */
int batch_max_seqs(const BatchOpts *o);

/* Batch mode on n_engines engines (each on a thread of its own; -b slots each): one JSON object per
 * input line on stdout, in input order (or appended to -o's file as each finishes). load_s: the
 * time the program took to start, for the summary. Returns EXIT_OK, or EXIT_SOME_FAILED when some
 * lines are error objects; dies on errors that stop the run; exits 128 + the signal on SIGINT or
 * SIGTERM (lines in flight dropped). */
int batch_run(const BatchOpts *o, const Model *m, Tokenizer *tok, Engine **engines, int n_engines, const GenParams *g,
              double load_s);

/* --bench (benchmark.c): the sweep, as one JSON document on stdout. */
int bench_run(const BatchOpts *o, const Model *m, const char *model_path, Engine *e, int quiet);

#endif
