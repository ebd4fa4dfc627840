/* batch.c: batch generation (-f prompts.txt | prompts.jsonl), and the command-line flags of batch
 * mode, saved states (state.c) and the benchmark (benchmark.c), on top of feed.h, sampler.h and
 * jsonl.h.
 *
 * Batch mode (continuous batching): prompts are read one line at a time into the free engine
 * slots, those that fit in one prefill chunk prefilled together (engine_prefill_many), a longer one
 * alone; each line's first token is picked right after its prefill. Then all active slots
 * (0..nact-1) take one decode step together, so every weight is read once per step for all of them;
 * when every active line is greedy (without a penalty) the engine picks their tokens
 * (engine_step_argmax), else it samples them from each line's draw (engine_step_sample: on the GPU,
 * on the device; the first tokens, from the prefill's rows, are sampled here, on several threads).
 * A finished sequence's slot is filled by the last active one
 * (engine_copy_state), and free slots are refilled with the next prompts.
 * Each line samples with its own RNG, seeded from (seed, line index), and the CPU engine computes
 * every row of a step (and every prompt of a prefill) independently of the others, so the output
 * does not depend on -b.
 *
 * Several engines (./runcuda --gpus: one a GPU): each runs that scheduler on a thread of its own,
 * and takes the next input line whenever it has a free slot, so a faster engine takes more lines.
 * The input (reading, parsing, tokenizing) and the output are each behind a lock; the output is the
 * same as one engine's: stdout in input order (a line waits for those before it), -o's file in
 * finishing order, one write() a line. Seeds follow the line index, so a line's completion does not
 * depend on the engine that ran it (on the GPU, up to the rounding of batched steps, as with -b). */
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cJSON.h>

#include "batch.h"
#include "feed.h"
#include "jsonl.h"
#include "sampler.h"
#include "util.h"

#define DEFAULT_BATCH 8
#define MAX_LINE (1 << 20) /* bytes of one input line; a longer line is an error object */

/* ----------------------------------------------------------------------------------------------
 * Input lines, at most MAX_LINE bytes kept (the rest of a longer line is skipped). */
typedef struct {
    FILE *f;
    char *buf;
    size_t cap;
} LineReader;

/* Returns the length of the next line without its newline (and a trailing \r in text), or -1 at
 * the end of the input. *too_long: the line was longer than MAX_LINE (its bytes are dropped). */
static long read_line(LineReader *r, int *too_long) {
    size_t n = 0;
    int c, any = 0;
    *too_long = 0;
    while ((c = getc_unlocked(r->f)) != EOF) {
        any = 1;
        if (c == '\n') break;
        if (n >= MAX_LINE) { *too_long = 1; continue; }
        if (n + 1 >= r->cap) {
            size_t cap = r->cap ? r->cap * 2 : 4096;
            char *b = realloc(r->buf, cap);
            if (!b) die(EXIT_RUNTIME, "out of memory");
            r->buf = b;
            r->cap = cap;
        }
        r->buf[n++] = (char)c;
    }
    if (ferror(r->f)) die(EXIT_RUNTIME, "reading the prompts failed: %s", strerror(errno));
    if (!any) return -1;
    if (!r->buf) { r->buf = malloc(1); r->cap = 1; if (!r->buf) die(EXIT_RUNTIME, "out of memory"); }
    r->buf[n] = '\0';
    return (long)n;
}

/* ----------------------------------------------------------------------------------------------
 * Command line. */

static void parse_list(const char *flag, const char *v, int *out, int *count, long lo, long hi) {
    *count = 0;
    for (const char *p = v;;) {
        char *end;
        errno = 0;
        long x = strtol(p, &end, 10);
        if (end == p || errno || (*end != ',' && *end != '\0'))
            die(EXIT_USAGE, "%s expects a comma-separated list of integers, got '%s'", flag, v);
        if (x < lo || x > hi) die(EXIT_USAGE, "%s: %ld is out of range [%ld, %ld]", flag, x, lo, hi);
        if (*count == BATCH_MAX_LIST) die(EXIT_USAGE, "%s: at most %d values", flag, BATCH_MAX_LIST);
        out[(*count)++] = (int)x;
        if (*end == '\0') break;
        p = end + 1;
    }
}

