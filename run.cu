/* run.cu: the NVIDIA GPU engine (see engine.h) for Mamba-1, Falcon-Mamba and Mamba-2; the command line
 * is shared, in cli.c.
 *
 * The weights are copied to the GPU once, in the file's dtype (fp32, fp16 or bf16); all arithmetic
 * accumulates in fp32 and the conv and SSM states are fp32, laid out per slot exactly as run.c's
 * (model.h: layer_state_floats; per layer the conv state [conv_channels][d_conv-1], then the SSM state
 * [d_inner][d_state], for Mamba-2 [n_heads][head_dim][d_state]).
 *
 * Mamba-1 decode (engine_step, forward_step), nseq sequences at once, per layer:
 *   rmsnorm     the residual add and the RMSNorm, a block per sequence, every load in flight at once
 *   in_proj     GEMV: a warp per row group (or GEMV_KSPLIT warps, when whole rows give too few
 *               blocks), 16-byte weight loads, each weight read once for up to GEMV_MAX_SEQS
 *               sequences (cuBLAS GEMMs beyond that); the warps holding x rows finish with the conv
 *               step of those channels (ConvEpi)
 *   x_proj      GEMV, XPROJ_KSPLIT warps per row (few rows, long ones)
 *   (Falcon-Mamba: mixer_norm, the weightless RMS norm of dt_in, B and C, a block per sequence)
 *   ssm_step    dt_proj + softplus, the selective state update, D skip, SiLU(z) gate: 4 lanes per
 *               channel, weights and state loaded before waiting for x_proj
 *   out_proj    GEMV
 * Mamba-2 decode (forward_step_mamba2), per layer:
 *   rmsnorm, in_proj GEMV (z, xBC, dt) whose xBC rows finish with the conv step (ConvEpi with a row
 *   offset); ssd_step (dt, exp(dt A), the state update over head_dim x d_state, y, D skip: a block
 *   per (8 rows of head_dim, head, sequence), a warp per row streaming it once); gated_norm (y *
 *   silu(z), one RMS per group, a block per (group, sequence)); out_proj GEMV.
 * The whole step for a given nseq is captured once in a CUDA graph (tokens in, logits out included)
 * and replayed for every token; its kernels use programmatic dependent launch, so each one starts
 * (and loads its first weights) while the previous one finishes. Untied models (Falcon-Mamba, some
 * Mamba-2) read their own lm_head; tied ones the embedding.
 *
 * Prefill (engine_prefill), a chunk of one sequence: cuBLAS tensor-core GEMMs for the projections
 * (fp32 accumulation; fp32 weights stay fp32, no TF32) and a causal conv kernel over the chunk; then
 *   Mamba-1 (forward_prefill; Falcon-Mamba adds mixer_norm after x_proj): a selective scan with a
 *   thread per channel, its states in registers, stepping through time with the chunk staged in
 *   shared memory, cut into segments along time so that a chunk's channels fill the GPU
 *   (scan_kernel, scan_segments);
 *   Mamba-2 (forward_prefill_mamba2): conv_advance for the conv state, then ssd_scan: the same
 *   recurrence as decode, token by token through the chunk (not the chunked SSD matrix form, and
 *   not on tensor cores): a block per (4 rows of head_dim, head), 16 lanes per row each holding
 *   d_state/16 states in registers, the chunk's B, C, x, dt staged in shared memory; then the
 *   gated norm and the out_proj GEMM.
 * GEMM inputs are narrowed to the weights' dtype; for bf16 the inputs of in_proj, out_proj and
 * lm_head also carry their rounding error as a second GEMM (8 bits of mantissa alone would cost ~1%
 * of the logits). */
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>
#include <type_traits>
#include <utility>

extern "C" {
#include "engine.h"
}

/* Any failure of the GPU after start-up is fatal: the message names the call, and the program exits. */
#define CHECK(call)                                                                                  \
    do {                                                                                             \
        cudaError_t err_ = (call);                                                                   \
        if (err_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "error: CUDA: %s: %s (%s:%d)\n", #call, cudaGetErrorString(err_),       \
                    __FILE__, __LINE__);                                                             \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)
#define BLAS_CHECK(call)                                                                             \
    do {                                                                                             \
        cublasStatus_t st_ = (call);                                                                 \
        if (st_ != CUBLAS_STATUS_SUCCESS) {                                                          \
            fprintf(stderr, "error: cuBLAS: %s: %s (%s:%d)\n", #call, cublasGetStatusString(st_),   \
                    __FILE__, __LINE__);                                                             \
            exit(1);                                                                                 \
        }                                                                                            \
    } while (0)

typedef __half f16;
typedef __nv_bfloat16 bf16;

enum {
    GEMV_MAX_SEQS = 8,  /* decode batches up to this go through the GEMV kernels, larger ones cuBLAS */
    GEMV_WARPS = 8,     /* warps per GEMV block */
    GEMV_LOADS = 8,     /* 16-byte loads of weights a GEMV lane keeps in flight (16 measured slower) */
    XPROJ_KSPLIT = 8,   /* x_proj (few rows, long ones): warps of a GEMV block sharing one row */
    GEMV_KSPLIT = 4,    /* warps sharing a row group in GEMVs of too few rows to fill the GPU otherwise */
    GEMV_BLOCKS_PER_SM = 8, /* ... that is, fewer blocks than this per multiprocessor (2.8b in_proj,
                               640 blocks of whole rows: 19.6 us, split 16.5 us, alone on an H200) */
    NORM_THREADS = 512,
    NORM_PER = 8,       /* elements of a row a norm thread holds: d_model up to 4096 */
    CONV_THREADS = 128,
    SSM_LANES = 4,      /* ssm_step: lanes per channel, each holding d_state / SSM_LANES states */
    SSM_THREADS = 64,   /* decode ssm_step block: 16 channels */
    DT_PRE = 8,         /* ssm_step: dt_proj pieces a lane loads before waiting (rows up to 512 bytes) */
    SCAN_THREADS = 128, /* channels per scan block */
    SCAN_TILE = 16,     /* time steps of the chunk staged in shared memory at once */
    MAX_SCAN_STATE = 32, /* d_state up to this (registers of a scan thread), 8 a lane in ssm_step */
    SCAN_MAX_SEGS = 16, /* the most segments a prefill chunk's scan is cut into along time */
    SCAN_MIN_SEG = 32,  /* tokens a segment holds at least */
    SCAN_BLOCKS_PER_SM = 4, /* scan blocks wanted per multiprocessor (SCAN_THREADS each) */
    MIXER_NORM_THREADS = 96, /* Falcon-Mamba's norm of dt_in, B, C: a warp each */
    SSD_STEP_ROWS = 8,  /* Mamba-2 decode state update: head_dim rows (p) per block, a warp each */
    SSD_LPR = 16,       /* Mamba-2 prefill scan: lanes per p row, each holding d_state / SSD_LPR states */
    SSD_ROWS = 4,       /* ... p rows per block */
    SSD_THREADS = SSD_LPR * SSD_ROWS,
    SSD_TILE = 16,      /* ... time steps staged in shared memory at once */
    MAX_SSD_STATE = 16 * SSD_LPR, /* Mamba-2 d_state up to this */
    GNORM_THREADS = 256 /* Mamba-2 gated group norm: a block per (row, group) */
};

/* ----------------------------------------------------------------------------------------------
 * Device helpers */

__device__ __forceinline__ float to_f(float v) { return v; }
__device__ __forceinline__ float to_f(f16 v) { return __half2float(v); }
__device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ f16 from_f<f16>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float v) { return __float2bfloat16_rn(v); }

/* 16 bytes of T widened to fp32: 4 floats, or 8 halves. */
template <typename T> __device__ __forceinline__ void unpack16(uint4 u, float *f);
template <> __device__ __forceinline__ void unpack16<float>(uint4 u, float *f) {
    f[0] = __uint_as_float(u.x); f[1] = __uint_as_float(u.y);
    f[2] = __uint_as_float(u.z); f[3] = __uint_as_float(u.w);
}
template <> __device__ __forceinline__ void unpack16<f16>(uint4 u, float *f) {
    const __half2 *h = (const __half2 *)&u;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __half22float2(h[i]);
        f[2 * i] = t.x; f[2 * i + 1] = t.y;
    }
}
template <> __device__ __forceinline__ void unpack16<bf16>(uint4 u, float *f) {
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&u;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 t = __bfloat1622float2(h[i]);
        f[2 * i] = t.x; f[2 * i + 1] = t.y;
    }
}
/* The 16 bytes at p (16-byte aligned). */
template <typename T> __device__ __forceinline__ uint4 raw16(const T *p) { return *(const uint4 *)p; }
template <typename T> __device__ __forceinline__ void load16(const T *p, float *f) { unpack16<T>(raw16(p), f); }

/* 8 consecutive elements at p as fp32, those at or past `avail` as 0. vec: p is 16-byte aligned. */
template <typename T>
__device__ __forceinline__ void load8(const T *p, int avail, bool vec, float *f) {
    if (vec && avail >= 8) {
        constexpr int V = 16 / sizeof(T);
#pragma unroll
        for (int q = 0; q < 8 / V; q++) load16(p + q * V, f + q * V);
    } else {
#pragma unroll
        for (int j = 0; j < 8; j++) f[j] = j < avail ? to_f(p[j]) : 0.0f;
    }
}

/* v narrowed to T into hi[i]; with lo, also what that rounding lost (bf16 GEMM inputs: the product
 * is then taken as W.hi + W.lo, near fp32 precision). */
template <typename T> __device__ __forceinline__ void store_narrow(T *hi, T *lo, size_t i, float v) {
    T h = from_f<T>(v);
    hi[i] = h;
    if (lo) lo[i] = from_f<T>(v - to_f(h));
}

/* The same formulas as run.c, so the two engines round alike. */
__device__ __forceinline__ float silu(float v) { return v / (1.0f + expf(-v)); }
__device__ __forceinline__ float softplus(float v) { return v > 20.0f ? v : log1pf(expf(v)); }

/* Programmatic dependent launch (decode graphs): a kernel lets the next one start launching at once,
 * and waits for the previous one to finish (and its writes to be visible) before touching anything
 * but weights. Every kernel waits before its first read of activations or states and before any
 * write, so the order of the stream holds. Without the launch attribute both are no-ops. */
__device__ __forceinline__ void launch_next() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
__device__ __forceinline__ void wait_prior() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
/* A hint to bring the line holding p into L2, issued before wait_prior (for weights and states: it
 * reads nothing into the kernel, so it is safe whatever the previous kernel writes). */
