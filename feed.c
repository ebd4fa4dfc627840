/* feed.c: see feed.h. */
#include <stdio.h>
#include <stdlib.h>

#include "feed.h"

const float *feed(Engine *e, int seq, const int *ids, long n, int stepwise, int vocab_rows, RowFn on_rows, void *ctx) {
    const float *logits = NULL;
    if (stepwise) {
        for (long i = 0; i < n; i++) {
            logits = engine_step(e, ids + i, 1);
            if (on_rows) on_rows(ctx, i, logits);
        }
        return logits;
    }
    const int chunk = engine_prefill_chunk(e);
    for (long i = 0; i < n; i += chunk) {
        int len = n - i < chunk ? (int)(n - i) : chunk;
        logits = engine_prefill(e, seq, ids + i, len, on_rows != NULL);
        if (on_rows) {
            for (int j = 0; j < len; j++) on_rows(ctx, i + j, logits + (size_t)j * vocab_rows);
            logits += (size_t)(len - 1) * vocab_rows;
        }
    }
    return logits;
}

const char *decode_token(const Tokenizer *tok, DecodeStream *ds, int id, size_t *len) {
    static _Thread_local char *buf; /* one a thread: batch mode's engines each run on their own */
    static _Thread_local size_t cap;
    size_t plen;
    tokenizer_piece(tok, id, &plen);
    if (TOKENIZER_DECODE_CAP(plen) > cap) { /* grows a few times at most, then is reused */
        cap = TOKENIZER_DECODE_CAP(plen) < 256 ? 256 : TOKENIZER_DECODE_CAP(plen);
        if (!(buf = realloc(buf, cap))) die(EXIT_RUNTIME, "out of memory");
    }
    *len = tokenizer_decode_stream(tok, ds, id, buf, cap);
    return buf;
}
