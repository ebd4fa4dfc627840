/* cuda/scan.cuh: the Mamba-1 selective scan: the decode state update (ssm_step) and the prefill scan
 * over a chunk, cut into segments along time. */
#ifndef SCAN_CUH
#define SCAN_CUH

#include "common.cuh"
#include "conv.cuh"

enum {
    SSM_LANES = 4,      /* ssm_step: lanes per channel, each holding d_state / SSM_LANES states */
    SSM_THREADS = 64,   /* ssm_step: threads of one sequence in a block */
    SSM_CHANNELS = SSM_THREADS / SSM_LANES, /* ssm_step: channels a block takes */
    SSM_SEQS = 4,       /* ssm_step_batch_kernel: sequences a block takes */
    DT_PRE = 8,         /* ssm_step_kernel: dt_proj pieces a lane loads before waiting (rows up to 512 bytes) */
    SCAN_THREADS = 128, /* threads per scan block (SCAN_THREADS / SCAN_LANES channels) */
    SCAN_LANES = 4,     /* lanes a channel takes in the prefill scan, each d_state / SCAN_LANES states */
    SCAN_TILE = 16,     /* time steps of the chunk staged in shared memory at once */
    MAX_SCAN_STATE = 32, /* d_state up to this (registers of a scan thread), 8 a lane in ssm_step */
    SCAN_MAX_SEGS = 16, /* the most segments a prefill chunk's scan is cut into along time */
    SCAN_MIN_SEG = 32,  /* tokens a segment holds at least */
    SCAN_BLOCKS_PER_SM = 4, /* scan blocks wanted per multiprocessor (SCAN_THREADS each) */
};

/* The decode state update (ssm_step_kernel, ssm_step_batch_kernel), per (channel, sequence):
 *   dt = softplus(dt_proj . dt_in + bias)
 *   h = exp(dt A) h + dt x B;  y = (h . C + D x) * silu(z)
 * SSM_LANES lanes per (channel, sequence), each holding SPL of the channel's d_state states in
 * registers (states past d_state idle) and taking every SSM_LANES-th 16-byte piece of the dt_proj
 * row. vec: d_state = SSM_LANES * SPL and the rows start on 16 bytes (float4 access). */