__device__ __forceinline__ void prefetch_l2(const void *p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* ----------------------------------------------------------------------------------------------
 * Kernels shared by decode and prefill */

/* What a layer's RMSNorm reads: the residual stream is res + add (the previous layer's output),
 * or for layer 0 the embedding rows of tokens; the sum is stored back to res, then normalized and
 * scaled by w. */
template <typename T> struct NormIn {
    float *res;
    const float *add;
    const int *tokens;
    const T *emb;
    const float *w;
    float eps;
};

template <typename T> __device__ __forceinline__ float residual(const NormIn<T> &a, int D, int row, int i) {
    return a.tokens ? to_f(a.emb[(size_t)a.tokens[row] * D + i])
                    : a.res[(size_t)row * D + i] + a.add[(size_t)row * D + i];
}

/* Sum over the block (blockDim.x a multiple of 32); every thread gets it. Once per kernel. */
__device__ float block_sum(float v) {
    __shared__ float part[32];
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    v = warp_sum(v);
    if (lane == 0) part[warp] = v;
    __syncthreads();
    v = lane < (int)blockDim.x / 32 ? part[lane] : 0.0f;
    return warp_sum(v);
}

/* One row per block: the residual, then out = res / sqrt(mean(res^2) + eps) * w into out (fp32)
 * and/or outT (the weights' dtype; outLo: see store_narrow). A thread holds up to NORM_PER elements
 * of the row (d_model <= NORM_THREADS * NORM_PER, checked at start-up), all of them loaded before
 * the first is used: in decode this kernel stands alone between two GEMVs, and a loop that waited
 * for one load at a time took 11 us a row on an H200 (2.8b shape). */
template <typename T>
__global__ void __launch_bounds__(NORM_THREADS)
rmsnorm_kernel(NormIn<T> a, int D, float *out, T *outT, T *outLo) {
    launch_next();
    const int row = blockIdx.x;
    float v[NORM_PER], w[NORM_PER];
#pragma unroll
    for (int k = 0; k < NORM_PER; k++) {
        const int i = threadIdx.x + k * NORM_THREADS;
        w[k] = i < D ? a.w[i] : 0.0f; /* a weight: read before waiting */
    }
    wait_prior();
    float *r = a.res + (size_t)row * D;
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < NORM_PER; k++) {
        const int i = threadIdx.x + k * NORM_THREADS;
        v[k] = i < D ? residual(a, D, row, i) : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < NORM_PER; k++) {
        const int i = threadIdx.x + k * NORM_THREADS;
        if (i < D) r[i] = v[k];
        ss += v[k] * v[k];
    }
    const float inv = 1.0f / sqrtf(block_sum(ss) / D + a.eps);
#pragma unroll
    for (int k = 0; k < NORM_PER; k++) {
        const int i = threadIdx.x + k * NORM_THREADS;
        if (i >= D) break;
        const float o = v[k] * inv * w[k];
        if (out) out[(size_t)row * D + i] = o;
        if (outT) store_narrow(outT, outLo, (size_t)row * D + i, o);
    }
}

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

/* y[s][r] = W[r,:] . x[s] for NB sequences: each warp takes ROWS rows, its lanes stride over K in
 * 16-byte pieces of W, so a warp reads whole 512-byte lines and every weight is read once for all
 * NB sequences. The first U pieces of each row are loaded before waiting for the previous kernel
 * (weights don't depend on it), and U pieces per row are in flight per lane at a time: the loads,
 * not the math, bound this. (Requesting the rest of the rows into L2 before the wait as well
 * measured slower on an H200: 2.8b fp16 decode 329 tok/s against 368.)
 * vec: rows are whole 16-byte pieces (else element by element).
 * KSPLIT > 1 (matrices of few rows: x_proj, and the others when they would give too few blocks):
 * KSPLIT warps of the block share a row group, each taking every KSPLIT-th stretch of 32 pieces,
 * and their sums meet in shared memory.
 * conv.state: rows conv.r0 .. conv.r0 + conv.E - 1 are conv channels: their conv step follows (ConvEpi). */
template <typename T, int NB, int ROWS, int KSPLIT>
__global__ void __launch_bounds__(GEMV_WARPS * 32, 2)
gemv_kernel(const T *__restrict__ W, const float *__restrict__ x, float *__restrict__ y, int R, int K, int vec,
            ConvEpi conv) {
    constexpr int V = 16 / sizeof(T), U = GEMV_LOADS / ROWS, STEP = 32 * KSPLIT;
    static_assert(ROWS * NB <= 32, "the conv epilogue takes a lane per (row, sequence)");
    launch_next();
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, ks = warp % KSPLIT;
    const int r0 = (blockIdx.x * (GEMV_WARPS / KSPLIT) + warp / KSPLIT) * ROWS;
    const bool has_rows = r0 < R;
    const int pieces = vec ? K / V : 0, first = ks * 32 + lane;
    const T *w[ROWS];
#pragma unroll
    for (int i = 0; i < ROWS; i++) w[i] = W + (size_t)min(r0 + i, R - 1) * K; /* rows past R: computed, not stored */
    uint4 raw[U][ROWS];
    auto load = [&](int p0) {
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int i = 0; i < ROWS; i++)
                if (p0 + STEP * u < pieces) raw[u][i] = raw16(w[i] + (size_t)(p0 + STEP * u) * V);
    };
    if (has_rows) {
        load(first);
        const int ch = r0 + lane / NB - conv.r0;
        if (conv.state && lane < ROWS * NB && ch >= 0 && ch < conv.E)
            prefetch_l2(conv.state + (lane % NB) * conv.slot_stride + (size_t)ch * (conv.K - 1));
    }
    wait_prior();

    float acc[ROWS][NB];
#pragma unroll
    for (int i = 0; i < ROWS; i++)
#pragma unroll
        for (int s = 0; s < NB; s++) acc[i][s] = 0.0f;
    for (int p0 = first; has_rows && p0 < pieces; p0 += STEP * U) {
        if (p0 != first) load(p0);
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int p = p0 + STEP * u;
            if (p >= pieces) break;
            float wf[ROWS][V];
#pragma unroll
            for (int i = 0; i < ROWS; i++) unpack16<T>(raw[u][i], wf[i]);
#pragma unroll
            for (int s = 0; s < NB; s++) {
                float xf[V];
#pragma unroll
                for (int q = 0; q < V; q += 4) load16(x + (size_t)s * K + (size_t)p * V + q, xf + q);
#pragma unroll
                for (int i = 0; i < ROWS; i++)
#pragma unroll
                    for (int j = 0; j < V; j++) acc[i][s] += wf[i][j] * xf[j];
            }
        }
    }
    for (int k = pieces * V + first; has_rows && k < K; k += STEP) { /* !vec: element by element */
        float wf[ROWS];
#pragma unroll
        for (int i = 0; i < ROWS; i++) wf[i] = to_f(w[i][k]);
#pragma unroll
        for (int s = 0; s < NB; s++) {
            float xv = x[(size_t)s * K + k];
#pragma unroll
            for (int i = 0; i < ROWS; i++) acc[i][s] += wf[i] * xv;
        }
    }
#pragma unroll
    for (int i = 0; i < ROWS; i++)
#pragma unroll
        for (int s = 0; s < NB; s++) acc[i][s] = warp_sum(acc[i][s]); /* every lane gets the same sum */
    if (KSPLIT > 1) { /* the first warp of each group adds the others' sums, in a fixed order */
        __shared__ float part[GEMV_WARPS][ROWS][NB];
        if (lane == 0)
#pragma unroll
            for (int i = 0; i < ROWS; i++)
#pragma unroll
                for (int s = 0; s < NB; s++) part[warp][i][s] = acc[i][s];
        __syncthreads();
        if (ks != 0) return;
#pragma unroll
        for (int i = 0; i < ROWS; i++)
#pragma unroll
            for (int s = 0; s < NB; s++)
                for (int k = 1; k < KSPLIT; k++) acc[i][s] += part[warp + k][i][s];
    }
    if (!has_rows) return;
    float mine = 0.0f; /* the conv epilogue: lane i * NB + s takes row r0 + i of sequence s */
#pragma unroll
    for (int i = 0; i < ROWS; i++)
#pragma unroll
        for (int s = 0; s < NB; s++) {
            if (lane == 0 && r0 + i < R) y[(size_t)s * R + r0 + i] = acc[i][s];
            if (lane == i * NB + s) mine = acc[i][s];
        }
    const int r = r0 + lane / NB, s = lane % NB, ch = r - conv.r0;
    if (conv.state && lane < ROWS * NB && r < R && ch >= 0 && ch < conv.E)
        conv.xc[(size_t)s * conv.E + ch] = conv_step1(conv.state + s * conv.slot_stride + (size_t)ch * (conv.K - 1),
                                                      conv.w + (size_t)ch * conv.K, conv.b[ch], conv.K, mine);
}

/* out = in, narrowed to T (prefill: dt_in for the dt_proj GEMM). */
template <typename T>
__global__ void narrow_kernel(const float *in, T *out, size_t n) {
    launch_next();
    wait_prior();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f<T>(in[i]);
}


/* Falcon-Mamba: after x_proj, each of the three pieces of a row of dbc = [dt_in (dt_rank), B (N),
 * C (N)] is normalized by its own RMS, without weight: v = v / sqrt(mean(v^2) + eps). A block per
 * row, a warp per piece, in place (v * (1 / sqrt(...)), as run.c). */
__global__ void __launch_bounds__(MIXER_NORM_THREADS)
mixer_norm_kernel(float *dbc, int R, int dt_rank, int N, float eps) {
    launch_next();
    wait_prior();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int off = warp == 0 ? 0 : warp == 1 ? dt_rank : dt_rank + N, len = warp == 0 ? dt_rank : N;
    float *v = dbc + (size_t)blockIdx.x * R + off;
    float ss = 0.0f;
    for (int i = lane; i < len; i += 32) ss += v[i] * v[i];
    const float inv = 1.0f / sqrtf(warp_sum(ss) / len + eps); /* as run.c rounds it */
    for (int i = lane; i < len; i += 32) v[i] *= inv;
}

/* ----------------------------------------------------------------------------------------------
 * Decode kernels */

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

/* The selective state update of one token of B sequences: SSM_LANES lanes per (channel, sequence),
 * each holding SPL of the channel's d_state states in registers (states past d_state idle):
 *   dt = softplus(dt_proj . dt_in + bias)   (each lane takes every SSM_LANES-th 16-byte piece of the row)
 *   h = exp(dt A) h + dt x B;  y = (h . C + D x) * silu(z)
 * The dt_proj row, A, D, the bias and the channel's state are read before waiting for x_proj (nothing
 * before this kernel in the step writes them); dbc = [dt_in, B, C] of the sequence is staged in
 * shared memory. hvec: d_state = SSM_LANES * SPL and the rows start on 16 bytes (float4 access). */
