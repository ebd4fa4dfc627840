/* state.c: saved states (--state-in, --state-out); see state.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "state.h"
#include "util.h"

/* ----------------------------------------------------------------------------------------------
 * Saved states.
 *
 * FILE FORMAT (little-endian)
 *   off  type      field
 *     0  char[8]   magic "MAMBASTA"
 *     8  u32       version (1)
 *    12  u32       header_bytes (128)
 *    16  u64       model fingerprint: a 64-bit hash of model.bin's hyperparameters (its header
 *                  bytes 16..63) and of all its weight bytes
 *    24  u64       the model file's size in bytes (informational)
 *    32  i32 x 8   d_model, n_layer, d_inner, d_state, d_conv, dt_rank, vocab_rows, dtype
 *    64  u64       state_floats (engine_state_floats: n_layer * d_inner * (d_conv - 1 + d_state))
 *    72  u64       tokens consumed so far
 *    80  u64       logits_floats (= vocab_rows)
 *    88  u64       hash of the payload (both arrays below)
 *    96  zero up to 128
 *   128  f32[state_floats]   the state, as engine_get_state gives it (per layer: conv, then SSM)
 *        f32[vocab_rows]     the logits row of the last token consumed
 * The file is exactly that long. Continuing from it samples the next token from the saved row, so
 * --state-in without -i gives exactly the tokens the uninterrupted run gives. */
#define STATE_MAGIC "MAMBASTA"
#define STATE_VERSION 1
#define STATE_HEADER 128

static inline uint64_t rotl64(uint64_t x, int r) { return x << r | x >> (64 - r); }
#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL

/* xxHash64's rounds over 32-byte blocks (not its exact output): fast enough to hash every weight. */
static uint64_t hash64(const void *data, size_t n, uint64_t seed) {
    const unsigned char *p = data;
    uint64_t v[4] = {seed + P1 + P2, seed + P2, seed, seed - P1};
    size_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++) {
            uint64_t w;
            memcpy(&w, p + i + 8 * k, 8);
            v[k] = rotl64(v[k] + w * P2, 31) * P1;
        }
    uint64_t h = rotl64(v[0], 1) + rotl64(v[1], 7) + rotl64(v[2], 12) + rotl64(v[3], 18) + n;
    for (; i < n; i++) h = rotl64(h ^ (p[i] * P1), 11) * P2;
    h ^= h >> 33; h *= P2; h ^= h >> 29; h *= P1; h ^= h >> 32;
    return h;
}

static uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static uint64_t model_fingerprint(const Model *m) {
    const unsigned char *f = m->map;
    uint64_t w_off = rd64(f + 80), w_bytes = rd64(f + 88);
    return hash64(f + w_off, w_bytes, hash64(f + 16, 48, 0));
}

static void state_header(unsigned char *h, const Model *m, uint64_t state_floats, uint64_t n_tokens, uint64_t payload_hash) {
    const Config *c = &m->config;
    memset(h, 0, STATE_HEADER);
    memcpy(h, STATE_MAGIC, 8);
    uint32_t v32[2] = {STATE_VERSION, STATE_HEADER};
    memcpy(h + 8, v32, 8);
    uint64_t fp = model_fingerprint(m), fb = m->map_bytes;
    memcpy(h + 16, &fp, 8);
    memcpy(h + 24, &fb, 8);
    int32_t dims[8] = {c->d_model, c->n_layer, c->d_inner, c->d_state, c->d_conv, c->dt_rank, c->vocab_rows, c->dtype};
    memcpy(h + 32, dims, sizeof dims);
    uint64_t tail[4] = {state_floats, n_tokens, (uint64_t)c->vocab_rows, payload_hash};
    memcpy(h + 64, tail, sizeof tail);
}