/* A lane's states h[0..SPL) and A row a[0..SPL), zeros past d_state. */
template <int SPL>
__device__ __forceinline__ void ssm_load_lane(const float *h, const float *a, int n0, int N, bool vec, float (&hv)[SPL],
                                              float (&av)[SPL]) {
    if (SPL % 4 == 0 && vec) {
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
}

/* The sum over a channel's SSM_LANES lanes of each lane's v, in every lane. */
__device__ __forceinline__ float lanes_sum(float v) {
#pragma unroll
    for (int o = 1; o < SSM_LANES; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The rest of the update, once every lane holds d = dt_proj . dt_in: dt, the states (written back
 * to h when the channel is real), and y of element `at` (fp32 y and/or narrowed yT, yLo), written
 * by lane 0. bc: the sequence's B (C follows N floats later) at the lane's first state. */
template <typename T, int SPL>
__device__ __forceinline__ void ssm_update_lane(float d, float bias, float x, float z, float Dc, const float *bc, int n0, int N,
                                                bool vec, float (&hv)[SPL], const float (&av)[SPL], bool real, bool lane0,
                                                float *h, size_t at, float *y, T *yT, T *yLo) {
    const float dt = softplus(d + bias), dtx = dt * x;
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < SPL; j++)
        if (n0 + j < N) {
            hv[j] = expf(dt * av[j]) * hv[j] + bc[j] * dtx;
            acc += hv[j] * bc[N + j];
        }
    if (real && SPL % 4 == 0 && vec) {
#pragma unroll
        for (int j = 0; j < SPL; j += 4) *(float4 *)(h + j) = make_float4(hv[j], hv[j + 1], hv[j + 2], hv[j + 3]);
    } else if (real) {
#pragma unroll
        for (int j = 0; j < SPL; j++)
            if (n0 + j < N) h[j] = hv[j];
    }
    acc = lanes_sum(acc);
    if (real && lane0) {
        const float out = (acc + Dc * x) * silu(z);
        if (y) y[at] = out;
        if (yT) store_narrow(yT, yLo, at, out);
    }
}

/* The state update of one token of B sequences (up to GEMV_MAX_SEQS: the GEMV path), a block
 * per SSM_CHANNELS channels of one sequence (blockIdx.y). The lane's pieces of the dt_proj row, A,
 * D, the bias and the channel's state are read into registers before waiting for x_proj (nothing
 * before this kernel in the step writes them; under programmatic dependent launch, while x_proj
 * runs); dbc = [dt_in, B, C] of the sequence is staged in shared memory. dtvec: dt_rank a whole
 * number of 16-byte pieces. Shared memory: R floats. */
template <typename T, int SPL>
__global__ void __launch_bounds__(SSM_THREADS)
ssm_step_kernel(const float *dbc, int R, int dt_rank, int N, const T *dt_w, int dtvec, const float *dt_b,
                const float *A, const float *Dv, const float *xc, const float *xz, float *ssm, size_t slot_stride,
                int vec, int E, float *y, T *yT, T *yLo) {
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
    float hv[SPL], av[SPL];
    ssm_load_lane<SPL>(h, A + (size_t)cc * N + n0, n0, N, vec, hv, av);
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
    ssm_update_lane<T, SPL>(lanes_sum(d), bias, x, z, Dc, sdbc + dt_rank + n0, n0, N, vec, hv, av, c < E, g == 0, h,
                            (size_t)s * E + c, y, yT, yLo);
}

/* ssm_step_batch_kernel's shared memory: its dt_proj rows (a whole number of 16-byte pieces), the
 * dt_in, B, C of its sequences, then dt_proj . dt_in of its channels and sequences (the tensor-core
 * product's results). */
__host__ __device__ inline int ssm_batch_rows_bytes(int dt_rank, int tsize) {
    return (SSM_CHANNELS * dt_rank * tsize + 15) / 16 * 16;
}
__host__ __device__ inline int ssm_batch_smem(int dt_rank, int tsize, int R) {
    return ssm_batch_rows_bytes(dt_rank, tsize) + (SSM_SEQS * R + SSM_CHANNELS * SSM_SEQS) * (int)sizeof(float);
}

/* Two floats rounded to T (fp16 or bf16) in one 32-bit register, the first in the low half. */
template <typename T> __device__ __forceinline__ uint32_t pack_pair(float a, float b);
template <> __device__ __forceinline__ uint32_t pack_pair<f16>(float a, float b) {
    const __half2 h = __floats2half2_rn(a, b);
    return *(const uint32_t *)&h;
}
template <> __device__ __forceinline__ uint32_t pack_pair<bf16>(float a, float b) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(a, b);
    return *(const uint32_t *)&h;
}
/* acc += A B on the tensor cores, one warp: A 16 x 16 (row-major fragment a), B 16 x 8 (column-major
 * fragment b), fp32 accumulators (PTX mma.m16n8k16; the fragments' layout is in its documentation). */
template <typename T> __device__ __forceinline__ void mma_16x8x16(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);
template <> __device__ __forceinline__ void mma_16x8x16<f16>(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <> __device__ __forceinline__ void mma_16x8x16<bf16>(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* dt_proj . dt_in of a block's SSM_CHANNELS channels and ns sequences on the tensor cores, by one
 * warp (lane): sw the rows [SSM_CHANNELS][dt_rank] in T, sdbc the sequences' dbc rows (R floats
 * each, dt_in first), narrowed to T here as the prefill's dt_proj GEMM narrows them; the products
 * go to sdt[channel][sequence]. dt_rank a multiple of 16 and R even. Sequences ns .. 7 of the
 * 8-column product are zeros. */
template <typename T>
__device__ __forceinline__ void dt_proj_mma(const T *sw, const float *sdbc, int R, int dt_rank, int ns, int lane, float *sdt) {
    static_assert(SSM_CHANNELS == 16 && SSM_SEQS <= 8, "one m16n8 tile");
    const int gr = lane / 4, tq = lane % 4; /* the fragments' row group and pair within it */
    float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int k0 = 0; k0 < dt_rank; k0 += 16) {
        const T *w = sw + gr * dt_rank + k0 + 2 * tq;
        const uint32_t a[4] = {*(const uint32_t *)w, *(const uint32_t *)(w + 8 * dt_rank), *(const uint32_t *)(w + 8),
                               *(const uint32_t *)(w + 8 * dt_rank + 8)};
        uint32_t b[2] = {0u, 0u};
        if (gr < ns) {
            const float *in = sdbc + gr * R + k0 + 2 * tq;
            const float2 lo = *(const float2 *)in, hi = *(const float2 *)(in + 8);
            b[0] = pack_pair<T>(lo.x, lo.y);
            b[1] = pack_pair<T>(hi.x, hi.y);
        }
        mma_16x8x16<T>(acc, a, b);
    }
#pragma unroll
    for (int j = 0; j < 2; j++) { /* acc[j]: row gr, column 2 tq + j; acc[2 + j]: row gr + 8 */
        const int n = 2 * tq + j;
        if (n < SSM_SEQS) {
            sdt[gr * SSM_SEQS + n] = acc[j];
            sdt[(gr + 8) * SSM_SEQS + n] = acc[2 + j];
        }
    }
}

/* The state update of one token of B sequences for batches past GEMV_MAX_SEQS: a block takes
 * SSM_CHANNELS channels of SSM_SEQS sequences (blockIdx.y: sequences SSM_SEQS * blockIdx.y ...,
 * the last group may hold fewer), SSM_THREADS threads a sequence. The block's dt_proj rows are
 * staged in shared memory once for all its sequences, and dbc = [dt_in, B, C] of its sequences
 * after them. dtvec: dt_rank a whole number of 16-byte pieces (and dt_w on 16 bytes); dbcvec: R a
 * multiple of 4 (16-byte reads of dt_in). MMA (fp16/bf16, dt_rank a multiple of 16): dt_proj .
 * dt_in of the whole block as one tensor-core product by warp 0 (dt_proj_mma), in place of each
 * lane's share of the dot product and the shuffles that add the shares.
 * (MMA, 2026-12-03, H200, 2.8b shape, batch 64, under ncu: 21.5 M -> 16.2 M warp instructions a
 * layer, 39.3 -> 37.0 us; bench_gpu decode64, two rounds in one call: 2.8b 11,869 / 11,880 ->
 * 12,167 / 12,140 tok/s, 130m 63,280 / 62,881 -> 63,624 / 63,248. At 46 registers, without the
 * launch bound, 38.8 us and 130m slower (62,143 / 62,081); the product split over the block's 8
 * warps, its parts added in shared memory, 40.0 us; under ncu that form issued an instruction in 77%
 * of a scheduler's cycles (11 warps a scheduler, 3.3 eligible) and read 0.7 TB/s: bound by the
 * per-element work that remains (softplus, the exponentials, the state's multiply-adds, loads and
 * index arithmetic: about 400 instructions a thread), not by memory.)
 * (At batch 64, 2.8b shape, H200, 2026-12-02. Under ncu a layer's ssm_step_kernel, a block a
 * sequence with each lane's dt_proj pieces in registers, took 42 us: 64 registers a thread, dt_proj
 * read from L2 once per sequence (105 MB a layer). This kernel takes 39.5 us with 40 registers (6
 * blocks a multiprocessor); bench_gpu batch 64: 2.8b 11,560 -> 11,877 tok/s, 130m 61,138 -> 63,360.
 * An earlier form of it, 32 registers (8 blocks) with dt_in read a float at a time, took 37 us and
 * ran 12,188 against 11,572 in another call: bound by its instructions (77% of the multiprocessors'
 * issue throughput, 75% of L1's), not memory (DRAM 16%); the registers are the likely difference,
 * not measured apart. Used for every batch, it lost at batch 1 (2.8b 427 against 475 tok/s: the
 * staging of dt_proj before the first use), hence ssm_step_kernel up to GEMV_MAX_SEQS. Measured and
 * dropped: blocks of 64 threads looping over 4 sequences held in registers, 61 us (112 registers);
 * over 8 sequences, each loaded at its turn, 94 us; dt from the prefill's dt_proj GEMM, read by
 * ssm_step_kernel: that kernel still took 34 us, and with the GEMM and its input's narrowing (8 us)
 * batch 64 ran at 11,578 tok/s against 11,562 for 2.8b and 55,171 against 61,362 for 130m.) */
template <typename T, int SPL, bool MMA>
__global__ void __launch_bounds__(SSM_THREADS *SSM_SEQS, MMA ? 6 : 0) /* MMA: 40 registers, not 46 */
ssm_step_batch_kernel(const float *dbc, int R, int dt_rank, int N, const T *dt_w, int dtvec, int dbcvec,
                      const float *dt_b, const float *A, const float *Dv, const float *xc, const float *xz, float *ssm,
                      size_t slot_stride, int vec, int E, int B, float *y, T *yT, T *yLo) {
    extern __shared__ __align__(16) unsigned char ssm_smem[];
    T *sw = (T *)ssm_smem; /* the block's dt_proj rows, [SSM_CHANNELS][dt_rank] */
    float *sdbc = (float *)(ssm_smem + ssm_batch_rows_bytes(dt_rank, sizeof(T))); /* [SSM_SEQS][R] */
    float *sdt = sdbc + SSM_SEQS * R; /* [SSM_CHANNELS][SSM_SEQS] (MMA) */
    constexpr int V = 16 / sizeof(T);
    launch_next();
    const int i = threadIdx.x / SSM_THREADS, t = threadIdx.x % SSM_THREADS; /* sequence s0 + i */
    const int s0 = blockIdx.y * SSM_SEQS, ns = min((int)SSM_SEQS, B - s0), s = min(s0 + i, B - 1); /* i >= ns: idle */
    const int g = t % SSM_LANES, c0 = blockIdx.x * SSM_CHANNELS, c = c0 + t / SSM_LANES, cc = min(c, E - 1);
    const int rows = min((int)SSM_CHANNELS, E - c0), dpieces = dtvec ? dt_rank / V : 0;
    if (dtvec) { /* the rows c0 .. c0 + rows - 1 are one span of dt_w */
        const uint4 *src = (const uint4 *)(dt_w + (size_t)c0 * dt_rank);
        for (int k = threadIdx.x; k < rows * dpieces; k += blockDim.x) ((uint4 *)sw)[k] = src[k];
    } else {
        for (int k = threadIdx.x; k < rows * dt_rank; k += blockDim.x) sw[k] = dt_w[(size_t)c0 * dt_rank + k];
    }
    const int n0 = g * SPL;
    float *h = ssm + (size_t)s * slot_stride + (size_t)cc * N + n0;
    float hv[SPL], av[SPL];
    ssm_load_lane<SPL>(h, A + (size_t)cc * N + n0, n0, N, vec, hv, av);
    const float bias = dt_b[cc], Dc = Dv[cc];
    wait_prior();
    const float x = xc[(size_t)s * E + cc], z = xz[(size_t)s * 2 * E + E + cc];
    const float *dbc0 = dbc + (size_t)s0 * R; /* the rows of sequences s0 .. s0 + ns - 1, one after another */
#pragma unroll 4 /* the loads of several rounds in flight at once */
    for (int r = threadIdx.x; r < ns * R; r += blockDim.x) sdbc[r] = dbc0[r];
    __syncthreads();
    const float *sd = sdbc + i * R;
    if constexpr (MMA) {
        if (threadIdx.x < 32) dt_proj_mma<T>(sw, sdbc, R, dt_rank, ns, threadIdx.x, sdt);
        __syncthreads();
        if (i >= ns) return;
        ssm_update_lane<T, SPL>(sdt[(cc - c0) * SSM_SEQS + i], bias, x, z, Dc, sd + dt_rank + n0, n0, N, vec, hv, av,
                                c < E, g == 0, h, (size_t)s * E + c, y, yT, yLo);
        return;
    }
    if (i >= ns) return; /* whole groups of SSM_THREADS threads: every shuffle below has its lanes */

    const T *wr = sw + (cc - c0) * dt_rank; /* idle channels read the last row */
    float d = 0.0f;
    for (int p = g; p < dpieces; p += SSM_LANES) {
        float wf[V], in[V];
        load16(wr + p * V, wf);
        if (dbcvec) {
#pragma unroll
            for (int j = 0; j < V; j += 4) *(float4 *)(in + j) = *(const float4 *)(sd + p * V + j);
        } else {
#pragma unroll
            for (int j = 0; j < V; j++) in[j] = sd[p * V + j];
        }
#pragma unroll
        for (int j = 0; j < V; j++) d += wf[j] * in[j];
    }
    for (int k = dpieces * V + g; k < dt_rank; k += SSM_LANES) d += to_f(wr[k]) * sd[k]; /* !dtvec */
    ssm_update_lane<T, SPL>(lanes_sum(d), bias, x, z, Dc, sd + dt_rank + n0, n0, N, vec, hv, av, c < E, g == 0, h,
                            (size_t)s * E + c, y, yT, yLo);
}

/* SPT consecutive floats of shared memory (16-byte aligned when SPT is a multiple of 4). */
template <int SPT> __device__ __forceinline__ void load_states(const float *p, float (&v)[SPT]) {
    if constexpr (SPT % 4 == 0) {
#pragma unroll
        for (int k = 0; k < SPT; k += 4) {
            const float4 q = *(const float4 *)(p + k);
            v[k] = q.x; v[k + 1] = q.y; v[k + 2] = q.z; v[k + 3] = q.w;
        }
    } else {
#pragma unroll
        for (int k = 0; k < SPT; k++) v[k] = p[k];
    }
}

/* The LANES lanes of a channel (lanes g of a group of LANES) each hold their part v[j] of the sums of
 * LANES tokens j: returns token g's whole sum in lane g. A butterfly that sends half of the values a
 * round (xor 1, then 2, ...): LANES - 1 shuffles for LANES tokens, where one token at a time takes
 * log2(LANES) each, and every lane then has a token to write, not only the first. Its sums are
 * those of the one-token butterfly, (v0 + v1) + (v2 + v3) for 4 lanes, bit for bit. */
template <int LANES> __device__ __forceinline__ float lane_sums(float (&v)[LANES], int g) {
#pragma unroll
    for (int o = 1, m = LANES; o < LANES; o <<= 1, m >>= 1) {
        const bool hi = g & o; /* keeps the odd one of each pair of what is left */
#pragma unroll
        for (int j = 0; j < m / 2; j++) {
            const float send = hi ? v[2 * j] : v[2 * j + 1], keep = hi ? v[2 * j + 1] : v[2 * j];
            v[j] = keep + __shfl_xor_sync(0xffffffffu, send, o);
        }
    }
    return v[0];
}

/* The selective scan over a chunk of n tokens, cut into segments of seg_len tokens along time
 * (blockIdx.y). LANES lanes take a channel, each holding SPT = NS / LANES of its NS states in
 * registers (d_state rounded up; the states past it have A = B = C = 0 and stay 0). Per token each
 * lane steps its states, h = exp(dt A) h + dt x B, and sums its part of h . C; the LANES parts of
 * LANES tokens meet by shuffles (lane_sums), and lane g writes token g's y = (h . C + D x) * silu(z).
 * Only the one FMA of h carries from token to token: the exponentials, the products and the
 * shuffles of a tile's tokens are independent of each other, and the unrolled tile loop keeps them
 * in flight with few warps. LANES = 1 (a thread per channel,
 * no exchange) has the fewest instructions a state; more lanes give a chunk's channels more threads
 * without cutting time into segments, which costs a second pass (below). SCAN_LANES = 4 measured
 * fastest on an H200 (fp16 prefill of 2048 tokens, segments as scan_segments picks them, 2026-12-02):
 * 2.8b shape 36,077 tok/s with 4 lanes, 35,394 with 1, 30,748 with 16; 130m shape 246,123, 200,360
 * and 182,738.
 * The inputs of SCAN_TILE tokens are staged in shared memory first (dt after its bias and softplus,
 * x, and silu(z), each once per token and channel; B and C shared by the block), so the sequential
 * loop waits on no global load; the next tile's loads are issued into registers before a tile's loop
 * and stored after it, so they wait while it runs. (Loaded and stored in one go before each tile,
 * the loads waited alone, and SCAN_OUT reduced and wrote one token at a time: under ncu a 512-token
 * chunk of a 2.8b layer took 87 us in SCAN_OUT and 36 in SCAN_LOCAL; with both changes 54 and 28,
 * and bench_gpu's fp16 prefill of 2048 tokens went from 38,818 to 45,406 tok/s for 2.8b and from
 * 258,225 to 298,111 for 130m; H200, 2026-12-02.) exp(dt A) is taken as exp2(dt * A log2(e)), the
 * hardware's native exponential.
 * One segment (the whole chunk) is one pass from the SSM state. More segments give more threads to
 * a chunk's channels, in three passes (the recurrence is linear in h):
 *   SCAN_LOCAL    every segment but the last from h = 0: its end state into seg_h, and the sum of its
 *                 dt into seg_dt (the segment's decay is exp(A * sum dt));
 *   scan_combine  the state each segment starts from, in order, into seg_h;
 *   SCAN_OUT      every segment from its start state, writing y.
 * SCAN_OUT's last segment leaves the SSM state, and the conv state advanced to the chunk's last
 * d_conv-1 inputs. Several prompts (prompt_of: blockIdx.z) run in one launch as one segment each;
 * segments (blockIdx.y > 0, seg_h, seg_dt) are for a single prompt. ssm0, conv0: slot 0's states of
 * the layer. */
enum { SCAN_OUT = 0, SCAN_LOCAL = 1 };
template <typename T, int NS, int MODE>
__global__ void __launch_bounds__(SCAN_THREADS)
scan_kernel(const int4 *prompts, int seg_len, float *seg_h, float *seg_dt, const float *dtr, const float *dt_b,
            const float *A, const float *Dv, const float *xc, const float *xz, const float *dbc, int E, int N,
            int dt_rank, int R, int K, float *ssm0, float *conv0, size_t slot_stride, float *y, T *yT, T *yLo) {
    constexpr int LANES = SCAN_LANES, SPT = NS / LANES, CH = SCAN_THREADS / LANES; /* states a lane, channels a block */
    static_assert(NS % LANES == 0 && SCAN_TILE % LANES == 0, "lanes divide the states and the tile");
    __shared__ __align__(16) float s_B[SCAN_TILE][NS], s_C[SCAN_TILE][NS];
    __shared__ float s_dt[SCAN_TILE][CH], s_x[SCAN_TILE][CH], s_g[SCAN_TILE][CH];
    launch_next();
    wait_prior();
    const int4 pr = prompt_of(prompts);
    const int n = pr.z;
    const size_t r0 = pr.y;
    dtr += r0 * E;
    xc += r0 * E;
    xz += r0 * 2 * E;
    dbc += r0 * R;
    if (y) y += r0 * E;
    if (yT) yT += r0 * E;
    if (yLo) yLo += r0 * E;
    float *ssm = ssm0 + pr.x * slot_stride, *conv = conv0 + pr.x * slot_stride;
    const int tid = threadIdx.x, g = tid % LANES, lc = tid / LANES, n0 = g * SPT;
    const int c = blockIdx.x * CH + lc, cc = min(c, E - 1); /* c >= E: idle */
    const int sj = tid % CH, sc = min((int)blockIdx.x * CH + sj, E - 1); /* the channel this thread stages */
    const int seg = blockIdx.y, t_begin = seg * seg_len, t_end = min(n, t_begin + seg_len);
    const size_t hi = (size_t)cc * N, seg_i = (size_t)seg * E * N + hi;
    float h[SPT], a2[SPT];
#pragma unroll
    for (int k = 0; k < SPT; k++) {
        const bool in = n0 + k < N;
        a2[k] = in ? A[hi + n0 + k] * 1.4426950408889634f : 0.0f;
        h[k] = 0.0f;
        if (MODE == SCAN_OUT && in) h[k] = seg == 0 ? ssm[hi + n0 + k] : seg_h[seg_i + n0 + k];
    }
    const float sbias = dt_b[sc], Dc = Dv[cc];
    float dsum = 0.0f;

    /* A tile's inputs as this thread loads them: B and C (elements tid, + SCAN_THREADS, ... of the
     * tile's [SCAN_TILE][NS]), and dt, x, z of channel sj at tokens tid / CH, + LANES, ... */
    constexpr int BC = (SCAN_TILE * NS + SCAN_THREADS - 1) / SCAN_THREADS, U = SCAN_TILE / LANES;
    float rb[BC], rc[BC], rdt[U], rx[U], rz[U];
    auto fetch = [&](int t0) { /* every load of the tile in flight at once */
        const int tn = min(SCAN_TILE, t_end - t0);
#pragma unroll
        for (int u = 0; u < BC; u++) {
            const int i = tid + u * SCAN_THREADS, t = i / NS, k = i % NS;
            const bool in = i < SCAN_TILE * NS && t < tn && k < N;
            const float *row = dbc + (size_t)(t0 + t) * R + dt_rank;
            rb[u] = in ? row[k] : 0.0f;
            if (MODE == SCAN_OUT) rc[u] = in ? row[N + k] : 0.0f;
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const size_t tt = (size_t)(t0 + min(tid / CH + u * LANES, tn - 1)); /* past tn: a valid row, unused */
            rdt[u] = dtr[tt * E + sc];
            rx[u] = xc[tt * E + sc];
            if (MODE == SCAN_OUT) rz[u] = xz[tt * 2 * E + E + sc];
        }
    };
    auto stage = [&] { /* into shared memory: dt after its bias and softplus, silu(z) */
#pragma unroll
        for (int u = 0; u < BC; u++) {
            const int i = tid + u * SCAN_THREADS;
            if (i < SCAN_TILE * NS) {
                s_B[i / NS][i % NS] = rb[u];
                if (MODE == SCAN_OUT) s_C[i / NS][i % NS] = rc[u];
            }
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int t = tid / CH + u * LANES;
            s_dt[t][sj] = softplus(rdt[u] + sbias);
            s_x[t][sj] = rx[u];
            if (MODE == SCAN_OUT) s_g[t][sj] = silu(rz[u]);
        }
    };
    if (t_begin < t_end) fetch(t_begin);
    for (int t0 = t_begin; t0 < t_end; t0 += SCAN_TILE) {
        const int tn = min(SCAN_TILE, t_end - t0);
        __syncthreads(); /* every thread is done with the previous tile */
        stage();
        __syncthreads();
        if (t0 + SCAN_TILE < t_end) fetch(t0 + SCAN_TILE); /* the next tile's loads wait while this one runs */
        if constexpr (MODE == SCAN_LOCAL) {
#pragma unroll 4
            for (int t = 0; t < tn; t++) {
                const float dt = s_dt[t][lc], dtx = dt * s_x[t][lc];
                float b[SPT];
                load_states<SPT>(&s_B[t][n0], b);
#pragma unroll
                for (int k = 0; k < SPT; k++) h[k] = exp2f(dt * a2[k]) * h[k] + b[k] * dtx;
                dsum += dt;
            }
        } else { /* LANES tokens at a time: lane g then writes token g's y */
            for (int t = 0; t < tn; t += LANES) {
                float acc[LANES];
#pragma unroll
                for (int j = 0; j < LANES; j++) {
                    acc[j] = 0.0f;
                    if (t + j < tn) {
                        const float dt = s_dt[t + j][lc], dtx = dt * s_x[t + j][lc];
                        float b[SPT], cv[SPT];
                        load_states<SPT>(&s_B[t + j][n0], b);
                        load_states<SPT>(&s_C[t + j][n0], cv);
#pragma unroll
                        for (int k = 0; k < SPT; k++) {
                            h[k] = exp2f(dt * a2[k]) * h[k] + b[k] * dtx;
                            acc[j] += h[k] * cv[k];
                        }
                    }
                }
                const float hc = lane_sums<LANES>(acc, g); /* h . C of token t + g */
                const int tg = t + g;
                if (tg < tn && c < E) {
                    const size_t o = (size_t)(t0 + tg) * E + c;
                    const float out = (hc + Dc * s_x[tg][lc]) * s_g[tg][lc];
                    if (y) y[o] = out;
                    if (yT) store_narrow(yT, yLo, o, out);
                }
            }
        }
    }
    if (c >= E) return;
    if (MODE == SCAN_LOCAL) {
#pragma unroll
        for (int k = 0; k < SPT; k++)
            if (n0 + k < N) seg_h[seg_i + n0 + k] = h[k];
        if (g == 0) seg_dt[(size_t)seg * E + c] = dsum;
        return;
    }
    if (t_end != n) return;
#pragma unroll
    for (int k = 0; k < SPT; k++)
        if (n0 + k < N) ssm[hi + n0 + k] = h[k];
    if (g == 0) conv_advance(conv + (size_t)c * (K - 1), xz + c, 2 * E, n, K);
}

/* Between the scan's two passes: a thread per (channel, state) carries the state across the
 * segments, h_start(s+1) = exp(A * sum dt(s)) h_start(s) + local end(s), from the SSM state; each
 * segment's local end state in seg_h is replaced by its start state (segment 0 starts from the SSM
 * state itself and is not written). Every input is loaded before the first store, so the loads
 * wait once, not once a segment. */
__global__ void scan_combine_kernel(const int4 *prompts, int segs, const float *A, const float *ssm0, size_t slot_stride,
                                    float *seg_h, const float *seg_dt, int E, int N) {
    launch_next();
    wait_prior();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= E * N) return;
    const float *ssm = ssm0 + prompt_of(prompts).x * slot_stride; /* the one prompt's slot */
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

#endif
