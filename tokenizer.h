/* tokenizer.h: text <-> token ids, from the tokenizer section of model.bin (format in model.h).
 * Byte-level BPE (GPT-NeoX) is implemented in tokenizer.c and matches Hugging Face `tokenizers`
 * id for id; SentencePiece models go through the SentencePiece library (sentencepiece_shim.cc). */
#ifndef TOKENIZER_H
#define TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct Tokenizer Tokenizer;

/* Parses a tokenizer section (data is not copied; it must outlive the tokenizer).
 * Returns NULL with a one-line reason in err on a corrupt section or a missing library. */
Tokenizer *tokenizer_load(const uint8_t *data, size_t n, char *err, size_t errlen);
void tokenizer_free(Tokenizer *t);

int tokenizer_n_vocab(const Tokenizer *t);
int tokenizer_bos(const Tokenizer *t); /* -1 when none */
int tokenizer_eos(const Tokenizer *t); /* -1 when none */

/* Encodes len bytes of text. *ids is a growable array of *cap ints (both may start as 0/NULL;
 * it is realloc'd as needed). Returns the number of ids, or -1 with a reason in err when text is
 * not valid UTF-8 (the offset of the first bad byte is named). Adds no BOS. */
long tokenizer_encode(Tokenizer *t, const char *text, size_t len, int **ids, size_t *cap,
                      char *err, size_t errlen);

/* The raw bytes of token id (not NUL-terminated); *len = 0 for an id out of range. */
const char *tokenizer_piece(const Tokenizer *t, int id, size_t *len);

/* Streaming decode: feed ids one at a time, get back only whole UTF-8 characters, so a character
 * split across tokens is printed once, complete. Invalid sequences come out as U+FFFD. */
typedef struct {
    unsigned char pending[4];
    int n_pending;
    int n_fed; /* tokens fed so far (SentencePiece drops the leading space of the first) */
} DecodeStream;

/* Writes the completed bytes into out (at least tokenizer_piece length + 8 bytes, or 64 when
 * smaller) and returns how many. decode_stream_flush emits what is left (as U+FFFD). */
size_t tokenizer_decode_stream(const Tokenizer *t, DecodeStream *s, int id, char *out, size_t outcap);
size_t tokenizer_decode_flush(const Tokenizer *t, DecodeStream *s, char *out, size_t outcap);

#endif
