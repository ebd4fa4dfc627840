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

#include <cJSON.h>

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

/* ----------------------------------------------------------------------------------------------
 * Requests: one JSON object a line, read with cJSON (Debian's libcjson-dev).
 *
 * cJSON accepts some text that JSON (RFC 8259) does not, and these lines come from other programs,
 * where such text is a bug worth naming: tried with libcjson 1.7.15, it takes raw control characters
 * inside strings, 01, 1. and 1e999 (read as infinity). So a lexical pass refuses those first. And its
 * printer rewrites numbers (12345678901234567890 comes out as 1.2345678901234567e+19, -1.5e3 as
 * -1500) and cannot write a string holding U+0000: the fields the program does not use, and a
 * numeric id, are copied from the line's own text, and the output objects are written here. */

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* The offset of the first text that cJSON would take but JSON does not, with the reason; or -1. */
static long json_strict_check(const char *s, size_t n, const char **why) {
    for (size_t i = 0; i < n;) {
        if (s[i] == '"') {
            for (i++; i < n && s[i] != '"'; i++) {
                if ((unsigned char)s[i] < 0x20) { *why = "control character in a string (escape it)"; return (long)i; }
                if (s[i] == '\\') i++;
            }
            i++;
            continue;
        }
        if (s[i] != '-' && !is_digit(s[i])) { i++; continue; }
        size_t start = i; /* a number: -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)? */
        if (s[i] == '-') i++;
        if (i < n && s[i] == '0') {
            i++;
            if (i < n && is_digit(s[i])) { *why = "a number must not start with 0"; return (long)i; }
        } else if (i < n && is_digit(s[i])) {
            while (i < n && is_digit(s[i])) i++;
        } else { *why = "expected a digit"; return (long)i; }
        if (i < n && s[i] == '.') {
            if (++i >= n || !is_digit(s[i])) { *why = "expected a digit after '.'"; return (long)i; }
            while (i < n && is_digit(s[i])) i++;
        }
        if (i < n && (s[i] == 'e' || s[i] == 'E')) {
            if (++i < n && (s[i] == '+' || s[i] == '-')) i++;
            if (i >= n || !is_digit(s[i])) { *why = "expected a digit in the exponent"; return (long)i; }
            while (i < n && is_digit(s[i])) i++;
        }
        char buf[64];
        if (i - start >= sizeof buf) { *why = "number too long"; return (long)start; }
        memcpy(buf, s + start, i - start);
        buf[i - start] = '\0';
        if (!isfinite(strtod(buf, NULL))) { *why = "number out of range"; return (long)start; }
    }
    return -1;
}

/* What cJSON stopped at, in words. */
static const char *json_diagnose(const char *start, const char *at, const char *end) {
    if (at >= end) return "the line ends inside the object";
    if (at[0] == '\\' && end - at >= 2 && at[1] == 'u') {
        unsigned cp = 0;
        for (int k = 2; k < 6; k++) {
            char c = at + k < end ? at[k] : 0;
            int d = is_digit(c) ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
            if (d < 0) return "bad hex digit in a \\u escape";
            cp = cp << 4 | d;
        }
        if (cp >= 0xD800 && cp <= 0xDFFF) return "unpaired surrogate in a \\u escape";
    }
    if (at[0] == '\\') return "unknown escape";
    int in_string = 0;
    for (const char *p = start; p < at; p++) {
        if (*p == '"') in_string = !in_string;
        else if (*p == '\\' && in_string) p++;
    }
    if (in_string && !memchr(at, '"', end - at)) return "unterminated string";
    return "unexpected text";
}

/* The members of the object on a line, as written: spans of the key (with its quotes) and the value.
 * The text is valid JSON (cJSON took it), or, after an error at byte `limit`, only the members
 * wholly before it are returned. */
typedef struct {
    const char *key, *val;
    size_t key_len, val_len;
} RawMember;