void state_save(const char *path, const Model *m, Engine *e, int seq, long n_tokens, const float *logits) {
    size_t S = engine_state_floats(e), V = m->config.vocab_rows;
    float *buf = malloc((S + V) * sizeof(float));
    if (!buf) die(EXIT_RUNTIME, "out of memory");
    engine_get_state(e, seq, buf);
    memcpy(buf + S, logits, V * sizeof(float));
    unsigned char h[STATE_HEADER];
    state_header(h, m, S, (uint64_t)n_tokens, hash64(buf, (S + V) * sizeof(float), 0));
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(h, 1, sizeof h, f) == sizeof h && fwrite(buf, sizeof(float), S + V, f) == S + V;
    int err = errno;
    if (f && fclose(f) != 0 && ok) ok = 0, err = errno;
    free(buf); /* before the error exit too: LeakSanitizer (make test-san) checks those exits */
    if (!ok) die(EXIT_RUNTIME, "%s state file %s: %s", f ? "writing" : "cannot write", path, strerror(err));
}

float *state_load(const char *path, const Model *m, Engine *e, int seq, long *n_tokens) {
    const Config *c = &m->config;
    FILE *f = fopen(path, "rb");
    if (!f) die(EXIT_RUNTIME, "cannot open state file %s: %s", path, strerror(errno));
    unsigned char h[STATE_HEADER];
    size_t got = fread(h, 1, sizeof h, f);
    if (got < 8 || memcmp(h, STATE_MAGIC, 8)) die(EXIT_RUNTIME, "%s is not a state file (no MAMBASTA header)", path);
    if (got < sizeof h) die(EXIT_RUNTIME, "state file %s is truncated (%zu bytes)", path, got);
    uint32_t version, hbytes;
    memcpy(&version, h + 8, 4);
    memcpy(&hbytes, h + 12, 4);
    if (version != STATE_VERSION || hbytes != STATE_HEADER)
        die(EXIT_RUNTIME, "state file %s has version %u; this program reads version %d", path, version, STATE_VERSION);
    int32_t dims[8];
    memcpy(dims, h + 32, sizeof dims);
    int32_t ours[8] = {c->d_model, c->n_layer, c->d_inner, c->d_state, c->d_conv, c->dt_rank, c->vocab_rows, c->dtype};
    if (memcmp(dims, ours, sizeof dims))
        die(EXIT_RUNTIME, "state file %s is for another model (d_model %d, n_layer %d, d_inner %d, d_state %d, %s; this one: d_model %d, n_layer %d, d_inner %d, d_state %d, %s)",
            path, dims[0], dims[1], dims[2], dims[3], dims[7] >= 0 && dims[7] <= 2 ? dtype_name(dims[7]) : "?",
            ours[0], ours[1], ours[2], ours[3], dtype_name(ours[7]));
    uint64_t S = rd64(h + 64), V = rd64(h + 80);
    if (S != engine_state_floats(e) || V != (uint64_t)c->vocab_rows)
        die(EXIT_RUNTIME, "state file %s is corrupt (%llu state floats and %llu logits; this model has %zu and %d)",
            path, (unsigned long long)S, (unsigned long long)V, engine_state_floats(e), c->vocab_rows);
    if (rd64(h + 16) != model_fingerprint(m))
        die(EXIT_RUNTIME, "state file %s was saved with another model (same shapes, different weights)", path);
    float *buf = malloc((S + V + 1) * sizeof(float));
    if (!buf) die(EXIT_RUNTIME, "out of memory");
    got = fread(buf, sizeof(float), S + V + 1, f);
    int read_error = ferror(f) ? errno : 0, ok_hash = got == S + V && hash64(buf, (S + V) * sizeof(float), 0) == rd64(h + 88);
    fclose(f);
    free(ok_hash ? NULL : buf); /* freed before a die(), so that the leak checker of make test-san stays quiet */
    if (read_error) die(EXIT_RUNTIME, "reading state file %s failed: %s", path, strerror(read_error));
    if (got != S + V)
        die(EXIT_RUNTIME, "state file %s is %s (%zu floats after the header, expected %llu)", path,
            got < S + V ? "truncated" : "corrupt: longer than its header says", got, (unsigned long long)(S + V));
    if (!ok_hash) die(EXIT_RUNTIME, "state file %s is corrupt (its checksum does not match)", path);
    engine_set_state(e, seq, buf);
    memmove(buf, buf + S, V * sizeof(float));
    *n_tokens = (long)rd64(h + 72);
    return buf;
}
