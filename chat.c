/* chat.c: chat mode. ./run model.bin --chat [--system TEXT] [--chat-template T]
 *
 * User turns come from stdin, one a line (a terminal or a script); each reply streams to stdout,
 * followed by a newline. The conversation lives in the engine's state (slot 0): each turn feeds only
 * its own new tokens, never the history again, which is what a recurrent model allows.
 *
 * A chat template here is a simple format of our own, not Jinja: one line per role,
 *     system: PREFIX{}SUFFIX
 *     user: PREFIX{}SUFFIX
 *     assistant: PREFIX{}SUFFIX
 * where {} stands for the message, and \n, \t and \\ in PREFIX and SUFFIX are a newline, a tab and
 * a backslash (the system line may be left out). A message becomes PREFIX + text + SUFFIX. A turn
 * feeds the end of the previous reply (the assistant SUFFIX), the user's message, and the assistant
 * PREFIX; then the reply is sampled until the end-of-text token, -n tokens, a --stop string or the
 * assistant SUFFIX (a stop string when it is not empty). Every printed token is fed; the
 * token that ended the reply is not (the SUFFIX stands for it). Without a template (--chat-template
 * or the model's), the plain fallback for base models is used:
 *     system: {}\n\n
 *     user: User: {}\n\n
 *     assistant: Assistant: {}\n\n
 * (base models were not trained to end a reply: it ends at the first blank line).
 * With --state-out the state is saved after every reply; --state-in resumes a conversation saved that
 * way (the first turn then starts with the assistant SUFFIX). Ctrl-C ends the current reply; at the
 * prompt it is ignored, and the end of the input (Ctrl-D) ends the chat. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <unistd.h>

#include "chat.h"
#include "feed.h"
#include "jsonl.h" /* Str */
#include "state.h"
#include "util.h"

static const char PLAIN_TEMPLATE[] = "system: {}\\n\\n\nuser: User: {}\\n\\n\nassistant: Assistant: {}\\n\\n\n";

enum { ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT, N_ROLES };
static const char *const ROLE_NAMES[N_ROLES] = {"system", "user", "assistant"};

typedef struct {
    char *prefix[N_ROLES], *suffix[N_ROLES]; /* NULL: the role has no line */
} ChatTemplate;

/* Unescapes n bytes of s (\n, \t, \\) into a new string; NULL on another escape. */
static char *unescape(const char *s, size_t n) {
    char *out = malloc(n + 1), *o = out;
    if (!out) die(EXIT_RUNTIME, "out of memory");
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\') { *o++ = s[i]; continue; }
        char c = ++i < n ? s[i] : 0;
        if (c == 'n') *o++ = '\n';
        else if (c == 't') *o++ = '\t';
        else if (c == '\\') *o++ = '\\';
        else { free(out); return NULL; }
    }
    *o = '\0';
    return out;
}

static void template_free(ChatTemplate *t) {
    for (int r = 0; r < N_ROLES; r++) { free(t->prefix[r]); free(t->suffix[r]); }
}

/* Parses text into t: 0, or -1 with the problem in err. */
static int template_parse(const char *text, ChatTemplate *t, char *err, size_t errlen) {
    *t = (ChatTemplate){0};
    if (strstr(text, "{%") || strstr(text, "{{")) {
        snprintf(err, errlen, "it is a Jinja template ('%s'), and chat mode reads only its own format: one line per role, \"user: PREFIX{}SUFFIX\" (README, Chat)",
                 strstr(text, "{%") ? "{%" : "{{");
        return -1;
    }
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        if (len && line[len - 1] == '\r') len--;
        if (len) {
            int r = -1;
            for (int k = 0; k < N_ROLES; k++) {
                size_t kl = strlen(ROLE_NAMES[k]);
                if (len > kl + 1 && !memcmp(line, ROLE_NAMES[k], kl) && line[kl] == ':' && line[kl + 1] == ' ') r = k;
            }
            const char *body = r >= 0 ? line + strlen(ROLE_NAMES[r]) + 2 : NULL;
            const char *hole = body ? memmem(body, len - (body - line), "{}", 2) : NULL;
            if (r < 0 || !hole) {
                snprintf(err, errlen, "line '%.*s' is not \"ROLE: PREFIX{}SUFFIX\" with ROLE system, user or assistant", (int)(len < 40 ? len : 40), line);
                template_free(t);
                return -1;
            }
            if (t->prefix[r]) { snprintf(err, errlen, "two lines for the role %s", ROLE_NAMES[r]); template_free(t); return -1; }
            t->prefix[r] = unescape(body, hole - body);
            t->suffix[r] = unescape(hole + 2, line + len - (hole + 2));
            if (!t->prefix[r] || !t->suffix[r]) { snprintf(err, errlen, "an escape other than \\n, \\t and \\\\ in the line for %s", ROLE_NAMES[r]); template_free(t); return -1; }
        }
        if (!end) break;
        line = end + 1;
    }
    if (!t->prefix[ROLE_USER] || !t->prefix[ROLE_ASSISTANT]) {
        snprintf(err, errlen, "no line for the role %s", t->prefix[ROLE_USER] ? "assistant" : "user");
        template_free(t);
        return -1;
    }
    return 0;
}

