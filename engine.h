/* engine.h: what the shared command line (cli.c) needs from a compute engine.
 * run.c implements it on the CPU, run.cu on an NVIDIA GPU; everything else is shared.
 *
 * An engine holds the recurrent state of max_seqs independent sequences ("slots"): per layer a
 * conv state [conv_channels, d_conv-1] (the last inputs of the conv) and an SSM state
 * [d_inner, d_state] (Mamba-2: [n_heads, head_dim, d_state]), all fp32 (model.h:
 * layer_state_floats). Feeding a sequence's tokens through prefill or step advances its slot's state. */
#ifndef ENGINE_H
#define ENGINE_H

#include "model.h"
#include "sampler.h" /* SampleDraw */

typedef struct Engine Engine;

/* The devices engine_new can run on, numbered 0..n-1: the visible GPUs for run.cu; 0 for run.c,
 * which has none to choose from (it computes on the CPU). -1 with a reason in err when they cannot
 * be counted (no driver). */
int engine_devices(char *err, size_t errlen);

/* Sets up buffers and zeroed states for max_seqs slots on device (0 for the CPU engine), with the
 * one-time set-up of the first calls done too (so the first prompt runs as fast as the later ones).
 * Several engines may share a device. Every call on an engine must come from one thread at a time;
 * engines may be used from different threads at once. Returns NULL with a reason in err. */
Engine *engine_new(const Model *m, int device, int max_seqs, char *err, size_t errlen);
void engine_free(Engine *e);
/* A short description of where it runs, for the summary ("CPU, 2 threads", "CUDA, NVIDIA H100 ..."). */
const char *engine_name(const Engine *e);

/* Most tokens one engine_prefill call takes (and engine_prefill_many's prompts in all): 512 on the
 * CPU, 2048 on the GPU, whose GEMMs and scan run faster on longer chunks. Callers feed longer
 * prompts in pieces of this (feed.h). */
int engine_prefill_chunk(const Engine *e);

/* Zeroes the state of slot seq. */
void engine_reset(Engine *e, int seq);

/* Runs n tokens (1 <= n <= engine_prefill_chunk) of slot seq through the model as one batch,
 * leaving the state that n single steps would leave. Returns host logits: n rows of vocab_rows
 * floats when all_logits, else one row (the last token's). Valid until the next engine call. */
const float *engine_prefill(Engine *e, int seq, const int *tokens, int n, int all_logits);

/* Several prompts at once, each into its own slot, leaving the states and last logits that n
 * engine_prefill calls (all_logits 0) would leave: prompt i is the lens[i] tokens that follow
 * prompt i-1's in tokens, into slot seqs[i]; the slots are distinct, 1 <= n <= max_seqs, and the
 * lens (each >= 1) add up to at most engine_prefill_chunk. Returns host logits: n rows of vocab_rows
 * floats, each prompt's last token's, valid until the next engine call. Batch mode admits short
 * prompts this way: on the GPU their projections run as one batch of rows, not one launch sequence
 * a prompt. */
const float *engine_prefill_many(Engine *e, const int *seqs, const int *tokens, const int *lens, int n);

/* One decode step for slots 0..nseq-1 at once: tokens[i] goes to slot i.
 * Returns host logits, nseq rows of vocab_rows floats, valid until the next engine call. */
const float *engine_step(Engine *e, const int *tokens, int nseq);

/* engine_step for callers that need only each row's most likely token (greedy decoding without a
 * penalty): ids[i] = logits_argmax (sampler.h) of row i over the vocab_size real ids. The GPU finds
 * them on the device and copies nseq ids to the host instead of nseq rows of logits. tokens and ids
 * may be the same array. */
void engine_step_argmax(Engine *e, const int *tokens, int nseq, int *ids);

/* engine_step for callers whose rows are sampled from SampleDraws (sampler_draw): ids[i] =
 * sampler_pick(&draws[i], row i over the vocab_size real ids, after sampler_penalize(&draws[i], row i)).
 * The GPU samples on the device and copies nseq ids to the host instead of nseq rows of logits; the
 * CPU engine runs sampler_penalize and sampler_pick. tokens and ids may be the same array. */
void engine_step_sample(Engine *e, const int *tokens, int nseq, const SampleDraw *draws, int *ids);

/* The state of one slot as a flat fp32 array: for each layer, conv state then SSM state. */
size_t engine_state_floats(const Engine *e);
void engine_get_state(Engine *e, int seq, float *out);
void engine_set_state(Engine *e, int seq, const float *in);
/* Copies the state of slot from into slot to (batch drivers compact their slots with it). */
void engine_copy_state(Engine *e, int to, int from);

#endif
