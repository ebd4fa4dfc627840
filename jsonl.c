/* jsonl.c: the JSON of batch mode: JSON strings for the output, UTF-8 checks, and
 * the requests (one JSON object an input line), read with cJSON. See jsonl.h. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "jsonl.h"
#include "util.h"

/* A JSON string of n bytes of valid UTF-8: quotes, backslashes and control characters escaped. */
void str_json(Str *b, const char *s, size_t n) {
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
long utf8_invalid_at(const unsigned char *s, size_t n) {
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
        /* cJSON skips every byte up to ' ' as white space; JSON has only these four (raw_members,
         * which copies the members as written, keeps to JSON). */
        if ((unsigned char)s[i] < 0x20 && s[i] != '\t' && s[i] != '\n' && s[i] != '\r') {
            *why = "control character outside a string (white space is space, tab, CR or LF)";
            return (long)i;
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

void free_strings(char **s, int n) {
    for (int i = 0; i < n; i++) free(s[i]);
    free(s);
}

void request_free(Request *r) {
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
int parse_request(const char *line, size_t n, Request *r, char *err, size_t errlen) {
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
