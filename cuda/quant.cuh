/* cuda/quant.cuh: weight matrices of any of the file's types on the device (Mat), and the two block
 * formats of model.h (q8_0, q4_0): one element widened (the embedding row lookup); the activations
 * quantized per block of 32 as model.h specifies, for the GEMV's integer dot products (dp4a on the
 * 8-value pieces it reads, QFormat, quantize_piece; for several sequences once per GEMV,
 * quant_x_kernel) and for the GEMMs (quant_narrow_kernel); and the whole matrix dequantized to fp16
 * for the tensor-core GEMMs (dequant_kernel). */
#ifndef QUANT_CUH
#define QUANT_CUH

#include "common.cuh"
extern "C" {
#include "../model.h"
}

/* A weight matrix [rows][cols] on the device, in its own type: fp32, fp16 or bf16 elements at w,
 * or (q8_0, q4_0) the quants at w and one fp16 scale a block of QBLOCK at scales ([rows][cols / QBLOCK];
 * a quantized matrix's cols is a multiple of QBLOCK, model.c checks). In a quantized file the
 * quantized matrices sit beside dense fp16 ones (dt_proj), so the type is known per matrix. */
struct Mat {
    const void *w;
    const f16 *scales; /* NULL unless quantized */
    int dtype;         /* DT_* */
};

__host__ __device__ __forceinline__ bool quantized(int dtype) { return dtype == DT_Q8_0 || dtype == DT_Q4_0; }

/* Element i of row `row` of W [.][cols], widened to fp32; T is the type of a dense W. A quantized
 * element is q * d, exact in fp32 (8-bit q, 11-bit d), the value run.c's load1 gives. */
template <typename T> __device__ __forceinline__ float mat_elem(const Mat &W, size_t row, int cols, int i) {
    const size_t k = row * cols + i;
    if (W.dtype == DT_Q8_0) return (float)((const int8_t *)W.w)[k] * __half2float(W.scales[k / QBLOCK]);
    if (W.dtype == DT_Q4_0) {
        const uint8_t b = ((const uint8_t *)W.w)[k / QBLOCK * (QBLOCK / 2) + k % (QBLOCK / 2)];
        return (float)((k % QBLOCK < QBLOCK / 2 ? b & 15 : b >> 4) - 8) * __half2float(W.scales[k / QBLOCK]);
    }
    return to_f(((const T *)W.w)[k]);
}

/* Small unsigned integers to fp32 without a conversion instruction (those run at a quarter of the
 * FMA rate; dequant_kernel): byte j of u placed in the low mantissa bits
 * of 2^23 is the float 2^23 + byte, and one subtraction, exact, removes 2^23 and the format's offset. */
__device__ __forceinline__ float byte_to_f(uint32_t u, int j, float bias) {
    return __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540 | j)) - bias;
}

/* The activations a quantized matrix multiplies (model.h, "ACTIVATIONS OF A QUANTIZED MATRIX"): x in
 * blocks of 32 along the row, amax = max |x_k| over the block, q_k = round-half-to-even(x_k * inv)
 * with inv = 127 / amax (0 when amax == 0 or 127 / amax overflows, so that every q is 0),
 * dx = amax / 127. */
__device__ __forceinline__ float xq_inv(float amax) { /* 0, as amax == 0, where 127 / amax overflows */
    const float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
    return inv < INFINITY ? inv : 0.0f;
}
__device__ __forceinline__ float xq_dx(float amax) { return amax / 127.0f; }
/* q_k + 1.5 * 2^23, exactly. Adding 1.5 * 2^23 (whose ulp is 1) to a float of magnitude below 2^22
 * rounds it to an integer in the default round-half-to-even mode: the q of __float2int_rn, without its
 * conversion instruction (a quarter of the FMA rate on sm_90), and the sum's bit pattern holds q in
 * two's complement in its low bits (its low byte is q's int8). __fmul_rn and __fadd_rn are never
 * fused into one FMA, which would round x * inv + 1.5 * 2^23 once instead of x * inv first. */
#define XQ_MAGIC 12582912.0f /* 1.5 * 2^23 */
#define XQ_MAGIC_BITS 0x4B400000
__device__ __forceinline__ float xq_biased(float v, float inv) { return __fadd_rn(__fmul_rn(v, inv), XQ_MAGIC); }
/* q of 4 values (v[j] in byte j, int8), the operand of a dp4a */
__device__ __forceinline__ int xq_pack4(const float *v, float inv) {
    uint32_t b[4];
#pragma unroll
    for (int j = 0; j < 4; j++) b[j] = __float_as_uint(xq_biased(v[j], inv));
    return (int)__byte_perm(__byte_perm(b[0], b[1], 0x0040), __byte_perm(b[2], b[3], 0x0040), 0x5410);
}

