/* cli.c: the command line and the generation, scoring and tokenize modes, shared by
 * run (run.c, the CPU engine) and runcuda (run.cu, the GPU engine) through engine.h. */
#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "batch.h"   /* batch generation, saved states, --bench */
#include "chat.h"
#include "feed.h"
#include "sampler.h"
#include "state.h"
#include "util.h"


static void usage(FILE *f) {
    fprintf(f,
        "Usage:   run model.bin [options]\n"
        "Example: run model.bin -i \"Mamba is a\" -t 0.7 -p 0.9\n"
        "Options:\n"
        "  -i <string>   prompt; -i - reads it from stdin (without -i: generate from the\n"
        "                beginning-of-text token)\n"
        "  -t <float>    temperature in [0, 100], default 1.0; 0 = greedy\n"
        "  -p <float>    top-p (nucleus) in (0, 1], default 0.9; 1 = off\n"
        "  -k <int>      top-k, default 0 = off\n"
        "  --min-p <float>  min-p in [0, 1], default 0 = off: drop tokens less likely than\n"
        "                this times the most likely one (at temperature 1)\n"
        "  --repeat-penalty <float>  default 1 = off: the logit x of each token already in the\n"
        "                sequence (prompt and generated) becomes x/R if x > 0, else x*R\n"
        "  --repeat-last-n <int>  the penalty looks at the last N tokens only; default 0 = all\n"
        "  --stop <string>  end the generation where this text appears (not printed); repeatable\n"
        "                Order (mamba_ssm's): repeat penalty, then greedy if -t 0, else top-k, min-p,\n"
        "                temperature, top-p, and one uniform draw from the seeded generator\n"
        "  -s <int>      random seed, default: the current time\n"
        "  -n <int>      tokens to generate, default 256 (0 = only read the prompt)\n"
        "  -z <path>     tokenizer file to use instead of the one inside model.bin\n"
        "  --ignore-eos  keep generating past the end-of-text token\n"
        "  --score       print the log-probability of each token of the text (-i)\n"
        "                and its perplexity, instead of generating\n"
        "  --tokenize    print the token ids of each line of stdin (or of -i), instead of generating\n"
        "  --detokenize  print the text of each line of ids on stdin, each text ended by a NUL byte\n"
        "  --ids         -i is a list of token ids, and generated tokens are printed as ids\n"
        "  --logits FILE write every row of logits used (fp32, vocab_rows floats a row) to FILE\n"
        "  --stepwise    feed the prompt one token at a time through the decode step instead\n"
        "                of the prefill path (to check or time one against the other)\n"
        "  --threads <int>  CPU threads (OpenMP), default: OMP_NUM_THREADS, else one a core\n"
        "  -q            no summary on stderr\n"
        "  -h, --help    this help\n"
        "Text goes to stdout; the summary (load time, prompt and decode speed) and errors go to stderr.\n"
        "Exit codes: 0 success, 1 error (model, tokenizer, input), 2 bad command line.\n");
    batch_usage(f);
    chat_usage(f);
}

/* What ./run alone prints: how to call it, and where a model comes from. */
static void short_usage(FILE *f) {
    fprintf(f,
        "Usage: run model.bin [options]   (run -h lists the options)\n"
        "Models: `make run` runs the bundled models/tiny/model.bin; export.py converts a checkpoint (README.md)\n");
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

/* ----------------------------------------------------------------------------------------------
 * Command-line values: whole strings only, in range, or a usage error naming the flag. */
static double parse_num(const char *flag, const char *v, double lo, double hi, int integer) {
    char *end;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end != '\0' || errno == ERANGE || !isfinite(d))
        die(EXIT_USAGE, "%s expects a number, got '%s'", flag, v);
    if (integer && d != floor(d)) die(EXIT_USAGE, "%s expects an integer, got '%s'", flag, v);
    if (d < lo || d > hi) die(EXIT_USAGE, "%s = %s is out of range [%g, %g]", flag, v, lo, hi);
    return d;
}

/* Reads a whole stream (stdin for -i -) or file (-z) into memory, with room for a final NUL. */
static char *read_all(FILE *f, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n + 1 >= cap) {
            char *p = realloc(buf, cap *= 2);
            if (!p) { free(buf); buf = NULL; }
            buf = p;
        }
    }
    if (!buf) die(EXIT_RUNTIME, "out of memory reading input");
    *len = n;
    return buf;
}

