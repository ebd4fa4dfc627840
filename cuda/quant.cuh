/* cuda/quant.cuh: weight matrices of any of the file's types on the device (Mat), and the two block
 * formats of model.h (q8_0, q4_0): one element widened (the embedding row lookup), the 8-value
 * pieces the GEMV kernels read, and the whole matrix dequantized to fp16 for the tensor-core GEMMs. */
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
 * FMA rate, and a q4_0 GEMV would be bound by them): byte j of u placed in the low mantissa bits
 * of 2^23 is the float 2^23 + byte, and one subtraction, exact, removes 2^23 and the format's offset. */
__device__ __forceinline__ float byte_to_f(uint32_t u, int j, float bias) {
    return __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7540 | j)) - bias;
}

/* The GEMV kernels' view of a block format: a lane reads a row in pieces of 8 values (bytes of
 * quants: BYTES), two float4s of x each (x_at), so that the x loads of a warp cover whole 32-byte
 * sectors as the dense kernel's do; LOADS pieces a lane keeps in flight are 128 bytes.
 * q8_0: piece p is values 8p .. 8p+7 (8 int8 quants).
 * q4_0: piece p is word k = p % 4 of block b = p / 4 (bytes 4k .. 4k+3), whose low nibbles are
 *       values 4k .. 4k+3 of the block and whose high nibbles are values 16+4k .. 16+4k+3. */
template <int DT> struct QFormat;
template <> struct QFormat<DT_Q8_0> {
    typedef uint2 Raw;
    enum { BYTES = 8, LOADS = 16 };
    static __device__ __forceinline__ Raw load(const uint8_t *row, int p) { return __ldg((const uint2 *)row + p); }
    static __device__ __forceinline__ int x_at(int p, int h) { return 8 * p + 4 * h; }
    /* values 4h .. 4h+3 of the piece: q, without the scale */
    static __device__ __forceinline__ void unpack4(Raw r, int h, float *f) {
        const uint32_t u = (h ? r.y : r.x) ^ 0x80808080u; /* q + 128, unsigned */
#pragma unroll
        for (int j = 0; j < 4; j++) f[j] = byte_to_f(u, j, 8388608.0f + 128.0f);
    }
};
template <> struct QFormat<DT_Q4_0> {
    typedef uint32_t Raw;
    enum { BYTES = 4, LOADS = 32 };
    static __device__ __forceinline__ Raw load(const uint8_t *row, int p) { return __ldg((const uint32_t *)row + p); }
    static __device__ __forceinline__ int x_at(int p, int h) { return p / 4 * QBLOCK + p % 4 * 4 + h * (QBLOCK / 2); }
    static __device__ __forceinline__ void unpack4(Raw r, int h, float *f) {
        const uint32_t u = (h ? r >> 4 : r) & 0x0F0F0F0Fu;
#pragma unroll
        for (int j = 0; j < 4; j++) f[j] = byte_to_f(u, j, 8388608.0f + 8.0f);
    }
};

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