int batch_parse_flag(BatchOpts *o, int argc, char **argv, int *i) {
    const char *f = argv[*i];
    static const char *const with_value[] = {"-f", "-b", "-o", "--shard", "--gpus", "--progress", "--state-in", "--state-out", "--bench-prompt", "--bench-gen", "--bench-batch"};
    if (!strcmp(f, "--jsonl")) { o->format = FMT_JSONL; return 1; }
    if (!strcmp(f, "--text")) { o->format = FMT_TEXT; return 1; }
    if (!strcmp(f, "--bench")) { o->bench = 1; return 1; }
    if (!strcmp(f, "--resume")) { o->resume = 1; return 1; }
    int known = 0;
    for (size_t k = 0; k < sizeof with_value / sizeof *with_value; k++) known |= !strcmp(f, with_value[k]);
    if (!known) return 0;
    if (*i + 1 >= argc) die(EXIT_USAGE, "option %s needs a value; see -h", f);
    const char *v = argv[++*i];
    if (!strcmp(f, "-f")) o->input = v;
    else if (!strcmp(f, "-o")) o->output = v;
    else if (!strcmp(f, "--gpus")) o->gpus = v;
    else if (!strcmp(f, "--progress")) {
        char *end;
        errno = 0;
        long long every = strtoll(v, &end, 10);
        if (end == v || *end || errno || every < 1) die(EXIT_USAGE, "--progress expects a number of tokens (1 or more), got '%s'", v);
        o->progress = every;
    }
    else if (!strcmp(f, "--shard")) {
        char *end, *end2;
        errno = 0;
        long k = strtol(v, &end, 10), n = *end == '/' ? strtol(end + 1, &end2, 10) : 0;
        if (end == v || *end != '/' || end2 == end + 1 || *end2 || errno)
            die(EXIT_USAGE, "--shard expects K/N (shard K of N, 0 <= K < N), got '%s'", v);
        if (n < 1 || k < 0 || k >= n) die(EXIT_USAGE, "--shard %s: K must be in [0, N) and N at least 1", v);
        o->shard_k = k;
        o->shard_n = n;
    }
    else if (!strcmp(f, "--state-in")) o->state_in = v;
    else if (!strcmp(f, "--state-out")) o->state_out = v;
    else if (!strcmp(f, "--bench-prompt")) parse_list(f, v, o->bench_prompt, &o->n_bench_prompt, 1, 1 << 24);
    else if (!strcmp(f, "--bench-gen")) parse_list(f, v, o->bench_gen, &o->n_bench_gen, 1, 1 << 20);
    else if (!strcmp(f, "--bench-batch")) parse_list(f, v, o->bench_batch, &o->n_bench_batch, 1, MAX_BATCH);
    else { /* -b */
        char *end;
        errno = 0;
        long b = strtol(v, &end, 10);
        if (end == v || *end || errno) die(EXIT_USAGE, "-b expects an integer, got '%s'", v);
        if (b < 1 || b > MAX_BATCH) die(EXIT_USAGE, "-b = %s is out of range [1, %d]", v, MAX_BATCH);
        o->max_batch = (int)b;
    }
    return 1;
}

void batch_usage(FILE *f) {
    fprintf(f,
        "Batch generation (one JSON object a line on stdout, in input order):\n"
        "  -f <path>     prompts, one a line (-f - reads stdin); JSONL when the first line starts\n"
        "                with '{': {\"id\", \"prompt\", and optional \"n\", \"temperature\", \"top_p\",\n"
        "                \"top_k\", \"min_p\", \"repeat_penalty\", \"repeat_last_n\", \"stop\" (a string or\n"
        "                a list of them), \"seed\"}; line k samples with seed -s + k unless it gives one\n"
        "  --jsonl       the input is JSONL;  --text: the input is text, one prompt a line\n"
        "  -b <int>      most sequences decoded together, default %d\n"
        "  -o <path>     write the lines to a file instead, each as it finishes (in finishing\n"
        "                order; a kill loses at most the lines in flight)\n"
        "  --resume      with -o: keep the lines already in the file, run only the other ids\n"
        "                (ids must be unique; give the same -s), append them\n"
        "  --shard K/N   run only the lines whose 0-based index is K modulo N (seeds and default\n"
        "                ids still follow the line index)\n"
        "  --gpus all|LIST  ./runcuda: one engine on each GPU listed (0-based, as CUDA numbers\n"
        "                the visible ones; all: every one), each taking the next line when it has\n"
        "                a free slot (-b each); a GPU listed twice gets two engines\n"
        "  --progress N  a line on stderr each time another N tokens were generated (all lines\n"
        "                together): tokens and lines so far, tok/s since the last (even with -q)\n"
        "                exit code 3: every line was written, but some are error objects;\n"
        "                130 / 143: stopped by SIGINT / SIGTERM (lines in flight not written)\n"
        "Saved states:\n"
        "  --state-out FILE  after the prompt, save the state and the last logits to FILE\n"
        "  --state-in FILE   start from a saved state (-i then continues the text; without -i,\n"
        "                    generation continues exactly as the run that saved it)\n"
        "Benchmark (JSON on stdout):\n"
        "  --bench       sweep prompt lengths, generation lengths and batch sizes\n"
        "  --bench-prompt <list>  prompt lengths, default 128,512,2048,8192\n"
        "  --bench-gen <list>     decode steps, default 32\n"
        "  --bench-batch <list>   sequences decoded together, default 1,4,16\n",
        DEFAULT_BATCH);
}

/* --gpus all|LIST: the devices of the engines, each in [0, engine_devices()). */
static void parse_gpus(BatchOpts *o) {
    char err[256];
    int n = engine_devices(err, sizeof err);
    if (n == 0) die(EXIT_USAGE, "--gpus: this program computes on the CPU (./runcuda takes --gpus)");
    if (n < 0) die(EXIT_RUNTIME, "--gpus: %s", err);
    if (!strcmp(o->gpus, "all")) {
        if (n > BATCH_MAX_ENGINES) die(EXIT_USAGE, "--gpus all: %d GPUs, at most %d engines", n, BATCH_MAX_ENGINES);
        for (int k = 0; k < n; k++) o->devices[k] = k;
        o->n_devices = n;
        return;
    }
    for (const char *p = o->gpus;;) {
        char *end;
        errno = 0;
        long d = strtol(p, &end, 10);
        if (*p < '0' || *p > '9' || errno || (*end != ',' && *end != '\0'))
            die(EXIT_USAGE, "--gpus expects all or a comma-separated list of GPU numbers, got '%s'", o->gpus);
        if (d >= n) die(EXIT_USAGE, "--gpus %s: no GPU %ld (%d visible: 0..%d)", o->gpus, d, n, n - 1);
        if (o->n_devices == BATCH_MAX_ENGINES) die(EXIT_USAGE, "--gpus %s: at most %d engines", o->gpus, BATCH_MAX_ENGINES);
        o->devices[o->n_devices++] = (int)d;
        if (*end == '\0') break;
        p = end + 1;
    }
}

