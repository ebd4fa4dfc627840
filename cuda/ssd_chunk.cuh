/* cuda/ssd_chunk.cuh: Mamba-2 prefill in the chunked ("state space duality") form, run.c's ssd_cb and
 * ssd_head on the GPU: the chunk products are batched GEMMs (cuBLAS, in run.cu: ssd_chunked), these
 * kernels do what lies between them.
 *
 * Per chunk of SSD_CHUNK_LEN tokens and head h (group g), with a_t = exp(dt_t A), the state S carried
 * in from the previous chunk (the slot's SSM state for the first), and M the decay-masked matrix
 *   M[i][j] = (C_i . B_j) * (a_{j+1} ... a_i) * dt_j   (j <= i),  M[i][i] += D
 * token i of the chunk gives
 *   y_i = (a_0 ... a_i) * (C_i . S) + sum_j M[i][j] x_j
 * and the chunk leaves S' = (a_0 ... a_last) * S + sum_j ((a_{j+1} ... a_last) dt_j x_j) (outer) B_j.
 * The order of one layer (G: a batched GEMM over the (chunk, head) pairs, run.cu's SsdGemm):
 *   ssd_decay_kernel   dt, a, the decays from the chunk's start and to its end, xw = decay-to-end * dt * x
 *   G states           states[c][h] = xw^T . B       (P x N: the chunk's contribution to the state)
 *   ssd_pass_kernel    the recurrence over chunks, in place: states[c][h] becomes the state entering
 *                      chunk c; the last one is the slot's new SSM state
 *   G y_off            ys = C . states[c][h]^T        (L x P)
 *   G cb               cb[c][g] = C . B^T             (L x L, shared by the group's heads)
 *   ssd_mask_kernel    M from cb; ys rows scaled by the decay from the chunk's start
 *   G y_diag           ys += M . x                    (L x P; D x through M's diagonal)
 * The decays are running products of the a_t in run.c's order (the factors the decode step multiplies),
 * never exponentials of differences of long sums, so prefill leaves the state that steps leave.
 * A partial last chunk is padded to SSD_CHUNK_LEN rows: the padding has dt = 0, a = 1, zero xw, zero
 * rows and columns of M and zero decay-from-start, so it contributes nothing; the GEMMs read its rows
 * of xc, which run.cu zeroes (finite: 0 * them is 0). */
#ifndef SSD_CHUNK_CUH
#define SSD_CHUNK_CUH

#include "ssd.cuh"

enum {
    SSD_CHUNK_LEN = 64,      /* tokens per chunk, as run.c's SSD_CHUNK: the same chunk boundaries */
    SSD_CHUNK_THREADS = 256, /* ssd_decay_kernel, ssd_mask_kernel: a block per (head, chunk) */
    SSD_PASS_THREADS = 256,
    SSD_PASS_LOADS = 16,     /* ssd_pass_kernel: chunks whose loads a thread has in flight at once */
};

/* The chunked form's buffers, sized for run.cu's PREFILL_CHUNK tokens (chunks = PREFILL_CHUNK / SSD_CHUNK_LEN). */
struct SsdChunk {
    float *dt, *a, *from_start; /* [chunks][H][L]: dt_t, a_t, a_0 ... a_t (0 on padding) */
    float *to_end;              /* [chunks][H]: a_0 ... a_last, the chunk's decay of the state */
    float *xw;                  /* [chunks * L][E]: (a_{j+1} ... a_last) dt_j x_j, ys's layout */
    float *cb;                  /* [chunks][G][L][L]: C_i . B_j */
    float *m;                   /* [chunks][H][L][L]: the masked matrix M, row-major (i, j) */
    float *states;              /* [chunks][H][P][N]: contributions, then the states entering each chunk */
};

/* dt, a = exp(dt A), and the running products of a chunk and head; then xw for the chunk's rows of
 * the head. A block per (head, chunk); the two sequential products run in warps 0 and 1 at once. */
__global__ void __launch_bounds__(SSD_CHUNK_THREADS)
ssd_decay_kernel(Ssd a, SsdChunk k, int n) {
    constexpr int L = SSD_CHUNK_LEN;
    __shared__ float s_dt[L], s_a[L], s_w[L];
    launch_next();
    wait_prior();
    const int tid = threadIdx.x, h = blockIdx.x, c = blockIdx.y, t0 = c * L, q = min(L, n - t0);
    const size_t base = ((size_t)c * a.H + h) * L;
    if (tid < L) {
        float dt = 0.0f, da = 1.0f; /* padding: no input, no decay */
        if (tid < q) {
            dt = ssd_dt(a, t0 + tid, h, a.dt_bias[h]);
            da = expf(dt * a.A[h]);
        }
        s_dt[tid] = dt;
        s_a[tid] = da;
        k.dt[base + tid] = dt;
        k.a[base + tid] = da;
    }
    __syncthreads();
    if (tid == 0) { /* a_0 ... a_i */
        float p = 1.0f;
        for (int i = 0; i < L; i++) {
            p *= s_a[i];
            k.from_start[base + i] = i < q ? p : 0.0f;
        }
    } else if (tid == 32) { /* a_{j+1} ... a_last times dt_j, from the end (the padding's a = 1 changes nothing) */
        float d = 1.0f;
        for (int j = L - 1; j >= 0; j--) {
            s_w[j] = d * s_dt[j];
            d *= s_a[j];
        }
        k.to_end[(size_t)c * a.H + h] = d;
    }
    __syncthreads();
    for (int i = tid; i < L * a.P; i += SSD_CHUNK_THREADS) {
        const int j = i / a.P, p = i % a.P;
        const size_t t = (size_t)t0 + j;
        k.xw[t * a.E + (size_t)h * a.P + p] = j < q ? s_w[j] * a.xc[t * a.X + (size_t)h * a.P + p] : 0.0f;
    }
}

