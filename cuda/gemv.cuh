/* cuda/gemv.cuh: the decode GEMV (y = W x for up to GEMV_MAX_SEQS sequences, each weight read once),
 * for dense weights (gemv_kernel) and block-quantized ones (the activations quantized per block of 32
 * as model.h specifies, integer dot products: gemv_q_kernel for one sequence, gemv_qx_kernel for
 * more, on x quantized by quant_x_kernel), with the conv step as its epilogue; and the narrowing of
 * GEMM inputs. */
#ifndef GEMV_CUH
#define GEMV_CUH

#include "common.cuh"
#include "conv.cuh"
#include "quant.cuh"

enum {
    GEMV_MAX_SEQS = 8,  /* decode batches up to this go through the GEMV kernels, larger ones cuBLAS */
    GEMV_WARPS = 8,     /* warps per GEMV block */
    GEMV_LOADS = 8,     /* 16-byte loads of weights a GEMV lane keeps in flight (16 measured slower) */
    XPROJ_KSPLIT = 8,   /* x_proj (few rows, long ones): warps of a GEMV block sharing one row */
    GEMV_KSPLIT = 4,    /* warps sharing a row group in GEMVs of too few rows to fill the GPU otherwise */
    GEMV_BLOCKS_PER_SM = 8, /* ... that is, fewer blocks than this per multiprocessor (2.8b in_proj,
                               640 blocks of whole rows: 19.6 us, split 16.5 us, alone on an H200) */
};

/* Before the wait for the previous kernel: what gemv_store's conv step will read, requested into L2
 * (lane i * NB + s: row r0 + i of sequence s): the conv states, and the channel's conv weights and
 * bias (without them, the epilogue waited on a read from memory after the sums: an H200, bench_gpu
 * decode1, fp16, one call of 2026-12-03: 130m 3,739 -> 3,809 tok/s, 2.8b 474 -> 481). */
template <int NB, int ROWS> __device__ __forceinline__ void conv_prefetch(const ConvEpi &conv, int r0) {
    const int lane = threadIdx.x % 32, ch = r0 + lane / NB - conv.r0;
    if (conv.state && lane < ROWS * NB && ch >= 0 && ch < conv.E) {
        prefetch_l2(conv.state + (lane % NB) * conv.slot_stride + (size_t)ch * (conv.K - 1));
        if (lane % NB == 0) {
            prefetch_l2(conv.w + (size_t)ch * conv.K);
            prefetch_l2(conv.b + ch);
        }
    }
}

/* The end of every GEMV kernel: each lane holds its partial sums acc[i][s] of rows r0 + i; they
 * meet across the warp, then (KSPLIT > 1) across the KSPLIT warps sharing the rows, in shared
 * memory in a fixed order; y gets them, and with conv.state the conv step of the conv's rows
 * follows (ConvEpi). Called last: a warp that is not the first of its group returns early. */
template <int NB, int ROWS, int KSPLIT>
__device__ __forceinline__ void gemv_store(float (&acc)[ROWS][NB], bool has_rows, int r0, float *__restrict__ y,
                                           int R, const ConvEpi &conv) {
    static_assert(ROWS * NB <= 32, "the conv epilogue takes a lane per (row, sequence)");
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, ks = warp % KSPLIT;
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
        conv_prefetch<NB, ROWS>(conv, r0);
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
    gemv_store<NB, ROWS, KSPLIT>(acc, has_rows, r0, y, R, conv);
}

