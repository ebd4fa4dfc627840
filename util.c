/* util.c: see util.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util.h"

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
 * Growable strings. */

void str_put(Str *b, const void *p, size_t n) {
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
void str_puts(Str *b, const char *s) { str_put(b, s, strlen(s)); }
void str_printf(Str *b, const char *fmt, ...) {
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
char *str_take(Str *b) { /* the string (never NULL), and the Str emptied */
    char *s = b->s ? b->s : strdup("");
    if (!s) die(EXIT_RUNTIME, "out of memory");
    *b = (Str){0};
    return s;
}
