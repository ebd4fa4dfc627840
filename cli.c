/* cli.c: the command line, the sampler and the generation, scoring and tokenize modes, shared by
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

#include "engine.h"
#include "tokenizer.h"
#include "batch.h" /* batch generation, saved states, --bench; the exit codes */


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
        "Text goes to stdout; the summary (prompt and decode tok/s) and errors go to stderr.\n"
        "Exit codes: 0 success, 1 error (model, tokenizer, input), 2 bad command line.\n");
    batch_usage(f);
}

/* What ./run alone prints: how to call it, and where a model comes from. */
static void short_usage(FILE *f) {
    fprintf(f,
        "Usage: run model.bin [options]   (run -h lists the options)\n"
        "Models: `make run` runs the bundled models/tiny/model.bin; export.py converts a checkpoint (README.md)\n");
}

void die(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("error: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(code);
}

double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* ----------------------------------------------------------------------------------------------
 * The sampler: temperature, then top-k, then top-p (nucleus), as mamba_ssm's generation does.
 * Only ids below vocab_size are candidates: the padded rows of the logits are never picked. */
/* Candidate and Sampler: in batch.h. */
static uint32_t random_u32(uint64_t *state) { /* xorshift* */
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return (uint32_t)((*state * 0x2545F4914F6CDD1DULL) >> 32);
}
static float random_f32(uint64_t *state) { return (random_u32(state) >> 8) / 16777216.0f; }

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

static int cmp_cand_desc(const void *a, const void *b) {
    float pa = ((const Candidate *)a)->prob, pb = ((const Candidate *)b)->prob;
    if (pa != pb) return pa < pb ? 1 : -1;
    return ((const Candidate *)a)->id - ((const Candidate *)b)->id;
}

/* The bin of a probability in (0, 1]: 0 for 1, one more every 1/16 octave below. */
static int prob_bin(float p, int bins) {
    uint32_t bits;
    memcpy(&bits, &p, sizeof bits);
    uint32_t b = (0x3F800000u - bits) >> 19;
    return b < (uint32_t)bins ? (int)b : bins - 1;
}

int sample(Sampler *s, const float *logits) {
    int n = s->vocab_size;
    if (s->temperature == 0.0f) return argmax(logits, n);
    float maxl = logits[argmax(logits, n)];
    double sum = 0;
    Candidate *c = s->cand;
    for (int i = 0; i < n; i++) {
        c[i].id = i;
        c[i].prob = expf((logits[i] - maxl) / s->temperature);
        sum += c[i].prob;
    }
    int m = n;
    if (s->top_k > 0 && s->top_k < n) {
        qsort(c, n, sizeof *c, cmp_cand_desc);
        m = s->top_k;
        sum = 0;
        for (int i = 0; i < m; i++) sum += c[i].prob;
    }
    if (s->top_p < 1.0f) {
        if (m == n) {
            /* Sort only the candidates that can be in the nucleus. Bin them by probability (16 bins
             * an octave, from the float's bits: a larger probability never lands in a later bin),
             * find the bin where the mass from the top reaches top_p, and keep the bins up to it:
             * the kept set holds the whole nucleus, usually a few hundred candidates. */
            enum { BINS = 4096 };
            double mass[BINS] = {0}, target = s->top_p * sum, cum = 0;
            for (int i = 0; i < n; i++) mass[prob_bin(c[i].prob, BINS)] += c[i].prob;
            int last = 0;
            for (cum = mass[0]; cum < target && last < BINS - 1;) cum += mass[++last];
            int k = 0;
            for (int i = 0; i < n; i++)
                if (prob_bin(c[i].prob, BINS) <= last) c[k++] = c[i];
            m = k;
            qsort(c, m, sizeof *c, cmp_cand_desc);
        }
        double cum = 0, target = s->top_p * sum;
        int keep = m;
        for (int i = 0; i < m; i++) {
            cum += c[i].prob;
            if (cum >= target) { keep = i + 1; break; }
        }
        m = keep;
        sum = 0;
        for (int i = 0; i < m; i++) sum += c[i].prob;
    }
    double r = random_f32(&s->rng) * sum, cum = 0;
    for (int i = 0; i < m; i++) {
        cum += c[i].prob;
        if (r < cum) return c[i].id;
    }
    return c[m - 1].id;
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
    float temperature, top_p;
    int top_k, steps, ignore_eos, quiet, ids, stepwise, threads;
    uint64_t seed;
    enum { MODE_GENERATE, MODE_SCORE, MODE_TOKENIZE, MODE_DETOKENIZE } mode;
    BatchOpts b; /* -f, -b, --jsonl, --text, --state-in, --state-out, --bench*: batch.c */
} Args;

static Args parse_args(int argc, char **argv) {
    Args a = {0};
    a.temperature = 1.0f;
    a.top_p = 0.9f;
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
        case 't': a.temperature = (float)parse_num(f, v, 0, 100, 0); break;
        case 'p': a.top_p = (float)parse_num(f, v, 0, 1, 0);
            if (a.top_p <= 0) die(EXIT_USAGE, "-p = %s must be above 0", v);
            break;
        case 'k': a.top_k = (int)parse_num(f, v, 0, 1e9, 1); break;
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

/* Feeds n tokens of slot seq through the engine, through the prefill path in chunks or, with
 * stepwise, one decode step at a time. With on_rows, every row of logits is handed to it (the
 * engine then computes them all); otherwise only the last row is computed and returned. */
typedef void (*RowFn)(void *ctx, long pos, const float *row);

const float *feed(Engine *e, int seq, const int *ids, long n, int stepwise, int vocab_rows, RowFn on_rows, void *ctx) {
    const float *logits = NULL;
    if (stepwise) {
        for (long i = 0; i < n; i++) {
            logits = engine_step(e, ids + i, 1);
            if (on_rows) on_rows(ctx, i, logits);
        }
        return logits;
    }
    for (long i = 0; i < n; i += PREFILL_CHUNK) {
        int len = n - i < PREFILL_CHUNK ? (int)(n - i) : PREFILL_CHUNK;
        logits = engine_prefill(e, seq, ids + i, len, on_rows != NULL);
        if (on_rows) {
            for (int j = 0; j < len; j++) on_rows(ctx, i + j, logits + (size_t)j * vocab_rows);
            logits += (size_t)(len - 1) * vocab_rows;
        }
    }
    return logits;
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

const char *decode_token(const Tokenizer *tok, DecodeStream *ds, int id, size_t *len) {
    static char *buf;
    static size_t cap;
    size_t plen;
    tokenizer_piece(tok, id, &plen);
    if (TOKENIZER_DECODE_CAP(plen) > cap) { /* grows a few times at most, then is reused */
        cap = TOKENIZER_DECODE_CAP(plen) < 256 ? 256 : TOKENIZER_DECODE_CAP(plen);
        if (!(buf = realloc(buf, cap))) die(EXIT_RUNTIME, "out of memory");
    }
    *len = tokenizer_decode_stream(tok, ds, id, buf, cap);
    return buf;
}

static void write_token(const Args *a, const Tokenizer *tok, DecodeStream *ds, int id, int first) {
    if (a->ids) {
        printf(first ? "%d" : " %d", id);
    } else {
        size_t len;
        const char *text = decode_token(tok, ds, id, &len);
        fwrite(text, 1, len, stdout);
    }
    fflush(stdout);
}

static int generate(const Args *a, const Model *m, Tokenizer *tok, Engine *e) {
    const Config *c = &m->config;
    int *ids = NULL;
    size_t cap = 0;
    long n_prompt = a->b.state_in && !a->prompt ? 0 : prompt_ids(a, m, tok, &ids, &cap), n_before = 0;
    for (long i = 0; i < n_prompt; i++)
        if (ids[i] < 0 || ids[i] >= c->vocab_size)
            die(EXIT_RUNTIME, "prompt token %d is outside the model's vocabulary (%d)", ids[i], c->vocab_size);

    Sampler s = {c->vocab_size, a->temperature, a->top_p, a->top_k, a->seed ? a->seed : 0x9E3779B97F4A7C15ULL, NULL};
    if (!(s.cand = malloc(sizeof(Candidate) * c->vocab_size))) die(EXIT_RUNTIME, "out of memory");
    FILE *lf = open_logits(a);

    float *saved = a->b.state_in ? state_load(a->b.state_in, m, e, 0, &n_before) : NULL; /* sets slot 0 */
    double t0 = now_s();
    const float *logits = n_prompt ? feed(e, 0, ids, n_prompt, a->stepwise, c->vocab_rows, NULL, NULL) : saved;
    double t1 = now_s();
    if (a->b.state_out) state_save(a->b.state_out, m, e, 0, n_before + n_prompt, logits);
    /* The completion continues the prompt: it is not the start of a text (where SentencePiece
     * would drop a leading space). */
    DecodeStream ds = {.n_fed = a->prompt || a->b.state_in ? 1 : 0};
    int eos = tokenizer_eos(tok), generated = 0;
    const char *stop = "length";
    for (int i = 0; i < a->steps; i++) {
        write_row(lf, logits, c->vocab_rows);
        int next = sample(&s, logits);
        generated++;
        if (next == eos && !a->ignore_eos) { stop = "end-of-text"; break; }
        write_token(a, tok, &ds, next, i == 0);
        if (i + 1 < a->steps) logits = engine_step(e, &next, 1);
    }
    char tail[16];
    if (!a->ids) fwrite(tail, 1, tokenizer_decode_flush(tok, &ds, tail, sizeof tail), stdout);
    if (generated) fputc('\n', stdout);
    fflush(stdout);
    double t2 = now_s();
    if (lf && fclose(lf) != 0) die(EXIT_RUNTIME, "writing the logits file failed");
    if (!a->quiet) {
        int steps = generated > 1 ? generated - 1 : 0;
        fprintf(stderr, "[%s] prompt: %ld tokens, %.1f tok/s | generated: %d tokens, %.1f tok/s | stop: %s\n",
                engine_name(e), n_prompt, n_prompt / (t1 - t0), generated, steps ? steps / (t2 - t1) : 0.0, stop);
    }
    free(s.cand);
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
        Engine *e = engine_new(&m, batch_max_seqs(&a.b), err, sizeof err);
        if (!e) die(EXIT_RUNTIME, "%s", err);
        GenParams g = {a.temperature, a.top_p, a.top_k, a.steps, a.ignore_eos, a.quiet, a.seed};
        rc = a.b.bench ? bench_run(&a.b, &m, a.model_path, e, a.quiet)
           : a.b.input ? batch_run(&a.b, &m, tok, e, &g)
           : a.mode == MODE_SCORE ? score(&a, &m, tok, e) : generate(&a, &m, tok, e);
        engine_free(e);
    }
    tokenizer_free(tok);
    free(tok_file);
    free(a.prompt_buf);
    model_close(&m);
    return rc;
}
