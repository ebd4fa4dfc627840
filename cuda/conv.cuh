/* cuda/conv.cuh: the causal depthwise conv: one step (decode, and the GEMV epilogue that fuses it),
 * a chunk (prefill), and the conv state advanced over a chunk. */
#ifndef CONV_CUH
#define CONV_CUH

#include "common.cuh"

enum {
    CONV_THREADS = 128,
    CONV_RUN = 16, /* conv_chunk_kernel: tokens a thread computes */
};

/* The conv step of one channel of one sequence (decode): window = [conv state, x];
 * returns silu(window . w + b) and shifts x into the state. The same order of sums as run.c. */
__device__ __forceinline__ float conv_step1(float *st, const float *w, float b, int K, float x) {
    float acc = 0.0f;
    for (int k = 0; k < K - 1; k++) acc += st[k] * w[k];
    acc += x * w[K - 1];
    for (int k = 0; k + 1 < K - 1; k++) st[k] = st[k + 1];
    if (K > 1) st[K - 2] = x;
    return silu(acc + b);
}

/* What the in_proj GEMV does with the conv's rows of its output in decode (Mamba-1: x, rows
 * 0..E-1; Mamba-2: x, B and C, rows r0..r0+E-1 with r0 = d_inner and E = conv_channels): the conv
 * step of those channels, xc = silu(conv(conv state, x)), so that the conv costs no kernel of its own. */
struct ConvEpi {
    float *state;       /* the conv state of slot 0 (NULL: no conv); slot s at + s * slot_stride */
    size_t slot_stride;
    const float *w, *b; /* conv_w [E][K], conv_b [E] */
    int E, K;           /* E: the conv's channels */
    float *xc;          /* [NB][E] */
    int r0;             /* the GEMV row of channel 0 */
};

/* Thread per (channel, sequence), for batches whose in_proj is a GEMM (no GEMV to carry the conv):
 * xc = silu(conv(conv state, x)) into xc (fp32, [B][E]) and xcT (the weights' dtype, for the x_proj
 * GEMM; or NULL). The conv's input of sequence s, channel c is in[s * ld + c]; E: the conv's channels. */
template <typename T>
__global__ void __launch_bounds__(CONV_THREADS)
conv_step_kernel(const float *in, int ld, float *conv, size_t slot_stride, const float *conv_w, const float *conv_b,
                 int E, int K, float *xc, T *xcT) {
    launch_next();
    wait_prior();
    const int s = blockIdx.y, c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= E) return;
    float v = conv_step1(conv + s * slot_stride + (size_t)c * (K - 1), conv_w + (size_t)c * K, conv_b[c], K,
                         in[(size_t)s * ld + c]);
    xc[(size_t)s * E + c] = v;
    if (xcT) xcT[(size_t)s * E + c] = from_f<T>(v);
}

/* Thread per (channel, run of CONV_RUN tokens) of each prompt (grid.y: the runs of the longest prompt):
 * the causal conv over the prompt, the inputs before it from its slot's conv state (which a later
 * kernel advances, once every token here has read it: Mamba-1's scan kernel, Mamba-2's
 * conv_advance_kernel). A thread first loads the run's inputs and the K-1 before it (all at once,
 * into its column of shared memory), then computes the run: each input is read once, not K times.
 * (A thread per (channel, token), each loading its K inputs, ran at 331 GB/s: 32 us a 512-token
 * chunk of a 2.8b layer under ncu, H200, 2026-12-02.) The input of row t, channel c is in[t * ld + c];
 * E: the conv's channels; xc [rows][E]; conv0: slot 0's conv state of the layer. Shared memory:
 * conv_chunk_smem(K) bytes. The same order of sums as run.c. */
template <typename T>
__global__ void __launch_bounds__(CONV_THREADS)
conv_chunk_kernel(const int4 *prompts, const float *in, int ld, const float *conv0, size_t slot_stride,
                  const float *conv_w, const float *conv_b, int E, int K, float *xc, T *xcT) {
    extern __shared__ float win[]; /* [CONV_RUN + K - 1][CONV_THREADS]: the inputs, oldest first */
    launch_next();
    wait_prior();
    const int4 pr = prompt_of(prompts);
    const int c = blockIdx.x * blockDim.x + threadIdx.x, t0 = blockIdx.y * CONV_RUN;
    if (c >= E || t0 >= pr.z) return;
    const int nt = min((int)CONV_RUN, pr.z - t0); /* tokens of this run */
    in += (size_t)pr.y * ld + c;
    const float *conv = conv0 + pr.x * slot_stride + (size_t)c * (K - 1);
    float *col = win + threadIdx.x;
#pragma unroll 4 /* the loads of several inputs in flight at once */
    for (int j = 0; j < nt + K - 1; j++) {
        const int t = t0 - (K - 1) + j; /* input time; < 0: from the state */
        col[j * CONV_THREADS] = t >= 0 ? in[(size_t)t * ld] : conv[t + K - 1];
    }
    float acc[CONV_RUN];
#pragma unroll
    for (int i = 0; i < CONV_RUN; i++) acc[i] = 0.0f;
    for (int k = 0; k < K; k++) {
        const float wk = conv_w[(size_t)c * K + k];
#pragma unroll
        for (int i = 0; i < CONV_RUN; i++)
            if (i < nt) acc[i] += col[(i + k) * CONV_THREADS] * wk;
    }
    const float b = conv_b[c];
    xc += (size_t)(pr.y + t0) * E + c;
    if (xcT) xcT += (size_t)(pr.y + t0) * E + c;
#pragma unroll
    for (int i = 0; i < CONV_RUN; i++)
        if (i < nt) {
            const float v = silu(acc[i] + b);
            xc[(size_t)i * E] = v;
            if (xcT) xcT[(size_t)i * E] = from_f<T>(v);
        }
}
/* conv_chunk_kernel's shared memory: 9.5 KB for d_conv 4, 40 KB for model.c's largest (64), under the
 * 48 KB a launch may take without opting in. */
static inline size_t conv_chunk_smem(int K) { return (size_t)(CONV_RUN + K - 1) * CONV_THREADS * sizeof(float); }

/* The conv state of one channel (st, d_conv-1 floats) advanced over a chunk of n tokens whose inputs
 * are in[t * ld]: new[j] = input at time n-(K-1)+j, from the chunk, or (short chunks) from old[j+n],
 * which lies ahead of j, so in place and in order is safe. */
__device__ __forceinline__ void conv_advance(float *st, const float *in, int ld, int n, int K) {
    for (int j = 0; j < K - 1; j++) {
        int src = n - (K - 1) + j;
        st[j] = src >= 0 ? in[(size_t)src * ld] : st[j + n];
    }
}

/* Prefill: the conv state of each of the E conv channels of each prompt's slot advanced over the
 * prompt (after conv_chunk_kernel has read it); the input of row t, channel c is in[t * ld + c]. */
__global__ void conv_advance_kernel(const int4 *prompts, const float *in, int ld, float *conv0, size_t slot_stride,
                                    int E, int K) {
    launch_next();
    wait_prior();
    const int4 pr = prompt_of(prompts);
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < E) conv_advance(conv0 + pr.x * slot_stride + (size_t)c * (K - 1), in + (size_t)pr.y * ld + c, ld, pr.z, K);
}

#endif
