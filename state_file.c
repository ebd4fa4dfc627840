/* state_file.c: the saved-state file format; see state_file.h. */
#include <stdio.h>
#include <string.h>

#include <xxhash.h>

#include "state_file.h"

/* ----------------------------------------------------------------------------------------------
 * FILE FORMAT (little-endian)
 *   off  type      field
 *     0  char[8]   magic "MAMBASTA"
 *     8  u32       version (2; version 1 hashed with a hand-written function: refused)
 *    12  u32       header_bytes (128)
 *    16  u64       model fingerprint: XXH64 of model.bin's weight bytes, seeded with XXH64 of its
 *                  hyperparameters (header bytes 16..63 and the Mamba-2 fields 104..131)
 *    24  u64       the model file's size in bytes (informational)
 *    32  i32 x 8   d_model, n_layer, d_inner, d_state, d_conv, dt_rank, vocab_rows, dtype
 *    64  u64       state_floats (engine_state_floats: n_layer * layer_state_floats)
 *    72  u64       tokens consumed so far
 *    80  u64       logits_floats (= vocab_rows)
 *    88  u64       checksum: XXH64 of the payload (both arrays below), seeded with XXH64 of the
 *                  header's bytes 0..87
 *    96  zero up to 128
 *   128  f32[state_floats]   the state, as engine_get_state gives it (per layer: conv, then SSM)
 *        f32[vocab_rows]     the logits row of the last token consumed
 * The file is exactly that long. A state file is a cache of a run, not an archive: a new format
 * refuses the old one, and the run that made it makes it again.
 *
 * XXH64 rather than XXH3_64bits: libxxhash as distributions build it runs XXH3 with SSE2 only
 * (its AVX2 and AVX-512 code sits behind x86 dispatch entry points that are a build option, not
 * part of every library), and there XXH64 is the faster on the fingerprint's hundreds of MB (a
 * 130m fp32 model: 27 ms against 34 ms; README.md, "Saved states"). */
#define STATE_MAGIC "MAMBASTA"
#define STATE_VERSION 2

static uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static uint64_t checksum(const unsigned char *file, size_t bytes) {
    return XXH64(file + STATE_HEADER_BYTES, bytes - STATE_HEADER_BYTES, XXH64(file, 88, 0));
}

uint64_t state_fingerprint(const Model *m) {
    const unsigned char *f = m->map;
    unsigned char hyper[48 + 28];
    memcpy(hyper, f + 16, 48);
    memcpy(hyper + 48, f + 104, 28);
    return XXH64(f + rd64(f + 80), rd64(f + 88), XXH64(hyper, sizeof hyper, 0));
}

StateKey state_key(const Model *m, size_t state_floats) {
    const Config *c = &m->config;
    return (StateKey){{c->d_model, c->n_layer, c->d_inner, c->d_state, c->d_conv, c->dt_rank, c->vocab_rows, c->dtype},
                      state_fingerprint(m), state_floats};
}

size_t state_file_bytes(const StateKey *k) {
    return STATE_HEADER_BYTES + (k->state_floats + (uint64_t)k->dims[6]) * sizeof(float);
}

void state_write_header(unsigned char *file, const StateKey *k, uint64_t model_bytes, uint64_t n_tokens) {
    memset(file, 0, STATE_HEADER_BYTES);
    memcpy(file, STATE_MAGIC, 8);
    uint32_t v32[2] = {STATE_VERSION, STATE_HEADER_BYTES};
    memcpy(file + 8, v32, sizeof v32);
    uint64_t ids[2] = {k->fingerprint, model_bytes};
    memcpy(file + 16, ids, sizeof ids);
    memcpy(file + 32, k->dims, sizeof k->dims);
    uint64_t tail[3] = {k->state_floats, n_tokens, (uint64_t)k->dims[6]};
    memcpy(file + 64, tail, sizeof tail);
    uint64_t sum = checksum(file, state_file_bytes(k));
    memcpy(file + 88, &sum, 8);
}

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); return -1; } while (0)

int state_parse(const unsigned char *file, size_t n, const char *name, const StateKey *k, StateView *v, char *err,
                size_t errlen) {
    if (n < 8 || memcmp(file, STATE_MAGIC, 8)) FAIL("%s is not a state file (no MAMBASTA header)", name);
    if (n < STATE_HEADER_BYTES) FAIL("state file %s is truncated (%zu bytes)", name, n);
    uint32_t version = rd32(file + 8);
    if (version == 1)
        FAIL("state file %s was saved by an older version of this program (format 1): save the state again", name);
    if (version != STATE_VERSION || rd32(file + 12) != STATE_HEADER_BYTES)
        FAIL("state file %s has version %u; this program reads version %d", name, version, STATE_VERSION);
    int32_t d[8];
    memcpy(d, file + 32, sizeof d);
    const int32_t *ours = k->dims;
    if (memcmp(d, ours, sizeof d))
        FAIL("state file %s is for another model (d_model %d, n_layer %d, d_inner %d, d_state %d, %s; this one: d_model %d, "
             "n_layer %d, d_inner %d, d_state %d, %s)", name, d[0], d[1], d[2], d[3], dtype_name(d[7]), ours[0], ours[1],
             ours[2], ours[3], dtype_name(ours[7]));
    uint64_t S = rd64(file + 64), V = rd64(file + 80);
    if (S != k->state_floats || V != (uint64_t)ours[6])
        FAIL("state file %s is corrupt (%llu state floats and %llu logits; this model has %llu and %d)", name,
             (unsigned long long)S, (unsigned long long)V, (unsigned long long)k->state_floats, ours[6]);
    if (rd64(file + 16) != k->fingerprint)
        FAIL("state file %s was saved with another model (same shapes, different weights)", name);
    size_t want = state_file_bytes(k);
    if (n < want) FAIL("state file %s is truncated (%zu bytes, expected %zu)", name, n, want);
    if (n > want) FAIL("state file %s is corrupt: longer than the %zu bytes its header says", name, want);
    if (checksum(file, want) != rd64(file + 88)) FAIL("state file %s is corrupt (its checksum does not match)", name);
    v->state = (const float *)(file + STATE_HEADER_BYTES);
    v->logits = v->state + S;
    v->n_tokens = rd64(file + 72);
    if (v->n_tokens > INT64_MAX / 2) /* the callers add to it in a long */
        FAIL("state file %s is corrupt (it counts %llu tokens consumed)", name, (unsigned long long)v->n_tokens);
    return 0;
}