void batch_check_args(BatchOpts *o, int has_prompt, int other_mode, int ids, int stepwise, int has_logits) {
    if (o->gpus) {
        parse_gpus(o);
        if (!o->input) die(EXIT_USAGE, "--gpus goes with -f");
    }
    if (o->input && o->bench) die(EXIT_USAGE, "-f and --bench do not go together");
    if (o->format != FMT_AUTO && !o->input) die(EXIT_USAGE, "--jsonl and --text go with -f");
    if (o->max_batch && !o->input) die(EXIT_USAGE, "-b goes with -f (--bench takes --bench-batch)");
    if ((o->output || o->shard_n) && !o->input) die(EXIT_USAGE, "-o and --shard go with -f");
    if (o->progress && !o->input) die(EXIT_USAGE, "--progress goes with -f");
    if (o->resume && !o->output) die(EXIT_USAGE, "--resume goes with -o (the file to resume)");
    if ((o->n_bench_prompt || o->n_bench_gen || o->n_bench_batch) && !o->bench) die(EXIT_USAGE, "--bench-prompt, --bench-gen and --bench-batch go with --bench");
    const char *mode = o->input ? "-f" : o->bench ? "--bench" : NULL;
    if (mode) {
        if (has_prompt) die(EXIT_USAGE, "%s does not go with -i", mode);
        if (other_mode) die(EXIT_USAGE, "%s does not go with --score or --tokenize", mode);
        if (ids) die(EXIT_USAGE, "%s does not go with --ids", mode);
        if (stepwise) die(EXIT_USAGE, "%s does not go with --stepwise", mode);
        if (has_logits) die(EXIT_USAGE, "%s does not go with --logits", mode);
        if (o->state_in || o->state_out) die(EXIT_USAGE, "%s does not go with --state-in or --state-out", mode);
    }
    if ((o->state_in || o->state_out) && other_mode) die(EXIT_USAGE, "--state-in and --state-out go with generation, not --score or --tokenize");
    if (o->input && !o->max_batch) o->max_batch = DEFAULT_BATCH;
    if (o->bench) {
        static const int p[] = {128, 512, 2048, 8192}, g[] = {32}, b[] = {1, 4, 16};
        if (!o->n_bench_prompt) { memcpy(o->bench_prompt, p, sizeof p); o->n_bench_prompt = 4; }
        if (!o->n_bench_gen) { memcpy(o->bench_gen, g, sizeof g); o->n_bench_gen = 1; }
        if (!o->n_bench_batch) { memcpy(o->bench_batch, b, sizeof b); o->n_bench_batch = 3; }
    }
}

int batch_max_seqs(const BatchOpts *o) {
    if (o->input) return o->max_batch;
    int m = 1;
    if (o->bench)
        for (int i = 0; i < o->n_bench_batch; i++)
            if (o->bench_batch[i] > m) m = o->bench_batch[i];
    return m;
}

/* ----------------------------------------------------------------------------------------------
 * Ids, as written in JSON: the set of the lines already in -o's file, and of the input lines seen,
 * for --resume (open addressing, FNV-1a). */
typedef struct {
    char **keys;
    size_t cap, n;
} IdSet;

static size_t id_hash(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (size_t)h;
}

/* Returns 1 if key was in the set; else adds a copy of it and returns 0. */
static int idset_add(IdSet *set, const char *key) {
    if (2 * (set->n + 1) > set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 1024;
        char **k = calloc(cap, sizeof *k);
        if (!k) die(EXIT_RUNTIME, "out of memory");
        for (size_t i = 0; i < set->cap; i++)
            if (set->keys[i]) {
                size_t j = id_hash(set->keys[i]) & (cap - 1);
                while (k[j]) j = (j + 1) & (cap - 1);
                k[j] = set->keys[i];
            }
        free(set->keys);
        set->keys = k;
        set->cap = cap;
    }
    size_t j = id_hash(key) & (set->cap - 1);
    for (; set->keys[j]; j = (j + 1) & (set->cap - 1))
        if (!strcmp(set->keys[j], key)) return 1;
    if (!(set->keys[j] = strdup(key))) die(EXIT_RUNTIME, "out of memory");
    set->n++;
    return 0;
}

static int idset_has(const IdSet *set, const char *key) {
    if (!set->cap) return 0;
    for (size_t j = id_hash(key) & (set->cap - 1); set->keys[j]; j = (j + 1) & (set->cap - 1))
        if (!strcmp(set->keys[j], key)) return 1;
    return 0;
}

static void idset_free(IdSet *set) {
    for (size_t i = 0; i < set->cap; i++) free(set->keys[i]);
    free(set->keys);
}

/* ----------------------------------------------------------------------------------------------
 * -o and --resume: each line goes out in one write(), so that the file holds whole lines whatever
 * moment the process dies at, but perhaps a partial last one, which --resume cuts off. */

static void write_all(int fd, const char *s, size_t n, const char *path) {
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) die(EXIT_RUNTIME, "writing %s failed: %s", path, w < 0 ? strerror(errno) : "nothing written");
        s += w;
        n -= (size_t)w;
    }
}

/* Reads the ids of the lines of path into done (and counts the error objects), cuts off a partial
 * last line, and returns the file open for appending. */