static const char *skip_ws(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
    return p;
}
static const char *skip_string(const char *p, const char *end) { /* at '"': past the closing one */
    for (p++; p < end && *p != '"'; p++)
        if (*p == '\\') p++;
    return p < end ? p + 1 : end;
}

static int raw_members(const char *s, size_t n, RawMember *out, int max) {
    const char *p = skip_ws(s, s + n), *end = s + n;
    if (p >= end || *p != '{') return 0;
    int count = 0;
    for (p = skip_ws(p + 1, end); p < end && *p == '"' && count < max;) {
        RawMember m = {.key = p};
        p = skip_string(p, end);
        m.key_len = p - m.key;
        p = skip_ws(p, end);
        if (p >= end || *p != ':') break;
        p = skip_ws(p + 1, end);
        m.val = p;
        int depth = 0;
        for (; p < end; p++) {
            if (*p == '"') { p = skip_string(p, end) - 1; continue; }
            if (*p == '[' || *p == '{') depth++;
            else if (*p == ']' || *p == '}') { if (!depth) break; depth--; }
            else if (*p == ',' && !depth) break;
        }
        if (p >= end) break; /* not ended: the line was cut off */
        const char *v = p;
        while (v > m.val && (v[-1] == ' ' || v[-1] == '\t' || v[-1] == '\r' || v[-1] == '\n')) v--;
        m.val_len = v - m.val;
        out[count++] = m;
        if (*p != ',') break;
        p = skip_ws(p + 1, end);
    }
    return count;
}

/* One request: a line of the input, parsed. */
typedef struct {
    char *id_json;  /* the id as written (a string or a number), or NULL: the line index */
    char *prompt;   /* NULL until known */
    size_t prompt_len;
    int has_n, has_t, has_p, has_k, has_seed, has_min_p, has_penalty, has_last_n, has_stop;
    double n, t, p, k, seed, min_p, penalty, last_n;
    char **stops;   /* "stop": a string or a list of them */
    int n_stops;
    char *extra;    /* the members the program does not use, as written: ",\"key\":value..." (or NULL) */
} Request;

static void free_strings(char **s, int n) {
    for (int i = 0; i < n; i++) free(s[i]);
    free(s);
}

static void request_free(Request *r) {
    free(r->id_json);
    free(r->prompt);
    free_strings(r->stops, r->n_stops);
    free(r->extra);
    *r = (Request){0};
}

static const char *const KNOWN_KEYS[] = {"id", "prompt", "n", "temperature", "top_p", "top_k", "seed",
                                         "min_p", "repeat_penalty", "repeat_last_n", "stop"};
/* Fields of the output object: an input member of these names could not be copied to it. */
static const char *const OUTPUT_KEYS[] = {"completion", "prompt_tokens", "generated_tokens", "prefill_ms", "decode_ms", "error"};

/* A number value of key in [lo, hi] (an integer when integer): 0, or -1 with the reason. */
static int check_num(const cJSON *v, const char *key, double lo, double hi, int integer, int open_lo, char *err, size_t errlen) {
    if (!cJSON_IsNumber(v)) { snprintf(err, errlen, "\"%s\" must be a number", key); return -1; }
    double x = v->valuedouble;
    if (integer && x != floor(x)) { snprintf(err, errlen, "\"%s\" must be an integer, got %g", key, x); return -1; }
    if (x < lo || x > hi || (open_lo && x == lo)) {
        snprintf(err, errlen, "\"%s\" = %g is out of range %s%g, %g]", key, x, open_lo ? "(" : "[", lo, hi);
        return -1;
    }
    return 0;
}

/* Whether a JSON string, as written, holds the escape \u0000 (cJSON's strings end at it). */
static int has_escaped_nul(const char *s, size_t n) {
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] != '\\') continue;
        if (s[i + 1] == 'u' && i + 5 < n && !memcmp(s + i + 2, "0000", 4)) return 1;
        i++;
    }
    return 0;
}

