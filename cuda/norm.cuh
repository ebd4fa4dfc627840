/* cuda/norm.cuh: the RMS norms: the layer norm (with the residual add), Falcon-Mamba's weightless
 * norm of dt_in, B and C, and Mamba-2's gated group norm. */
#ifndef NORM_CUH
#define NORM_CUH

#include "common.cuh"
#include "quant.cuh"

enum {
    NORM_THREADS = 512,
    NORM_PER = 8,       /* elements of a row a norm thread holds: d_model up to 4096 */
    MIXER_NORM_THREADS = 96, /* Falcon-Mamba's norm of dt_in, B, C: a warp each */
    GNORM_THREADS = 512, /* Mamba-2 gated group norm: a block per (row, group) */
    GNORM_PER = 16       /* ... elements of a group a thread holds: groups up to 8192 channels */
};

/* What a layer's RMSNorm reads: the residual stream is res + add (the previous layer's output),
 * or for layer 0 the embedding rows of tokens (emb: dense T or quantized, widened by mat_elem);
 * the sum is stored back to res, then normalized and scaled by w. */
template <typename T> struct NormIn {
    float *res;
    const float *add;
    const int *tokens;
    Mat emb;
    const float *w;
    float eps;
};

template <typename T> __device__ __forceinline__ float residual(const NormIn<T> &a, int D, int row, int i) {
    return a.tokens ? mat_elem<T>(a.emb, a.tokens[row], D, i)
                    : a.res[(size_t)row * D + i] + a.add[(size_t)row * D + i];
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

/* y -> out: u = y * silu(z), then per group of E/G channels u / sqrt(mean(u^2) + eps) * weight; a
 * block per (group, row). out (fp32) and/or outT (the weights' dtype; outLo: see store_narrow).
 * A thread holds up to GNORM_PER elements of the group (E/G <= GNORM_THREADS * GNORM_PER, checked at
 * start-up), every load issued before the first use, as in rmsnorm_kernel: in decode (one row, one
 * group of 5120 channels for mamba2-2.7b) a loop that waited for each load in turn took 24 us a
 * layer on an H200, 35% of the step (ncu, bench/profile_gpu.sh m2-2.7b). */
template <typename T>
__global__ void __launch_bounds__(GNORM_THREADS)
gated_norm_kernel(const float *ys, const float *zx, int Z, const float *w, int E, int G, float eps, float *out,
                  T *outT, T *outLo) {
    launch_next();
    const int row = blockIdx.y, gs = E / G;
    const float *wg = w + (size_t)blockIdx.x * gs;
    float wv[GNORM_PER], u[GNORM_PER];
#pragma unroll
    for (int k = 0; k < GNORM_PER; k++) {
        const int i = threadIdx.x + k * GNORM_THREADS;
        wv[k] = i < gs ? wg[i] : 0.0f; /* a weight: read before waiting */
    }
    wait_prior();
    const size_t o = (size_t)row * E + (size_t)blockIdx.x * gs;
    const float *y = ys + o, *z = zx + (size_t)row * Z + (size_t)blockIdx.x * gs;
    float yv[GNORM_PER], zv[GNORM_PER];
#pragma unroll
    for (int k = 0; k < GNORM_PER; k++) {
        const int i = threadIdx.x + k * GNORM_THREADS;
        yv[k] = i < gs ? y[i] : 0.0f;
        zv[k] = i < gs ? z[i] : 0.0f;
    }
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < GNORM_PER; k++) {
        u[k] = yv[k] * silu(zv[k]);
        ss += u[k] * u[k];
    }
    const float r = 1.0f / sqrtf(block_sum(ss) / gs + eps);
#pragma unroll
    for (int k = 0; k < GNORM_PER; k++) {
        const int i = threadIdx.x + k * GNORM_THREADS;
        if (i >= gs) break;
        const float v = u[k] * (r * wv[k]); /* run.c's order */
        if (out) out[o + i] = v;
        if (outT) store_narrow(outT, outLo, o + i, v);
    }
}

#endif