static int open_resumed(const char *path, IdSet *done, long *failed) {
    int fd = open(path, O_RDWR | O_APPEND | O_CREAT, 0644);
    if (fd < 0) die(EXIT_RUNTIME, "cannot open output file %s: %s", path, strerror(errno));
    FILE *f = fdopen(dup(fd), "rb");
    if (!f) die(EXIT_RUNTIME, "cannot read output file %s: %s", path, strerror(errno));
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    off_t whole = 0; /* the bytes of the complete lines */
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] != '\n') break; /* a partial last line: cut off below */
        lineno++;
        whole += n;
        cJSON *o = cJSON_ParseWithLength(line, (size_t)n);
        cJSON *id = cJSON_GetObjectItemCaseSensitive(o, "id");
        /* The id as this program wrote it: the text right after {"id":, up to the "prompt" member. */
        const char *p = strstr(line, ",\"prompt\":");
        if (!o || !id || strncmp(line, "{\"id\":", 6) || !p)
            die(EXIT_RUNTIME, "%s line %ld is not a line of batch output: cannot resume", path, lineno);
        if (cJSON_GetObjectItemCaseSensitive(o, "error")) ++*failed;
        cJSON_Delete(o);
        if (cJSON_IsString(id)) { /* a string id may hold ,"prompt": itself: take its JSON string */
            p = line + 7;
            while (*p != '"') p += *p == '\\' ? 2 : 1;
            p++;
        }
        line[p - line] = '\0';
        if (idset_add(done, line + 6))
            die(EXIT_RUNTIME, "%s line %ld repeats the id %s: cannot resume (ids must be unique)", path, lineno, line + 6);
    }
    if (ferror(f)) die(EXIT_RUNTIME, "reading %s failed: %s", path, strerror(errno));
    fclose(f);
    free(line);
    if (ftruncate(fd, whole) != 0) die(EXIT_RUNTIME, "cannot cut the partial last line of %s: %s", path, strerror(errno));
    return fd;
}

/* SIGINT and SIGTERM: every worker stops before its next step, dropping the lines in flight. */
static volatile sig_atomic_t stop_signal;
static void on_signal(int sig) { stop_signal = sig; }

/* ----------------------------------------------------------------------------------------------
 * Batch mode. */

typedef struct {
    long index;      /* 0-based line of the input */
    long order;      /* among the lines this run writes (other shards' and resumed lines left out) */
    char *id_json;   /* as JSON text */
    char *extra;     /* the input's members the program does not use, as written (",\"k\":v...") */
    char *prompt;    /* NULL: not readable (then "prompt": null) */
    size_t prompt_len;
    uint64_t seed;
    Sampler s;
    SamplerParams sp;
    char **stops;    /* the line's own "stop" strings (owned), or NULL: the command line's */
    int n_stops;
    StopText st;
    int steps, generated;
    long prompt_tokens;
    double prefill_ms, t_decode;
    const char *stop; /* set when finished */
    DecodeStream ds;
    Str completion;
} Seq;

/* What the workers share: the input, read one line at a time by whichever worker has a free slot
 * (so a faster engine takes more lines), and the output. */
typedef struct {
    const Model *m;
    Tokenizer *tok;
    const GenParams *g;
    pthread_mutex_t in_lock;  /* the input, and everything up to a line's prompt ids: */
    LineReader in;
    int jsonl;                /* -1: not known yet (auto), 0: text, 1: JSONL */
    int eof;
    long next;                /* index of the next input line */
    long kept;                /* lines given an output order so far */
    int resume;
    IdSet done_ids, seen_ids; /* --resume: the ids in -o's file, and those of the input so far */
    long shard_k, shard_n, skipped;
    pthread_mutex_t out_lock; /* the output: */
    char **done;              /* stdout: finished lines not yet printed, by order - printed */
    size_t done_cap;
    long printed;
    int out_fd;               /* -o's file, or -1: stdout */
    const char *out_path;
    long failed_before;       /* --resume: error objects already in the file */
    long written;             /* lines written by this run */
    long long progress_every; /* --progress N (0: off), and where it stands: */
    long long generated, progress_next, progress_last;
    double t_start, progress_t;
} Batch;

/* One engine and the sequences in its slots; each runs the scheduler of batch_run on its own thread. */
typedef struct {
    Batch *b;
    Engine *e;
    int max_batch;
    Seq **slot;
    int *tokens;            /* the next token of each active slot */
    int *picked;            /* the tokens picked from a step's rows, or from a group's prefill */
    SampleDraw *draws;      /* a step's draws, when the engine samples (engine_step_sample) */
    Candidate *cand;        /* scratch of the samplers: SAMPLER_CAND(vocab_size) a thread of the sampling */
    float *penalized;
    int n_scratch;
    int *ids;               /* the prompt ids of the line being admitted */
    size_t ids_cap;
    /* prompts admitted together (engine_prefill_many): their lines, lengths and ids, chunk ids at most */
    Seq **group;
    int *group_len, *group_slot, *group_ids;
    int group_n, group_tokens, chunk;
    int nact;               /* active slots; when stopped by a signal, the lines dropped */
    long ran, failed, prompt_tokens, generated;
    double prefill_s, decode_s;
    pthread_t thread;
} Worker;

/* stdout: keeps the JSON line of order until every line before it is out, then prints in order. */
static void emit(Batch *b, long order, char *json) {
    size_t k = (size_t)(order - b->printed);
    if (k >= b->done_cap) {
        size_t cap = b->done_cap ? b->done_cap : 64;
        while (cap <= k) cap *= 2;
        char **d = realloc(b->done, cap * sizeof *d);
        if (!d) die(EXIT_RUNTIME, "out of memory");
        memset(d + b->done_cap, 0, (cap - b->done_cap) * sizeof *d);
        b->done = d;
        b->done_cap = cap;
    }
    b->done[k] = json;
    size_t n = 0;
    while (n < b->done_cap && b->done[n]) {
        fputs(b->done[n], stdout);
        free(b->done[n]);
        n++;
    }
    if (n) {
        memmove(b->done, b->done + n, (b->done_cap - n) * sizeof *b->done);
        memset(b->done + b->done_cap - n, 0, n * sizeof *b->done);
        b->printed += n;
        fflush(stdout);
    }
}

static void seq_free(Seq *q) {
    free(q->id_json);
    free(q->extra);
    free(q->prompt);
    free(q->completion.s);
    sampler_free(&q->s);
    stop_text_free(&q->st);
    free_strings(q->stops, q->n_stops);
    free(q);
}

