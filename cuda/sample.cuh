/* cuda/sample.cuh: picking tokens on the device, so that greedy decoding copies ids, not rows of
 * logits, to the host. */
#ifndef SAMPLE_CUH
#define SAMPLE_CUH

#include "common.cuh"

enum { ARGMAX_THREADS = 512 };

/* (value, id) a over b: the larger value, the lower id among equal ones; id -1 = none yet. */
__device__ __forceinline__ void argmax_merge(float &v, int &id, float ov, int oid) {
    if (oid >= 0 && (id < 0 || ov > v || (ov == v && oid < id))) { v = ov; id = oid; }
}

/* ids[row] = the lowest id among those of the largest of logits[row][0..V), a block a row: what
 * logits_argmax (sampler.c) returns on the host. Each thread keeps the first of its largest (it
 * reads its ids in increasing order), then the block merges them. A row with no value above -inf
 * (or only NaNs) gives 0, as the host's loop does. */
__global__ void argmax_kernel(const float *__restrict__ logits, size_t ld, int V, int *__restrict__ ids) {
    launch_next();
    wait_prior();
    const float *row = logits + blockIdx.x * ld;
    float v = -INFINITY;
    int id = -1;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        const float x = row[i];
        if (x > v) { v = x; id = i; }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) argmax_merge(v, id, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, id, o));
    __shared__ float pv[ARGMAX_THREADS / 32];
    __shared__ int pid[ARGMAX_THREADS / 32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) { pv[warp] = v; pid[warp] = id; }
    __syncthreads();
    if (warp != 0) return;
    v = lane < ARGMAX_THREADS / 32 ? pv[lane] : -INFINITY;
    id = lane < ARGMAX_THREADS / 32 ? pid[lane] : -1;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) argmax_merge(v, id, __shfl_xor_sync(0xffffffffu, v, o), __shfl_xor_sync(0xffffffffu, id, o));
    if (lane == 0) ids[blockIdx.x] = id < 0 ? 0 : id;
}

#endif