/* gemv_kernel for a block-quantized W (QFormat<DT>), in integers: x is quantized per block of 32 as
 * model.h specifies, and each piece of 8 weights meets its 8 q in two dp4a (4 byte products each),
 * then one multiply by the two scales, d * dx. The structure is the dense kernel's (a warp per ROWS
 * rows, or KSPLIT warps per row group; lanes striding over K, 32 pieces a warp, U pieces a lane in
 * flight per row, the first ones with their scales loaded before the wait). A warp's 32 pieces are 8
 * whole blocks, whatever KSPLIT, 4 lanes each. Where the quantized x comes from is the kernel's:
 * piece(s, p, group) gives the XPiece of piece p of sequence s (group: the mask of the 4 lanes of
 * p's block).
 *   gemv_q_kernel (one sequence, the batch-1 path, no launch of its own): every warp quantizes the x
 *     it meets: the 4 lanes of a block find its amax with two shuffles, and each quantizes its own 8
 *     values (quantize_piece), once per piece for all ROWS rows; x is quantized once per row group
 *     (x is in L1/L2). The quantization's ~50 instructions a piece are shared by ROWS rows, each of
 *     which costs ~6 (2 dp4a, a subtraction, 2 multiplies and an add), so ROWS is larger than the
 *     dense kernel's (gemv_shape).
 *   gemv_qx_kernel (2 .. GEMV_MAX_SEQS sequences): quant_x_kernel, launched just before it, has
 *     quantized each sequence's x once for the whole GEMV (quantize_piece again, a thread per piece)
 *     into 16-byte XPieces, and a lane loads the XPiece of each of its pieces and sequences, one
 *     vector load shared by ROWS rows. (Quantizing in every warp, as gemv_q_kernel does, costs ~50
 *     instructions a piece and sequence per row group: at 8 sequences more than the products, and
 *     the 2.8b shape's batch-8 decode ran at 0.63x fp16's speed in q8_0.)
 * Both take the same products in the same order, so they give the same bits for the same KSPLIT: the
 * XPieces are quantize_piece's bits either way, and each lane visits its pieces p = first + k * STEP
 * in increasing k whatever U and ROWS are, so a row's sums depend on KSPLIT alone. Registers: the
 * partial sums ROWS x NB, the pieces in flight, U x ROWS of 2 or 1 words plus their scales, and the
 * x of a piece (gemv_q_kernel: the 8 values being quantized; gemv_qx_kernel: 3 words a sequence for
 * q8_0, 4 for q4_0, for each piece whose loads are in flight). */
template <int DT, int NB, int ROWS, int KSPLIT, int U, typename Piece>
__device__ __forceinline__ void gemv_q_body(const Mat &W, Piece piece, float *__restrict__ y, int R, int K,
                                            const ConvEpi &conv) {
    typedef QFormat<DT> F;
    constexpr int STEP = 32 * KSPLIT;
    launch_next();
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, ks = warp % KSPLIT;
    const int r0 = (blockIdx.x * (GEMV_WARPS / KSPLIT) + warp / KSPLIT) * ROWS;
    const bool has_rows = r0 < R;
    const int pieces = K / 8, first = ks * 32 + lane;
    const unsigned group = 0xFu << (lane & ~3); /* the 4 lanes of this lane's block */
    /* row i's quants and scales: one base and a stride rather than 2 x ROWS pointers (registers);
     * rows past R: computed (as row R - 1), not stored */
    const uint8_t *q0 = (const uint8_t *)W.w + (size_t)min(r0, R - 1) * pieces * F::BYTES;
    const unsigned short *sc0 = (const unsigned short *)W.scales + (size_t)min(r0, R - 1) * (K / QBLOCK);
    auto row = [&](int i) { return min(i, R - 1 - r0); };
    typename F::Raw raw[U][ROWS];
    unsigned short d[U][ROWS];
    auto load = [&](int p0) {
#pragma unroll
        for (int u = 0; u < U; u++)
#pragma unroll
            for (int i = 0; i < ROWS; i++) {
                const int p = p0 + STEP * u;
                if (p < pieces) {
                    raw[u][i] = F::load(q0 + (size_t)row(i) * pieces * F::BYTES, p);
                    d[u][i] = __ldg(sc0 + (size_t)row(i) * (K / QBLOCK) + p / 4); /* 4 pieces a block */
                }
            }
    };
    if (has_rows) {
        load(first);
        conv_prefetch<NB, ROWS>(conv, r0);
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
            if (p >= pieces) break; /* the 4 lanes of a block alike (pieces: whole blocks) */
            float ds[ROWS];
            int2 wq[ROWS];
#pragma unroll
            for (int i = 0; i < ROWS; i++) {
                ds[i] = __half2float(__ushort_as_half(d[u][i]));
                wq[i] = F::ints(raw[u][i]);
            }
#pragma unroll
            for (int s = 0; s < NB; s++) {
                const XPiece xp = piece(s, p, group);
#pragma unroll
                for (int i = 0; i < ROWS; i++) acc[i][s] += F::dot(wq[i], xp) * (ds[i] * xp.dx);
            }
        }
    }
    gemv_store<NB, ROWS, KSPLIT>(acc, has_rows, r0, y, R, conv);
}