static void finish(Worker *w, Seq *q, const char *error) {
    Batch *b = w->b;
    Str o = {0};
    str_puts(&o, "{\"id\":");
    if (q->id_json) str_puts(&o, q->id_json);
    else str_printf(&o, "%ld", q->index);
    str_puts(&o, ",\"prompt\":");
    if (q->prompt) str_json(&o, q->prompt, q->prompt_len);
    else str_puts(&o, "null");
    str_puts(&o, ",\"completion\":");
    str_json(&o, q->completion.s ? q->completion.s : "", q->completion.n);
    double decode_ms = q->stop && q->generated ? (now_s() - q->t_decode) * 1e3 : 0;
    str_printf(&o, ",\"prompt_tokens\":%ld,\"generated_tokens\":%d,\"prefill_ms\":%.3f,\"decode_ms\":%.3f,\"stop\":\"%s\",\"seed\":%llu",
               q->prompt_tokens, q->generated, q->prefill_ms, decode_ms, error ? "error" : q->stop, (unsigned long long)q->seed);
    if (error) {
        str_puts(&o, ",\"error\":");
        str_json(&o, error, strlen(error));
        w->failed++;
        if (!b->g->quiet) fprintf(stderr, "warning: line %ld: %s\n", q->index + 1, error);
    }
    if (q->extra) str_puts(&o, q->extra);
    str_puts(&o, "}\n");
    pthread_mutex_lock(&b->out_lock);
    if (b->out_fd >= 0) {
        write_all(b->out_fd, o.s, o.n, b->out_path);
        free(o.s);
    } else emit(b, q->order, str_take(&o));
    b->written++;
    pthread_mutex_unlock(&b->out_lock);
    w->generated += q->generated;
    w->ran++;
    seq_free(q);
}

static void put_completion(void *ctx, const char *text, size_t n) { str_put(ctx, text, n); }

/* Returns 1 when the token completed a stop string (then the sequence has ended). */
static int append_token(Worker *w, Seq *q, int id) {
    size_t len;
    const char *text = decode_token(w->b->tok, &q->ds, id, &len);
    if (!stop_text_put(&q->st, text, len, put_completion, &q->completion)) return 0;
    q->stop = "stop-string";
    return 1;
}

static void end_seq(Worker *w, Seq *q, const char *stop) {
    char tail[16];
    size_t n = tokenizer_decode_flush(w->b->tok, &q->ds, tail, sizeof tail);
    if (stop_text_put(&q->st, tail, n, put_completion, &q->completion)) { q->stop = "stop-string"; return; }
    stop_text_flush(&q->st, put_completion, &q->completion);
    q->stop = stop;
}

/* Under the input lock: reads the next line and sets it up, its prompt's ids in w->ids. Returns
 * NULL for a line this run does not write (another shard's, or already in -o's file: --resume) and
 * at the end of the input (b->eof); else the line, with its number of ids in *n, or with *error
 * set (to err or a constant) when it cannot run. */
static Seq *take_line(Worker *w, long *n, const char **error, char *err, size_t errlen) {
    Batch *b = w->b;
    int too_long;
    long len = b->eof ? -1 : read_line(&b->in, &too_long);
    if (len < 0) { b->eof = 1; return NULL; }
    long index = b->next++;
    const GenParams *g = b->g;
    const Config *c = &b->m->config;
    char *line = b->in.buf;
    if (b->jsonl < 0) { /* auto: JSONL when the first line that is not blank starts with '{' */
        const char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (*p) b->jsonl = *p == '{';
    }
    if (b->shard_n && index % b->shard_n != b->shard_k) return NULL; /* another shard's line */
    if (b->jsonl <= 0 && len > 0 && line[len - 1] == '\r') line[--len] = '\0';
    Seq *q = calloc(1, sizeof *q);
    if (!q) die(EXIT_RUNTIME, "out of memory");
    q->index = index;
    q->seed = g->seed + (uint64_t)index;
    q->steps = g->steps;
    q->sp = g->sp;
    q->ds.n_fed = 1; /* the completion continues the prompt, as ./run -i prints it */
    long bad;
    Request r = {0};
    *error = NULL;
    if (too_long) {
        snprintf(err, errlen, "the line is longer than %d bytes", MAX_LINE);
        *error = err;
    } else if (memchr(line, '\0', len)) {
        snprintf(err, errlen, "the line contains a NUL byte at byte offset %ld", (long)((char *)memchr(line, '\0', len) - line));
        *error = err;
    } else if (b->jsonl < 0) { /* before the first line that is not blank: the format is not known yet */
        *error = len ? "blank line (only white space)" : "empty prompt";
    } else if (b->jsonl > 0) {
        bad = utf8_invalid_at((const unsigned char *)line, len);
        if (parse_request(line, len, &r, err, errlen)) *error = err;
        if (r.id_json && utf8_invalid_at((const unsigned char *)r.id_json, strlen(r.id_json)) < 0) { /* echo the id even on errors */
            q->id_json = r.id_json;
            r.id_json = NULL;
        }
        if (bad >= 0) {
            snprintf(err, errlen, "invalid UTF-8 at byte offset %ld (byte 0x%02x)", bad, (unsigned char)line[bad]);
            *error = err;
        } else {
            q->extra = r.extra; /* set when the line parsed: copied even if the prompt fails later */
            r.extra = NULL;
        }
        if (!*error) {
            q->prompt = r.prompt;
            q->prompt_len = r.prompt_len;
            r.prompt = NULL;
            if (r.has_n) q->steps = (int)r.n;
            if (r.has_t) q->sp.temperature = (float)r.t;
            if (r.has_p) q->sp.top_p = (float)r.p;
            if (r.has_k) q->sp.top_k = (int)r.k;
            if (r.has_min_p) q->sp.min_p = (float)r.min_p;
            if (r.has_penalty) q->sp.repeat_penalty = (float)r.penalty;
            if (r.has_last_n) q->sp.repeat_last_n = (int)r.last_n;
            if (r.has_seed) q->seed = (uint64_t)r.seed;
            if (r.has_stop) { q->stops = r.stops; q->n_stops = r.n_stops; r.stops = NULL; r.n_stops = 0; }
        }
        request_free(&r);
    } else if ((bad = utf8_invalid_at((const unsigned char *)line, len)) >= 0) {
        snprintf(err, errlen, "invalid UTF-8 at byte offset %ld (byte 0x%02x)", bad, (unsigned char)line[bad]);
        *error = err;
    } else {
        if (!(q->prompt = malloc(len + 1))) die(EXIT_RUNTIME, "out of memory");
        memcpy(q->prompt, line, len + 1);
        q->prompt_len = len;
    }
    if (b->resume) { /* skip the lines already written, by id (the line index when it has none) */
        char num[24];
        const char *id = q->id_json;
        if (!id) { snprintf(num, sizeof num, "%ld", index); id = num; }
        if (idset_add(&b->seen_ids, id))
            die(EXIT_RUNTIME, "--resume: line %ld repeats the id %s (ids must be unique to resume)", index + 1, id);
        if (idset_has(&b->done_ids, id)) { b->skipped++; seq_free(q); return NULL; }
    }
    q->order = b->kept++;
    sampler_init(&q->s, c->vocab_size, &q->sp, q->seed, w->cand, w->penalized);
    if (q->stops) stop_text_init(&q->st, q->stops, q->n_stops);
    else stop_text_init(&q->st, g->stops, g->n_stops);
    if (!*error && q->prompt_len == 0) *error = "empty prompt";
    if (!*error && memchr(q->prompt, '\0', q->prompt_len)) *error = "the prompt contains U+0000";
    *n = 0;
    if (!*error) {
        *n = tokenizer_encode(b->tok, q->prompt, q->prompt_len, &w->ids, &w->ids_cap, err, errlen);
        if (*n < 0) *error = err;
        else if (*n == 0) *error = "the prompt encodes to no tokens";
        for (long i = 0; !*error && i < *n; i++)
            if (w->ids[i] < 0 || w->ids[i] >= c->vocab_size) {
                snprintf(err, errlen, "prompt token %d is outside the model's vocabulary (%d)", w->ids[i], c->vocab_size);
                *error = err;
            }
    }
    return q;
}

