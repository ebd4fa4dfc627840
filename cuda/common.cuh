/* cuda/common.cuh: what every kernel header uses: CUDA headers, error checks, the weight types and
 * their loads, the activation functions, programmatic dependent launch, warp and block sums. */
#ifndef COMMON_CUH
#define COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

/* The prompts of a prefill (engine_prefill_many runs several at once): prompt z's slot (x), its
 * first row among the prefill's rows (y) and its tokens (z); prefill kernels take prompt blockIdx.z.
 * States of slot s lie slot_stride floats after slot 0's. */
__device__ __forceinline__ int4 prompt_of(const int4 *prompts) { return prompts[blockIdx.z]; }

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

#endif
