/* state.h: saved states (state.c; the file format: state_file.c). */
#ifndef STATE_H
#define STATE_H

#include "engine.h"

/* state_save writes slot seq's state, the number of tokens it has consumed and the logits row of its
 * last token; state_load checks the file against the model (dies with a one-line error, exit 1, on a
 * foreign, truncated or corrupt file), sets slot seq, and returns the saved logits row (malloc'd; the
 * caller frees it) and the token count in *n_tokens. */
void state_save(const char *path, const Model *m, Engine *e, int seq, long n_tokens, const float *logits);
float *state_load(const char *path, const Model *m, Engine *e, int seq, long *n_tokens);

#endif