typedef struct {
    const char *model_path, *prompt, *tokenizer_path, *logits_path;
    char *prompt_buf; /* the prompt read from stdin (-i -) */
    SamplerParams sp;
    int steps, ignore_eos, quiet, ids, stepwise, threads;
    uint64_t seed;
    char **stops; /* --stop, in the order given */
    int n_stops;
    int chat;     /* --chat */
    const char *system, *chat_template;
    enum { MODE_GENERATE, MODE_SCORE, MODE_TOKENIZE, MODE_DETOKENIZE } mode;
    BatchOpts b; /* -f, -b, --jsonl, --text, --state-in, --state-out, --bench*: batch.c */
} Args;

static Args parse_args(int argc, char **argv) {
    Args a = {0};
    a.sp = (SamplerParams){.temperature = 1.0f, .top_p = 0.9f, .repeat_penalty = 1.0f};
    a.steps = 256;
    a.seed = (uint64_t)time(NULL);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i];
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) { usage(stdout); exit(EXIT_OK); }
        if (!strcmp(f, "--score")) { a.mode = MODE_SCORE; continue; }
        if (!strcmp(f, "--tokenize")) { a.mode = MODE_TOKENIZE; continue; }
        if (!strcmp(f, "--detokenize")) { a.mode = MODE_DETOKENIZE; continue; }
        if (!strcmp(f, "--ignore-eos")) { a.ignore_eos = 1; continue; }
        if (!strcmp(f, "-q")) { a.quiet = 1; continue; }
        if (!strcmp(f, "--ids")) { a.ids = 1; continue; }
        if (!strcmp(f, "--stepwise")) { a.stepwise = 1; continue; }
        if (!strcmp(f, "--chat")) { a.chat = 1; continue; }
        if (!strcmp(f, "--system") || !strcmp(f, "--chat-template")) {
            if (i + 1 >= argc) die(EXIT_USAGE, "option %s needs a value; see -h", f);
            if (f[2] == 's') a.system = argv[++i];
            else chat_check_template(a.chat_template = argv[++i], "--chat-template");
            continue;
        }
        if (!strcmp(f, "--logits")) {
            if (i + 1 >= argc) die(EXIT_USAGE, "option --logits needs a file name; see -h");
            a.logits_path = argv[++i];
            continue;
        }
        if (!strcmp(f, "--threads")) {
            if (i + 1 >= argc) die(EXIT_USAGE, "option --threads needs a value; see -h");
            a.threads = (int)parse_num(f, argv[++i], 1, 1024, 1);
            continue;
        }
        if (!strcmp(f, "--min-p") || !strcmp(f, "--repeat-penalty") || !strcmp(f, "--repeat-last-n") || !strcmp(f, "--stop")) {
            if (i + 1 >= argc) die(EXIT_USAGE, "option %s needs a value; see -h", f);
            const char *v = argv[++i];
            if (!strcmp(f, "--min-p")) a.sp.min_p = (float)parse_num(f, v, 0, 1, 0);
            else if (!strcmp(f, "--repeat-last-n")) a.sp.repeat_last_n = (int)parse_num(f, v, 0, 1 << 30, 1);
            else if (!strcmp(f, "--repeat-penalty")) {
                a.sp.repeat_penalty = (float)parse_num(f, v, 0, 1000, 0);
                if (a.sp.repeat_penalty <= 0) die(EXIT_USAGE, "--repeat-penalty = %s must be above 0", v);
            } else {
                if (!*v) die(EXIT_USAGE, "--stop needs a non-empty string");
                if (!(a.stops = realloc(a.stops, (a.n_stops + 1) * sizeof *a.stops))) die(EXIT_RUNTIME, "out of memory");
                a.stops[a.n_stops++] = (char *)v;
            }
            continue;
        }
        if (batch_parse_flag(&a.b, argc, argv, &i)) continue;
        if (f[0] != '-' || f[1] == '\0') {
            if (a.model_path) die(EXIT_USAGE, "unexpected argument '%s' (the model is '%s'); see -h", f, a.model_path);
            a.model_path = f;
            continue;
        }
        if (strlen(f) != 2 || !strchr("itpksnz", f[1])) die(EXIT_USAGE, "unknown option '%s'; see -h", f);
        if (i + 1 >= argc) die(EXIT_USAGE, "option %s needs a value; see -h", f);
        const char *v = argv[++i];
        switch (f[1]) {
        case 'i': a.prompt = v; break;
        case 't': a.sp.temperature = (float)parse_num(f, v, 0, 100, 0); break;
        case 'p': a.sp.top_p = (float)parse_num(f, v, 0, 1, 0);
            if (a.sp.top_p <= 0) die(EXIT_USAGE, "-p = %s must be above 0", v);
            break;
        case 'k': a.sp.top_k = (int)parse_num(f, v, 0, 1e9, 1); break;
        case 's': a.seed = (uint64_t)parse_num(f, v, 0, 9007199254740992.0, 1); break;
        case 'n': a.steps = (int)parse_num(f, v, 0, 1e9, 1); break;
        case 'z': a.tokenizer_path = v; break;
        }
    }
    if (!a.model_path) {
        short_usage(stderr);
        if (argc == 1) exit(EXIT_USAGE);
        die(EXIT_USAGE, "no model file given");
    }
    if (a.n_stops && a.ids) die(EXIT_USAGE, "--stop does not go with --ids (stop strings are text)");
    if (a.n_stops && a.mode != MODE_GENERATE) die(EXIT_USAGE, "--stop goes with generation, not --score or --tokenize");
    if ((a.system || a.chat_template) && !a.chat) die(EXIT_USAGE, "--system and --chat-template go with --chat");
    if (a.chat) {
        if (a.prompt) die(EXIT_USAGE, "--chat does not go with -i (the turns come from stdin)");
        if (a.mode != MODE_GENERATE) die(EXIT_USAGE, "--chat does not go with --score or --tokenize");
        if (a.b.input || a.b.bench) die(EXIT_USAGE, "--chat does not go with -f or --bench");
        if (a.stepwise) die(EXIT_USAGE, "--chat does not go with --stepwise");
    }
    batch_check_args(&a.b, a.prompt != NULL, a.mode != MODE_GENERATE, a.ids, a.stepwise, a.logits_path != NULL);
    if (a.prompt && !strcmp(a.prompt, "-")) { /* the prompt comes from stdin, of any length */
        size_t len;
        char *text = read_all(stdin, &len);
        if (memchr(text, '\0', len)) die(EXIT_RUNTIME, "the prompt on stdin contains a NUL byte");
        text[len] = '\0';
        a.prompt = a.prompt_buf = text;
    }
    return a;
}