/* One sequence: x quantized by the warps (see gemv_q_body); U = LOADS / ROWS pieces in flight a row. */
template <int DT, int ROWS, int KSPLIT>
__global__ void __launch_bounds__(GEMV_WARPS * 32, 2)
gemv_q_kernel(Mat W, const float *__restrict__ x, float *__restrict__ y, int R, int K, ConvEpi conv) {
    gemv_q_body<DT, 1, ROWS, KSPLIT, QFormat<DT>::LOADS / ROWS>(
        W, [&](int, int p, unsigned group) { return quantize_piece<DT>(x, p, group); }, y, R, K, conv);
}

/* NB > 1 sequences: x quantized by quant_x_kernel into xq [NB][K/8] (see gemv_q_body). Pieces in
 * flight a lane and row (U): for x_proj's shape (ROWS 1), LOADS (128 bytes of weights, as one
 * sequence's); for ROWS 4 (gemv_shape), as many as compile without spilling (nvcc 13, sm_90, KSPLIT 1
 * and 4; each sequence adds partial sums and the x of the pieces in flight): q8_0 4 (128 bytes) up
 * to 3 sequences, 3 (96) up to 7, 2 (64) for 8; q4_0 8 (128 bytes) up to 3, 4 (64) up to 5, 3 (48)
 * up to 7, 2 (32) for 8. (The old kernel kept 32 bytes in flight from 5 sequences, 64 below. At 8
 * sequences q4_0 takes ~10 instructions a weight byte, so its loads are the less likely bound: an
 * estimate, not measured.) */
template <int DT, int NB, int ROWS> __host__ __device__ constexpr int gemv_qx_u() {
    static_assert(ROWS == 1 || ROWS == 4, "gemv_qx_u: the pieces in flight were chosen for 1 or 4 rows");
    if (ROWS == 1) return QFormat<DT>::LOADS;
    if (DT == DT_Q8_0) return NB <= 3 ? 4 : NB < 8 ? 3 : 2;
    return NB <= 3 ? 8 : NB <= 5 ? 4 : NB < 8 ? 3 : 2;
}
template <int DT, int NB, int ROWS, int KSPLIT>
__global__ void __launch_bounds__(GEMV_WARPS * 32, 2)
gemv_qx_kernel(Mat W, const uint4 *__restrict__ xq, float *__restrict__ y, int R, int K, ConvEpi conv) {
    static_assert(NB > 1, "one sequence: gemv_q_kernel");
    const int pieces = K / 8;
    gemv_q_body<DT, NB, ROWS, KSPLIT, gemv_qx_u<DT, NB, ROWS>()>(
        W, [&](int s, int p, unsigned) { return xpiece_unpack<DT>(xq[(size_t)s * pieces + p]); }, y, R, K, conv);
}

/* out = in, narrowed to T (prefill: dt_in for the dt_proj GEMM). */
template <typename T>
__global__ void narrow_kernel(const float *in, T *out, size_t n) {
    launch_next();
    wait_prior();
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = from_f<T>(in[i]);
}

#endif
