/* util.h: the exit codes, die(), the clock and growable strings: what every other file of the
 * command line uses. */
#ifndef UTIL_H
#define UTIL_H

#include <stddef.h>

/* Exit codes, as documented in README.md. EXIT_SOME_FAILED: batch mode wrote every line, but some
 * of them are error objects. */
enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_SOME_FAILED = 3 };

/* "error: ..." on stderr, then exit(code). */
void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
/* Seconds on the monotonic clock. */
double now_s(void);

/* A growable string; always NUL-terminated once anything was put. */
typedef struct {
    char *s;
    size_t n, cap;
} Str;

void str_put(Str *b, const void *p, size_t n);
void str_puts(Str *b, const char *s);
void str_printf(Str *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The string (never NULL, malloc'd), and the Str emptied. */
char *str_take(Str *b);

#endif
