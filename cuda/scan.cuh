/* cuda/scan.cuh: the Mamba-1 selective scan: the decode state update (ssm_step) and the prefill scan
 * over a chunk, cut into segments along time. */
#ifndef SCAN_CUH
#define SCAN_CUH

#include "common.cuh"
#include "conv.cuh"

enum {
    SSM_LANES = 4,      /* ssm_step: lanes per channel, each holding d_state / SSM_LANES states */
    SSM_THREADS = 64,   /* decode ssm_step block: 16 channels */
    DT_PRE = 8,         /* ssm_step: dt_proj pieces a lane loads before waiting (rows up to 512 bytes) */
    SCAN_THREADS = 128, /* channels per scan block */
    SCAN_TILE = 16,     /* time steps of the chunk staged in shared memory at once */
    MAX_SCAN_STATE = 32, /* d_state up to this (registers of a scan thread), 8 a lane in ssm_step */
    SCAN_MAX_SEGS = 16, /* the most segments a prefill chunk's scan is cut into along time */
    SCAN_MIN_SEG = 32,  /* tokens a segment holds at least */
    SCAN_BLOCKS_PER_SM = 4, /* scan blocks wanted per multiprocessor (SCAN_THREADS each) */
};

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
 * d_conv-1 inputs. Several prompts (prompt_of: blockIdx.z) run in one launch as one segment each;
 * segments (blockIdx.y > 0, seg_h, seg_dt) are for a single prompt. ssm0, conv0: slot 0's states of
 * the layer. */
enum { SCAN_OUT = 0, SCAN_LOCAL = 1 };
template <typename T, int NS, int MODE>
__global__ void __launch_bounds__(SCAN_THREADS)
scan_kernel(const int4 *prompts, int seg_len, float *seg_h, float *seg_dt, const float *dtr, const float *dt_b,
            const float *A, const float *Dv, const float *xc, const float *xz, const float *dbc, int E, int N,
            int dt_rank, int R, int K, float *ssm0, float *conv0, size_t slot_stride, float *y, T *yT, T *yLo) {
    __shared__ float s_B[SCAN_TILE][NS], s_C[SCAN_TILE][NS];
    __shared__ float s_dt[SCAN_TILE][SCAN_THREADS], s_x[SCAN_TILE][SCAN_THREADS], s_z[SCAN_TILE][SCAN_THREADS];
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

#endif
