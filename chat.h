/* chat.h: chat mode (--chat), in chat.c. */
#ifndef CHAT_H
#define CHAT_H

#include <stdint.h>
#include <stdio.h>

#include "engine.h"
#include "sampler.h"
#include "tokenizer.h"

typedef struct {
    const char *system;          /* --system TEXT, or NULL */
    const char *template_text;   /* --chat-template, else the model's, else NULL: the plain fallback */
    const char *state_in, *state_out;
    SamplerParams sp;
    uint64_t seed;
    int steps, ignore_eos, ids;  /* -n: most tokens a reply; --ids: replies printed as ids */
    char **stops;                /* --stop strings, besides the template's end of a reply */
    int n_stops;
    FILE *logits;                /* --logits: every row a reply samples from */
} ChatOpts;

/* The help lines of chat mode. */
void chat_usage(FILE *f);
/* Checks a template (one line "error: ..." and exit 2 when it cannot be used). */
void chat_check_template(const char *text, const char *where);
/* Reads user turns from stdin (one a line) until its end; streams each reply to stdout. */
int chat_run(const ChatOpts *o, const Model *m, Tokenizer *tok, Engine *e);

#endif