static char *dup_n(const char *s, size_t n) {
    char *d = strndup(s, n);
    if (!d) die(EXIT_RUNTIME, "out of memory");
    return d;
}

/* After an error at byte limit: the id, when a member "id" with a string or number value came
 * wholly before it (so that the error object can still carry it). */
static void salvage_id(const char *line, size_t n, size_t limit, Request *r) {
    RawMember m[64];
    int count = raw_members(line, n, m, 64);
    for (int i = 0; i < count; i++) {
        if ((size_t)(m[i].val + m[i].val_len - line) > limit) break;
        if (m[i].key_len != 4 || memcmp(m[i].key, "\"id\"", 4)) continue;
        cJSON *v = cJSON_ParseWithLength(m[i].val, m[i].val_len);
        const char *why;
        if (v && (cJSON_IsString(v) || cJSON_IsNumber(v)) && json_strict_check(m[i].val, m[i].val_len, &why) < 0)
            r->id_json = dup_n(m[i].val, m[i].val_len);
        cJSON_Delete(v);
        return;
    }
}

/* Parses a line of JSONL (valid UTF-8, no NUL) into r. Returns 0, or -1 with a one-line reason in
 * err (r keeps the id when it could be read). */
static int parse_request(const char *line, size_t n, Request *r, char *err, size_t errlen) {
    const char *why, *end = NULL;
    long bad = json_strict_check(line, n, &why);
    cJSON *root = NULL;
    if (bad < 0) {
        root = cJSON_ParseWithLengthOpts(line, n, &end, 0);
        if (!root) {
            bad = end ? (long)(end - line) : 0;
            why = *skip_ws(line, line + n) != '{' ? "expected '{' (one JSON object a line)" : json_diagnose(line, line + bad, line + n);
        }
        else if (skip_ws(end, line + n) != line + n) { bad = (long)(end - line); why = "text after the object (one JSON object a line)"; }
        else if (!cJSON_IsObject(root)) { bad = 0; why = "expected '{' (one JSON object a line)"; }
    }
    if (bad >= 0) {
        snprintf(err, errlen, "bad JSON at byte %ld: %s", bad, why);
        salvage_id(line, n, (size_t)bad, r);
        cJSON_Delete(root);
        return -1;
    }
    int count = cJSON_GetArraySize(root), rc = 0;
    RawMember *raw = malloc((count + 1) * sizeof *raw);
    if (!raw) die(EXIT_RUNTIME, "out of memory");
    if (raw_members(line, n, raw, count) != count) die(EXIT_RUNTIME, "internal error: the members of a JSON line");
    Str extra = {0};
    int i = 0;
    for (const cJSON *v = root->child; v && !rc; v = v->next, i++) {
        const char *key = v->string;
        for (const cJSON *w = root->child; w != v; w = w->next)
            if (!strcmp(w->string, key)) { snprintf(err, errlen, "duplicate key \"%.40s\"", key); rc = -1; }
        if (rc) break;
        int k = -1;
        for (int j = 0; j < (int)(sizeof KNOWN_KEYS / sizeof *KNOWN_KEYS); j++)
            if (!strcmp(KNOWN_KEYS[j], key)) k = j;
        if (k < 0) { /* not ours: copied to the output as written */
            for (int j = 0; j < (int)(sizeof OUTPUT_KEYS / sizeof *OUTPUT_KEYS); j++)
                if (!strcmp(OUTPUT_KEYS[j], key)) { snprintf(err, errlen, "\"%s\" is a field of the output; give it another name", key); rc = -1; }
            str_put(&extra, ",", 1);
            str_put(&extra, raw[i].key, raw[i].key_len);
            str_put(&extra, ":", 1);
            str_put(&extra, raw[i].val, raw[i].val_len);
            continue;
        }
        if (cJSON_IsNull(v)) continue; /* null: as if the key were not there */
        if (k == 0) { /* id: a string or a number, echoed as written */
            if (cJSON_IsString(v) || cJSON_IsNumber(v)) { free(r->id_json); r->id_json = dup_n(raw[i].val, raw[i].val_len); }
            else { snprintf(err, errlen, "\"id\" must be a string or a number"); rc = -1; }
        } else if (k == 1) {
            if (!cJSON_IsString(v)) { snprintf(err, errlen, "\"prompt\" must be a string"); rc = -1; }
            else if (has_escaped_nul(raw[i].val, raw[i].val_len)) { snprintf(err, errlen, "the prompt contains U+0000"); rc = -1; }
            else { r->prompt_len = strlen(v->valuestring); r->prompt = dup_n(v->valuestring, r->prompt_len); }
        } else if (k == 2) {
            if (!(rc = check_num(v, "n", 0, 1e9, 1, 0, err, errlen))) { r->has_n = 1; r->n = v->valuedouble; }
        } else if (k == 3) {
            if (!(rc = check_num(v, "temperature", 0, 100, 0, 0, err, errlen))) { r->has_t = 1; r->t = v->valuedouble; }
        } else if (k == 4) {
            if (!(rc = check_num(v, "top_p", 0, 1, 0, 1, err, errlen))) { r->has_p = 1; r->p = v->valuedouble; }
        } else if (k == 5) {
            if (!(rc = check_num(v, "top_k", 0, 1e9, 1, 0, err, errlen))) { r->has_k = 1; r->k = v->valuedouble; }
        } else if (k == 6) {
            if (!(rc = check_num(v, "seed", 0, 9007199254740992.0, 1, 0, err, errlen))) { r->has_seed = 1; r->seed = v->valuedouble; }
        } else if (k == 7) {
            if (!(rc = check_num(v, "min_p", 0, 1, 0, 0, err, errlen))) { r->has_min_p = 1; r->min_p = v->valuedouble; }
        } else if (k == 8) {
            if (!(rc = check_num(v, "repeat_penalty", 0, 1000, 0, 1, err, errlen))) { r->has_penalty = 1; r->penalty = v->valuedouble; }
        } else if (k == 9) {
            if (!(rc = check_num(v, "repeat_last_n", 0, 1 << 30, 1, 0, err, errlen))) { r->has_last_n = 1; r->last_n = v->valuedouble; }
        } else { /* stop: a string or a list of strings, none empty */
            int list = cJSON_IsArray(v), m = list ? cJSON_GetArraySize(v) : 1;
            if (has_escaped_nul(raw[i].val, raw[i].val_len)) { snprintf(err, errlen, "\"stop\" strings must not contain U+0000"); rc = -1; break; }
            if (!list && !cJSON_IsString(v)) { snprintf(err, errlen, "\"stop\" must be a string or a list of strings"); rc = -1; break; }
            char **s = calloc(m ? m : 1, sizeof *s);
            if (!s) die(EXIT_RUNTIME, "out of memory");
            int got = 0;
            for (const cJSON *e = list ? v->child : v; e && !rc; e = list ? e->next : NULL) {
                if (!cJSON_IsString(e)) { snprintf(err, errlen, "\"stop\" must be a string or a list of strings"); rc = -1; }
                else if (!e->valuestring[0]) { snprintf(err, errlen, "\"stop\" strings must not be empty"); rc = -1; }
                else s[got++] = dup_n(e->valuestring, strlen(e->valuestring));
            }
            if (rc) free_strings(s, got);
            else { r->has_stop = 1; r->stops = s; r->n_stops = got; }
        }
    }
    free(raw);
    cJSON_Delete(root);
    if (rc) { free(extra.s); return -1; }
    if (extra.s) r->extra = str_take(&extra);
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
    if (q->extra) str_puts(&o, q->extra);
    str_puts(&o, "}\n");
    emit(b, q->index, str_take(&o));
    b->generated += q->generated;
    free(q->id_json);
    free(q->extra);
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
        } else {
            q->extra = r.extra; /* set when the line parsed: copied even if the prompt fails later */
            r.extra = NULL;
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