/* ----------------------------------------------------------------------------------------------
 * Modes. */

/* The prompt's ids: the tokenizer's output for -i (nothing prepended), the ids themselves with
 * --ids, or the beginning-of-text token without -i. */
static long prompt_ids(const Args *a, const Model *m, Tokenizer *tok, int **ids, size_t *cap) {
    char err[256];
    long n = 0;
    if (!a->prompt) {
        int bos = tokenizer_bos(tok);
        if (bos < 0) die(EXIT_USAGE, "this tokenizer has no beginning-of-text token: give a prompt with -i");
        if (!(*ids = malloc(sizeof(int)))) die(EXIT_RUNTIME, "out of memory");
        (*ids)[0] = bos;
        return 1;
    }
    if (a->prompt[0] == '\0') die(EXIT_USAGE, "the prompt (-i) is empty; leave out -i to generate from the beginning-of-text token");
    if (a->ids) {
        for (const char *p = a->prompt; *p;) {
            char *end;
            errno = 0;
            long v = strtol(p, &end, 10);
            if (end == p || errno || v < 0 || v >= m->config.vocab_size)
                die(EXIT_USAGE, "--ids: '%.20s' is not a token id in [0, %d)", p, m->config.vocab_size);
            if ((size_t)n == *cap) {
                *cap = *cap ? *cap * 2 : 256;
                if (!(*ids = realloc(*ids, *cap * sizeof(int)))) die(EXIT_RUNTIME, "out of memory");
            }
            (*ids)[n++] = (int)v;
            for (p = end; *p == ' ' || *p == ',' || *p == '\n' || *p == '\t'; p++) {}
        }
        return n;
    }
    n = tokenizer_encode(tok, a->prompt, strlen(a->prompt), ids, cap, err, sizeof err);
    if (n < 0) die(EXIT_RUNTIME, "prompt: %s", err);
    if (n == 0) die(EXIT_USAGE, "the prompt (-i) encodes to no tokens");
    return n;
}

static FILE *open_logits(const Args *a) {
    if (!a->logits_path) return NULL;
    FILE *f = fopen(a->logits_path, "wb");
    if (!f) die(EXIT_RUNTIME, "cannot write logits file %s: %s", a->logits_path, strerror(errno));
    return f;
}

