/* fuzz_state.c: libFuzzer harness for state_parse (state_file.c), the check of a saved state's bytes
 * against the model that would continue it. The model is a fixed small one (KEY); the input is the
 * file. A file that passes has all its floats read, so that a view reaching past the input is caught;
 * one that fails must say why in one line.
 *
 * Built with -DSTATE_SEEDS instead of -fsanitize=fuzzer, the same file is the program that writes the
 * seed corpus (tests/fuzz/corpus_state: `make fuzz-seeds`): valid files for KEY, a file of format
 * version 1, and one whose token count is refused after its checksum passed. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "state_file.h"

/* d_model 8, 1 layer, d_inner 16, d_state 4, d_conv 4, dt_rank 1, 16 logits, fp32: 16 * (3 + 4) state floats. */
static const StateKey KEY = {{8, 1, 16, 4, 4, 1, 16, 0}, 0x0123456789abcdefULL, 112};

#ifndef STATE_SEEDS
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t n) {
    StateView v;
    char err[512] = "";
    if (state_parse(data, n, "fuzz.state", &KEY, &v, err, sizeof err) == 0) {
        volatile float sum = 0;
        for (uint64_t i = 0; i < KEY.state_floats; i++) sum += v.state[i];
        for (int i = 0; i < KEY.dims[6]; i++) sum += v.logits[i];
    } else if (!err[0] || strchr(err, '\n')) {
        abort();
    }
    return 0;
}
#else
static void seed(const char *dir, const char *name, uint64_t n_tokens, float scale, uint32_t version) {
    size_t bytes = state_file_bytes(&KEY);
    unsigned char *file = malloc(bytes);
    if (!file) abort();
    float *f = (float *)(file + STATE_HEADER_BYTES);
    for (size_t i = 0; i < (bytes - STATE_HEADER_BYTES) / sizeof(float); i++) f[i] = scale * (float)(i % 7) - 1.0f;
    state_write_header(file, &KEY, 4096, n_tokens);
    memcpy(file + 8, &version, 4);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *out = fopen(path, "wb");
    if (!out || fwrite(file, 1, bytes, out) != bytes || fclose(out)) { perror(path); exit(1); }
    free(file);
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s DIR\n", argv[0]); return 2; }
    seed(argv[1], "valid", 0, 0.0f, 2);
    seed(argv[1], "valid_tokens", 123, 0.5f, 2);
    seed(argv[1], "version_1", 9, 0.25f, 1);
    seed(argv[1], "too_many_tokens", UINT64_MAX, 0.25f, 2); /* a valid checksum: the fuzzer cannot forge one */
    return 0;
}
#endif