template <typename T, int SPL>
__global__ void __launch_bounds__(SSM_THREADS)
ssm_step_kernel(const float *dbc, int R, int dt_rank, int N, const T *dt_w, int dtvec, const float *dt_b,
                const float *A, const float *Dv, const float *xc, const float *xz, float *ssm, size_t slot_stride,
                int hvec, int E, float *y, T *yT, T *yLo) {
    extern __shared__ float sdbc[]; /* R floats: dt_in, B, C */
    constexpr int V = 16 / sizeof(T);
    launch_next();
    const int s = blockIdx.y, g = threadIdx.x % SSM_LANES;
    const int c = (blockIdx.x * blockDim.x + threadIdx.x) / SSM_LANES, cc = min(c, E - 1); /* c >= E: idle */
    const T *wr = dt_w + (size_t)cc * dt_rank;
    const int dpieces = dtvec ? dt_rank / V : 0;
    uint4 wraw[DT_PRE]; /* pieces g, g + SSM_LANES, ... */
#pragma unroll
    for (int i = 0; i < DT_PRE; i++)
        if (g + SSM_LANES * i < dpieces) wraw[i] = raw16(wr + (size_t)(g + SSM_LANES * i) * V);
    const int n0 = g * SPL;
    float *h = ssm + s * slot_stride + (size_t)cc * N + n0;
    const float *a = A + (size_t)cc * N + n0;
    float hv[SPL], av[SPL];
    if (SPL % 4 == 0 && hvec) { /* 16-byte pieces */
#pragma unroll
        for (int j = 0; j < SPL; j += 4) {
            const float4 hq = *(const float4 *)(h + j), aq = *(const float4 *)(a + j);
            hv[j] = hq.x; hv[j + 1] = hq.y; hv[j + 2] = hq.z; hv[j + 3] = hq.w;
            av[j] = aq.x; av[j + 1] = aq.y; av[j + 2] = aq.z; av[j + 3] = aq.w;
        }
    } else {
#pragma unroll
        for (int j = 0; j < SPL; j++) {
            hv[j] = n0 + j < N ? h[j] : 0.0f;
            av[j] = n0 + j < N ? a[j] : 0.0f;
        }
    }
    const float bias = dt_b[cc], Dc = Dv[cc];
    wait_prior();
    const float x = xc[(size_t)s * E + cc], z = xz[(size_t)s * 2 * E + E + cc];
#pragma unroll 4 /* the loads of several rounds in flight at once */
    for (int r = threadIdx.x; r < R; r += blockDim.x) sdbc[r] = dbc[(size_t)s * R + r];
    __syncthreads();

    float d = 0.0f;
#pragma unroll
    for (int i = 0; i < DT_PRE; i++) {
        const int p = g + SSM_LANES * i;
        if (p < dpieces) {
            float wf[V];
            unpack16<T>(wraw[i], wf);
#pragma unroll
            for (int j = 0; j < V; j++) d += wf[j] * sdbc[p * V + j];
        }
    }
    for (int p = g + SSM_LANES * DT_PRE; p < dpieces; p += SSM_LANES) { /* rows longer than DT_PRE pieces a lane */
        float wf[V];
        load16(wr + (size_t)p * V, wf);
#pragma unroll
        for (int j = 0; j < V; j++) d += wf[j] * sdbc[p * V + j];
    }
    for (int k = dpieces * V + g; k < dt_rank; k += SSM_LANES) d += to_f(wr[k]) * sdbc[k]; /* !dtvec */
#pragma unroll
    for (int o = 1; o < SSM_LANES; o <<= 1) d += __shfl_xor_sync(0xffffffffu, d, o);
    const float dt = softplus(d + bias), dtx = dt * x;
    const float *Bv = sdbc + dt_rank + n0, *Cv = Bv + N;
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < SPL; j++)
        if (n0 + j < N) {
            hv[j] = expf(dt * av[j]) * hv[j] + Bv[j] * dtx;
            acc += hv[j] * Cv[j];
        }
    if (c < E && SPL % 4 == 0 && hvec) {
#pragma unroll
        for (int j = 0; j < SPL; j += 4) *(float4 *)(h + j) = make_float4(hv[j], hv[j + 1], hv[j + 2], hv[j + 3]);
    } else if (c < E) {
#pragma unroll
        for (int j = 0; j < SPL; j++)
            if (n0 + j < N) h[j] = hv[j];
    }
#pragma unroll
    for (int o = 1; o < SSM_LANES; o <<= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (c < E && g == 0) {
        float out = (acc + Dc * x) * silu(z);
        if (y) y[(size_t)s * E + c] = out;
        if (yT) store_narrow(yT, yLo, (size_t)s * E + c, out);
    }
}

/* ----------------------------------------------------------------------------------------------
 * Prefill kernels (n tokens of one slot) */

/* Thread per (channel, token): the causal conv over the chunk, the inputs before it from the conv
 * state (which a later kernel advances, once every token here has read it: Mamba-1's scan kernel,
 * Mamba-2's conv_advance_kernel). The input of token t, channel c is in[t * ld + c]; E: the conv's
 * channels; xc [n][E]. */
template <typename T>
__global__ void __launch_bounds__(CONV_THREADS)
conv_chunk_kernel(const float *in, int ld, const float *conv, const float *conv_w, const float *conv_b, int E, int K,
                  float *xc, T *xcT) {
    launch_next();
    wait_prior();
    const int c = blockIdx.x * blockDim.x + threadIdx.x, t = blockIdx.y;
    if (c >= E) return;
    const float *w = conv_w + (size_t)c * K;
    float acc = 0.0f;
#pragma unroll 4 /* d_conv is 4 in every Mamba model: its loads at once */
    for (int k = 0; k < K; k++) {
        int j = t - (K - 1) + k; /* input time; < 0: from the state */
        float v = j >= 0 ? in[(size_t)j * ld + c] : conv[(size_t)c * (K - 1) + j + K - 1];
        acc += v * w[k];
    }
    float v = silu(acc + conv_b[c]);
    xc[(size_t)t * E + c] = v;
    if (xcT) xcT[(size_t)t * E + c] = from_f<T>(v);
}

/* The conv state of one channel (st, d_conv-1 floats) advanced over a chunk of n tokens whose inputs
 * are in[t * ld]: new[j] = input at time n-(K-1)+j, from the chunk, or (short chunks) from old[j+n],
 * which lies ahead of j, so in place and in order is safe. */
__device__ __forceinline__ void conv_advance(float *st, const float *in, int ld, int n, int K) {
    for (int j = 0; j < K - 1; j++) {
        int src = n - (K - 1) + j;
        st[j] = src >= 0 ? in[(size_t)src * ld] : st[j + n];
    }
}

/* The selective scan over a chunk of n tokens, cut into segments of seg_len tokens along time
 * (blockIdx.y): a thread per channel, holding the channel's NS states in registers (d_state rounded
 * up; the states past it have A = B = C = 0 and stay 0). Per token it steps every state,
 * h = exp(dt A) h + dt x B, and sums y = h . C + D x in the thread, with no exchange between
 * threads; the 16 states are 16 independent chains, which keeps the pipelines busy with few warps.
 * The inputs of SCAN_TILE tokens are staged in shared memory first (each thread its own channel's
 * dt, x, z; B and C shared by the block), so the sequential loop waits on no global load.
 * (A thread per (channel, state) pair instead, summing y across lanes with shuffles, measured 252 us
 * a layer on a 512-token chunk of the 2.8b shape on an H200, bound by the instructions around
 * each step.)
 * exp(dt A) is taken as exp2(dt * A log2(e)), the hardware's native exponential.
 * One segment (the whole chunk) is one pass from the SSM state. More segments give more threads to
 * a chunk's channels, in three passes (the recurrence is linear in h):
 *   SCAN_LOCAL    every segment but the last from h = 0: its end state into seg_h, and the sum of its
 *                 dt into seg_dt (the segment's decay is exp(A * sum dt));
 *   scan_combine  the state each segment starts from, in order, into seg_h;
 *   SCAN_OUT      every segment from its start state, writing y.
 * SCAN_OUT's last segment leaves the SSM state, and the conv state advanced to the chunk's last
 * d_conv-1 inputs. */
enum { SCAN_OUT = 0, SCAN_LOCAL = 1 };
template <typename T, int NS, int MODE>
__global__ void __launch_bounds__(SCAN_THREADS)
scan_kernel(int seg_len, float *seg_h, float *seg_dt, const float *dtr, const float *dt_b, const float *A,
            const float *Dv, const float *xc, const float *xz, const float *dbc, int n, int E, int N, int dt_rank,
            int R, int K, float *ssm, float *conv, float *y, T *yT, T *yLo) {
    __shared__ float s_B[SCAN_TILE][NS], s_C[SCAN_TILE][NS];
    __shared__ float s_dt[SCAN_TILE][SCAN_THREADS], s_x[SCAN_TILE][SCAN_THREADS], s_z[SCAN_TILE][SCAN_THREADS];
    launch_next();
    wait_prior();
    const int tid = threadIdx.x, c = blockIdx.x * SCAN_THREADS + tid, cc = min(c, E - 1); /* c >= E: idle */
    const int seg = blockIdx.y, t_begin = seg * seg_len, t_end = min(n, t_begin + seg_len);
    const size_t hi = (size_t)cc * N, seg_i = (size_t)seg * E * N + hi;
    float h[NS], a2[NS];
#pragma unroll
    for (int k = 0; k < NS; k++) {
        a2[k] = k < N ? A[hi + k] * 1.4426950408889634f : 0.0f;
        h[k] = 0.0f;
        if (MODE == SCAN_OUT && k < N) h[k] = seg == 0 ? ssm[hi + k] : seg_h[seg_i + k];
    }
    const float bias = dt_b[cc], Dc = Dv[cc];
    float dsum = 0.0f;

    for (int t0 = t_begin; t0 < t_end; t0 += SCAN_TILE) {
        const int tn = min(SCAN_TILE, t_end - t0);
        __syncthreads(); /* every thread is done with the previous tile's B and C */
        for (int i = tid; i < tn * NS; i += SCAN_THREADS) {
            const int t = i / NS, k = i % NS;
            const float *row = dbc + (size_t)(t0 + t) * R + dt_rank;
            s_B[t][k] = k < N ? row[k] : 0.0f;
            if (MODE == SCAN_OUT) s_C[t][k] = k < N ? row[N + k] : 0.0f;
        }
#pragma unroll /* every load of the tile in flight at once */
        for (int t = 0; t < SCAN_TILE; t++) {
            const size_t tt = (size_t)(t0 + min(t, tn - 1)); /* past tn: a valid row, unused */
            s_dt[t][tid] = softplus(dtr[tt * E + cc] + bias);
            s_x[t][tid] = xc[tt * E + cc];
            if (MODE == SCAN_OUT) s_z[t][tid] = xz[tt * 2 * E + E + cc];
        }
        __syncthreads();
        for (int t = 0; t < tn; t++) {
            const float dt = s_dt[t][tid], x = s_x[t][tid], dtx = dt * x;
            float acc = 0.0f;
#pragma unroll
            for (int k = 0; k < NS; k++) {
                h[k] = exp2f(dt * a2[k]) * h[k] + s_B[t][k] * dtx;
                if (MODE == SCAN_OUT) acc += h[k] * s_C[t][k];
            }
            if (MODE == SCAN_LOCAL) dsum += dt;
            if (MODE == SCAN_OUT && c < E) {
                const size_t o = (size_t)(t0 + t) * E + c;
                const float g = (acc + Dc * x) * silu(s_z[t][tid]);
                if (y) y[o] = g;
                if (yT) store_narrow(yT, yLo, o, g);
            }
        }
    }
    if (c >= E) return;
    if (MODE == SCAN_LOCAL) {
#pragma unroll
        for (int k = 0; k < NS; k++)
            if (k < N) seg_h[seg_i + k] = h[k];
        seg_dt[(size_t)seg * E + c] = dsum;
        return;
    }
    if (t_end != n) return;
#pragma unroll
    for (int k = 0; k < NS; k++)
        if (k < N) ssm[hi + k] = h[k];
    conv_advance(conv + (size_t)c * (K - 1), xz + c, 2 * E, n, K);
}

/* Between the scan's two passes: a thread per (channel, state) carries the state across the
 * segments, h_start(s+1) = exp(A * sum dt(s)) h_start(s) + local end(s), from the SSM state; each
 * segment's local end state in seg_h is replaced by its start state (segment 0 starts from the SSM
 * state itself and is not written). Every input is loaded before the first store, so the loads
 * wait once, not once a segment. */