/* --progress: counts the tokens of a step (every engine's), and prints a line when they pass the
 * next multiple of N. */
static void progress(Batch *b, int tokens) {
    pthread_mutex_lock(&b->out_lock);
    b->generated += tokens;
    if (b->generated >= b->progress_next) {
        double t = now_s();
        fprintf(stderr, "progress: %lld tokens generated, %ld lines written, %.2f s, %.1f tok/s since the last\n",
                b->generated, b->written, t - b->t_start, (b->generated - b->progress_last) / (t - b->progress_t));
        b->progress_next = (b->generated / b->progress_every + 1) * b->progress_every;
        b->progress_last = b->generated;
        b->progress_t = t;
    }
    pthread_mutex_unlock(&b->out_lock);
}

/* The token t that q's sampler picked: counted, its text added, and the end checked. Returns 1 when
 * q goes on (t is then its next input). */
static int take_token(Worker *w, Seq *q, int t) {
    sampler_accept(&q->s, t);
    q->generated++;
    if (t == tokenizer_eos(w->b->tok) && !w->b->g->ignore_eos) { end_seq(w, q, "end-of-text"); return 0; }
    if (append_token(w, q, t)) return 0;
    if (q->generated >= q->steps) { end_seq(w, q, "length"); return 0; }
    return 1;
}

/* A line's first token, from the last row of logits of its prompt (-1 when it generates none). */
static int first_token(Seq *q, const float *row) { return q->steps ? sampler_sample(&q->s, row) : -1; }

/* picked[i] = the first token of line seqs[i] (which it may not take) from row i of a prefill's
 * rows, on the host. Each row is sampled on its own (the lines' RNGs are their own), so the rows are
 * spread over threads: sampling 64 of them on one thread took longer than a GPU decode step. */
static void sample_rows(Worker *w, Seq *const *seqs, const float *rows, int n) {
    const Config *c = &w->b->m->config;
#pragma omp parallel for schedule(dynamic) num_threads(w->n_scratch) if (n > 1)
    for (int i = 0; i < n; i++) {
        int tid = omp_get_thread_num();
        Seq *q = seqs[i];
        sampler_use_scratch(&q->s, w->cand + tid * SAMPLER_CAND(c->vocab_size), w->penalized + (size_t)tid * c->vocab_size);
        const float *row = rows + (size_t)i * c->vocab_rows;
        w->picked[i] = first_token(q, row);
    }
}

/* A line whose prompt has run, with its first token t: gives it the next active slot (moving its
 * state there from slot `from`), or writes it out when it is already done. */
static void start_seq(Worker *w, Seq *q, int from, int t, double t0, double t1) {
    q->t_decode = t1;
    q->prefill_ms = (t1 - t0) * 1e3;
    w->prompt_tokens += q->prompt_tokens;
    if (t < 0) { end_seq(w, q, "length"); finish(w, q, NULL); return; }
    if (w->b->progress_every) progress(w->b, 1);
    if (!take_token(w, q, t)) { finish(w, q, NULL); return; }
    if (from != w->nact) engine_copy_state(w->e, w->nact, from);
    w->tokens[w->nact] = t;
    w->slot[w->nact++] = q;
}

