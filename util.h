/* util.h: the exit codes, die() and the clock: what every other file of the command line uses. */
#ifndef UTIL_H
#define UTIL_H

/* Exit codes, as documented in README.md. EXIT_SOME_FAILED: batch mode wrote every line, but some
 * of them are error objects. */
enum { EXIT_OK = 0, EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_SOME_FAILED = 3 };

/* "error: ..." on stderr, then exit(code). */
void die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
/* Seconds on the monotonic clock. */
double now_s(void);

#endif
