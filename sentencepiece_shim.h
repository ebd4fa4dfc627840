/* sentencepiece_shim.h: a small C interface over the SentencePiece C++ library, for tokenizer.c.
 * Built (sentencepiece_shim.cc) only when pkg-config finds sentencepiece; tokenizer.c uses it
 * when compiled with -DHAVE_SENTENCEPIECE. */
#ifndef SENTENCEPIECE_SHIM_H
#define SENTENCEPIECE_SHIM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct SpmModel SpmModel;

/* piece types (spm_piece_info) */
enum {
    SPM_PIECE_NORMAL = 1,
    SPM_PIECE_UNKNOWN = 2,
    SPM_PIECE_CONTROL = 3,
    SPM_PIECE_USER_DEFINED = 4,
    SPM_PIECE_UNUSED = 5,
    SPM_PIECE_BYTE = 6
};

/* Loads a serialized ModelProto from memory (copied). NULL with a one-line reason in err. */
SpmModel *spm_load(const void *data, size_t n, char *err, size_t errlen);
void spm_free(SpmModel *m);

int spm_n_vocab(const SpmModel *m);
int spm_bos_id(const SpmModel *m); /* -1 when none */
int spm_eos_id(const SpmModel *m);
int spm_unk_id(const SpmModel *m);
int spm_pad_id(const SpmModel *m);
/* How decoding treats the space (U+2581) that starts the text, as the library's Decode does:
 * 0 kept; 1 the first piece's leading U+2581 is dropped (add_dummy_prefix); 2 leading U+2581 are
 * dropped for as long as nothing has been output (remove_extra_whitespaces). */
int spm_strips_leading_space(const SpmModel *m);
/* The text of the unknown piece (" \xE2\x81\x87 " unless the model sets another). */
const char *spm_unk_surface(const SpmModel *m, size_t *len);

/* The piece string of id (as stored, with U+2581 for spaces, "<0x41>" for byte pieces; valid for
 * the model's lifetime) and its type (SPM_PIECE_*), or 0 for an id out of range. */
int spm_piece_info(const SpmModel *m, int id, const char **piece, size_t *len);

/* Encodes text into *ids (growable array of *cap ints, realloc'd as needed). Returns the number of
 * ids or -1 with a reason in err. */
long spm_encode(SpmModel *m, const char *text, size_t len, int **ids, size_t *cap, char *err,
                size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