/* Runs the prompts gathered in the group, in slots nact.. on, in one engine call (each line's
 * prefill_ms is the call's), then starts their lines: every first token is picked before the state
 * moves, which are engine calls (the rows are valid until the next one). */
static void run_group(Worker *w) {
    int n = w->group_n;
    if (!n) return;
    double t0 = now_s();
    const float *rows = engine_prefill_many(w->e, w->group_slot, w->group_ids, w->group_len, n);
    double t1 = now_s();
    w->prefill_s += t1 - t0;
    sample_rows(w, w->group, rows, n);
    for (int i = 0; i < n; i++) start_seq(w, w->group[i], w->group_slot[i], w->picked[i], t0, t1);
    w->group_n = w->group_tokens = 0;
}

/* Takes lines into the free slots: the prompts that fit in one prefill chunk gathered in the group
 * (run_group runs them), a longer one run alone, in chunks (feed), once the group before it has run. */
static void admit_group(Worker *w, int *eof) {
    Batch *b = w->b;
    const Config *c = &b->m->config;
    char err[512];
    const char *error;
    long n;
    while (w->nact + w->group_n < w->max_batch && !*eof && !stop_signal) {
        pthread_mutex_lock(&b->in_lock);
        Seq *q = take_line(w, &n, &error, err, sizeof err);
        *eof = b->eof;
        pthread_mutex_unlock(&b->in_lock);
        if (!q) continue;
        if (error) { finish(w, q, error); continue; }
        for (long i = 0; i < n; i++) sampler_accept(&q->s, w->ids[i]); /* the penalty counts the prompt */
        q->prompt_tokens = n;
        if (w->group_tokens + n > w->chunk) run_group(w);
        int slot = w->nact + w->group_n;
        engine_reset(w->e, slot);
        if (n <= w->chunk) {
            memcpy(w->group_ids + w->group_tokens, w->ids, n * sizeof *w->ids);
            w->group[w->group_n] = q;
            w->group_len[w->group_n] = (int)n;
            w->group_slot[w->group_n++] = slot;
            w->group_tokens += (int)n;
        } else { /* the group is empty here (run above) */
            double t0 = now_s();
            int t = first_token(q, feed(w->e, slot, w->ids, n, 0, c->vocab_rows, NULL, NULL));
            double t1 = now_s();
            w->prefill_s += t1 - t0;
            start_seq(w, q, slot, t, t0, t1);
        }
    }
}

/* Fills the free slots with the next lines. Prompts that fit in one prefill chunk are gathered and
 * run together (run_group); a longer one runs alone, in chunks (feed). A line that needs no decoding
 * (an error, n = 0, or done at its first token) is written out at once, and its slot taken by the
 * next line. *eof is set at the end of the input. */
static void admit(Worker *w, int *eof) {
    while (w->nact < w->max_batch && !*eof && !stop_signal) {
        admit_group(w, eof);
        run_group(w);
    }
}

/* The scheduler of one engine (continuous batching, see the top of the file), until the input is
 * done or a signal came. */
static void *run_worker(void *arg) {
    Worker *w = arg;
    int eof = 0;
    for (;;) {
        if (stop_signal) break;
        admit(w, &eof); /* fill the free slots */
        if (w->nact == 0) break;
        double t0 = now_s();
        int greedy = 1;
        for (int i = 0; i < w->nact; i++) greedy &= sampler_is_greedy(&w->slot[i]->s);
        if (greedy) { /* every line takes the argmax: the engine finds them, no logits come back */
            engine_step_argmax(w->e, w->tokens, w->nact, w->picked);
        } else { /* the engine samples the rows from their draws (on the GPU: no logits come back) */
            for (int i = 0; i < w->nact; i++) sampler_draw(&w->slot[i]->s, &w->draws[i]);
            engine_step_sample(w->e, w->tokens, w->nact, w->draws, w->picked);
        }
        for (int i = 0; i < w->nact; i++)
            if (take_token(w, w->slot[i], w->picked[i])) w->tokens[i] = w->picked[i];
        if (w->b->progress_every) progress(w->b, w->nact);
        for (int i = 0; i < w->nact;) { /* finished: write out, and move the last active slot here */
            if (!w->slot[i]->stop) { i++; continue; }
            finish(w, w->slot[i], NULL);
            int last = --w->nact;
            if (i != last) {
                engine_copy_state(w->e, i, last);
                w->slot[i] = w->slot[last];
                w->tokens[i] = w->tokens[last];
            }
        }
        w->decode_s += now_s() - t0;
    }
    return NULL;
}