static void write_row(FILE *f, const float *row, int n) {
    if (f && fwrite(row, sizeof(float), n, f) != (size_t)n) die(EXIT_RUNTIME, "writing the logits file failed: %s", strerror(errno));
}

static void print_text(void *ctx, const char *text, size_t n) {
    fwrite(text, 1, n, stdout);
    fflush(stdout);
}

/* load_s: the time from the start of the program to the engine ready, for the summary. */
static int generate(const Args *a, const Model *m, Tokenizer *tok, Engine *e, double load_s) {
    const Config *c = &m->config;
    int *ids = NULL;
    size_t cap = 0;
    long n_prompt = a->b.state_in && !a->prompt ? 0 : prompt_ids(a, m, tok, &ids, &cap), n_before = 0;
    for (long i = 0; i < n_prompt; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            die(EXIT_RUNTIME, "prompt token %d is outside the model's vocabulary (%d)", ids[i], c->vocab_size);

    Sampler s;
    sampler_init(&s, c->vocab_size, &a->sp, a->seed, NULL, NULL);
    for (long i = 0; i < n_prompt; i++) sampler_accept(&s, ids[i]); /* the penalty counts the prompt */
    StopText st;
    stop_text_init(&st, a->stops, a->n_stops);
    FILE *lf = open_logits(a);

    float *saved = a->b.state_in ? state_load(a->b.state_in, m, e, 0, &n_before) : NULL; /* sets slot 0 */
    double t0 = now_s();
    const float *logits = n_prompt ? feed(e, 0, ids, n_prompt, a->stepwise, c->vocab_rows, NULL, NULL) : saved;
    double t1 = now_s();
    if (a->b.state_out) state_save(a->b.state_out, m, e, 0, n_before + n_prompt, logits);
    /* The completion continues the prompt: it is not the start of a text (where SentencePiece
     * would drop a leading space). */
    DecodeStream ds = {.n_fed = a->prompt || a->b.state_in ? 1 : 0};
    int eos = tokenizer_eos(tok), generated = 0, stopped = 0;
    const char *stop = "length";
    /* With no logits to write, each step's token is picked by the engine (on the GPU, no row of
     * logits comes back): its argmax when greedy without a penalty, else from the sampler's draw;
     * picked holds it. */
    int greedy = sampler_is_greedy(&s) && !lf, draws = !lf, picked = -1;
    for (int i = 0; i < a->steps; i++) {
        write_row(lf, logits, c->vocab_rows);
        int next = picked >= 0 ? picked : sampler_sample(&s, logits);
        sampler_accept(&s, next);
        generated++;
        if (next == eos && !a->ignore_eos) { stop = "end-of-text"; break; }
        if (a->ids) {
            printf(i == 0 ? "%d" : " %d", next);
            fflush(stdout);
        } else {
            size_t len;
            const char *text = decode_token(tok, &ds, next, &len);
            if ((stopped = stop_text_put(&st, text, len, print_text, NULL))) { stop = "stop-string"; break; }
        }
        if (i + 1 < a->steps) {
            if (greedy) {
                engine_step_argmax(e, &next, 1, &picked);
            } else if (draws) {
                SampleDraw d;
                sampler_draw(&s, &d);
                engine_step_sample(e, &next, 1, &d, &picked);
            } else {
                logits = engine_step(e, &next, 1);
            }
        }
    }
    if (!a->ids && !stopped) {
        char tail[16];
        size_t n = tokenizer_decode_flush(tok, &ds, tail, sizeof tail);
        if (!stop_text_put(&st, tail, n, print_text, NULL)) stop_text_flush(&st, print_text, NULL);
        else stop = "stop-string";
    }
    if (generated) fputc('\n', stdout);
    fflush(stdout);
    double t2 = now_s();
    if (lf && fclose(lf) != 0) die(EXIT_RUNTIME, "writing the logits file failed");
    if (!a->quiet) {
        int steps = generated > 1 ? generated - 1 : 0;
        fprintf(stderr, "[%s] load: %.2f s | prompt: %ld tokens, %.1f ms, %.1f tok/s | generated: %d tokens, %.1f tok/s | stop: %s\n",
                engine_name(e), load_s, n_prompt, (t1 - t0) * 1e3, n_prompt ? n_prompt / (t1 - t0) : 0.0, generated,
                steps ? steps / (t2 - t1) : 0.0, stop);
    }
    sampler_free(&s);
    stop_text_free(&st);
    free(ids);
    free(saved);
    return EXIT_OK;
}

/* Log-probability of each token given all the ones before it (the first token is not scored:
 * nothing is prepended), over the full rows of logits, as PyTorch's cross-entropy computes it. */
typedef struct {
    const int *ids;
    long n;
    int vocab_rows;
    double nll;
    FILE *logits_file;
} Score;

static void score_row(void *ctx, long pos, const float *row) {
    Score *sc = ctx;
    write_row(sc->logits_file, row, sc->vocab_rows);
    if (pos + 1 >= sc->n) return; /* the last row predicts past the text */
    float mx = row[argmax(row, sc->vocab_rows)];
    double se = 0;
    for (int v = 0; v < sc->vocab_rows; v++) se += exp((double)row[v] - mx);
    double lp = (double)row[sc->ids[pos + 1]] - mx - log(se);
    sc->nll -= lp;
    printf("%ld\t%d\t%.6f\n", pos + 1, sc->ids[pos + 1], lp);
}

static int score(const Args *a, const Model *m, Tokenizer *tok, Engine *e) {
    if (!a->prompt) die(EXIT_USAGE, "--score needs the text: -i TEXT, or -i - to read it from stdin");
    int *ids = NULL;
    size_t cap = 0;
    long n = prompt_ids(a, m, tok, &ids, &cap);
    if (n < 2) die(EXIT_RUNTIME, "the text has %ld token%s: scoring needs at least 2", n, n == 1 ? "" : "s");
    Score sc = {ids, n, m->config.vocab_rows, 0, open_logits(a)};
    double t0 = now_s();
    printf("pos\tid\tlogprob\n");
    feed(e, 0, ids, n, a->stepwise, m->config.vocab_rows, score_row, &sc);
    printf("# tokens %ld scored %ld nll %.6f perplexity %.6f\n", n, n - 1, sc.nll / (n - 1), exp(sc.nll / (n - 1)));
    if (sc.logits_file && fclose(sc.logits_file) != 0) die(EXIT_RUNTIME, "writing the logits file failed");
    if (!a->quiet) fprintf(stderr, "[%s] scored %ld tokens, %.1f tok/s\n", engine_name(e), n - 1, n / (now_s() - t0));
    free(ids);
    return EXIT_OK;
}

/* One line of ids per input line (or for the whole -i text). */
static int tokenize(const Args *a, Tokenizer *tok) {
    int *ids = NULL;
    size_t cap = 0;
    char err[256];
    if (a->prompt) {
        long n = tokenizer_encode(tok, a->prompt, strlen(a->prompt), &ids, &cap, err, sizeof err);
        if (n < 0) die(EXIT_RUNTIME, "text: %s", err);
        for (long i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
        free(ids);
        return EXIT_OK;
    }
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    long lineno = 0;
    while ((len = getline(&line, &lcap, stdin)) >= 0) {
        lineno++;
        if (len > 0 && line[len - 1] == '\n') len--;
        long n = tokenizer_encode(tok, line, (size_t)len, &ids, &cap, err, sizeof err);
        if (n < 0) die(EXIT_RUNTIME, "line %ld: %s", lineno, err);
        for (long i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
    }
    free(line);
    free(ids);
    return EXIT_OK;
}

/* The text of each line of ids, through the streaming decoder (as generation prints it); a NUL
 * byte ends each text, since texts may hold newlines. */
static int detokenize(const Tokenizer *tok) {
    char *line = NULL;
    size_t lcap = 0;
    long lineno = 0;
    while (getline(&line, &lcap, stdin) >= 0) {
        lineno++;
        DecodeStream ds = {0};
        for (char *p = line, *end;; p = end) {
            while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
            if (!*p) break;
            errno = 0;
            long id = strtol(p, &end, 10);
            if (end == p || errno || id < 0 || id >= tokenizer_n_vocab(tok))
                die(EXIT_RUNTIME, "line %ld: '%.20s' is not a token id in [0, %d)", lineno, p, tokenizer_n_vocab(tok));
            size_t len;
            const char *text = decode_token(tok, &ds, (int)id, &len);
            fwrite(text, 1, len, stdout);
        }
        char tail[16];
        fwrite(tail, 1, tokenizer_decode_flush(tok, &ds, tail, sizeof tail), stdout);
        fputc('\0', stdout);
    }
    free(line);
    return EXIT_OK;
}

/* OpenMP threads waiting for work spin by default (libgomp: some 300,000 iterations before they
 * sleep), between the parallel loops of every step; on a machine whose cores run other work, that
 * spinning takes them from it, and a thread that lost its core holds up the one spinning for it
 * (README.md, Threads on a shared machine: beside a busy loop, 2 threads decoded 2 to 20 times
 * slower than with passive waiting, and burnt several times the CPU). So ./run's threads sleep at
 * once (OMP_WAIT_POLICY=passive) unless OMP_WAIT_POLICY or GOMP_SPINCOUNT says otherwise. libgomp
 * reads them once, as it is loaded, before main (a setenv from the program's .preinit_array, tried
 * first, did not reach it), so the program sets the variable and runs itself again; where it cannot,
 * it goes on with libgomp's default. */
static void default_wait_policy(char **argv) {
    if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
    setenv("OMP_WAIT_POLICY", "passive", 0);
    execv("/proc/self/exe", argv);
}

int main(int argc, char **argv) {
    default_wait_policy(argv);
    double t_start = now_s();
    Args a = parse_args(argc, argv);
    Model m;
    char err[512];
    if (model_open(&m, a.model_path, err, sizeof err) != 0) die(EXIT_RUNTIME, "%s", err);

    const uint8_t *tok_data = m.tokenizer;
    size_t tok_bytes = m.tokenizer_bytes;
    char *tok_file = NULL;
    if (a.tokenizer_path) {
        FILE *f = fopen(a.tokenizer_path, "rb");
        if (!f) die(EXIT_RUNTIME, "cannot open tokenizer file %s: %s", a.tokenizer_path, strerror(errno));
        tok_file = read_all(f, &tok_bytes);
        fclose(f);
        tok_data = (const uint8_t *)tok_file;
    }
    Tokenizer *tok = tokenizer_load(tok_data, tok_bytes, err, sizeof err);
    if (!tok) die(EXIT_RUNTIME, "%s: %s", a.tokenizer_path ? a.tokenizer_path : a.model_path, err);
    if (tokenizer_n_vocab(tok) > m.config.vocab_size)
        die(EXIT_RUNTIME, "the tokenizer has %d tokens but the model only %d", tokenizer_n_vocab(tok), m.config.vocab_size);

    int rc;
    if (a.mode == MODE_TOKENIZE) {
        rc = tokenize(&a, tok);
    } else if (a.mode == MODE_DETOKENIZE) {
        rc = detokenize(tok);
    } else {
        if (a.threads) omp_set_num_threads(a.threads); /* before the engine, which takes its count */
        /* One engine; with --gpus (batch mode), one on each device listed. */
        int n_engines = a.b.n_devices ? a.b.n_devices : 1;
        Engine *engines[BATCH_MAX_ENGINES];
        for (int k = 0; k < n_engines; k++) {
            engines[k] = engine_new(&m, a.b.n_devices ? a.b.devices[k] : 0, batch_max_seqs(&a.b), err, sizeof err);
            if (!engines[k]) die(EXIT_RUNTIME, "%s", err);
        }
        Engine *e = engines[0];
        double load_s = now_s() - t_start;
        GenParams g = {a.sp, a.steps, a.ignore_eos, a.quiet, a.seed, a.stops, a.n_stops};
        ChatOpts co = {a.system, a.chat_template, a.b.state_in, a.b.state_out, a.sp, a.seed, a.steps, a.ignore_eos, a.ids, a.stops, a.n_stops, NULL};
        char *model_template = NULL;
        if (a.chat) {
            co.logits = open_logits(&a);
            if (!co.template_text && m.chat_template) { /* the model's own, from export.py */
                if (!(model_template = strndup(m.chat_template, m.chat_template_bytes))) die(EXIT_RUNTIME, "out of memory");
                chat_check_template(model_template, "the chat template in model.bin");
                co.template_text = model_template;
            }
        }
        rc = a.chat ? chat_run(&co, &m, tok, e)
           : a.b.bench ? bench_run(&a.b, &m, a.model_path, e, a.quiet)
           : a.b.input ? batch_run(&a.b, &m, tok, engines, n_engines, &g, load_s)
           : a.mode == MODE_SCORE ? score(&a, &m, tok, e) : generate(&a, &m, tok, e, load_s);
        if (co.logits && fclose(co.logits) != 0) die(EXIT_RUNTIME, "writing the logits file failed");
        free(model_template);
        for (int k = 0; k < n_engines; k++) engine_free(engines[k]);
    }
    tokenizer_free(tok);
    free(tok_file);
    free(a.prompt_buf);
    free(a.stops);
    model_close(&m);
    return rc;
}
