/* tests/batch_engines.c: batch mode (batch.c) on N CPU engines at once, each on a thread of its own,
 * as ./runcuda --gpus runs one engine a GPU; tests/test_batch_engines.py compares its output with
 * ./run's (one engine). Built by `make build/batch_engines` with run.c and the shared files.
 *
 *   batch_engines MODEL N [-s SEED] [-n STEPS] [-t TEMP] [-p TOP_P] [--ignore-eos] [-q] [batch flags]
 *
 * The defaults are ./run's (-t 1, -p 0.9, -n 256); -s defaults to 0. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "util.h"

int main(int argc, char **argv) {
    if (argc < 3) die(EXIT_USAGE, "usage: batch_engines MODEL N [flags]");
    int n = atoi(argv[2]);
    if (n < 1 || n > BATCH_MAX_ENGINES) die(EXIT_USAGE, "N must be in [1, %d]", BATCH_MAX_ENGINES);
    BatchOpts o = {0};
    GenParams g = {.sp = {.temperature = 1.0f, .top_p = 0.9f, .repeat_penalty = 1.0f}, .steps = 256};
    for (int i = 3; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "--ignore-eos")) g.ignore_eos = 1;
        else if (!strcmp(f, "-q")) g.quiet = 1;
        else if (batch_parse_flag(&o, argc, argv, &i)) continue;
        else if (i + 1 < argc && !strcmp(f, "-s")) g.seed = strtoull(argv[++i], NULL, 10);
        else if (i + 1 < argc && !strcmp(f, "-n")) g.steps = atoi(argv[++i]);
        else if (i + 1 < argc && !strcmp(f, "-t")) g.sp.temperature = (float)atof(argv[++i]);
        else if (i + 1 < argc && !strcmp(f, "-p")) g.sp.top_p = (float)atof(argv[++i]);
        else die(EXIT_USAGE, "unknown option '%s'", f);
    }
    if (!o.input) die(EXIT_USAGE, "-f is needed");
    batch_check_args(&o, 0, 0, 0, 0, 0);
    double t0 = now_s();
    Model m;
    char err[512];
    if (model_open(&m, argv[1], err, sizeof err) != 0) die(EXIT_RUNTIME, "%s", err);
    Tokenizer *tok = tokenizer_load(m.tokenizer, m.tokenizer_bytes, err, sizeof err);
    if (!tok) die(EXIT_RUNTIME, "%s", err);
    Engine *engines[BATCH_MAX_ENGINES];
    for (int k = 0; k < n; k++)
        if (!(engines[k] = engine_new(&m, 0, batch_max_seqs(&o), err, sizeof err))) die(EXIT_RUNTIME, "%s", err);
    int rc = batch_run(&o, &m, tok, engines, n, &g, now_s() - t0);
    for (int k = 0; k < n; k++) engine_free(engines[k]);
    tokenizer_free(tok);
    model_close(&m);
    return rc;
}