/* The state recurrence over the chunks, a thread per state element (over [H][P][N]):
 * states[c] (the chunk's contribution) becomes the state entering chunk c, and the state after the
 * last chunk goes to the slot: the one prompt's (prompts[0]), whose layer state in slot 0 is at ssm0.
 * (The slot comes from the table, not an argument, so a graph of the prefill fits every slot.)
 * The loads of SSD_PASS_LOADS chunks are issued before any of their stores: with one chunk's load,
 * store and update at a time, each waited for its load (m2-2.7b, 2048 tokens, H200: 800 us a
 * layer, 107 GB/s, more than half of the prefill; 75 us at 512 tokens). */
__global__ void __launch_bounds__(SSD_PASS_THREADS)
ssd_pass_kernel(SsdChunk k, const int4 *prompts, float *ssm0, size_t slot_stride, int chunks, int H, int PN) {
    launch_next();
    wait_prior();
    const size_t HPN = (size_t)H * PN, i = (size_t)blockIdx.x * SSD_PASS_THREADS + threadIdx.x;
    if (i >= HPN) return;
    float *ssm = ssm0 + prompts[0].x * slot_stride;
    const int h = (int)(i / PN);
    float s = ssm[i];
    for (int c0 = 0; c0 < chunks; c0 += SSD_PASS_LOADS) {
        float contrib[SSD_PASS_LOADS], decay[SSD_PASS_LOADS];
#pragma unroll
        for (int j = 0; j < SSD_PASS_LOADS; j++)
            if (c0 + j < chunks) {
                contrib[j] = k.states[(size_t)(c0 + j) * HPN + i];
                decay[j] = k.to_end[(size_t)(c0 + j) * H + h];
            }
#pragma unroll
        for (int j = 0; j < SSD_PASS_LOADS; j++)
            if (c0 + j < chunks) {
                k.states[(size_t)(c0 + j) * HPN + i] = s;
                s = decay[j] * s + contrib[j];
            }
    }
    ssm[i] = s;
}

/* M of a (head, chunk) from its group's C . B^T, and the chunk's rows of ys (C . S, the y_off GEMM's
 * output) scaled by the decay from the chunk's start. A block per (head, chunk); the tile is staged in
 * shared memory (a row per thread for the running products, in run.c's order: from j = i down). */
__global__ void __launch_bounds__(SSD_CHUNK_THREADS)
ssd_mask_kernel(Ssd a, SsdChunk k, int n) {
    constexpr int L = SSD_CHUNK_LEN;
    __shared__ float s_m[L][L + 1], s_dt[L], s_a[L], s_fs[L];
    launch_next();
    wait_prior();
    const int tid = threadIdx.x, h = blockIdx.x, c = blockIdx.y, t0 = c * L, q = min(L, n - t0);
    const int g = h / (a.H / a.G);
    const size_t base = ((size_t)c * a.H + h) * L;
    const float *cb = k.cb + ((size_t)c * a.G + g) * L * L;
    for (int i = tid; i < L * L; i += SSD_CHUNK_THREADS) s_m[i / L][i % L] = cb[i];
    if (tid < L) {
        s_dt[tid] = k.dt[base + tid];
        s_a[tid] = k.a[base + tid];
        s_fs[tid] = k.from_start[base + tid];
    }
    __syncthreads();
    if (tid < L) {
        const int i = tid;
        int j = 0; /* first column left to zero */
        if (i < q) {
            float decay = 1.0f; /* a_{j+1} ... a_i */
            for (j = i; j >= 0; j--) {
                s_m[i][j] = s_m[i][j] * decay * s_dt[j];
                decay *= s_a[j];
            }
            s_m[i][i] += a.D[h]; /* y_i += D x_i through the product */
            j = i + 1;
        }
        for (; j < L; j++) s_m[i][j] = 0.0f;
    }
    __syncthreads();
    float *m = k.m + base * L;
    for (int i = tid; i < L * L; i += SSD_CHUNK_THREADS) m[i] = s_m[i / L][i % L];
    for (int i = tid; i < L * a.P; i += SSD_CHUNK_THREADS) {
        const int j = i / a.P, p = i % a.P;
        a.ys[((size_t)t0 + j) * a.E + (size_t)h * a.P + p] *= s_fs[j];
    }
}

#endif
