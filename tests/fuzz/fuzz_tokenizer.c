/* fuzz_tokenizer.c: libFuzzer harness for the tokenizer (tokenizer.c): the section reader, BPE
 * encode and the streaming decode. Input: a 4-byte little-endian length L, then L bytes of
 * tokenizer section (fewer if the input is shorter), then the text to encode. Every id the text
 * encodes to, and every id a pair of text bytes names, goes through the streaming decoder. Built
 * without SentencePiece: an SPM section is refused, which is the library's business to parse. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    if (n < 4) return 0;
    size_t len = data[0] | (size_t)data[1] << 8 | (size_t)data[2] << 16 | (size_t)data[3] << 24;
    data += 4, n -= 4;
    if (len > n) len = n;
    /* A copy of exactly the section, so that reading past it is caught. */
    uint8_t *sec = malloc(len ? len : 1);
    if (!sec) return 0;
    memcpy(sec, data, len);
    char err[512];
    Tokenizer *t = tokenizer_load(sec, len, err, sizeof err);
    if (t) {
        const char *text = (const char *)data + len;
        size_t tlen = n - len;
        int *ids = NULL;
        size_t cap = 0;
        long k = tokenizer_encode(t, text, tlen, &ids, &cap, err, sizeof err);
        DecodeStream ds = {0};
        char out[4096];
        for (long i = 0; i < k; i++) {
            size_t plen;
            tokenizer_piece(t, ids[i], &plen);
            if (TOKENIZER_DECODE_CAP(plen) <= sizeof out) tokenizer_decode_stream(t, &ds, ids[i], out, sizeof out);
        }
        for (size_t i = 0; i + 1 < tlen; i += 2) { /* ids from the raw bytes, in range or not */
            int id = (int16_t)((unsigned char)text[i] | (unsigned char)text[i + 1] << 8);
            size_t plen;
            tokenizer_piece(t, id, &plen);
            if (TOKENIZER_DECODE_CAP(plen) <= sizeof out) tokenizer_decode_stream(t, &ds, id, out, sizeof out);
        }
        tokenizer_decode_flush(t, &ds, out, sizeof out);
        free(ids);
        tokenizer_free(t);
    }
    free(sec);
    return 0;
}
