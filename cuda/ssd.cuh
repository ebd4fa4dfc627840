/* cuda/ssd.cuh: the Mamba-2 state space kernels (state space duality): the decode state update and
 * the prefill recurrence over a chunk token by token (short chunks, or RUNCUDA_SSD=scan; the chunked
 * form is in ssd_chunk.cuh). */
#ifndef SSD_CUH
#define SSD_CUH

#include "common.cuh"

enum {
    SSD_STEP_ROWS = 8,  /* Mamba-2 decode state update: head_dim rows (p) per block, a warp each */
    SSD_LPR = 16,       /* Mamba-2 prefill scan: lanes per p row, each holding d_state / SSD_LPR states */
    SSD_ROWS = 4,       /* ... p rows per block */
    SSD_THREADS = SSD_LPR * SSD_ROWS,
    SSD_TILE = 16,      /* ... time steps staged in shared memory at once */
    MAX_SSD_STATE = 16 * SSD_LPR, /* Mamba-2 d_state up to this */
};

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

/* Prefill: the state recurrence of Mamba-2 over each prompt's tokens (prompt_of), token by token
 * (the same recurrence as ssd_step_kernel, so prefill leaves the state that steps leave).
 * A block per (tile of SSD_ROWS p rows, head); SSD_LPR lanes per p row, each holding SPL of its
 * states in registers (n = lane + SSD_LPR * j; the states past d_state have B = C = 0 and stay 0).
 * The inputs of SSD_TILE tokens (B and C of the head's group, x of the block's rows, dt and
 * exp(dt A)) are staged in shared memory first, so the sequential loop waits on no global load; y
 * is summed over the row's lanes with shuffles. Leaves the SSM state. */
template <int SPL>
__global__ void __launch_bounds__(SSD_THREADS)
ssd_scan_kernel(Ssd a, const int4 *prompts, float *ssm0, size_t slot_stride) {
    constexpr int NS = SPL * SSD_LPR;
    __shared__ float s_B[SSD_TILE][NS], s_C[SSD_TILE][NS], s_x[SSD_TILE][SSD_ROWS], s_dt[SSD_TILE], s_dA[SSD_TILE];
    launch_next();
    wait_prior();
    const int4 pr = prompt_of(prompts); /* its rows of zx, xc and ys, and its slot's SSM state */
    const int n = pr.z;
    a.zx += (size_t)pr.y * a.Z;
    a.xc += (size_t)pr.y * a.X;
    a.ys += (size_t)pr.y * a.E;
    float *ssm = ssm0 + pr.x * slot_stride;
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

#endif