/* A piece's x, quantized: q of the 8 values the piece's weights meet, 4 a word (lo: those of the
 * weights' first word / low nibbles, hi: the others), the block's dx, and where the piece's dp4a
 * sums start: XQ_MAGIC_BITS (plus q4_0's -8 * sum q), so that the sum's bits read as a float are
 * 1.5 * 2^23 + the integer dot product, exactly (|it| <= 8 * 127 * 127 < 2^22): F::dot returns it
 * minus 1.5 * 2^23, with no int-to-float conversion (quarter rate, see xq_biased). */
struct XPiece {
    int lo, hi;
    float dx;
    int start;
};

/* The GEMV kernel's view of a block format: a lane reads a row in pieces of 8 values (bytes of
 * quants: BYTES), two float4s of x each (x_at), so that the x loads of a warp cover whole 32-byte
 * sectors as the dense kernel's do; LOADS pieces a lane keeps in flight are 128 bytes. Pieces
 * 4b .. 4b+3 make block b, so a warp's stretch of 32 consecutive pieces is 8 whole blocks, lanes
 * 4j .. 4j+3 holding one of them.
 * Ints: the piece's weights as dp4a operands (signed bytes), from the loaded Raw.
 * q8_0: piece p is values 8p .. 8p+7 (8 int8 quants: the two words of Raw as they are).
 * q4_0: piece p is word k = p % 4 of block b = p / 4 (bytes 4k .. 4k+3), whose low nibbles are
 *       values 4k .. 4k+3 of the block and whose high nibbles are values 16+4k .. 16+4k+3; the
 *       nibbles (0..15, also valid as signed bytes) go to dp4a as they are, and the -8 of each,
 *       -8 * sum q over the piece, is added once per piece and sequence (XPiece::start), not per row. */
template <int DT> struct QFormat;
template <> struct QFormat<DT_Q8_0> {
    typedef uint2 Raw;
    enum { BYTES = 8, LOADS = 16 };
    static __device__ __forceinline__ Raw load(const uint8_t *row, int p) { return __ldg((const uint2 *)row + p); }
    static __device__ __forceinline__ int x_at(int p, int h) { return 8 * p + 4 * h; }
    static __device__ __forceinline__ int2 ints(Raw r) { return make_int2((int)r.x, (int)r.y); }
    static __device__ __forceinline__ int start(int, int) { return XQ_MAGIC_BITS; }
    static __device__ __forceinline__ float dot(int2 w, const XPiece &x) {
        return __int_as_float(__dp4a(w.x, x.lo, __dp4a(w.y, x.hi, x.start))) - XQ_MAGIC;
    }
};
template <> struct QFormat<DT_Q4_0> {
    typedef uint32_t Raw;
    enum { BYTES = 4, LOADS = 32 };
    static __device__ __forceinline__ Raw load(const uint8_t *row, int p) { return __ldg((const uint32_t *)row + p); }
    static __device__ __forceinline__ int x_at(int p, int h) { return p / 4 * QBLOCK + p % 4 * 4 + h * (QBLOCK / 2); }
    static __device__ __forceinline__ int2 ints(Raw r) { return make_int2((int)(r & 0x0F0F0F0Fu), (int)((r >> 4) & 0x0F0F0F0Fu)); }
    static __device__ __forceinline__ int start(int lo, int hi) { /* 0xF8: the int8 -8 */
        return __dp4a((int)0xF8F8F8F8u, lo, __dp4a((int)0xF8F8F8F8u, hi, XQ_MAGIC_BITS));
    }
    static __device__ __forceinline__ float dot(int2 w, const XPiece &x) {
        return __int_as_float(__dp4a(w.x, x.lo, __dp4a(w.y, x.hi, x.start))) - XQ_MAGIC;
    }
};

/* Piece p of x (fp32, one sequence), quantized: the lane's 8 values, the block's amax from the 4
 * lanes of the block (group: their mask; a group is in the loop or out of it as a whole, since K is
 * whole blocks), then q and dx. */
template <int DT>
__device__ __forceinline__ XPiece quantize_piece(const float *__restrict__ x, int p, unsigned group) {
    typedef QFormat<DT> F;
    float v[8];
    load16(x + F::x_at(p, 0), v);
    load16(x + F::x_at(p, 1), v + 4);
    float amax = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) amax = fmaxf(amax, fabsf(v[j]));
    amax = fmaxf(amax, __shfl_xor_sync(group, amax, 1));
    amax = fmaxf(amax, __shfl_xor_sync(group, amax, 2));
    const float inv = xq_inv(amax);
    XPiece xp;
    xp.lo = xq_pack4(v, inv);
    xp.hi = xq_pack4(v + 4, inv);
    xp.dx = xq_dx(amax);
    xp.start = F::start(xp.lo, xp.hi);
    return xp;
}

