/* state.c: saved states (--state-in, --state-out); see state.h, and state_file.c for the format. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "state.h"
#include "state_file.h"
#include "util.h"

void state_save(const char *path, const Model *m, Engine *e, int seq, long n_tokens, const float *logits) {
    StateKey k = state_key(m, engine_state_floats(e));
    size_t bytes = state_file_bytes(&k);
    unsigned char *file = malloc(bytes);
    if (!file) die(EXIT_RUNTIME, "out of memory");
    float *state = (float *)(file + STATE_HEADER_BYTES);
    engine_get_state(e, seq, state);
    memcpy(state + k.state_floats, logits, (size_t)m->config.vocab_rows * sizeof(float));
    state_write_header(file, &k, m->map_bytes, (uint64_t)n_tokens);
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(file, 1, bytes, f) == bytes;
    int err = errno;
    if (f && fclose(f) != 0 && ok) ok = 0, err = errno;
    free(file); /* before the error exit too: LeakSanitizer (make test-san) checks those exits */
    if (!ok) die(EXIT_RUNTIME, "%s state file %s: %s", f ? "writing" : "cannot write", path, strerror(err));
}

float *state_load(const char *path, const Model *m, Engine *e, int seq, long *n_tokens) {
    StateKey k = state_key(m, engine_state_floats(e));
    FILE *f = fopen(path, "rb");
    if (!f) die(EXIT_RUNTIME, "cannot open state file %s: %s", path, strerror(errno));
    /* One byte more than a good file has, so that state_parse sees a longer one as such, without
     * reading all of a large file that is not ours. */
    size_t cap = state_file_bytes(&k) + 1;
    unsigned char *file = malloc(cap);
    if (!file) die(EXIT_RUNTIME, "out of memory");
    size_t n = fread(file, 1, cap, f);
    int read_error = ferror(f) ? errno : 0;
    fclose(f);
    StateView v;
    char err[512];
    int ok = !read_error && state_parse(file, n, path, &k, &v, err, sizeof err) == 0;
    float *logits = ok ? malloc((size_t)m->config.vocab_rows * sizeof(float)) : NULL;
    if (logits) {
        engine_set_state(e, seq, v.state);
        memcpy(logits, v.logits, (size_t)m->config.vocab_rows * sizeof(float));
        *n_tokens = (long)v.n_tokens;
    }
    free(file); /* before a die(), so that the leak checker of make test-san stays quiet */
    if (read_error) die(EXIT_RUNTIME, "reading state file %s failed: %s", path, strerror(read_error));
    if (!ok) die(EXIT_RUNTIME, "%s", err);
    if (!logits) die(EXIT_RUNTIME, "out of memory");
    return logits;
}
