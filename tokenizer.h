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
 * not valid UTF-8 ("invalid UTF-8 at byte offset N (byte 0xXX)": the offset of the first bad byte;
 * overlongs, surrogates, code points above U+10FFFF and truncated sequences are all invalid).
 * Empty text gives 0 ids. Adds no BOS. Not thread-safe (a Tokenizer holds a cache and scratch). */
long tokenizer_encode(Tokenizer *t, const char *text, size_t len, int **ids, size_t *cap,
                      char *err, size_t errlen);

/* The raw bytes of token id (not NUL-terminated); *len = 0 for an id out of range. */
const char *tokenizer_piece(const Tokenizer *t, int id, size_t *len);

/* Streaming decode: feed ids one at a time, get back only whole UTF-8 characters, so a character
 * split across tokens is printed once, complete. Invalid sequences come out as U+FFFD. */
typedef struct {
    unsigned char pending[4];
    int n_pending;
    int n_fed; /* 0 at the start of the text (SentencePiece drops the leading space there) */
} DecodeStream;

/* Writes the completed bytes into out and returns how many. out must hold at least
 * TOKENIZER_DECODE_CAP(tokenizer_piece length) bytes: invalid bytes turn into 3-byte U+FFFD, so the
 * output can be longer than the piece (a shorter buffer loses output, never overflows).
 * tokenizer_decode_flush emits what is left (as U+FFFD; at most 9 bytes). */
#define TOKENIZER_DECODE_CAP(piece_len) (3 * (size_t)(piece_len) + 12)
size_t tokenizer_decode_stream(const Tokenizer *t, DecodeStream *s, int id, char *out, size_t outcap);
size_t tokenizer_decode_flush(const Tokenizer *t, DecodeStream *s, char *out, size_t outcap);

#endif