void chat_check_template(const char *text, const char *where) {
    ChatTemplate t;
    char err[256];
    if (template_parse(text, &t, err, sizeof err)) die(EXIT_USAGE, "%s: %s", where, err);
    template_free(&t);
}

void chat_usage(FILE *f) {
    fprintf(f,
        "Chat (user turns from stdin, one a line; each reply streamed to stdout):\n"
        "  --chat        chat; the state carries the conversation, so a turn feeds only its own tokens\n"
        "  --system <string>  the system message, fed before the first turn\n"
        "  --chat-template <string>  lines \"system: PREFIX{}SUFFIX\", \"user: ...\", \"assistant: ...\"\n"
        "                (\\n = newline); default: the model's, else \"User: {}\\n\\n\", \"Assistant: {}\\n\\n\"\n"
        "                Ctrl-C ends the current reply; --state-out saves after every reply\n");
}

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) { (void)sig; interrupted = 1; }

static void print_text(void *ctx, const char *text, size_t n) {
    (void)ctx;
    fwrite(text, 1, n, stdout);
    fflush(stdout);
}

int chat_run(const ChatOpts *o, const Model *m, Tokenizer *tok, Engine *e) {
    const Config *c = &m->config;
    ChatTemplate t;
    char err[512];
    if (template_parse(o->template_text ? o->template_text : PLAIN_TEMPLATE, &t, err, sizeof err))
        die(EXIT_USAGE, "chat template: %s", err);
    if (o->system && !t.prefix[ROLE_SYSTEM]) die(EXIT_USAGE, "--system: the chat template has no line for the role system");

    /* The stop strings of a reply: the assistant SUFFIX (unless only white space), then --stop's. */
    char **stops = malloc((o->n_stops + 1) * sizeof *stops);
    if (!stops) die(EXIT_RUNTIME, "out of memory");
    int n_stops = 0;
    if (t.suffix[ROLE_ASSISTANT][0]) stops[n_stops++] = t.suffix[ROLE_ASSISTANT];
    for (int i = 0; i < o->n_stops; i++) stops[n_stops++] = o->stops[i];

    Sampler s;
    sampler_init(&s, c->vocab_size, &o->sp, o->seed, NULL, NULL);
    long n_tokens = 0;
    float *last = malloc((size_t)c->vocab_rows * sizeof(float)); /* the last row of logits, for --state-out */
    if (!last) die(EXIT_RUNTIME, "out of memory");
    Str pending = {0};
    if (o->state_in) {
        float *saved = state_load(o->state_in, m, e, 0, &n_tokens);
        memcpy(last, saved, (size_t)c->vocab_rows * sizeof(float));
        free(saved);
        str_puts(&pending, t.suffix[ROLE_ASSISTANT]);
    } else {
        engine_reset(e, 0);
        if (o->system) {
            str_puts(&pending, t.prefix[ROLE_SYSTEM]);
            str_puts(&pending, o->system);
            str_puts(&pending, t.suffix[ROLE_SYSTEM]);
        }
    }

    /* SA_RESTART: a Ctrl-C that lands in a write() blocked on a full terminal must not fail it (stdout
     * would keep the error and the chat end with exit 1); the reply loop sees the flag. At the prompt
     * the wait is a pselect(), which a signal always interrupts, restart or not. */
    struct sigaction sa = {0};
    sa.sa_handler = on_sigint;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, NULL);
    int tty = isatty(0), eos = tokenizer_eos(tok);
    int *ids = NULL;
    size_t ids_cap = 0, lcap = 0;
    char *line = NULL;
    sigset_t sigint, unblocked;
    sigemptyset(&sigint);
    sigaddset(&sigint, SIGINT);
    for (;;) {
        if (tty) {
            /* A Ctrl-C between clearing the flag and blocking in read() would be lost (the prompt would
             * not come back until Enter): SIGINT stays blocked but for the pselect() that waits for the
             * line, which unblocks it atomically. A terminal's read() gives one line at a time, so
             * stdin's buffer is empty here and waiting on the descriptor is right. */
            sigprocmask(SIG_BLOCK, &sigint, &unblocked);
            interrupted = 0;
            fputs("> ", stdout);
            fflush(stdout);
            fd_set in;
            FD_ZERO(&in);
            FD_SET(0, &in);
            int ready = pselect(1, &in, NULL, NULL, NULL, &unblocked);
            sigprocmask(SIG_SETMASK, &unblocked, NULL);
            if (ready < 0) {
                if (errno != EINTR) die(EXIT_RUNTIME, "reading the terminal failed: %s", strerror(errno));
                fputc('\n', stdout);
                continue;
            }
        }
        ssize_t len = getline(&line, &lcap, stdin);
        if (len < 0) break;
        interrupted = 0; /* a Ctrl-C while a pipe's line was awaited is not one for this reply */
        if (len && line[len - 1] == '\n') line[--len] = '\0';
        if (len && line[len - 1] == '\r') line[--len] = '\0';
        if (memchr(line, '\0', len)) die(EXIT_RUNTIME, "a turn on stdin contains a NUL byte");
        str_puts(&pending, t.prefix[ROLE_USER]);
        str_puts(&pending, line);
        str_puts(&pending, t.suffix[ROLE_USER]);
        str_puts(&pending, t.prefix[ROLE_ASSISTANT]);
        long n = tokenizer_encode(tok, pending.s, pending.n, &ids, &ids_cap, err, sizeof err);
        if (n < 0) die(EXIT_RUNTIME, "turn: %s", err);
        pending.n = 0;
        pending.s[0] = '\0';
        for (long i = 0; i < n; i++) {
            if (ids[i] < 0 || ids[i] >= c->vocab_size) die(EXIT_RUNTIME, "token %d is outside the model's vocabulary (%d)", ids[i], c->vocab_size);
            sampler_accept(&s, ids[i]);
        }
        const float *logits = n ? feed(e, 0, ids, n, 0, c->vocab_rows, NULL, NULL) : last;
        n_tokens += n;
        StopText st;
        stop_text_init(&st, stops, o->ids ? 0 : n_stops);
        DecodeStream ds = {.n_fed = 1};
        int stopped = 0;
        for (int i = 0; i < o->steps && !interrupted; i++) {
            if (o->logits && fwrite(logits, sizeof(float), c->vocab_rows, o->logits) != (size_t)c->vocab_rows)
                die(EXIT_RUNTIME, "writing the logits file failed");
            int next = sampler_sample(&s, logits);
            if (next == eos && !o->ignore_eos) break;
            sampler_accept(&s, next);
            if (o->ids) {
                printf(i ? " %d" : "%d", next);
                fflush(stdout);
            } else {
                size_t tl;
                const char *text = decode_token(tok, &ds, next, &tl);
                if ((stopped = stop_text_put(&st, text, tl, print_text, NULL))) break;
            }
            logits = engine_step(e, &next, 1);
            n_tokens++;
        }
        if (!o->ids && !stopped) {
            char tail[16];
            size_t tn = tokenizer_decode_flush(tok, &ds, tail, sizeof tail);
            if (!stop_text_put(&st, tail, tn, print_text, NULL)) stop_text_flush(&st, print_text, NULL);
        }
        stop_text_free(&st);
        fputc('\n', stdout);
        fflush(stdout);
        if (logits != last) memcpy(last, logits, (size_t)c->vocab_rows * sizeof(float));
        if (o->state_out) state_save(o->state_out, m, e, 0, n_tokens, last);
        str_puts(&pending, t.suffix[ROLE_ASSISTANT]);
    }
    signal(SIGINT, SIG_DFL);
    if (ferror(stdout)) die(EXIT_RUNTIME, "writing the output failed");
    free(line);
    free(ids);
    free(pending.s);
    free(last);
    free(stops);
    sampler_free(&s);
    template_free(&t);
    return EXIT_OK;
}
