/* benchmark.c: --bench, the sweep of prompt lengths, decode lengths and batch sizes; see batch.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "batch.h"
#include "feed.h"
#include "jsonl.h"
#include "sampler.h"
#include "util.h"

/* ----------------------------------------------------------------------------------------------
 * --bench: for each prompt length, one prompt of deterministic ids is prefilled (timed: prefill
 * tok/s, and the time to the first token: prefill + picking it); then for each batch size and
 * generation length, that state is copied into the batch's slots and they decode together
 * (greedy, so the numbers are the engine's: sampling adds its own per-token cost). */
static long peak_rss_bytes(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss * 1024L; /* Linux: kilobytes */
}

int bench_run(const BatchOpts *o, const Model *m, const char *model_path, Engine *e, int quiet) {
    const Config *c = &m->config;
    int V = c->vocab_rows, maxB = batch_max_seqs(o);
    size_t S = engine_state_floats(e);
    float *saved = malloc(S * sizeof(float));
    int *tokens = malloc(maxB * sizeof(int)), *warm = calloc(MAX_BATCH + 1, sizeof(int));
    if (!saved || !tokens || !warm) die(EXIT_RUNTIME, "out of memory");
    printf("{\"engine\":");
    Str s = {0};
    str_json(&s, engine_name(e), strlen(engine_name(e)));
    str_puts(&s, ",\"model\":{\"path\":");
    str_json(&s, model_path, strlen(model_path));
    fputs(s.s, stdout);
    free(s.s);
    printf(",\"arch\":\"%s\",\"d_model\":%d,\"n_layer\":%d,\"d_inner\":%d,\"d_state\":%d,\"d_conv\":%d,\"vocab_rows\":%d,\"dtype\":\"%s\",\"file_bytes\":%zu,\"weight_bytes\":%zu}",
           arch_name(c->arch), c->d_model, c->n_layer, c->d_inner, c->d_state, c->d_conv, c->vocab_rows, dtype_name(c->dtype), m->map_bytes, model_weight_bytes(c));
    printf(",\"state_bytes_per_seq\":%zu,\"decode\":\"greedy\",\"results\":[", S * sizeof(float));
    fflush(stdout);
    { /* untimed: the first pass over the weights pages them in */
        int w[8] = {5, 6, 7, 8, 9, 10, 11, 12};
        engine_reset(e, 0);
        feed(e, 0, w, 8, 0, V, NULL, NULL);
        engine_step(e, w, 1);
        warm[1] = 1;
    }
    int first = 1;
    for (int pi = 0; pi < o->n_bench_prompt; pi++) {
        int P = o->bench_prompt[pi];
        int *ids = malloc((size_t)P * sizeof(int));
        if (!ids) die(EXIT_RUNTIME, "out of memory");
        for (int i = 0; i < P; i++) ids[i] = (int)(((uint64_t)i * 7919 + 13) % (uint64_t)(c->vocab_size > 5 ? c->vocab_size - 5 : 1)) + (c->vocab_size > 5 ? 5 : 0);
        engine_reset(e, 0);
        double t0 = now_s();
        const float *l = feed(e, 0, ids, P, 0, V, NULL, NULL);
        double t1 = now_s();
        int tok0 = logits_argmax(l, c->vocab_size);
        double t2 = now_s();
        engine_get_state(e, 0, saved);
        free(ids);
        for (int bi = 0; bi < o->n_bench_batch; bi++) {
            int B = o->bench_batch[bi];
            for (int gi = 0; gi < o->n_bench_gen; gi++) {
                int G = o->bench_gen[gi];
                for (int k = 0; k < B; k++) { engine_set_state(e, k, saved); tokens[k] = tok0; }
                if (!warm[B]) { /* the first step of a batch size sets things up (CUDA graphs): untimed */
                    engine_step_argmax(e, tokens, B, tokens);
                    for (int k = 0; k < B; k++) { engine_set_state(e, k, saved); tokens[k] = tok0; }
                    warm[B] = 1;
                }
                double d0 = now_s();
                for (int step = 0; step < G; step++) engine_step_argmax(e, tokens, B, tokens);
                double dt = now_s() - d0;
                printf("%s\n{\"prompt_tokens\":%d,\"gen_tokens\":%d,\"batch\":%d,\"prefill_ms\":%.3f,\"prefill_tok_s\":%.2f,"
                       "\"ttft_ms\":%.3f,\"decode_ms\":%.3f,\"ms_per_step\":%.4f,\"decode_tok_s\":%.2f,\"decode_tok_s_per_seq\":%.2f,"
                       "\"state_bytes\":%zu,\"state_bytes_total\":%zu,\"peak_rss_bytes\":%ld}",
                       first ? "" : ",", P, G, B, (t1 - t0) * 1e3, P / (t1 - t0), (t2 - t0) * 1e3, dt * 1e3, dt * 1e3 / G,
                       (double)B * G / dt, G / dt, S * sizeof(float), (size_t)B * S * sizeof(float), peak_rss_bytes());
                fflush(stdout);
                first = 0;
                if (!quiet)
                    fprintf(stderr, "[%s] prompt %d: prefill %.1f tok/s, first token %.1f ms | batch %d x %d steps: decode %.1f tok/s (%.1f per sequence)\n",
                            engine_name(e), P, P / (t1 - t0), (t2 - t0) * 1e3, B, G, B * G / dt, G / dt);
            }
        }
    }
    printf("\n]}\n");
    fflush(stdout);
    if (ferror(stdout)) die(EXIT_RUNTIME, "writing the output failed");
    free(saved);
    free(tokens);
    free(warm);
    return EXIT_OK;
}