/* An XPiece in memory, 16 bytes (one vector store, one vector load): quant_x_kernel writes the
 * pieces of a batch's x once per GEMV, gemv_qx_kernel reads them. q8_0's start is the constant that
 * QFormat<DT_Q8_0>::start gives (one register for all sequences rather than one each); q4_0's is the
 * stored one. */
__device__ __forceinline__ uint4 xpiece_pack(const XPiece &xp) {
    return make_uint4((uint32_t)xp.lo, (uint32_t)xp.hi, __float_as_uint(xp.dx), (uint32_t)xp.start);
}
template <int DT> __device__ __forceinline__ XPiece xpiece_unpack(uint4 v) {
    XPiece xp;
    xp.lo = (int)v.x;
    xp.hi = (int)v.y;
    xp.dx = __uint_as_float(v.z);
    xp.start = DT == DT_Q8_0 ? QFormat<DT_Q8_0>::start(0, 0) : (int)v.w;
    return xp;
}

/* x [rows][K] (fp32, K whole blocks) quantized for the GEMV of a quantized matrix over several
 * sequences (gemv_qx_kernel), once per GEMV rather than by every warp that meets it: xq[i] = piece i
 * of x seen as one row of rows * K values, that is piece p of row s at i = s * K/8 + p (a row's K/8
 * pieces are whole blocks, so p's block and place in it are i's), as quantize_piece gives it (the
 * one definition of the arithmetic: the GEMV gets the very bits it would have computed itself). A
 * thread per piece: n = rows * K/8 pieces, whole blocks, so the 4 threads of a block (4 lanes of one
 * warp) are in or out together. */
template <int DT>
__global__ void quant_x_kernel(const float *__restrict__ x, uint4 *__restrict__ xq, int n) {
    launch_next();
    wait_prior();
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned group = 0xFu << (threadIdx.x % 32 & ~3); /* the 4 threads of this piece's block */
    xq[i] = xpiece_pack(quantize_piece<DT>(x, i, group));
}

/* The GEMM input of a quantized matrix (prefill, decode batches over GEMV_MAX_SEQS): x' = dx * q of
 * x [rows][K] (fp32, K whole blocks), narrowed to T for cuBLAS; a warp per block of 32, a lane per
 * value. q comes from the fp32 x that the GEMV path quantizes too (the producing kernels write fp32
 * for a quantized file's projections), so prefill and decode differ only by x' rounded to fp16
 * (2^-12 relative) and the GEMM's dequantized fp16 weights. */
template <typename T>
__global__ void quant_narrow_kernel(const float *__restrict__ in, T *__restrict__ out, size_t n) {
    launch_next();
    wait_prior();
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; /* n is whole blocks: warps are in or out */
    if (i >= n) return;
    const float v = in[i];
    float amax = fabsf(v);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
    out[i] = from_f<T>(xq_dx(amax) * (xq_biased(v, xq_inv(amax)) - XQ_MAGIC));
}

/* out[rows][cols] (fp16) = W dequantized, a thread per 8 values: the GEMMs of prefill and of large
 * decode batches run on it (cuBLAS takes no block formats). q * d is exact in fp32 and rounded
 * once, to fp16. W's quants are read before waiting for the previous kernel; out is written after. */
template <int DT>
__global__ void dequant_kernel(const uint8_t *__restrict__ q, const f16 *__restrict__ scales, f16 *__restrict__ out,
                               size_t n) {
    launch_next();
    const size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * 8; /* the first of 8 values */
    const bool in = i < n;
    uint2 raw = make_uint2(0, 0);
    float d = 0.0f;
    if (in) {
        /* q8_0: the 8 bytes at i; q4_0: bytes j .. j+7 (j = i % 16) of the block, low nibbles for the
         * first half of the block, high nibbles for the second */
        raw = __ldg((const uint2 *)(q + (DT == DT_Q8_0 ? i : i / QBLOCK * (QBLOCK / 2) + i % (QBLOCK / 2))));
        d = __half2float(scales[i / QBLOCK]);
    }
    wait_prior();
    if (!in) return;
    float f[8];
    if (DT == DT_Q8_0) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
            f[j] = byte_to_f(raw.x ^ 0x80808080u, j, 8388608.0f + 128.0f);
            f[4 + j] = byte_to_f(raw.y ^ 0x80808080u, j, 8388608.0f + 128.0f);
        }
    } else {
        const int sh = i % QBLOCK < QBLOCK / 2 ? 0 : 4;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            f[j] = byte_to_f((raw.x >> sh) & 0x0F0F0F0Fu, j, 8388608.0f + 8.0f);
            f[4 + j] = byte_to_f((raw.y >> sh) & 0x0F0F0F0Fu, j, 8388608.0f + 8.0f);
        }
    }
    __align__(16) __half2 h[4];
#pragma unroll
    for (int j = 0; j < 4; j++) h[j] = __floats2half2_rn(f[2 * j] * d, f[2 * j + 1] * d);
    *(uint4 *)(out + i) = *(const uint4 *)h;
}

#endif