__global__ void scan_combine_kernel(int segs, const float *A, const float *ssm, float *seg_h, const float *seg_dt,
                                    int E, int N) {
    launch_next();
    wait_prior();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= E * N) return;
    const int c = i / N;
    const float a = A[i];
    float local[SCAN_MAX_SEGS - 1], dsum[SCAN_MAX_SEGS - 1];
#pragma unroll
    for (int s = 0; s + 1 < SCAN_MAX_SEGS; s++)
        if (s + 1 < segs) {
            local[s] = seg_h[(size_t)s * E * N + i];
            dsum[s] = seg_dt[(size_t)s * E + c];
        }
    float h = ssm[i];
#pragma unroll
    for (int s = 0; s + 1 < SCAN_MAX_SEGS; s++)
        if (s + 1 < segs) {
            h = expf(a * dsum[s]) * h + local[s];
            seg_h[(size_t)(s + 1) * E * N + i] = h;
        }
}


/* ----------------------------------------------------------------------------------------------
 * Mamba-2 kernels (E = d_inner, H heads of P = head_dim channels, G groups, N = d_state,
 * X = E + 2GN the conv's channels, Z = E + X + H the in_proj rows) */

/* What the Mamba-2 SSM kernels read, per row (a token of the chunk, or a sequence of the batch). */
struct Ssd {
    const float *zx;              /* in_proj output [rows][Z]: z [0,E), xBC [E,E+X), dt_raw [E+X,Z) */
    const float *xc;              /* conv output [rows][X]: x [0,E), B [E,E+GN), C [E+GN,X) */
    const float *dt_bias, *A, *D; /* [H]; A = -exp(A_log) */
    int E, H, P, G, N, X, Z;
    float dt_min, dt_max;
    int clamp;                    /* dt clamped to [dt_min, dt_max] */
    float *ys;                    /* [rows][E]: y = state . C + D x, before the gated norm */
};

/* dt of head h for row `row`: softplus(dt_raw + dt_bias), clamped when the model asks. */
__device__ __forceinline__ float ssd_dt(const Ssd &a, int row, int h, float bias) {
    float dt = softplus(a.zx[(size_t)row * a.Z + a.E + a.X + h] + bias);
    if (a.clamp) dt = fminf(fmaxf(dt, a.dt_min), a.dt_max);
    return dt;
}

/* Decode: the state update of one token of each of B sequences, a block per (p tile, head,
 * sequence), a warp per p row whose lanes stride over n (coalesced over the [H][P][N] state):
 *   state[p][n] = exp(dt A) state[p][n] + dt x[p] B[n];  y[p] = state[p] . C + D x[p]
 * The rows' state lines are requested into L2 before waiting for the in_proj GEMV (nothing earlier in
 * the step writes them). */
__global__ void __launch_bounds__(SSD_STEP_ROWS * 32)
ssd_step_kernel(Ssd a, float *ssm, size_t slot_stride) {
    launch_next();
    const int lane = threadIdx.x % 32, h = blockIdx.y, s = blockIdx.z;
    const int p = blockIdx.x * SSD_STEP_ROWS + threadIdx.x / 32, g = h / (a.H / a.G);
    float *st = ssm + s * slot_stride + ((size_t)h * a.P + min(p, a.P - 1)) * a.N;
    if (p < a.P)
        for (int i = lane * 32; i < a.N; i += 32 * 32) prefetch_l2(st + i);
    const float bias = a.dt_bias[h], A = a.A[h], Dh = a.D[h];
    wait_prior();
    if (p >= a.P) return; /* a whole warp */
    const float dt = ssd_dt(a, s, h, bias), dA = expf(dt * A);
    const float *row = a.xc + (size_t)s * a.X;
    const float x = row[h * a.P + p], dtx = dt * x;
    const float *Bv = row + a.E + (size_t)g * a.N, *Cv = Bv + (size_t)a.G * a.N;
    float acc = 0.0f;
#pragma unroll 4
    for (int n = lane; n < a.N; n += 32) {
        const float v = dA * st[n] + dtx * Bv[n];
        st[n] = v;
        acc += v * Cv[n];
    }
    acc = warp_sum(acc);
    if (lane == 0) a.ys[(size_t)s * a.E + h * a.P + p] = acc + Dh * x;
}

/* y -> out: u = y * silu(z), then per group of E/G channels u / sqrt(mean(u^2) + eps) * weight; a
 * block per (group, row). out (fp32) and/or outT (the weights' dtype; outLo: see store_narrow). */
template <typename T>
__global__ void __launch_bounds__(GNORM_THREADS)
gated_norm_kernel(const float *ys, const float *zx, int Z, const float *w, int E, int G, float eps, float *out,
                  T *outT, T *outLo) {
    launch_next();
    wait_prior();
    const int row = blockIdx.y, gs = E / G;
    const size_t o = (size_t)row * E + (size_t)blockIdx.x * gs;
    const float *y = ys + o, *z = zx + (size_t)row * Z + (size_t)blockIdx.x * gs, *wg = w + (size_t)blockIdx.x * gs;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < gs; i += GNORM_THREADS) {
        const float u = y[i] * silu(z[i]);
        ss += u * u;
    }
    const float r = 1.0f / sqrtf(block_sum(ss) / gs + eps);
    for (int i = threadIdx.x; i < gs; i += GNORM_THREADS) {
        const float v = y[i] * silu(z[i]) * (r * wg[i]); /* run.c's order */
        if (out) out[o + i] = v;
        if (outT) store_narrow(outT, outLo, o + i, v);
    }
}

/* Prefill: the conv state of each of the E conv channels advanced over the chunk (after
 * conv_chunk_kernel has read it); the input of token t, channel c is in[t * ld + c]. */
__global__ void conv_advance_kernel(const float *in, int ld, float *conv, int E, int K, int n) {
    launch_next();
    wait_prior();
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < E) conv_advance(conv + (size_t)c * (K - 1), in + c, ld, n, K);
}

/* Prefill: the state recurrence of Mamba-2 over a chunk of n tokens of one sequence, token by token
 * (the same recurrence as ssd_step_kernel, so prefill leaves the state that steps leave).
 * A block per (tile of SSD_ROWS p rows, head); SSD_LPR lanes per p row, each holding SPL of its
 * states in registers (n = lane + SSD_LPR * j; the states past d_state have B = C = 0 and stay 0).
 * The inputs of SSD_TILE tokens (B and C of the head's group, x of the block's rows, dt and
 * exp(dt A)) are staged in shared memory first, so the sequential loop waits on no global load; y
 * is summed over the row's lanes with shuffles. Leaves the SSM state. */
