/* feed.h: what generation (cli.c), batch mode (batch.c) and chat share on top of an engine and a
 * tokenizer: feeding tokens through the engine, and the text of each token as it comes. cli.c and
 * batch.c depend on this, on sampler.h and on util.h, and never on each other. */
#ifndef FEED_H
#define FEED_H

#include "engine.h"
#include "tokenizer.h"
#include "util.h"

/* Feeds n tokens of slot seq through the engine (prefill in chunks, or one decode step at a time
 * on slot 0 with stepwise) and returns the last row of logits (NULL when n is 0). With on_rows,
 * every row of logits is handed to it (the engine then computes them all). */
typedef void (*RowFn)(void *ctx, long pos, const float *row);
const float *feed(Engine *e, int seq, const int *ids, long n, int stepwise, int vocab_rows, RowFn on_rows, void *ctx);

/* The bytes that token id completes in stream ds (whole UTF-8 characters), in a buffer of the
 * calling thread that is reused: valid until its next call. */
const char *decode_token(const Tokenizer *tok, DecodeStream *ds, int id, size_t *len);

#endif
