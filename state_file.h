/* state_file.h: the saved-state file format (state_file.c; the layout is described there): what a
 * file must match, the check of a file's bytes against it, and the header of a new file. No I/O and
 * no engine: state.c reads and writes the files, tests/fuzz/fuzz_state.c fuzzes state_parse. */
#ifndef STATE_FILE_H
#define STATE_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "model.h"

#define STATE_HEADER_BYTES 128

/* What a state file must match to be continued by this model and engine. */
typedef struct {
    int32_t dims[8];       /* d_model, n_layer, d_inner, d_state, d_conv, dt_rank, vocab_rows, dtype */
    uint64_t fingerprint;  /* state_fingerprint of the model file */
    uint64_t state_floats; /* engine_state_floats */
} StateKey;

/* A checked file, pointing into its bytes. */
typedef struct {
    const float *state;  /* state_floats floats, as engine_set_state takes them */
    const float *logits; /* vocab_rows floats: the logits row of the last token consumed */
    uint64_t n_tokens;   /* tokens consumed */
} StateView;

/* XXH64 of the model file's hyperparameters and of all its weight bytes. */
uint64_t state_fingerprint(const Model *m);
StateKey state_key(const Model *m, size_t state_floats);
/* The length of a file for key k: the header, the state, the logits row. */
size_t state_file_bytes(const StateKey *k);
/* Checks the n bytes of a state file (at least 4-byte aligned, as malloc gives) against k: magic,
 * version, shapes, fingerprint, length, checksum. 0 and *v set, or -1 and a one-line message in err
 * that names the file as name. */
int state_parse(const unsigned char *file, size_t n, const char *name, const StateKey *k, StateView *v, char *err,
                size_t errlen);
/* Writes the header of a file of state_file_bytes(k) bytes whose state and logits row already follow it. */
void state_write_header(unsigned char *file, const StateKey *k, uint64_t model_bytes, uint64_t n_tokens);

#endif
