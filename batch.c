/* batch.c: batch generation (-f prompts.txt | prompts.jsonl), saved states (--state-in,
 * --state-out) and the benchmark mode (--bench), on top of feed.h and sampler.h.
 *
 * Batch mode (continuous batching): prompts are read one line at a time and prefilled one at a
 * time into a free engine slot; then all active slots (0..nact-1) take one decode step together,
 * so every weight is read once per step for all of them. A finished sequence's slot is filled by
 * the last active one (engine_copy_state), and free slots are refilled with the next prompts.
 * Each line samples with its own RNG, seeded from (seed, line index), and the CPU engine computes
 * every row of a step independently of the others, so the output does not depend on -b. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "batch.h"
#include "feed.h"
#include "sampler.h"
#include "util.h"

#define DEFAULT_BATCH 8
#define MAX_BATCH 1024
#define MAX_LINE (1 << 20) /* bytes of one input line; a longer line is an error object */

/* ----------------------------------------------------------------------------------------------
 * Growable strings. */
typedef struct {
    char *s;
    size_t n, cap;
} Str;

static void str_put(Str *b, const void *p, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) die(EXIT_RUNTIME, "out of memory");
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->n, p, n);
    b->n += n;
    b->s[b->n] = '\0';
}
static void str_puts(Str *b, const char *s) { str_put(b, s, strlen(s)); }
static void str_printf(Str *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void str_printf(Str *b, const char *fmt, ...) {
    char small[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < (int)sizeof small) { str_put(b, small, n); return; }
    char *big = malloc(n + 1);
    if (!big) die(EXIT_RUNTIME, "out of memory");
    va_start(ap, fmt);
    vsnprintf(big, n + 1, fmt, ap);
    va_end(ap);
    str_put(b, big, n);
    free(big);
}
static char *str_take(Str *b) { /* the string (never NULL), and the Str emptied */
    char *s = b->s ? b->s : strdup("");
    if (!s) die(EXIT_RUNTIME, "out of memory");
    *b = (Str){0};
    return s;
}

/* A JSON string of n bytes of valid UTF-8: quotes, backslashes and control characters escaped. */
static void str_json(Str *b, const char *s, size_t n) {
    str_put(b, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        str_put(b, s + run, i - run);
        run = i + 1;
        switch (c) {
        case '"': str_puts(b, "\\\""); break;
        case '\\': str_puts(b, "\\\\"); break;
        case '\n': str_puts(b, "\\n"); break;
        case '\r': str_puts(b, "\\r"); break;
        case '\t': str_puts(b, "\\t"); break;
        default: str_printf(b, "\\u%04x", c);
        }
    }
    str_put(b, s + run, n - run);
    str_put(b, "\"", 1);
}

/* Offset of the first byte that is not valid UTF-8 (overlongs, surrogates, code points past
 * U+10FFFF and truncated sequences are invalid), or -1 when all of s is valid. */
static long utf8_invalid_at(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        int len;
        unsigned cp, min;
        if (c >= 0xC2 && c <= 0xDF) { len = 2; cp = c & 0x1F; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { len = 3; cp = c & 0x0F; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { len = 4; cp = c & 0x07; min = 0x10000; }
        else return (long)i;
        if (i + len > n) return (long)i;
        for (int k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return (long)i;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return (long)i;
        i += len;
    }
    return -1;
}

static void put_utf8(Str *b, unsigned cp) {
    unsigned char u[4];
    int n;
    if (cp < 0x80) { u[0] = cp; n = 1; }
    else if (cp < 0x800) { u[0] = 0xC0 | cp >> 6; u[1] = 0x80 | (cp & 0x3F); n = 2; }
    else if (cp < 0x10000) { u[0] = 0xE0 | cp >> 12; u[1] = 0x80 | (cp >> 6 & 0x3F); u[2] = 0x80 | (cp & 0x3F); n = 3; }
    else { u[0] = 0xF0 | cp >> 18; u[1] = 0x80 | (cp >> 12 & 0x3F); u[2] = 0x80 | (cp >> 6 & 0x3F); u[3] = 0x80 | (cp & 0x3F); n = 4; }
    str_put(b, u, n);
}

/* ----------------------------------------------------------------------------------------------
 * A small, strict JSON parser for one flat object a line: {"key": value, ...} where every value is
 * a string, a number, true, false, null, or an array of strings (other nested objects and arrays are
 * refused). */
typedef enum { JV_STRING, JV_NUMBER, JV_TRUE, JV_FALSE, JV_NULL, JV_STRINGS } JsonType;

typedef struct {
    const char *s, *p, *end;
    char *err;
    size_t errlen;
} JsonParser;

static int json_fail(JsonParser *j, const char *what) {
    snprintf(j->err, j->errlen, "bad JSON at byte %ld: %s", (long)(j->p - j->s), what);
    return -1;
}

static void json_ws(JsonParser *j) {
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r')) j->p++;
}

static int json_hex4(JsonParser *j, unsigned *v) {
    *v = 0;
    for (int k = 0; k < 4; k++, j->p++) {
        if (j->p >= j->end) return json_fail(j, "truncated \\u escape");
        char c = *j->p;
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return json_fail(j, "bad hex digit in a \\u escape");
        *v = *v << 4 | d;
    }
    return 0;
}

/* At the opening quote; the unescaped bytes go to out. The input is valid UTF-8 (checked first). */
static int json_string(JsonParser *j, Str *out) {
    j->p++;
    for (;;) {
        const char *run = j->p;
        while (j->p < j->end && *j->p != '"' && *j->p != '\\' && (unsigned char)*j->p >= 0x20) j->p++;
        str_put(out, run, j->p - run);
        if (j->p >= j->end) return json_fail(j, "unterminated string");
        char c = *j->p;
        if (c == '"') { j->p++; if (!out->s) str_put(out, "", 0); return 0; }
        if (c != '\\') return json_fail(j, "control character in a string (escape it)");
        if (++j->p >= j->end) return json_fail(j, "unterminated string");
        c = *j->p++;
        switch (c) {
        case '"': str_put(out, "\"", 1); break;
        case '\\': str_put(out, "\\", 1); break;
        case '/': str_put(out, "/", 1); break;
        case 'b': str_put(out, "\b", 1); break;
        case 'f': str_put(out, "\f", 1); break;
        case 'n': str_put(out, "\n", 1); break;
        case 'r': str_put(out, "\r", 1); break;
        case 't': str_put(out, "\t", 1); break;
        case 'u': {
            unsigned cp;
            if (json_hex4(j, &cp)) return -1;
            if (cp >= 0xDC00 && cp <= 0xDFFF) { j->p -= 6; return json_fail(j, "unpaired low surrogate in a \\u escape"); }
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned lo;
                if (j->end - j->p < 2 || j->p[0] != '\\' || j->p[1] != 'u') { j->p -= 6; return json_fail(j, "unpaired high surrogate in a \\u escape"); }
                j->p += 2;
                if (json_hex4(j, &lo)) return -1;
                if (lo < 0xDC00 || lo > 0xDFFF) { j->p -= 6; return json_fail(j, "a high surrogate must be followed by a low one"); }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            put_utf8(out, cp);
            break;
        }
        default: j->p--; return json_fail(j, "unknown escape");
        }
    }
}

/* JSON's number grammar exactly: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
static int json_number(JsonParser *j, double *v) {
    const char *start = j->p, *p = j->p, *e = j->end;
    if (p < e && *p == '-') p++;
    if (p < e && *p == '0') p++;
    else if (p < e && *p >= '1' && *p <= '9') while (p < e && *p >= '0' && *p <= '9') p++;
    else return json_fail(j, "expected a value");
    if (p < e && *p == '.') {
        if (++p >= e || *p < '0' || *p > '9') { j->p = p; return json_fail(j, "expected a digit after '.'"); }
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (p >= e || *p < '0' || *p > '9') { j->p = p; return json_fail(j, "expected a digit in the exponent"); }
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    char buf[64];
    if (p - start >= (long)sizeof buf) return json_fail(j, "number too long");
    memcpy(buf, start, p - start);
    buf[p - start] = '\0';
    *v = strtod(buf, NULL);
    if (!isfinite(*v)) return json_fail(j, "number out of range");
    j->p = p;
    return 0;
}

static int json_literal(JsonParser *j, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n)) return json_fail(j, "expected a value");
    j->p += n;
    return 0;
}

/* One request: a line of the input, parsed. */
typedef struct {
    char *id_json;  /* the id as JSON text (a string or a number), or NULL: the line index */
    char *prompt;   /* NULL until known */
    size_t prompt_len;
    int has_n, has_t, has_p, has_k, has_seed, has_min_p, has_penalty, has_last_n, has_stop;
    double n, t, p, k, seed, min_p, penalty, last_n;
    char **stops;   /* "stop": a string or a list of them */
    int n_stops;
} Request;

static void free_strings(char **s, int n) {
    for (int i = 0; i < n; i++) free(s[i]);
    free(s);
}

static void request_free(Request *r) {
    free(r->id_json);
    free(r->prompt);
    free_strings(r->stops, r->n_stops);
    *r = (Request){0};
}

static const char *const KNOWN_KEYS[] = {"id", "prompt", "n", "temperature", "top_p", "top_k", "seed",
                                         "min_p", "repeat_penalty", "repeat_last_n", "stop"};

/* At '[': an array of strings, each one added to *list. */
static int json_strings(JsonParser *j, char ***list, int *count) {
    j->p++;
    json_ws(j);
    if (j->p < j->end && *j->p == ']') { j->p++; return 0; }
    for (;;) {
        json_ws(j);
        if (j->p >= j->end || *j->p != '"') return json_fail(j, "expected a string (arrays hold strings only)");
        Str s = {0};
        if (json_string(j, &s)) { free(s.s); return -1; }
        char **l = realloc(*list, (*count + 1) * sizeof *l);
        if (!l) die(EXIT_RUNTIME, "out of memory");
        *list = l;
        l[(*count)++] = str_take(&s);
        json_ws(j);
        if (j->p < j->end && *j->p == ',') { j->p++; continue; }
        if (j->p < j->end && *j->p == ']') { j->p++; return 0; }
        return json_fail(j, "expected ',' or ']'");
    }
}

/* A number value of key in [lo, hi] (an integer when integer): 0, or -1 with the reason. */
static int check_num(JsonType t, double v, const char *key, double lo, double hi, int integer, int open_lo, char *err, size_t errlen) {
    if (t != JV_NUMBER) { snprintf(err, errlen, "\"%s\" must be a number", key); return -1; }
    if (integer && v != floor(v)) { snprintf(err, errlen, "\"%s\" must be an integer, got %g", key, v); return -1; }
    if (v < lo || v > hi || (open_lo && v == lo)) {
        snprintf(err, errlen, "\"%s\" = %g is out of range %s%g, %g]", key, v, open_lo ? "(" : "[", lo, hi);
        return -1;
    }
    return 0;
}

/* Parses a line of JSONL into r. Returns 0, or -1 with a one-line reason in err (r keeps what was
 * read before the error: its id, when that came first). */
static int parse_request(const char *line, size_t n, Request *r, char *err, size_t errlen) {
    JsonParser j = {line, line, line + n, err, errlen};
    json_ws(&j);
    if (j.p >= j.end || *j.p != '{') return json_fail(&j, "expected '{' (one JSON object a line)");
    j.p++;
    json_ws(&j);
    unsigned seen = 0;
    if (j.p < j.end && *j.p == '}') j.p++;
    else for (;;) {
        json_ws(&j);
        if (j.p >= j.end || *j.p != '"') return json_fail(&j, "expected a key in double quotes");
        Str key = {0}, sval = {0};
        if (json_string(&j, &key)) { free(key.s); return -1; }
        json_ws(&j);
        if (j.p >= j.end || *j.p != ':') { free(key.s); return json_fail(&j, "expected ':'"); }
        j.p++;
        json_ws(&j);
        JsonType t = JV_NULL;
        double num = 0;
        char **strs = NULL;
        int n_strs = 0;
        const char *vstart = j.p;
        int rc;
        if (j.p >= j.end) rc = json_fail(&j, "expected a value");
        else if (*j.p == '"') { t = JV_STRING; rc = json_string(&j, &sval); }
        else if (*j.p == '[') { t = JV_STRINGS; rc = json_strings(&j, &strs, &n_strs); }
        else if (*j.p == '{') rc = json_fail(&j, "nested objects are not supported (flat objects only)");
        else if (*j.p == 't') { t = JV_TRUE; rc = json_literal(&j, "true"); }
        else if (*j.p == 'f') { t = JV_FALSE; rc = json_literal(&j, "false"); }
        else if (*j.p == 'n') { t = JV_NULL; rc = json_literal(&j, "null"); }
        else { t = JV_NUMBER; rc = json_number(&j, &num); }
        size_t vlen = j.p - vstart;
        if (rc) { free(key.s); free(sval.s); free_strings(strs, n_strs); return -1; }
        int k = -1;
        for (int i = 0; i < (int)(sizeof KNOWN_KEYS / sizeof *KNOWN_KEYS); i++)
            if (strlen(KNOWN_KEYS[i]) == key.n && !memcmp(KNOWN_KEYS[i], key.s, key.n)) k = i;
        if (k < 0) {
            Str msg = {0};
            str_puts(&msg, "unknown key ");
            str_json(&msg, key.s, key.n < 40 ? key.n : 40);
            str_puts(&msg, " (the keys are id, prompt, n, temperature, top_p, top_k, seed, min_p, repeat_penalty, repeat_last_n, stop)");
            snprintf(err, errlen, "%s", msg.s);
            free(msg.s); free(key.s); free(sval.s); free_strings(strs, n_strs);
            return -1;
        }
        free(key.s);
        if (seen & 1u << k) { free(sval.s); free_strings(strs, n_strs); snprintf(err, errlen, "duplicate key \"%s\"", KNOWN_KEYS[k]); return -1; }
        seen |= 1u << k;
        rc = 0;
        if (t == JV_NULL) { /* null: as if the key were not there */
        } else if (k == 0) { /* id: a string or a number, echoed as given */
            if (t == JV_STRING) {
                Str s = {0};
                str_json(&s, sval.s, sval.n);
                r->id_json = str_take(&s);
            } else if (t == JV_NUMBER) {
                if (!(r->id_json = strndup(vstart, vlen))) die(EXIT_RUNTIME, "out of memory");
            } else { snprintf(err, errlen, "\"id\" must be a string or a number"); rc = -1; }
        } else if (k == 1) {
            if (t != JV_STRING) { snprintf(err, errlen, "\"prompt\" must be a string"); rc = -1; }
            else { r->prompt_len = sval.n; r->prompt = str_take(&sval); }
        } else if (k == 2) {
            if (!(rc = check_num(t, num, "n", 0, 1e9, 1, 0, err, errlen))) { r->has_n = 1; r->n = num; }
        } else if (k == 3) {
            if (!(rc = check_num(t, num, "temperature", 0, 100, 0, 0, err, errlen))) { r->has_t = 1; r->t = num; }
        } else if (k == 4) {
            if (!(rc = check_num(t, num, "top_p", 0, 1, 0, 1, err, errlen))) { r->has_p = 1; r->p = num; }
        } else if (k == 5) {
            if (!(rc = check_num(t, num, "top_k", 0, 1e9, 1, 0, err, errlen))) { r->has_k = 1; r->k = num; }
        } else if (k == 6) {
            if (!(rc = check_num(t, num, "seed", 0, 9007199254740992.0, 1, 0, err, errlen))) { r->has_seed = 1; r->seed = num; }
        } else if (k == 7) {
            if (!(rc = check_num(t, num, "min_p", 0, 1, 0, 0, err, errlen))) { r->has_min_p = 1; r->min_p = num; }
        } else if (k == 8) {
            if (!(rc = check_num(t, num, "repeat_penalty", 0, 1000, 0, 1, err, errlen))) { r->has_penalty = 1; r->penalty = num; }
        } else if (k == 9) {
            if (!(rc = check_num(t, num, "repeat_last_n", 0, 1 << 30, 1, 0, err, errlen))) { r->has_last_n = 1; r->last_n = num; }
        } else if (k == 10) { /* stop: a string or a list of strings, none empty */
            if (t == JV_STRING) {
                if (!(strs = malloc(sizeof *strs))) die(EXIT_RUNTIME, "out of memory");
                strs[n_strs++] = str_take(&sval);
            }
            if (t != JV_STRING && t != JV_STRINGS) { snprintf(err, errlen, "\"stop\" must be a string or a list of strings"); rc = -1; }
            for (int i = 0; !rc && i < n_strs; i++)
                if (!strs[i][0]) { snprintf(err, errlen, "\"stop\" strings must not be empty"); rc = -1; }
            if (!rc) { r->has_stop = 1; r->stops = strs; r->n_stops = n_strs; strs = NULL; n_strs = 0; }
        }
        if (t == JV_STRINGS && k != 10 && !rc) { snprintf(err, errlen, "\"%s\" must not be a list", KNOWN_KEYS[k]); rc = -1; }
        free(sval.s);
        free_strings(strs, n_strs);
        if (rc) return -1;
        json_ws(&j);
        if (j.p < j.end && *j.p == ',') { j.p++; continue; }
        if (j.p < j.end && *j.p == '}') { j.p++; break; }
        return json_fail(&j, "expected ',' or '}'");
    }
    json_ws(&j);
    if (j.p != j.end) return json_fail(&j, "text after the object (one JSON object a line)");
    if (!r->prompt) { snprintf(err, errlen, "no \"prompt\""); return -1; }
    return 0;
}

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
    static const char *const with_value[] = {"-f", "-b", "--state-in", "--state-out", "--bench-prompt", "--bench-gen", "--bench-batch"};
    if (!strcmp(f, "--jsonl")) { o->format = FMT_JSONL; return 1; }
    if (!strcmp(f, "--text")) { o->format = FMT_TEXT; return 1; }
    if (!strcmp(f, "--bench")) { o->bench = 1; return 1; }
    int known = 0;
    for (size_t k = 0; k < sizeof with_value / sizeof *with_value; k++) known |= !strcmp(f, with_value[k]);
    if (!known) return 0;
    if (*i + 1 >= argc) die(EXIT_USAGE, "option %s needs a value; see -h", f);
    const char *v = argv[++*i];
    if (!strcmp(f, "-f")) o->input = v;
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
        "                exit code 3: every line was written, but some are error objects\n"
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

void batch_check_args(BatchOpts *o, int has_prompt, int other_mode, int ids, int stepwise, int has_logits) {
    if (o->input && o->bench) die(EXIT_USAGE, "-f and --bench do not go together");
    if (o->format != FMT_AUTO && !o->input) die(EXIT_USAGE, "--jsonl and --text go with -f");
    if (o->max_batch && !o->input) die(EXIT_USAGE, "-b goes with -f (--bench takes --bench-batch)");
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
 * Batch mode. */

typedef struct {
    long index;      /* 0-based line of the input */
    char *id_json;   /* as JSON text */
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

typedef struct {
    const Model *m;
    Tokenizer *tok;
    Engine *e;
    const GenParams *g;
    Candidate *cand;        /* shared scratch of the samplers */
    float *penalized;
    int *ids;
    size_t ids_cap;
    char **done;            /* finished lines not yet printed, by index - printed */
    size_t done_cap;
    long printed, failed, prompt_tokens, generated;
    double prefill_s, decode_s;
} Batch;

/* Keeps the JSON line of index until every line before it is out, then prints in order. */
static void emit(Batch *b, long index, char *json) {
    size_t k = (size_t)(index - b->printed);
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

static void finish(Batch *b, Seq *q, const char *error) {
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
        b->failed++;
        if (!b->g->quiet) fprintf(stderr, "warning: line %ld: %s\n", q->index + 1, error);
    }
    str_puts(&o, "}\n");
    emit(b, q->index, str_take(&o));
    b->generated += q->generated;
    free(q->id_json);
    free(q->prompt);
    free(q->completion.s);
    sampler_free(&q->s);
    stop_text_free(&q->st);
    free_strings(q->stops, q->n_stops);
    free(q);
}

static void put_completion(void *ctx, const char *text, size_t n) { str_put(ctx, text, n); }

/* Returns 1 when the token completed a stop string (then the sequence has ended). */
static int append_token(Batch *b, Seq *q, int id) {
    size_t len;
    const char *text = decode_token(b->tok, &q->ds, id, &len);
    if (!stop_text_put(&q->st, text, len, put_completion, &q->completion)) return 0;
    q->stop = "stop-string";
    return 1;
}

static void end_seq(Batch *b, Seq *q, const char *stop) {
    char tail[16];
    size_t n = tokenizer_decode_flush(b->tok, &q->ds, tail, sizeof tail);
    if (stop_text_put(&q->st, tail, n, put_completion, &q->completion)) { q->stop = "stop-string"; return; }
    stop_text_flush(&q->st, put_completion, &q->completion);
    q->stop = stop;
}

/* Reads the next line and sets it up: returns it prefilled in slot `slot` (its last row of logits
 * copied to row), or NULL after writing out a line that needs no decoding (an error, or n = 0).
 * *eof is set at the end of the input. */
static Seq *admit(Batch *b, LineReader *in, int *jsonl, long index, int slot, float *row, int *eof) {
    int too_long;
    long len = read_line(in, &too_long);
    if (len < 0) { *eof = 1; return NULL; }
    const GenParams *g = b->g;
    const Config *c = &b->m->config;
    char *line = in->buf;
    if (*jsonl < 0) { /* auto: JSONL when the first line that is not blank starts with '{' */
        const char *p = line;
        while (*p == ' ' || *p == '\t' || *p == '\r') p++;
        if (*p) *jsonl = *p == '{';
    }
    if (*jsonl <= 0 && len > 0 && line[len - 1] == '\r') line[--len] = '\0';
    Seq *q = calloc(1, sizeof *q);
    if (!q) die(EXIT_RUNTIME, "out of memory");
    q->index = index;
    q->seed = g->seed + (uint64_t)index;
    q->steps = g->steps;
    q->sp = g->sp;
    q->ds.n_fed = 1; /* the completion continues the prompt, as ./run -i prints it */
    char err[512];
    const char *error = NULL;
    long bad;
    Request r = {0};
    if (too_long) {
        snprintf(err, sizeof err, "the line is longer than %d bytes", MAX_LINE);
        error = err;
    } else if (memchr(line, '\0', len)) {
        snprintf(err, sizeof err, "the line contains a NUL byte at byte offset %ld", (long)((char *)memchr(line, '\0', len) - line));
        error = err;
    } else if (*jsonl < 0) { /* before the first line that is not blank: the format is not known yet */
        error = len ? "blank line (only white space)" : "empty prompt";
    } else if (*jsonl > 0) {
        bad = utf8_invalid_at((const unsigned char *)line, len);
        if (parse_request(line, len, &r, err, sizeof err)) error = err;
        if (r.id_json && utf8_invalid_at((const unsigned char *)r.id_json, strlen(r.id_json)) < 0) { /* echo the id even on errors */
            q->id_json = r.id_json;
            r.id_json = NULL;
        }
        if (bad >= 0) {
            snprintf(err, sizeof err, "invalid UTF-8 at byte offset %ld (byte 0x%02x)", bad, (unsigned char)line[bad]);
            error = err;
        }
        if (!error) {
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
        snprintf(err, sizeof err, "invalid UTF-8 at byte offset %ld (byte 0x%02x)", bad, (unsigned char)line[bad]);
        error = err;
    } else {
        if (!(q->prompt = malloc(len + 1))) die(EXIT_RUNTIME, "out of memory");
        memcpy(q->prompt, line, len + 1);
        q->prompt_len = len;
    }
    sampler_init(&q->s, c->vocab_size, &q->sp, q->seed, b->cand, b->penalized);
    if (q->stops) stop_text_init(&q->st, q->stops, q->n_stops);
    else stop_text_init(&q->st, g->stops, g->n_stops);
    if (!error && q->prompt_len == 0) error = "empty prompt";
    if (!error && memchr(q->prompt, '\0', q->prompt_len)) error = "the prompt contains U+0000";
    long n = 0;
    if (!error) {
        n = tokenizer_encode(b->tok, q->prompt, q->prompt_len, &b->ids, &b->ids_cap, err, sizeof err);
        if (n < 0) error = err;
        else if (n == 0) error = "the prompt encodes to no tokens";
        for (long i = 0; !error && i < n; i++)
            if (b->ids[i] < 0 || b->ids[i] >= c->vocab_size) {
                snprintf(err, sizeof err, "prompt token %d is outside the model's vocabulary (%d)", b->ids[i], c->vocab_size);
                error = err;
            }
    }
    if (error) { finish(b, q, error); return NULL; }
    double t0 = now_s();
    for (long i = 0; i < n; i++) sampler_accept(&q->s, b->ids[i]); /* the penalty counts the prompt */
    engine_reset(b->e, slot);
    const float *logits = feed(b->e, slot, b->ids, n, 0, c->vocab_rows, NULL, NULL);
    memcpy(row, logits, (size_t)c->vocab_rows * sizeof(float));
    q->t_decode = now_s();
    q->prefill_ms = (q->t_decode - t0) * 1e3;
    q->prompt_tokens = n;
    b->prompt_tokens += n;
    b->prefill_s += q->t_decode - t0;
    if (q->steps == 0) { end_seq(b, q, "length"); finish(b, q, NULL); return NULL; }
    return q;
}

int batch_run(const BatchOpts *o, const Model *m, Tokenizer *tok, Engine *e, const GenParams *g) {
    const Config *c = &m->config;
    int B = o->max_batch, V = c->vocab_rows, eos = tokenizer_eos(tok);
    LineReader in = {stdin, NULL, 0};
    if (strcmp(o->input, "-") && !(in.f = fopen(o->input, "rb")))
        die(EXIT_RUNTIME, "cannot open prompts file %s: %s", o->input, strerror(errno));
    Batch b = {.m = m, .tok = tok, .e = e, .g = g};
    Seq **slot = calloc(B, sizeof *slot);
    int *tokens = calloc(B, sizeof *tokens);
    float *rows = malloc((size_t)B * V * sizeof(float));
    b.cand = malloc(sizeof(Candidate) * c->vocab_size);
    b.penalized = malloc(sizeof(float) * c->vocab_size);
    if (!slot || !tokens || !rows || !b.cand || !b.penalized) die(EXIT_RUNTIME, "out of memory");

    double t_start = now_s();
    int jsonl = o->format == FMT_JSONL ? 1 : o->format == FMT_TEXT ? 0 : -1, eof = 0, nact = 0;
    long next = 0;
    for (;;) {
        while (nact < B && !eof) { /* fill the free slots */
            Seq *q = admit(&b, &in, &jsonl, next, nact, rows + (size_t)nact * V, &eof);
            if (!eof) next++;
            if (q) slot[nact++] = q;
        }
        if (nact == 0) break;
        double t0 = now_s();
        for (int i = 0; i < nact; i++) { /* pick each sequence's next token */
            Seq *q = slot[i];
            int t = sampler_sample(&q->s, rows + (size_t)i * V);
            sampler_accept(&q->s, t);
            q->generated++;
            if (t == eos && !g->ignore_eos) { end_seq(&b, q, "end-of-text"); continue; }
            if (append_token(&b, q, t)) continue;
            if (q->generated >= q->steps) end_seq(&b, q, "length");
            tokens[i] = t;
        }
        for (int i = 0; i < nact;) { /* finished: write out, and move the last active slot here */
            if (!slot[i]->stop) { i++; continue; }
            finish(&b, slot[i], NULL);
            int last = --nact;
            if (i != last) {
                engine_copy_state(e, i, last);
                slot[i] = slot[last];
                tokens[i] = tokens[last];
            }
        }
        if (nact) {
            const float *l = engine_step(e, tokens, nact);
            memcpy(rows, l, (size_t)nact * V * sizeof(float));
        }
        b.decode_s += now_s() - t0;
    }
    if (in.f != stdin) fclose(in.f);
    fflush(stdout);
    if (ferror(stdout)) die(EXIT_RUNTIME, "writing the output failed");
    if (!g->quiet) {
        double t = now_s() - t_start;
        fprintf(stderr, "[%s] batch: %ld prompt%s (%ld failed), up to %d at once, %.2f s | prompts: %ld tokens, %.1f tok/s | generated: %ld tokens, %.1f tok/s\n",
                engine_name(e), next, next == 1 ? "" : "s", b.failed, B, t, b.prompt_tokens,
                b.prefill_s > 0 ? b.prompt_tokens / b.prefill_s : 0.0, b.generated, b.decode_s > 0 ? b.generated / b.decode_s : 0.0);
    }
    free(in.buf);
    free(b.ids);
    free(b.done);
    free(b.cand);
    free(b.penalized);
    free(slot);
    free(tokens);
    free(rows);
    return b.failed ? EXIT_SOME_FAILED : EXIT_OK;
}

/* ----------------------------------------------------------------------------------------------
 * Saved states.
 *
 * FILE FORMAT (little-endian)
 *   off  type      field
 *     0  char[8]   magic "MAMBASTA"
 *     8  u32       version (1)
 *    12  u32       header_bytes (128)
 *    16  u64       model fingerprint: a 64-bit hash of model.bin's hyperparameters (its header
 *                  bytes 16..63) and of all its weight bytes
 *    24  u64       the model file's size in bytes (informational)
 *    32  i32 x 8   d_model, n_layer, d_inner, d_state, d_conv, dt_rank, vocab_rows, dtype
 *    64  u64       state_floats (engine_state_floats: n_layer * d_inner * (d_conv - 1 + d_state))
 *    72  u64       tokens consumed so far
 *    80  u64       logits_floats (= vocab_rows)
 *    88  u64       hash of the payload (both arrays below)
 *    96  zero up to 128
 *   128  f32[state_floats]   the state, as engine_get_state gives it (per layer: conv, then SSM)
 *        f32[vocab_rows]     the logits row of the last token consumed
 * The file is exactly that long. Continuing from it samples the next token from the saved row, so
 * --state-in without -i gives exactly the tokens the uninterrupted run gives. */
#define STATE_MAGIC "MAMBASTA"
#define STATE_VERSION 1
#define STATE_HEADER 128

static inline uint64_t rotl64(uint64_t x, int r) { return x << r | x >> (64 - r); }
#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL

/* xxHash64's rounds over 32-byte blocks (not its exact output): fast enough to hash every weight. */
static uint64_t hash64(const void *data, size_t n, uint64_t seed) {
    const unsigned char *p = data;
    uint64_t v[4] = {seed + P1 + P2, seed + P2, seed, seed - P1};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++) {
            uint64_t w;
            memcpy(&w, p + i + 8 * k, 8);
            v[k] = rotl64(v[k] + w * P2, 31) * P1;
        }
    uint64_t h = rotl64(v[0], 1) + rotl64(v[1], 7) + rotl64(v[2], 12) + rotl64(v[3], 18) + n;
    for (; i < n; i++) h = rotl64(h ^ (p[i] * P1), 11) * P2;
    h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P1; h ^= h >> 32;
    return h;
}

static uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static uint64_t model_fingerprint(const Model *m) {
    const unsigned char *f = m->map;
    uint64_t w_off = rd64(f + 80), w_bytes = rd64(f + 88);
    return hash64(f + w_off, w_bytes, hash64(f + 16, 48, 0));
}

static void state_header(unsigned char *h, const Model *m, uint64_t state_floats, uint64_t n_tokens, uint64_t payload_hash) {
    const Config *c = &m->config;
    memset(h, 0, STATE_HEADER);
    memcpy(h, STATE_MAGIC, 8);
    uint32_t v32[2] = {STATE_VERSION, STATE_HEADER};
    memcpy(h + 8, v32, 8);
    uint64_t fp = model_fingerprint(m), fb = m->map_bytes;
    memcpy(h + 16, &fp, 8);
    memcpy(h + 24, &fb, 8);
    int32_t dims[8] = {c->d_model, c->n_layer, c->d_inner, c->d_state, c->d_conv, c->dt_rank, c->vocab_rows, c->dtype};
    memcpy(h + 32, dims, sizeof dims);
    uint64_t tail[4] = {state_floats, n_tokens, (uint64_t)c->vocab_rows, payload_hash};
    memcpy(h + 64, tail, sizeof tail);
}

void state_save(const char *path, const Model *m, Engine *e, int seq, long n_tokens, const float *logits) {
    size_t S = engine_state_floats(e), V = m->config.vocab_rows;
    float *buf = malloc((S + V) * sizeof(float));
    if (!buf) die(EXIT_RUNTIME, "out of memory");
    engine_get_state(e, seq, buf);
    memcpy(buf + S, logits, V * sizeof(float));
    unsigned char h[STATE_HEADER];
    state_header(h, m, S, (uint64_t)n_tokens, hash64(buf, (S + V) * sizeof(float), 0));
    FILE *f = fopen(path, "wb");
    if (!f) die(EXIT_RUNTIME, "cannot write state file %s: %s", path, strerror(errno));
    if (fwrite(h, 1, sizeof h, f) != sizeof h || fwrite(buf, sizeof(float), S + V, f) != S + V || fclose(f) != 0)
        die(EXIT_RUNTIME, "writing state file %s failed: %s", path, strerror(errno));
    free(buf);
}

float *state_load(const char *path, const Model *m, Engine *e, int seq, long *n_tokens) {
    const Config *c = &m->config;
    FILE *f = fopen(path, "rb");
    if (!f) die(EXIT_RUNTIME, "cannot open state file %s: %s", path, strerror(errno));
    unsigned char h[STATE_HEADER];
    size_t got = fread(h, 1, sizeof h, f);
    if (got < 8 || memcmp(h, STATE_MAGIC, 8)) die(EXIT_RUNTIME, "%s is not a state file (no MAMBASTA header)", path);
    if (got < sizeof h) die(EXIT_RUNTIME, "state file %s is truncated (%zu bytes)", path, got);
    uint32_t version, hbytes;
    memcpy(&version, h + 8, 4);
    memcpy(&hbytes, h + 12, 4);
    if (version != STATE_VERSION || hbytes != STATE_HEADER)
        die(EXIT_RUNTIME, "state file %s has version %u; this program reads version %d", path, version, STATE_VERSION);
    int32_t dims[8];
    memcpy(dims, h + 32, sizeof dims);
    int32_t ours[8] = {c->d_model, c->n_layer, c->d_inner, c->d_state, c->d_conv, c->dt_rank, c->vocab_rows, c->dtype};
    if (memcmp(dims, ours, sizeof dims))
        die(EXIT_RUNTIME, "state file %s is for another model (d_model %d, n_layer %d, d_inner %d, d_state %d, %s; this one: d_model %d, n_layer %d, d_inner %d, d_state %d, %s)",
            path, dims[0], dims[1], dims[2], dims[3], dims[7] >= 0 && dims[7] <= 2 ? dtype_name(dims[7]) : "?",
            ours[0], ours[1], ours[2], ours[3], dtype_name(ours[7]));
    uint64_t S = rd64(h + 64), V = rd64(h + 80);
    if (S != engine_state_floats(e) || V != (uint64_t)c->vocab_rows)
        die(EXIT_RUNTIME, "state file %s is corrupt (%llu state floats and %llu logits; this model has %zu and %d)",
            path, (unsigned long long)S, (unsigned long long)V, engine_state_floats(e), c->vocab_rows);
    if (rd64(h + 16) != model_fingerprint(m))
        die(EXIT_RUNTIME, "state file %s was saved with another model (same shapes, different weights)", path);
    float *buf = malloc((S + V + 1) * sizeof(float));
    if (!buf) die(EXIT_RUNTIME, "out of memory");
    got = fread(buf, sizeof(float), S + V + 1, f);
    if (ferror(f)) die(EXIT_RUNTIME, "reading state file %s failed: %s", path, strerror(errno));
    fclose(f);
    if (got != S + V)
        die(EXIT_RUNTIME, "state file %s is %s (%zu floats after the header, expected %llu)", path,
            got < S + V ? "truncated" : "corrupt: longer than its header says", got, (unsigned long long)(S + V));
    if (hash64(buf, (S + V) * sizeof(float), 0) != rd64(h + 88))
        die(EXIT_RUNTIME, "state file %s is corrupt (its checksum does not match)", path);
    engine_set_state(e, seq, buf);
    memmove(buf, buf + S, V * sizeof(float));
    *n_tokens = (long)rd64(h + 72);
    return buf;
}

/* ----------------------------------------------------------------------------------------------
 * --bench: for each prompt length, one prompt of deterministic ids is prefilled (timed: prefill
 * tok/s, and the time to the first token: prefill + picking it); then for each batch size and
 * generation length, that state is copied into the batch's slots and they decode together
 * (greedy, so the numbers are the engine's: sampling adds its own per-token cost). */
static int argmax_n(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best]) best = i;
    return best;
}

static long peak_rss_bytes(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss * 1024L; /* Linux: kilobytes */
}

int bench_run(const BatchOpts *o, const Model *m, const char *model_path, Engine *e, int quiet) {
    const Config *c = &m->config;
    int V = c->vocab_rows, maxB = batch_max_seqs(o);
    size_t S = engine_state_floats(e);
    float *saved = malloc(S * sizeof(float));
    int *tokens = malloc(maxB * sizeof(int)), *warm = calloc(MAX_BATCH + 1, sizeof(int));
    if (!saved || !tokens || !warm) die(EXIT_RUNTIME, "out of memory");
    printf("{\"engine\":");
    Str s = {0};
    str_json(&s, engine_name(e), strlen(engine_name(e)));
    str_puts(&s, ",\"model\":{\"path\":");
    str_json(&s, model_path, strlen(model_path));
    fputs(s.s, stdout);
    free(s.s);
    printf(",\"arch\":\"%s\",\"d_model\":%d,\"n_layer\":%d,\"d_inner\":%d,\"d_state\":%d,\"d_conv\":%d,\"vocab_rows\":%d,\"dtype\":\"%s\",\"file_bytes\":%zu,\"weight_bytes\":%zu}",
           arch_name(c->arch), c->d_model, c->n_layer, c->d_inner, c->d_state, c->d_conv, c->vocab_rows, dtype_name(c->dtype), m->map_bytes, model_weight_bytes(c));
    printf(",\"state_bytes_per_seq\":%zu,\"decode\":\"greedy\",\"results\":[", S * sizeof(float));
    fflush(stdout);
    { /* untimed: the first pass over the weights pages them in */
        int w[8] = {5, 6, 7, 8, 9, 10, 11, 12};
        engine_reset(e, 0);
        feed(e, 0, w, 8, 0, V, NULL, NULL);
        engine_step(e, w, 1);
        warm[1] = 1;
    }
    int first = 1;
    for (int pi = 0; pi < o->n_bench_prompt; pi++) {
        int P = o->bench_prompt[pi];
        int *ids = malloc((size_t)P * sizeof(int));
        if (!ids) die(EXIT_RUNTIME, "out of memory");
        for (int i = 0; i < P; i++) ids[i] = (int)(((uint64_t)i * 7919 + 13) % (uint64_t)(c->vocab_size > 5 ? c->vocab_size - 5 : 1)) + (c->vocab_size > 5 ? 5 : 0);
        engine_reset(e, 0);
        double t0 = now_s();
        const float *l = feed(e, 0, ids, P, 0, V, NULL, NULL);
        double t1 = now_s();
        int tok0 = argmax_n(l, c->vocab_size);
        double t2 = now_s();
        engine_get_state(e, 0, saved);
        free(ids);
        for (int bi = 0; bi < o->n_bench_batch; bi++) {
            int B = o->bench_batch[bi];
            for (int gi = 0; gi < o->n_bench_gen; gi++) {
                int G = o->bench_gen[gi];
                for (int k = 0; k < B; k++) { engine_set_state(e, k, saved); tokens[k] = tok0; }
                if (!warm[B]) { /* the first step of a batch size sets things up (CUDA graphs): untimed */
                    engine_step(e, tokens, B);
                    for (int k = 0; k < B; k++) engine_set_state(e, k, saved);
                    warm[B] = 1;
                }
                double d0 = now_s();
                for (int step = 0; step < G; step++) {
                    l = engine_step(e, tokens, B);
                    for (int k = 0; k < B; k++) tokens[k] = argmax_n(l + (size_t)k * V, c->vocab_size);
                }
                double dt = now_s() - d0;
                printf("%s\n{\"prompt_tokens\":%d,\"gen_tokens\":%d,\"batch\":%d,\"prefill_ms\":%.3f,\"prefill_tok_s\":%.2f,"
                       "\"ttft_ms\":%.3f,\"decode_ms\":%.3f,\"ms_per_step\":%.4f,\"decode_tok_s\":%.2f,\"decode_tok_s_per_seq\":%.2f,"
                       "\"state_bytes\":%zu,\"state_bytes_total\":%zu,\"peak_rss_bytes\":%ld}",
                       first ? "" : ",", P, G, B, (t1 - t0) * 1e3, P / (t1 - t0), (t2 - t0) * 1e3, dt * 1e3, dt * 1e3 / G,
                       (double)B * G / dt, G / dt, S * sizeof(float), (size_t)B * S * sizeof(float), peak_rss_bytes());
                fflush(stdout);
                first = 0;
                if (!quiet)
                    fprintf(stderr, "[%s] prompt %d: prefill %.1f tok/s, first token %.1f ms | batch %d x %d steps: decode %.1f tok/s (%.1f per sequence)\n",
                            engine_name(e), P, P / (t1 - t0), (t2 - t0) * 1e3, B, G, B * G / dt, G / dt);
            }
        }
    }
    printf("\n]}\n");
    fflush(stdout);
    if (ferror(stdout)) die(EXIT_RUNTIME, "writing the output failed");
    free(saved);
    free(tokens);
    free(warm);
    return EXIT_OK;
}