int batch_run(const BatchOpts *o, const Model *m, Tokenizer *tok, Engine **engines, int n_engines, const GenParams *g,
              double load_s) {
    const Config *c = &m->config;
    Batch b = {.m = m, .tok = tok, .g = g, .in = {stdin, NULL, 0}, .out_fd = -1, .out_path = o->output,
               .resume = o->resume, .shard_k = o->shard_k, .shard_n = o->shard_n,
               .jsonl = o->format == FMT_JSONL ? 1 : o->format == FMT_TEXT ? 0 : -1,
               .progress_every = o->progress, .progress_next = o->progress};
    pthread_mutex_init(&b.in_lock, NULL);
    pthread_mutex_init(&b.out_lock, NULL);
    if (strcmp(o->input, "-") && !(b.in.f = fopen(o->input, "rb")))
        die(EXIT_RUNTIME, "cannot open prompts file %s: %s", o->input, strerror(errno));
    if (o->resume) b.out_fd = open_resumed(o->output, &b.done_ids, &b.failed_before);
    else if (o->output && (b.out_fd = open(o->output, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644)) < 0)
        die(EXIT_RUNTIME, "cannot open output file %s: %s", o->output, strerror(errno));
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    Worker *w = calloc(n_engines, sizeof *w);
    if (!w) die(EXIT_RUNTIME, "out of memory");
    int B = o->max_batch;
    for (int k = 0; k < n_engines; k++) {
        w[k] = (Worker){.b = &b, .e = engines[k], .max_batch = B};
        w[k].slot = calloc(B, sizeof *w[k].slot);
        w[k].tokens = calloc(B, sizeof *w[k].tokens);
        w[k].picked = calloc(B, sizeof *w[k].picked);
        w[k].draws = calloc(B, sizeof *w[k].draws);
        w[k].n_scratch = omp_get_max_threads() < B ? omp_get_max_threads() : B;
        w[k].cand = malloc(sizeof(Candidate) * SAMPLER_CAND(c->vocab_size) * w[k].n_scratch);
        w[k].penalized = malloc(sizeof(float) * c->vocab_size * w[k].n_scratch);
        w[k].group = calloc(B, sizeof *w[k].group);
        w[k].group_len = calloc(B, sizeof *w[k].group_len);
        w[k].group_slot = calloc(B, sizeof *w[k].group_slot);
        w[k].chunk = engine_prefill_chunk(engines[k]);
        w[k].group_ids = calloc(w[k].chunk, sizeof *w[k].group_ids);
        if (!w[k].slot || !w[k].tokens || !w[k].picked || !w[k].draws || !w[k].cand || !w[k].penalized || !w[k].group ||
            !w[k].group_len || !w[k].group_slot || !w[k].group_ids)
            die(EXIT_RUNTIME, "out of memory");
    }

    /* Engine 0 runs on this thread (so one engine runs exactly as it always did), the others on
     * threads of their own. */
    double t_start = b.t_start = b.progress_t = now_s();
    for (int k = 1; k < n_engines; k++) {
        int err = pthread_create(&w[k].thread, NULL, run_worker, &w[k]);
        if (err) die(EXIT_RUNTIME, "cannot start a thread for engine %d: %s", k, strerror(err));
    }
    run_worker(&w[0]);
    for (int k = 1; k < n_engines; k++) pthread_join(w[k].thread, NULL);
    double t = now_s() - t_start;

    if (b.in.f != stdin) fclose(b.in.f);
    fflush(stdout);
    if (ferror(stdout)) die(EXIT_RUNTIME, "writing the output failed");
    if (b.out_fd >= 0 && close(b.out_fd) != 0) die(EXIT_RUNTIME, "writing %s failed: %s", o->output, strerror(errno));
    /* Totals; with several engines, which run at once, the rates are the sums of theirs. */
    long ran = 0, failed = 0, prompt_tokens = 0, generated = 0;
    int in_flight = 0;
    double prefill_rate = 0, decode_rate = 0;
    for (int k = 0; k < n_engines; k++) {
        ran += w[k].ran;
        failed += w[k].failed;
        prompt_tokens += w[k].prompt_tokens;
        generated += w[k].generated;
        in_flight += w[k].nact;
        prefill_rate += w[k].prefill_s > 0 ? w[k].prompt_tokens / w[k].prefill_s : 0.0;
        decode_rate += w[k].decode_s > 0 ? w[k].generated / w[k].decode_s : 0.0;
    }
    if (!g->quiet) {
        char done[64] = "", name[320];
        if (o->resume) snprintf(done, sizeof done, ", %ld already in the output (%ld failed)", b.skipped, b.failed_before);
        if (n_engines == 1) snprintf(name, sizeof name, "%s", engine_name(engines[0]));
        else snprintf(name, sizeof name, "%d engines", n_engines);
        fprintf(stderr, "[%s] batch: %ld prompt%s (%ld failed)%s, up to %d at once%s, load %.2f s, run %.2f s | prompts: %ld tokens, %.1f tok/s | generated: %ld tokens, %.1f tok/s\n",
                name, ran, ran == 1 ? "" : "s", failed, done, B, n_engines > 1 ? " on each" : "", load_s, t, prompt_tokens,
                prefill_rate, generated, decode_rate);
        for (int k = 0; n_engines > 1 && k < n_engines; k++)
            fprintf(stderr, "[%s] engine %d: %ld prompt%s | prompts: %ld tokens, %.1f tok/s | generated: %ld tokens, %.1f tok/s\n",
                    engine_name(engines[k]), k, w[k].ran, w[k].ran == 1 ? "" : "s", w[k].prompt_tokens,
                    w[k].prefill_s > 0 ? w[k].prompt_tokens / w[k].prefill_s : 0.0, w[k].generated,
                    w[k].decode_s > 0 ? w[k].generated / w[k].decode_s : 0.0);
    }
    if (stop_signal) {
        fprintf(stderr, "error: stopped by signal %d: %d line%s in flight not written%s\n", (int)stop_signal,
                in_flight, in_flight == 1 ? "" : "s", o->output ? " (--resume runs the rest)" : "");
        exit(128 + stop_signal);
    }
    for (int k = 0; k < n_engines; k++) {
        free(w[k].slot);
        free(w[k].tokens);
        free(w[k].picked);
        free(w[k].draws);
        free(w[k].cand);
        free(w[k].penalized);
        free(w[k].group);
        free(w[k].group_len);
        free(w[k].group_slot);
        free(w[k].group_ids);
        free(w[k].ids);
    }
    free(w);
    idset_free(&b.done_ids);
    idset_free(&b.seen_ids);
    free(b.in.buf);
    free(b.done);
    pthread_mutex_destroy(&b.in_lock);
    pthread_mutex_destroy(&b.out_lock);
    return failed || b.failed_before ? EXIT_SOME_FAILED : EXIT_OK;
}