template <int SPL>
__global__ void __launch_bounds__(SSD_THREADS)
ssd_scan_kernel(Ssd a, float *ssm, int n) {
    constexpr int NS = SPL * SSD_LPR;
    __shared__ float s_B[SSD_TILE][NS], s_C[SSD_TILE][NS], s_x[SSD_TILE][SSD_ROWS], s_dt[SSD_TILE], s_dA[SSD_TILE];
    launch_next();
    wait_prior();
    const int tid = threadIdx.x, r = tid / SSD_LPR, lane = tid % SSD_LPR, h = blockIdx.y;
    const int p0 = blockIdx.x * SSD_ROWS, p = p0 + r, g = h / (a.H / a.G), N = a.N;
    float *st = ssm + ((size_t)h * a.P + min(p, a.P - 1)) * N; /* p >= P: computed, not stored */
    float hs[SPL];
#pragma unroll
    for (int j = 0; j < SPL; j++) hs[j] = lane + SSD_LPR * j < N ? st[lane + SSD_LPR * j] : 0.0f;
    const float bias = a.dt_bias[h], A = a.A[h], Dh = a.D[h];
    for (int t0 = 0; t0 < n; t0 += SSD_TILE) {
        const int tn = min(SSD_TILE, n - t0);
        __syncthreads(); /* every thread is done with the previous tile */
        for (int i = tid; i < tn * NS; i += SSD_THREADS) {
            const int t = i / NS, k = i % NS;
            const float *row = a.xc + (size_t)(t0 + t) * a.X + a.E + (size_t)g * N;
            s_B[t][k] = k < N ? row[k] : 0.0f;
            s_C[t][k] = k < N ? row[(size_t)a.G * N + k] : 0.0f;
        }
        for (int i = tid; i < tn * SSD_ROWS; i += SSD_THREADS) {
            const int t = i / SSD_ROWS, q = min(p0 + i % SSD_ROWS, a.P - 1);
            s_x[t][i % SSD_ROWS] = a.xc[(size_t)(t0 + t) * a.X + (size_t)h * a.P + q];
        }
        if (tid < tn) {
            const float dt = ssd_dt(a, t0 + tid, h, bias);
            s_dt[tid] = dt;
            s_dA[tid] = expf(dt * A);
        }
        __syncthreads();
        for (int t = 0; t < tn; t++) {
            const float dA = s_dA[t], x = s_x[t][r], dtx = s_dt[t] * x;
            float acc = 0.0f;
#pragma unroll
            for (int j = 0; j < SPL; j++) {
                hs[j] = dA * hs[j] + dtx * s_B[t][lane + SSD_LPR * j];
                acc += hs[j] * s_C[t][lane + SSD_LPR * j];
            }
#pragma unroll
            for (int o = 1; o < SSD_LPR; o <<= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
            if (lane == 0 && p < a.P) a.ys[(size_t)(t0 + t) * a.E + (size_t)h * a.P + p] = acc + Dh * x;
        }
    }
    if (p >= a.P) return;
#pragma unroll
    for (int j = 0; j < SPL; j++)
        if (lane + SSD_LPR * j < N) st[lane + SSD_LPR * j] = hs[j];
}

/* ----------------------------------------------------------------------------------------------
 * The engine */

typedef struct {
    const float *norm, *conv_w, *conv_b, *dt_b, *A, *D; /* fp32 vectors; A = -exp(A_log) */
    const float *dt_bias, *gnorm;                       /* Mamba-2 */
    const void *in_proj, *x_proj, *dt_w, *out_proj;     /* matrices in the weights' dtype */
} GpuLayer;

struct Engine {
    Config c;
    int max_seqs, rows;   /* rows of the activation buffers: max(max_seqs, PREFILL_CHUNK) */
    int R;                /* x_proj outputs: dt_rank + 2*d_state (Mamba-1, Falcon-Mamba) */
    int Z, X;             /* in_proj outputs (2*d_inner; Mamba-2: 2*d_inner + 2*G*N + H), conv channels */
    bool dt_clamp;        /* Mamba-2: dt clamped to [dt_min, dt_max] */
    size_t state_floats, layer_floats;
    int ssm_vec;          /* every SSM state row and A row starts on 16 bytes, whole float4s long */
    char name[300];
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;
    uint8_t *wdev;        /* the file's weight section, on the device */
    GpuLayer *layers;     /* host array of device pointers */
    const void *emb, *lm_head;
    const float *norm_f;
    float *A;             /* [n_layer][d_inner][d_state] (Mamba-2: [n_layer][n_heads]) */
    float *states;        /* [max_seqs][state_floats], each slot as engine_get_state's flat array */
    /* activations, fp32, `rows` rows; the *T twins hold GEMM inputs in the weights' dtype (NULL for fp32) */
    float *res;           /* the residual stream */
    float *hid, *hn, *xz, *xc, *dbc, *dt, *y; /* xz: in_proj's output [Z]; xc: the conv's [X] */
    float *ys;            /* Mamba-2: y before the gated norm */
    void *hnT, *xcT, *dbcT, *yT;
    void *hnLo, *yLo;     /* bf16: the rounding errors of hnT and yT (see store_narrow); else NULL */
    int *tok, *h_tok;     /* device tokens, pinned host staging */
    float *logits, *h_logits;         /* max_seqs rows */
    float *logits_all, *h_logits_all; /* PREFILL_CHUNK rows, allocated at the first all_logits prefill */
    cudaGraphExec_t *graphs;          /* [max_seqs + 1]: the step for each nseq, captured at first use */
    float *seg_h, *seg_dt; /* the scan's segments: [SCAN_MAX_SEGS][d_inner][d_state], [SCAN_MAX_SEGS][d_inner] */
    int sms;              /* streaming multiprocessors */
    int scan_segs;        /* 0: chosen per chunk (scan_segments); else forced (RUNCUDA_SCAN_SEGS) */
    bool use_pdl;         /* programmatic dependent launch in the decode graphs (RUNCUDA_PDL=0: off) */
    int gemv_min_blocks;  /* fewer GEMV blocks of whole rows than this: rows split over warps (gemv_nb) */
    int gemv_ksplit;      /* 0: as gemv_nb chooses; 1 or 4: forced (RUNCUDA_GEMV_KSPLIT) */
    bool capturing;       /* a decode step is being captured */
    bool after_kernel;    /* the last thing captured was one of our kernels: the next may overlap it */
};

/* Activations that feed a projection: fp32 for the GEMV kernels and fp32 GEMMs, the weights'
 * dtype for fp16/bf16 GEMMs. A kernel writes the buffer that the next projection reads. */
static bool narrow_gemm(const Engine *e, bool gemm) { return gemm && e->c.dtype != DT_F32; }
static float *f32_out(const Engine *e, float *buf, bool gemm) { return narrow_gemm(e, gemm) ? NULL : buf; }
template <typename T> static T *t_out(const Engine *e, void *bufT, bool gemm) {
    return narrow_gemm(e, gemm) ? (T *)bufT : NULL;
}
/* A GEMM input: fp32 for fp32 weights, else narrowed (hi) and, for some bf16 inputs, its rounding error (lo). */
typedef struct {
    const void *hi, *lo;
} GemmIn;
static GemmIn gemm_in(const Engine *e, const float *buf, const void *bufT, const void *bufLo = nullptr) {
    GemmIn in = {e->c.dtype == DT_F32 ? (const void *)buf : bufT, bufLo};
    return in;
}

static float *conv_state(Engine *e, int seq, int l) { return e->states + seq * e->state_floats + l * e->layer_floats; }
static float *ssm_state(Engine *e, int seq, int l) {
    return conv_state(e, seq, l) + (size_t)e->X * (e->c.d_conv - 1);
}

template <typename T> static cudaDataType_t cuda_type();
template <> cudaDataType_t cuda_type<float>() { return CUDA_R_32F; }
template <> cudaDataType_t cuda_type<f16>() { return CUDA_R_16F; }
template <> cudaDataType_t cuda_type<bf16>() { return CUDA_R_16BF; }

/* out[n][R] (row stride ldo, fp32) = in[n][K] (row stride ldi, dtype T) @ W[R][K]^T, on tensor cores
 * for fp16/bf16, fp32 accumulation; plus in.lo @ W^T when set. cuBLAS is column-major: this is
 * out^T = W^T' in^T. */
template <typename T>
static void gemm(Engine *e, float *out, int ldo, const void *W, GemmIn in, int ldi, int n, int R, int K) {
    const float one = 1.0f, zero = 0.0f;
    BLAS_CHECK(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, R, n, K, &one, W, cuda_type<T>(), K, in.hi,
                            cuda_type<T>(), ldi, &zero, out, CUDA_R_32F, ldo, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (in.lo)
        BLAS_CHECK(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, R, n, K, &one, W, cuda_type<T>(), K, in.lo,
                                cuda_type<T>(), ldi, &one, out, CUDA_R_32F, ldo, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
    e->after_kernel = false;
}

/* Launches a kernel on the engine's stream. Inside decode graphs, one that follows another of our
 * kernels uses programmatic dependent launch (see launch_next), unless RUNCUDA_PDL=0 in the
 * environment; after a copy or a cuBLAS call the dependency stays an ordinary one. */
template <typename... P, typename... A>
static void launch(Engine *e, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A &&...args) {
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = e->stream;
    cfg.attrs = &attr;
    cfg.numAttrs = e->capturing && e->use_pdl && e->after_kernel ? 1 : 0;
    CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...));
    e->after_kernel = true;
}

template <typename T, int NB, int ROWS, int KSPLIT>
static void gemv_launch(Engine *e, float *y, const void *W, const float *x, int R, int K, const ConvEpi &conv) {
    int per_block = GEMV_WARPS / KSPLIT * ROWS, grid = (R + per_block - 1) / per_block;
    int vec = K % (16 / (int)sizeof(T)) == 0;
    launch(e, gemv_kernel<T, NB, ROWS, KSPLIT>, grid, GEMV_WARPS * 32, 0, (const T *)W, x, y, R, K, vec, conv);
}

/* Rows per warp: more for larger batches, so the x loads are shared by several rows. split: x_proj's
 * shape (few rows, K long), a row per XPROJ_KSPLIT warps. Otherwise a warp takes whole rows, unless
 * that gives fewer than gemv_min_blocks blocks (too few loads in flight to keep the memory busy):
 * then GEMV_KSPLIT warps share each row group. */
template <typename T, int NB>
static void gemv_nb(Engine *e, bool split, float *y, const void *W, const float *x, int R, int K,
                    const ConvEpi &conv) {
    constexpr int ROWS = NB > 2 ? 4 : 2;
    const int whole_rows_blocks = (R + GEMV_WARPS * ROWS - 1) / (GEMV_WARPS * ROWS);
    const bool ksplit = e->gemv_ksplit ? e->gemv_ksplit > 1 : whole_rows_blocks < e->gemv_min_blocks;
    if (split) gemv_launch<T, NB, 1, XPROJ_KSPLIT>(e, y, W, x, R, K, conv);
    else if (ksplit) gemv_launch<T, NB, ROWS, GEMV_KSPLIT>(e, y, W, x, R, K, conv);
    else gemv_launch<T, NB, ROWS, 1>(e, y, W, x, R, K, conv);
}

/* y[B][R] = x[B][K] @ W[R][K]^T, fp32, B <= GEMV_MAX_SEQS; with conv, the conv step of the x rows
 * follows (in_proj). */
template <typename T>
static void gemv(Engine *e, float *y, const void *W, const float *x, int B, int R, int K,
                 const ConvEpi *conv = nullptr, bool split = false) {
    const ConvEpi cv = conv ? *conv : ConvEpi{};
    switch (B) {
    case 1: gemv_nb<T, 1>(e, split, y, W, x, R, K, cv); break;
    case 2: gemv_nb<T, 2>(e, split, y, W, x, R, K, cv); break;
    case 3: gemv_nb<T, 3>(e, split, y, W, x, R, K, cv); break;
    case 4: gemv_nb<T, 4>(e, split, y, W, x, R, K, cv); break;
    case 5: gemv_nb<T, 5>(e, split, y, W, x, R, K, cv); break;
    case 6: gemv_nb<T, 6>(e, split, y, W, x, R, K, cv); break;
    case 7: gemv_nb<T, 7>(e, split, y, W, x, R, K, cv); break;
    case 8: gemv_nb<T, 8>(e, split, y, W, x, R, K, cv); break;
    default: fprintf(stderr, "error: gemv batch %d > %d\n", B, (int)GEMV_MAX_SEQS); exit(1);
    }
}

/* Calls f with NS, d_state rounded up to a power of two (at least SSM_LANES), as a compile-time
 * constant: the states a scan thread holds, and SSM_LANES times those a lane holds in ssm_step. */
template <typename F> static void with_states(int N, F f) {
    if (N <= SSM_LANES) f(std::integral_constant<int, SSM_LANES>());
    else if (N <= 2 * SSM_LANES) f(std::integral_constant<int, 2 * SSM_LANES>());
    else if (N <= 4 * SSM_LANES) f(std::integral_constant<int, 4 * SSM_LANES>());
    else f(std::integral_constant<int, 8 * SSM_LANES>());
}

/* The norm of layer l (l = n_layer: the final one), over e->hid and the residual stream, which it
 * updates in place. */
template <typename T>
static NormIn<T> norm_in(const Engine *e, int l, const float *weight) {
    NormIn<T> a;
    a.res = e->res;
    a.add = e->hid;
    a.tokens = l == 0 ? e->tok : nullptr;
    a.emb = (const T *)e->emb;
    a.w = weight;
    a.eps = e->c.norm_eps;
    return a;
}

template <typename T>
static void rmsnorm(Engine *e, int nrows, const NormIn<T> &a, float *out, T *outT, T *outLo) {
    launch(e, rmsnorm_kernel<T>, nrows, NORM_THREADS, 0, a, e->c.d_model, out, outT, outLo);
}

/* A decode projection of B rows of the norm's output: rmsnorm, then a GEMV (small batches) or a
 * GEMM. conv: see ConvEpi (GEMV only). (A norm computed inside every GEMV block instead, to save its
 * kernel, measured slower on an H200: each block's norm comes before its main loop.) */
template <typename T>
static void norm_project(Engine *e, const NormIn<T> &a, float *out, const void *W, int B, int R,
                         const ConvEpi *conv = nullptr) {
    const int D = e->c.d_model;
    if (B <= GEMV_MAX_SEQS) {
        rmsnorm<T>(e, B, a, e->hn, nullptr, nullptr);
        gemv<T>(e, out, W, e->hn, B, R, D, conv);
    } else {
        rmsnorm<T>(e, B, a, f32_out(e, e->hn, true), t_out<T>(e, e->hnT, true), t_out<T>(e, e->hnLo, true));
        gemm<T>(e, out, R, W, gemm_in(e, e->hn, e->hnT, e->hnLo), D, B, R, D);
    }
}

/* A decode projection of B rows of an fp32 input (or its narrowed twin for a GEMM). */
template <typename T>
static void project(Engine *e, float *out, const void *W, const float *in, GemmIn inT, int B, int R, int K) {
    if (B <= GEMV_MAX_SEQS) gemv<T>(e, out, W, in, B, R, K);
    else gemm<T>(e, out, R, W, inT, K, B, R, K);
}

/* ----------------------------------------------------------------------------------------------
 * Decode: one token for each of slots 0..B-1. Tokens in e->tok, logits out in e->logits. */
template <typename T>
static void forward_step(Engine *e, int B) {
    const Config *c = &e->c;
    const int D = c->d_model, E = c->d_inner, N = c->d_state, R = e->R;
    const bool big = B > GEMV_MAX_SEQS; /* projections as GEMMs */
    for (int l = 0; l < c->n_layer; l++) {
        const GpuLayer *w = &e->layers[l];
        /* residual += hidden (layer 0: residual = embedding row); xz = in_proj @ (rmsnorm(residual) * norm);
         * small batches: xc = silu(conv(conv state, x)) in the same kernel */
        const ConvEpi conv = {conv_state(e, 0, l), e->state_floats, w->conv_w, w->conv_b, E, c->d_conv, e->xc, 0};
        norm_project<T>(e, norm_in<T>(e, l, w->norm), e->xz, w->in_proj, B, 2 * E, big ? nullptr : &conv);
        /* (big: xc = silu(conv(conv state, x))); dbc = x_proj @ xc: dt_in, B, C */
        if (big) {
            launch(e, conv_step_kernel<T>, dim3((E + CONV_THREADS - 1) / CONV_THREADS, B), CONV_THREADS, 0,
                   (const float *)e->xz, 2 * E, conv.state, conv.slot_stride, conv.w, conv.b, E, conv.K, e->xc,
                   t_out<T>(e, e->xcT, true));
            gemm<T>(e, e->dbc, R, w->x_proj, gemm_in(e, e->xc, e->xcT), E, B, R, E);
        } else {
            gemv<T>(e, e->dbc, w->x_proj, e->xc, B, R, E, nullptr, true);
        }
        if (c->arch == ARCH_FALCON_MAMBA) /* dt_in, B, C each RMS-normalized */
            launch(e, mixer_norm_kernel, B, MIXER_NORM_THREADS, 0, e->dbc, R, c->dt_rank, N, c->mixer_eps);
        /* dt = softplus(dt_proj @ dt_in + bias); state update; y = (state . C + D x) * silu(z) */
        with_states(N, [&](auto ns) {
            constexpr int SPL = decltype(ns)::value / SSM_LANES;
            dim3 grid((E * SSM_LANES + SSM_THREADS - 1) / SSM_THREADS, B);
            launch(e, ssm_step_kernel<T, SPL>, grid, SSM_THREADS, R * sizeof(float), (const float *)e->dbc, R,
                   c->dt_rank, N, (const T *)w->dt_w, (int)(c->dt_rank % (16 / sizeof(T)) == 0), w->dt_b, w->A, w->D,
                   (const float *)e->xc, (const float *)e->xz, ssm_state(e, 0, l), e->state_floats,
                   (int)(e->ssm_vec && N == SSM_LANES * SPL), E, f32_out(e, e->y, big), t_out<T>(e, e->yT, big),
                   t_out<T>(e, e->yLo, big));
        });
        /* hidden = out_proj @ y */
        project<T>(e, e->hid, w->out_proj, e->y, gemm_in(e, e->y, e->yT, e->yLo), B, D, E);
    }
    /* residual += hidden; logits = lm_head @ (rmsnorm(residual) * norm_f) */
    norm_project<T>(e, norm_in<T>(e, c->n_layer, e->norm_f), e->logits, e->lm_head, B, c->vocab_rows);
}

/* How many segments the scan of an n-token chunk is cut into: enough for SCAN_BLOCKS_PER_SM blocks
 * a multiprocessor (1, one pass, when the channels alone give that many), each segment
 * SCAN_MIN_SEG tokens at least. With 512-token chunks on an H200 (132 multiprocessors) the
 * 2.8b shape (40 blocks of channels) takes 14 segments and the 130m shape (12 blocks) 16; the scan
 * then costs 55 us (SCAN_LOCAL) + 6 us (combine) + 60 us (SCAN_OUT) a 2.8b layer, measured by ncu at
 * its locked 1.5 GHz clock. RUNCUDA_SCAN_SEGS=k forces k. */
static int scan_segments(const Engine *e, int n, int cblocks) {
    if (e->scan_segs) return std::min(e->scan_segs, n); /* forced (the checks use it on short chunks) */
    int segs = (SCAN_BLOCKS_PER_SM * e->sms + cblocks - 1) / cblocks;
    segs = std::min(segs, std::min((int)SCAN_MAX_SEGS, n / SCAN_MIN_SEG));
    return std::max(segs, 1);
}

template <typename T> static void prefill_logits(Engine *e, int n, int all_logits, float *logits);

/* ----------------------------------------------------------------------------------------------
 * Prefill: n tokens (in e->tok) of slot seq; logits of the last token into e->logits, or of every
 * token into logits (all_logits). */
template <typename T>
static void forward_prefill(Engine *e, int seq, int n, int all_logits, float *logits) {
    const Config *c = &e->c;
    const int D = c->d_model, E = c->d_inner, N = c->d_state, R = e->R, K = c->d_conv;
    const bool narrow = c->dtype != DT_F32;
    const int cblocks = (E + SCAN_THREADS - 1) / SCAN_THREADS, want = scan_segments(e, n, cblocks);
    const int seg_len = (n + want - 1) / want, segs = (n + seg_len - 1) / seg_len; /* every segment holds tokens */
    T *hnT = (T *)e->hnT, *xcT = (T *)e->xcT, *yT = (T *)e->yT, *dbcT = (T *)e->dbcT;
    T *hnLo = (T *)e->hnLo, *yLo = (T *)e->yLo;
    for (int l = 0; l < c->n_layer; l++) {
        const GpuLayer *w = &e->layers[l];
        /* residual += hidden (layer 0: residual = embedding rows); hn = rmsnorm(residual) * norm */
        rmsnorm<T>(e, n, norm_in<T>(e, l, w->norm), narrow ? nullptr : e->hn, hnT, hnLo);
        /* xz = hn @ in_proj^T */
        gemm<T>(e, e->xz, 2 * E, w->in_proj, gemm_in(e, e->hn, hnT, hnLo), D, n, 2 * E, D);
        /* xc = silu(causal conv over [conv state, x]) */
        launch(e, conv_chunk_kernel<T>, dim3((E + CONV_THREADS - 1) / CONV_THREADS, n), CONV_THREADS, 0,
               (const float *)e->xz, 2 * E, (const float *)conv_state(e, seq, l), w->conv_w, w->conv_b, E, K, e->xc, xcT);
        /* dbc = xc @ x_proj^T: dt_in, B, C per token */
        gemm<T>(e, e->dbc, R, w->x_proj, gemm_in(e, e->xc, xcT), E, n, R, E);
        if (c->arch == ARCH_FALCON_MAMBA) /* dt_in, B, C each RMS-normalized */
            launch(e, mixer_norm_kernel, n, MIXER_NORM_THREADS, 0, e->dbc, R, c->dt_rank, N, c->mixer_eps);
        /* dt (before bias and softplus, which the scan applies) = dt_in @ dt_proj^T */
        if (narrow) {
            size_t cnt = (size_t)n * R;
            launch(e, narrow_kernel<T>, (unsigned)((cnt + 255) / 256), 256, 0, (const float *)e->dbc, dbcT, cnt);
        }
        gemm<T>(e, e->dt, E, w->dt_w, gemm_in(e, e->dbc, dbcT), R, n, E, c->dt_rank);
        /* the selective scan: y, the final SSM state, the conv state advanced (segments: see scan_kernel) */
        float *ssm = ssm_state(e, seq, l);
        with_states(N, [&](auto ns) {
            constexpr int NS = decltype(ns)::value;
            if (segs > 1) {
                launch(e, scan_kernel<T, NS, SCAN_LOCAL>, dim3(cblocks, segs - 1), SCAN_THREADS, 0, seg_len, e->seg_h,
                       e->seg_dt, (const float *)e->dt, w->dt_b, w->A, w->D, (const float *)e->xc, (const float *)e->xz,
                       (const float *)e->dbc, n, E, N, c->dt_rank, R, K, ssm, conv_state(e, seq, l), (float *)nullptr,
                       (T *)nullptr, (T *)nullptr);
                launch(e, scan_combine_kernel, (E * N + 255) / 256, 256, 0, segs, w->A, (const float *)ssm, e->seg_h,
                       (const float *)e->seg_dt, E, N);
            }
            launch(e, scan_kernel<T, NS, SCAN_OUT>, dim3(cblocks, segs), SCAN_THREADS, 0, seg_len, e->seg_h, e->seg_dt,
                   (const float *)e->dt, w->dt_b, w->A, w->D, (const float *)e->xc, (const float *)e->xz,
                   (const float *)e->dbc, n, E, N, c->dt_rank, R, K, ssm, conv_state(e, seq, l),
                   narrow ? nullptr : e->y, yT, yLo);
        });
        /* hidden = y @ out_proj^T */
        gemm<T>(e, e->hid, D, w->out_proj, gemm_in(e, e->y, yT, yLo), E, n, D, E);
    }
    prefill_logits<T>(e, n, all_logits, logits);
}

/* The end of a prefill, every family: residual += hidden, then the final norm and lm_head, for the
 * last token (GEMV) or for all (GEMM). */
template <typename T>
static void prefill_logits(Engine *e, int n, int all_logits, float *logits) {
    const Config *c = &e->c;
    const int D = c->d_model;
    const bool narrow = c->dtype != DT_F32;
    T *hnT = (T *)e->hnT, *hnLo = (T *)e->hnLo;
    NormIn<T> final = norm_in<T>(e, c->n_layer, e->norm_f);
    if (all_logits) {
        rmsnorm<T>(e, n, final, narrow ? nullptr : e->hn, hnT, hnLo);
        gemm<T>(e, logits, c->vocab_rows, e->lm_head, gemm_in(e, e->hn, hnT, hnLo), D, n, c->vocab_rows, D);
    } else {
        size_t last = (size_t)(n - 1) * D;
        final.res += last;
        final.add += last;
        rmsnorm<T>(e, 1, final, e->hn, nullptr, nullptr);
        gemv<T>(e, logits, e->lm_head, e->hn, 1, c->vocab_rows, D);
    }
}


/* ----------------------------------------------------------------------------------------------
 * Mamba-2 (E = d_inner, H heads of P channels, G groups, N = d_state, X = E + 2GN, Z = E + X + H) */

static Ssd ssd_args(const Engine *e, const GpuLayer *w) {
    const Config *c = &e->c;
    Ssd a;
    a.zx = e->xz;
    a.xc = e->xc;
    a.dt_bias = w->dt_bias;
    a.A = w->A;
    a.D = w->D;
    a.E = c->d_inner;
    a.H = c->n_heads;
    a.P = c->head_dim;
    a.G = c->n_groups;
    a.N = c->d_state;
    a.X = e->X;
    a.Z = e->Z;
    a.dt_min = c->dt_min;
    a.dt_max = c->dt_max;
    a.clamp = e->dt_clamp;
    a.ys = e->ys;
    return a;
}

/* Decode, Mamba-2: one token for each of slots 0..B-1. Tokens in e->tok, logits out in e->logits. */
template <typename T>
static void forward_step_mamba2(Engine *e, int B) {
    const Config *c = &e->c;
    const int D = c->d_model, E = c->d_inner, X = e->X, Z = e->Z;
    const bool big = B > GEMV_MAX_SEQS; /* projections as GEMMs */
    for (int l = 0; l < c->n_layer; l++) {
        const GpuLayer *w = &e->layers[l];
        /* residual += hidden (layer 0: residual = embedding row); xz = in_proj @ (rmsnorm(residual) * norm):
         * z, xBC, dt_raw; small batches: xc = silu(conv(conv state, xBC)) in the same kernel */
        const ConvEpi conv = {conv_state(e, 0, l), e->state_floats, w->conv_w, w->conv_b, X, c->d_conv, e->xc, E};
        norm_project<T>(e, norm_in<T>(e, l, w->norm), e->xz, w->in_proj, B, Z, big ? nullptr : &conv);
        if (big)
            launch(e, conv_step_kernel<T>, dim3((X + CONV_THREADS - 1) / CONV_THREADS, B), CONV_THREADS, 0,
                   (const float *)e->xz + E, Z, conv.state, conv.slot_stride, conv.w, conv.b, X, conv.K, e->xc,
                   (T *)nullptr);
        /* dt, the state update, ys = state . C + D x */
        launch(e, ssd_step_kernel, dim3((c->head_dim + SSD_STEP_ROWS - 1) / SSD_STEP_ROWS, c->n_heads, B),
               SSD_STEP_ROWS * 32, 0, ssd_args(e, w), ssm_state(e, 0, l), e->state_floats);
        /* y = gated group norm of ys with silu(z) */
        launch(e, gated_norm_kernel<T>, dim3(c->n_groups, B), GNORM_THREADS, 0, (const float *)e->ys,
               (const float *)e->xz, Z, w->gnorm, E, c->n_groups, c->norm_eps, f32_out(e, e->y, big),
               t_out<T>(e, e->yT, big), t_out<T>(e, e->yLo, big));
        /* hidden = out_proj @ y */
        project<T>(e, e->hid, w->out_proj, e->y, gemm_in(e, e->y, e->yT, e->yLo), B, D, E);
    }
    /* residual += hidden; logits = lm_head @ (rmsnorm(residual) * norm_f) */
    norm_project<T>(e, norm_in<T>(e, c->n_layer, e->norm_f), e->logits, e->lm_head, B, c->vocab_rows);
}

/* Calls f with SPL, the states an ssd_scan lane holds (d_state / SSD_LPR rounded up to a power of two). */
template <typename F> static void with_ssd_states(int N, F f) {
    if (N <= SSD_LPR) f(std::integral_constant<int, 1>());
    else if (N <= 2 * SSD_LPR) f(std::integral_constant<int, 2>());
    else if (N <= 4 * SSD_LPR) f(std::integral_constant<int, 4>());
    else if (N <= 8 * SSD_LPR) f(std::integral_constant<int, 8>());
    else f(std::integral_constant<int, 16>());
}

/* Prefill, Mamba-2: n tokens (in e->tok) of slot seq. */
template <typename T>
static void forward_prefill_mamba2(Engine *e, int seq, int n, int all_logits, float *logits) {
    const Config *c = &e->c;
    const int D = c->d_model, E = c->d_inner, X = e->X, Z = e->Z, K = c->d_conv;
    const bool narrow = c->dtype != DT_F32;
    T *hnT = (T *)e->hnT, *yT = (T *)e->yT, *hnLo = (T *)e->hnLo, *yLo = (T *)e->yLo;
    for (int l = 0; l < c->n_layer; l++) {
        const GpuLayer *w = &e->layers[l];
        float *conv = conv_state(e, seq, l);
        /* residual += hidden (layer 0: residual = embedding rows); hn = rmsnorm(residual) * norm */
        rmsnorm<T>(e, n, norm_in<T>(e, l, w->norm), narrow ? nullptr : e->hn, hnT, hnLo);
        /* xz = hn @ in_proj^T: z, xBC, dt_raw per token */
        gemm<T>(e, e->xz, Z, w->in_proj, gemm_in(e, e->hn, hnT, hnLo), D, n, Z, D);
        /* xc = silu(causal conv over [conv state, xBC]); then the conv state advanced */
        launch(e, conv_chunk_kernel<T>, dim3((X + CONV_THREADS - 1) / CONV_THREADS, n), CONV_THREADS, 0,
               (const float *)e->xz + E, Z, (const float *)conv, w->conv_w, w->conv_b, X, K, e->xc, (T *)nullptr);
        launch(e, conv_advance_kernel, (X + CONV_THREADS - 1) / CONV_THREADS, CONV_THREADS, 0, (const float *)e->xz + E,
               Z, conv, X, K, n);
        /* the state recurrence over the chunk: ys, and the SSM state left */
        with_ssd_states(c->d_state, [&](auto spl) {
            launch(e, ssd_scan_kernel<decltype(spl)::value>,
                   dim3((c->head_dim + SSD_ROWS - 1) / SSD_ROWS, c->n_heads), SSD_THREADS, 0, ssd_args(e, w),
                   ssm_state(e, seq, l), n);
        });
        /* y = gated group norm of ys with silu(z); hidden = y @ out_proj^T */
        launch(e, gated_norm_kernel<T>, dim3(c->n_groups, n), GNORM_THREADS, 0, (const float *)e->ys,
               (const float *)e->xz, Z, w->gnorm, E, c->n_groups, c->norm_eps, narrow ? nullptr : e->y, yT, yLo);
        gemm<T>(e, e->hid, D, w->out_proj, gemm_in(e, e->y, yT, yLo), E, n, D, E);
    }
    prefill_logits<T>(e, n, all_logits, logits);
}

/* Each family's forward pass, for the weights' dtype T. */
template <typename T> static void step_fn(Engine *e, int B) {
    if (e->c.arch == ARCH_MAMBA2) forward_step_mamba2<T>(e, B);
    else forward_step<T>(e, B); /* Mamba-1, Falcon-Mamba */
}
template <typename T> static void prefill_fn(Engine *e, int seq, int n, int all_logits, float *logits) {
    if (e->c.arch == ARCH_MAMBA2) forward_prefill_mamba2<T>(e, seq, n, all_logits, logits);
    else forward_prefill<T>(e, seq, n, all_logits, logits); /* Mamba-1, Falcon-Mamba */
}

/* ----------------------------------------------------------------------------------------------
 * engine.h */

#define TRY(call)                                                                                    \
    do {                                                                                             \
        cudaError_t err_ = (call);                                                                   \
        if (err_ != cudaSuccess) {                                                                   \
            snprintf(err, errlen, "CUDA: %s: %s", #call, cudaGetErrorString(err_));                 \
            return 0;                                                                                \
        }                                                                                            \
    } while (0)

/* Device memory, zeroed: no kernel (ours or cuBLAS's, which may read whole tiles) ever reads bytes
 * that nothing wrote, such as the rows of a buffer past the current batch. */
template <typename P> static cudaError_t dev_alloc(Engine *e, P **p, size_t bytes) {
    cudaError_t st = cudaMalloc((void **)p, bytes);
    return st == cudaSuccess ? cudaMemsetAsync(*p, 0, bytes, e->stream) : st;
}

static int engine_init(Engine *e, const Model *m, int max_seqs, char *err, size_t errlen) {
    const Config *c = &m->config;
    e->c = *c;
    e->max_seqs = max_seqs;
    e->rows = max_seqs > PREFILL_CHUNK ? max_seqs : PREFILL_CHUNK;
    const bool m2 = c->arch == ARCH_MAMBA2;
    e->R = c->dt_rank + 2 * c->d_state;
    e->X = conv_channels(c);
    e->Z = m2 ? c->d_inner + e->X + c->n_heads : 2 * c->d_inner;
    e->dt_clamp = m2 && (c->dt_min > 0.0f || c->dt_max < INFINITY);
    e->layer_floats = layer_state_floats(c);
    e->state_floats = (size_t)c->n_layer * e->layer_floats;
    e->ssm_vec = c->d_state % 4 == 0 && (size_t)c->d_inner * (c->d_conv - 1) % 4 == 0;

    cudaDeviceProp prop;
    TRY(cudaSetDevice(0));
    TRY(cudaGetDeviceProperties(&prop, 0));
    snprintf(e->name, sizeof e->name, "CUDA, %s", prop.name);
    e->sms = prop.multiProcessorCount;
    TRY(cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking));

    cublasStatus_t bs = cublasCreate(&e->blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuBLAS: cublasCreate: %s", cublasGetStatusString(bs));
        return 0;
    }
    /* A workspace of our own, so that cuBLAS allocates nothing while a step is being captured. */
    const size_t ws_bytes = 32u << 20;
    TRY(dev_alloc(e, &e->blas_ws, ws_bytes));
    if ((bs = cublasSetStream(e->blas, e->stream)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetWorkspace(e->blas, e->blas_ws, ws_bytes)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetMathMode(e->blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuBLAS setup: %s", cublasGetStatusString(bs));
        return 0;
    }

    /* The weights: the file's weight section in one copy; each tensor keeps its offset. */
    uint64_t woff, wbytes;
    memcpy(&woff, (const uint8_t *)m->map + 80, 8);
    memcpy(&wbytes, (const uint8_t *)m->map + 88, 8);
    const uint8_t *host = (const uint8_t *)m->map + woff;
    TRY(dev_alloc(e, &e->wdev, wbytes));
    TRY(cudaMemcpyAsync(e->wdev, host, wbytes, cudaMemcpyHostToDevice, e->stream));
#define DEV(t) ((const void *)(e->wdev + ((const uint8_t *)(t).data - host)))
    e->emb = DEV(m->weights.embedding);
    e->lm_head = DEV(m->weights.lm_head);
    e->norm_f = (const float *)DEV(m->weights.norm_f);

    /* A = -exp(A_log), computed on the host as run.c does: [d_inner][d_state] a layer, Mamba-2 [n_heads]. */
    const size_t an = m2 ? (size_t)c->n_heads : (size_t)c->d_inner * c->d_state;
    float *A = (float *)malloc(an * c->n_layer * sizeof(float));
    e->layers = (GpuLayer *)calloc(c->n_layer, sizeof(GpuLayer));
    if (!A || !e->layers) {
        free(A);
        snprintf(err, errlen, "out of host memory");
        return 0;
    }
    for (int l = 0; l < c->n_layer; l++) {
        const float *A_log = (const float *)m->weights.layers[l].A_log.data;
        for (size_t i = 0; i < an; i++) A[l * an + i] = -expf(A_log[i]);
    }
    cudaError_t st = dev_alloc(e, &e->A, an * c->n_layer * sizeof(float));
    if (st == cudaSuccess) st = cudaMemcpyAsync(e->A, A, an * c->n_layer * sizeof(float), cudaMemcpyHostToDevice, e->stream);
    if (st == cudaSuccess) st = cudaStreamSynchronize(e->stream); /* also ends the weights' copy */
    free(A);
    TRY(st);
    for (int l = 0; l < c->n_layer; l++) {
        const LayerWeights *L = &m->weights.layers[l];
        GpuLayer *g = &e->layers[l];
        g->norm = (const float *)DEV(L->norm);
        g->conv_w = (const float *)DEV(L->conv_w);
        g->conv_b = (const float *)DEV(L->conv_b);
        g->D = (const float *)DEV(L->D);
        g->A = e->A + l * an;
        g->in_proj = DEV(L->in_proj);
        g->out_proj = DEV(L->out_proj);
        if (m2) {
            g->dt_bias = (const float *)DEV(L->dt_bias);
            g->gnorm = (const float *)DEV(L->gnorm);
        } else {
            g->dt_b = (const float *)DEV(L->dt_proj_b);
            g->x_proj = DEV(L->x_proj);
            g->dt_w = DEV(L->dt_proj_w);
        }
    }
#undef DEV

    /* States and activations */
    const size_t rows = e->rows, E = c->d_inner, D = c->d_model, ts = dtype_size(c->dtype);
    TRY(dev_alloc(e, &e->states, max_seqs * e->state_floats * sizeof(float)));
    TRY(dev_alloc(e, &e->res, rows * D * sizeof(float)));
    TRY(dev_alloc(e, &e->hid, rows * D * sizeof(float)));
    TRY(dev_alloc(e, &e->hn, rows * D * sizeof(float)));
    TRY(dev_alloc(e, &e->xz, rows * e->Z * sizeof(float)));
    TRY(dev_alloc(e, &e->xc, rows * e->X * sizeof(float)));
    TRY(dev_alloc(e, &e->y, rows * E * sizeof(float)));
    if (m2) {
        TRY(dev_alloc(e, &e->ys, rows * E * sizeof(float)));
    } else {
        TRY(dev_alloc(e, &e->dbc, rows * e->R * sizeof(float)));
        TRY(dev_alloc(e, &e->dt, rows * E * sizeof(float)));
    }
    if (c->dtype != DT_F32) {
        TRY(dev_alloc(e, &e->hnT, rows * D * ts));
        TRY(dev_alloc(e, &e->yT, rows * E * ts));
        if (!m2) {
            TRY(dev_alloc(e, &e->xcT, rows * E * ts));
            TRY(dev_alloc(e, &e->dbcT, rows * e->R * ts));
        }
    }
    if (c->dtype == DT_BF16) { /* bf16 keeps 8 bits: in_proj's and out_proj's inputs need the rest */
        TRY(dev_alloc(e, &e->hnLo, rows * D * ts));
        TRY(dev_alloc(e, &e->yLo, rows * E * ts));
    }
    if (!m2) {
        TRY(dev_alloc(e, &e->seg_h, (size_t)SCAN_MAX_SEGS * E * c->d_state * sizeof(float)));
        TRY(dev_alloc(e, &e->seg_dt, (size_t)SCAN_MAX_SEGS * E * sizeof(float)));
    }
    TRY(dev_alloc(e, &e->tok, rows * sizeof(int)));
    TRY(cudaMallocHost((void **)&e->h_tok, rows * sizeof(int)));
    TRY(dev_alloc(e, &e->logits, (size_t)max_seqs * c->vocab_rows * sizeof(float)));
    TRY(cudaMallocHost((void **)&e->h_logits, (size_t)max_seqs * c->vocab_rows * sizeof(float)));
    e->graphs = (cudaGraphExec_t *)calloc(max_seqs + 1, sizeof(cudaGraphExec_t));
    if (!e->graphs) {
        snprintf(err, errlen, "out of host memory");
        return 0;
    }
    TRY(cudaStreamSynchronize(e->stream));
    const char *pdl = getenv("RUNCUDA_PDL");
    e->use_pdl = !(pdl && !strcmp(pdl, "0"));
    const char *ks = getenv("RUNCUDA_GEMV_KSPLIT");
    e->gemv_ksplit = ks ? atoi(ks) : 0;
    e->gemv_min_blocks = e->sms * GEMV_BLOCKS_PER_SM;
    const char *sg = getenv("RUNCUDA_SCAN_SEGS");
    e->scan_segs = sg ? std::max(0, std::min(atoi(sg), (int)SCAN_MAX_SEGS)) : 0;
    return 1;
}

Engine *engine_new(const Model *m, int max_seqs, char *err, size_t errlen) {
    const Config *c = &m->config;
    if (c->dtype >= DT_Q8_0) { /* no GPU kernels for the quantized types yet; checked first, before any device */
        snprintf(err, errlen, "the CUDA engine does not run %s weights yet: use ./run, or export with --dtype fp16",
                 dtype_name(c->dtype));
        return NULL;
    }
    int ndev = 0;
    cudaError_t st = cudaGetDeviceCount(&ndev);
    if (st != cudaSuccess || ndev == 0) {
        snprintf(err, errlen, "no CUDA device: %s", st != cudaSuccess ? cudaGetErrorString(st) : "none found");
        return NULL;
    }
    if (max_seqs < 1) {
        snprintf(err, errlen, "max_seqs must be at least 1");
        return NULL;
    }
    const int max_state = c->arch == ARCH_MAMBA2 ? MAX_SSD_STATE : MAX_SCAN_STATE;
    if (c->d_state > max_state || c->d_state < 1 || c->d_conv < 1 || c->d_model > NORM_THREADS * NORM_PER) {
        snprintf(err, errlen,
                 "the CUDA engine needs 1 <= d_state <= %d (%s), d_conv >= 1 and d_model <= %d (d_state %d, "
                 "d_conv %d, d_model %d)",
                 max_state, arch_name(c->arch), (int)(NORM_THREADS * NORM_PER), c->d_state, c->d_conv, c->d_model);
        return NULL;
    }
    Engine *e = (Engine *)calloc(1, sizeof(Engine));
    if (!e) {
        snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    if (!engine_init(e, m, max_seqs, err, errlen)) {
        engine_free(e);
        return NULL;
    }
    return e;
}

/* Freeing: errors are ignored, there is nothing left to do about them. */
void engine_free(Engine *e) {
    if (!e) return;
    if (e->graphs)
        for (int i = 0; i <= e->max_seqs; i++)
            if (e->graphs[i]) (void)cudaGraphExecDestroy(e->graphs[i]);
    free(e->graphs);
    if (e->blas) (void)cublasDestroy(e->blas);
    void *dev[] = {e->blas_ws, e->wdev, e->A, e->states, e->res, e->hid, e->hn, e->xz, e->xc, e->dbc, e->dt, e->y,
                   e->ys, e->hnT, e->xcT, e->dbcT, e->yT, e->hnLo, e->yLo, e->seg_h, e->seg_dt, e->tok, e->logits, e->logits_all};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) (void)cudaFree(dev[i]);
    (void)cudaFreeHost(e->h_tok);
    (void)cudaFreeHost(e->h_logits);
    (void)cudaFreeHost(e->h_logits_all);
    if (e->stream) (void)cudaStreamDestroy(e->stream);
    free(e->layers);
    free(e);
}

const char *engine_name(const Engine *e) { return e->name; }
size_t engine_state_floats(const Engine *e) { return e->state_floats; }

static void check_seq(const Engine *e, int seq, const char *what) {
    if (seq < 0 || seq >= e->max_seqs) {
        fprintf(stderr, "error: %s: slot %d out of range (0..%d)\n", what, seq, e->max_seqs - 1);
        exit(1);
    }
}

/* Copies tokens into the pinned staging buffer, refusing ids outside the embedding. */
static void stage_tokens(Engine *e, const int *tokens, int n) {
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= e->c.vocab_rows) {
            fprintf(stderr, "error: token id %d out of range (0..%d)\n", tokens[i], e->c.vocab_rows - 1);
            exit(1);
        }
        e->h_tok[i] = tokens[i];
    }
}

void engine_reset(Engine *e, int seq) {
    check_seq(e, seq, "engine_reset");
    CHECK(cudaMemsetAsync(conv_state(e, seq, 0), 0, e->state_floats * sizeof(float), e->stream));
}

void engine_get_state(Engine *e, int seq, float *out) {
    check_seq(e, seq, "engine_get_state");
    CHECK(cudaMemcpyAsync(out, conv_state(e, seq, 0), e->state_floats * sizeof(float), cudaMemcpyDeviceToHost, e->stream));
    CHECK(cudaStreamSynchronize(e->stream));
}

void engine_set_state(Engine *e, int seq, const float *in) {
    check_seq(e, seq, "engine_set_state");
    CHECK(cudaMemcpyAsync(conv_state(e, seq, 0), in, e->state_floats * sizeof(float), cudaMemcpyHostToDevice, e->stream));
    CHECK(cudaStreamSynchronize(e->stream));
}

void engine_copy_state(Engine *e, int to, int from) {
    check_seq(e, to, "engine_copy_state");
    check_seq(e, from, "engine_copy_state");
    if (to == from) return;
    CHECK(cudaMemcpyAsync(conv_state(e, to, 0), conv_state(e, from, 0), e->state_floats * sizeof(float),
                          cudaMemcpyDeviceToDevice, e->stream));
}

const float *engine_prefill(Engine *e, int seq, const int *tokens, int n, int all_logits) {
    check_seq(e, seq, "engine_prefill");
    if (n < 1 || n > PREFILL_CHUNK) {
        fprintf(stderr, "error: engine_prefill: %d tokens (1..%d)\n", n, (int)PREFILL_CHUNK);
        exit(1);
    }
    const size_t row_bytes = (size_t)e->c.vocab_rows * sizeof(float);
    if (all_logits && !e->logits_all) {
        CHECK(dev_alloc(e, &e->logits_all, PREFILL_CHUNK * row_bytes));
        CHECK(cudaMallocHost((void **)&e->h_logits_all, PREFILL_CHUNK * row_bytes));
    }
    float *logits = all_logits ? e->logits_all : e->logits, *h_logits = all_logits ? e->h_logits_all : e->h_logits;
    stage_tokens(e, tokens, n);
    CHECK(cudaMemcpyAsync(e->tok, e->h_tok, n * sizeof(int), cudaMemcpyHostToDevice, e->stream));
    switch (e->c.dtype) {
    case DT_F32: prefill_fn<float>(e, seq, n, all_logits, logits); break;
    case DT_F16: prefill_fn<f16>(e, seq, n, all_logits, logits); break;
    default: prefill_fn<bf16>(e, seq, n, all_logits, logits); break;
    }
    CHECK(cudaMemcpyAsync(h_logits, logits, (all_logits ? n : 1) * row_bytes, cudaMemcpyDeviceToHost, e->stream));
    CHECK(cudaStreamSynchronize(e->stream));
    return h_logits;
}

/* The step for nseq sequences, captured into a graph at its first use: tokens from the pinned
 * staging buffer in, every layer, logits out to pinned memory. */
static cudaGraphExec_t step_graph(Engine *e, int nseq) {
    if (e->graphs[nseq]) return e->graphs[nseq];
    cudaGraph_t g;
    CHECK(cudaStreamBeginCapture(e->stream, cudaStreamCaptureModeThreadLocal));
    CHECK(cudaMemcpyAsync(e->tok, e->h_tok, nseq * sizeof(int), cudaMemcpyHostToDevice, e->stream));
    e->capturing = true;
    e->after_kernel = false;
    switch (e->c.dtype) {
    case DT_F32: step_fn<float>(e, nseq); break;
    case DT_F16: step_fn<f16>(e, nseq); break;
    default: step_fn<bf16>(e, nseq); break;
    }
    e->capturing = false;
    CHECK(cudaMemcpyAsync(e->h_logits, e->logits, (size_t)nseq * e->c.vocab_rows * sizeof(float),
                          cudaMemcpyDeviceToHost, e->stream));
    CHECK(cudaStreamEndCapture(e->stream, &g));
    CHECK(cudaGraphInstantiate(&e->graphs[nseq], g, 0));
    CHECK(cudaGraphDestroy(g));
    return e->graphs[nseq];
}

const float *engine_step(Engine *e, const int *tokens, int nseq) {
    if (nseq < 1 || nseq > e->max_seqs) {
        fprintf(stderr, "error: engine_step: %d sequences (1..%d)\n", nseq, e->max_seqs);
        exit(1);
    }
    stage_tokens(e, tokens, nseq);
    CHECK(cudaGraphLaunch(step_graph(e, nseq), e->stream));
    CHECK(cudaStreamSynchronize(e->stream));
    return e->h_logits;
}
