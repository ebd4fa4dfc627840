/* jsonl.h: the JSON of batch mode (jsonl.c): JSON strings for the output
 * objects, UTF-8 checks, and parsing one request (one JSON object an input line). */
#ifndef JSONL_H
#define JSONL_H

#include <stddef.h>

#include "util.h" /* Str */

/* A JSON string of n bytes of valid UTF-8 (U+0000 included): quotes, backslashes and control
 * characters escaped. */
void str_json(Str *b, const char *s, size_t n);

/* Offset of the first byte that is not valid UTF-8 (overlongs, surrogates, code points past
 * U+10FFFF and truncated sequences are invalid), or -1 when all of s is valid. */
long utf8_invalid_at(const unsigned char *s, size_t n);

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

/* Parses a line of JSONL (valid UTF-8, no NUL byte) into r. Returns 0, or -1 with a one-line reason
 * in err (r keeps the id when it could be read). */
int parse_request(const char *line, size_t n, Request *r, char *err, size_t errlen);
void request_free(Request *r);
void free_strings(char **s, int n);

#endif
