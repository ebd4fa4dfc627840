/* run.c: the CPU engine for Mamba-1, Falcon-Mamba and Mamba-2 (see engine.h); the command line is
 * shared, in cli.c.
 *
 * Decode (engine_step) runs one token of each active sequence: every weight is streamed from the
 * memory-mapped file once per step, whatever the number of sequences, and the conv and SSM states
 * are O(1) per layer. Prefill (engine_prefill) runs a chunk of prompt tokens at once: the
 * projections become cache-blocked matrix-matrix products and the causal conv runs over the chunk;
 * Mamba-1's selective scan runs in parallel over channels, Mamba-2's SSM in the chunked "state
 * space duality" form (ssd_chunk), both leaving the states that a token-by-token run leaves.
 * Each family has its own layer function (mamba1_layer, mamba2_layer) over the shared pieces.
 * fp16/bf16 weights are widened to fp32 as they are read; a quantized (q8_0, q4_0) matrix multiplies
 * its input quantized per block of 32 (model.h): integer dot products in decode, the widened weights
 * times the dequantized input in prefill's GEMM. Everything else, and the states, are fp32. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__SSE2__)
#include <immintrin.h>
#endif

#include "engine.h"
#include "sampler.h"
#include "vec.h"

/* ----------------------------------------------------------------------------------------------
 * Vector helpers over vec.h's vfloat (VL lanes). */
static inline vfloat load_f32(const float *p) { vfloat v; memcpy(&v, p, sizeof v); return v; }
static inline void store_f32(float *p, vfloat v) { memcpy(p, &v, sizeof v); }
static inline vfloat splat(float x) { return (vfloat){0} + x; }
static inline vfloat as_f32(vint v) { vfloat f; memcpy(&f, &v, sizeof f); return f; }
static inline vint as_i32(vfloat v) { vint i; memcpy(&i, &v, sizeof i); return i; }
static inline vfloat blend(vint mask, vfloat a, vfloat b) { return as_f32((mask & as_i32(a)) | (~mask & as_i32(b))); }

/* VL fp16 values to fp32 with the F16C conversion where the machine has it. */
static inline vfloat widen_f16(const uint16_t *p) {
    vfloat v;
#if VL == 16
    __m512 r = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
    memcpy(&v, &r, sizeof v);
#elif VL == 8 && defined(__F16C__)
    __m256 r = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
    memcpy(&v, &r, sizeof v);
#else
    for (int k = 0; k < VL; k++) v[k] = f16_to_f32(p[k]);
#endif
    return v;
}

/* One fp16 scale to fp32 (F16C's instruction where the machine has it); block_scale: the scale of
 * the block that holds element i of the quantized W. */
static inline float f16_scale(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    return f16_to_f32(h);
#endif
}
static inline float block_scale(const Tensor *W, size_t i) { return f16_scale(W->scales[i / QBLOCK]); }

/* VL int8 quants (q8_0) to fp32. */
static inline vfloat widen_q8(const int8_t *p) {
    vfloat v;
#if VL == 16
    __m512 r = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
    memcpy(&v, &r, sizeof v);
#elif VL == 8 && defined(__AVX2__)
    __m256 r = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
    memcpy(&v, &r, sizeof v);
#else
    for (int k = 0; k < VL; k++) v[k] = p[k];
#endif
    return v;
}

/* The low (hi = 0) or high (hi = 4) nibbles of VL bytes of q4_0 quants, minus 8, to fp32. */
static inline vfloat widen_q4(const uint8_t *p, int hi) {
    vfloat v;
#if VL == 16
    __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)p));
    __m512 r = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32(q, hi), _mm512_set1_epi32(15)), _mm512_set1_epi32(8)));
    memcpy(&v, &r, sizeof v);
#elif VL == 8 && defined(__AVX2__)
    __m256i q = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)p));
    __m256 r = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(q, hi), _mm256_set1_epi32(15)), _mm256_set1_epi32(8)));
    memcpy(&v, &r, sizeof v);
#else
    for (int k = 0; k < VL; k++) v[k] = (float)((p[k] >> hi & 15) - 8);
#endif
    return v;
}

/* VL consecutive weights of matrix W, starting at element i, widened to fp32. Quantized, i is a
 * multiple of VL, so the VL values lie in one block (VL divides QBLOCK): q8_0 widens VL int8,
 * q4_0 takes the low (first half of the block) or high (second half) nibbles of VL bytes. */
static inline vfloat load_w(const Tensor *W, size_t i) {
    const void *w = W->data;
    switch (W->dtype) {
    case DT_F32: return load_f32((const float *)w + i);
    case DT_BF16: {
        vhalf h; memcpy(&h, (const uint16_t *)w + i, sizeof h);
        vuint b = __builtin_convertvector(h, vuint) << 16;
        vfloat v; memcpy(&v, &b, sizeof v); return v;
    }
    case DT_Q8_0: return widen_q8((const int8_t *)w + i) * block_scale(W, i);
    case DT_Q4_0: {
        size_t j = i % QBLOCK;
        return widen_q4((const uint8_t *)w + i / QBLOCK * (QBLOCK / 2) + j % (QBLOCK / 2), j < QBLOCK / 2 ? 0 : 4)
               * block_scale(W, i);
    }
    default: return widen_f16((const uint16_t *)w + i);
    }
}

/* exp and log of VL floats: Cephes' range reductions and polynomials (within 2 ulp of the
 * correctly rounded result over the whole float range), so that the scan, SiLU and softplus
 * vectorize; libm's scalar calls would take half the prefill time. */
static inline vfloat vexp(vfloat x) {
    vint under = x < -87.33654f, over = x > 88.72283f;
    x = blend(under | over, splat(0.0f), x);
    vfloat t = x * 1.44269504088896341f + 12582912.0f; /* 1.5 * 2^23: rounds to the nearest integer */
    vfloat n = t - 12582912.0f;
    vfloat r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vfloat p = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r
                + 1.6666665459e-1f) * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    vint e = (as_i32(t) - 0x4B400000) << 23; /* n, from the low bits of t */
    vfloat y = as_f32(as_i32(p) + e);
    y = blend(under, splat(0.0f), y);
    return blend(over, splat(__builtin_inff()), y);
}

/* log of VL positive, normal floats. */
static inline vfloat vlog(vfloat x) {
    vint bits = as_i32(x);
    vfloat e = __builtin_convertvector(((bits >> 23) & 0xff) - 126, vfloat);
    vfloat m = as_f32((bits & 0x007fffff) | 0x3f000000); /* x = m * 2^e, m in [0.5, 1) */
    vint small = m < 0.707106781186547524f;
    e = blend(small, e - 1.0f, e);
    m = blend(small, m + m - 1.0f, m - 1.0f);
    vfloat z = m * m;
    vfloat y = (((((((7.0376836292e-2f * m - 1.1514610310e-1f) * m + 1.1676998740e-1f) * m - 1.2420140846e-1f) * m
                   + 1.4249322787e-1f) * m - 1.6668057665e-1f) * m + 2.0000714765e-1f) * m - 2.4999993993e-1f) * m
               + 3.3333331174e-1f;
    y = y * m * z + e * -2.12194440e-4f - 0.5f * z;
    return m + y + e * 0.693359375f;
}

/* silu(v) = v * sigmoid(v), and softplus(v) = log(1 + e^v) as torch computes it (v itself above 20),
 * with log1p's accuracy for small e^v: VL lanes at a time (vexp, vlog) or one float (libm). The
 * loops below take whole vectors through the first and the tail through the second. */
static inline vfloat silu_v(vfloat x) { return x / (1.0f + vexp(-x)); }
static inline float silu_1(float v) { return v / (1.0f + expf(-v)); }
static inline vfloat softplus_v(vfloat x) {
    vfloat ex = vexp(blend(x > 20.0f, splat(0.0f), x)), u = 1.0f + ex;
    vfloat l1p = blend(u == 1.0f, ex, vlog(u) * ex / blend(u == 1.0f, splat(1.0f), u - 1.0f));
    return blend(x > 20.0f, x, l1p);
}
static inline float softplus_1(float v) { return v > 20.0f ? v : log1pf(expf(v)); }

/* Element-wise work over a prefill chunk is split across the threads; over one decode step's few
 * thousand elements, starting them would cost more than it saves. */
#define PARALLEL_MIN 16384

/* In place over n floats. */
static void silu_inplace(float *v, size_t n) {
    size_t full = n / VL * VL;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < full; i += VL) store_f32(v + i, silu_v(load_f32(v + i)));
    for (size_t i = full; i < n; i++) v[i] = silu_1(v[i]);
}

static void softplus_inplace(float *v, size_t n) {
    size_t full = n / VL * VL;
#pragma omp parallel for schedule(static) if (n >= PARALLEL_MIN)
    for (size_t i = 0; i < full; i += VL) store_f32(v + i, softplus_v(load_f32(v + i)));
    for (size_t i = full; i < n; i++) v[i] = softplus_1(v[i]);
}

/* The same over a short slice (a block of channels) by the calling thread alone: for the decode
 * step's parallel region, which must not open another one (silu_inplace's `if` would still open
 * a nested region of one thread). */
static void silu_slice(float *v, int n) {
    int i = 0;
    for (; i + VL <= n; i += VL) store_f32(v + i, silu_v(load_f32(v + i)));
    for (; i < n; i++) v[i] = silu_1(v[i]);
}

static void softplus_slice(float *v, int n) {
    int i = 0;
    for (; i + VL <= n; i += VL) store_f32(v + i, softplus_v(load_f32(v + i)));
    for (; i < n; i++) v[i] = softplus_1(v[i]);
}

/* Element i of matrix W, widened to fp32. */
static inline float load1(const Tensor *W, size_t i) {
    switch (W->dtype) {
    case DT_F32: return ((const float *)W->data)[i];
    case DT_BF16: return bf16_to_f32(((const uint16_t *)W->data)[i]);
    case DT_Q8_0: return ((const int8_t *)W->data)[i] * block_scale(W, i);
    case DT_Q4_0: {
        uint8_t b = ((const uint8_t *)W->data)[i / QBLOCK * (QBLOCK / 2) + i % (QBLOCK / 2)];
        return ((i % QBLOCK < QBLOCK / 2 ? b & 15 : b >> 4) - 8) * block_scale(W, i);
    }
    default: return f16_to_f32(((const uint16_t *)W->data)[i]);
    }
}

static inline float hsum(vfloat v) {
    float s = 0;
    for (int k = 0; k < VL; k++) s += v[k];
    return s;
}

/* Dot product of row `row` of an unquantized W [rows, n] with x[n]. The order of additions depends
 * only on n, so a sequence gets the same bits whatever else is in the batch. */
static inline float dot_row(const Tensor *W, size_t row, const float *x, int n) {
    int i = 0;
    size_t base = row * (size_t)n;
    vfloat a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    for (; i + 4 * VL <= n; i += 4 * VL) {
        a0 += load_w(W, base + i) * load_f32(x + i);
        a1 += load_w(W, base + i + VL) * load_f32(x + i + VL);
        a2 += load_w(W, base + i + 2 * VL) * load_f32(x + i + 2 * VL);
        a3 += load_w(W, base + i + 3 * VL) * load_f32(x + i + 3 * VL);
    }
    for (; i + VL <= n; i += VL) a0 += load_w(W, base + i) * load_f32(x + i);
    float s = hsum((a0 + a1) + (a2 + a3));
    for (; i < n; i++) s += load1(W, base + i) * x[i];
    return s;
}

/* ----------------------------------------------------------------------------------------------
 * A quantized W times activations (model.h, ACTIVATIONS OF A QUANTIZED MATRIX). Each input row is
 * quantized once per product, per block of 32, to int8 q and an fp32 scale dx; a block's dot product
 * with a row of W is then a sum of integer products, exact in int32 (at most 32 * 127 * 128), and the
 * row's result is the fp32 sum over blocks of d * dx * that integer. Widening the weights to fp32
 * instead costs two vector instructions a weight-vector and was compute-bound well short of the
 * memory bandwidth; the integer products take one instruction (AVX-512 VNNI vpdpbusd) for 64 weights. */

/* The kernels read the blocks of a row in groups of QGROUP (AVX-512: 8 registers of 2 blocks), so
 * each quantized row is padded with zero blocks to a multiple of QGROUP. */
#define QGROUP 16

typedef struct {
    int8_t *q;       /* [rows][ld_blocks * QBLOCK]: the quantized rows */
    float *dx;       /* [rows][ld_blocks]: the blocks' scales */
    int32_t *qsum;   /* [rows][ld_blocks]: the sum of each block's q, for the kernels that multiply q by
                      * unsigned weights (q4_0's nibbles; q8_0's w + 128 with VNNI) */
    float *deq;      /* prefill: [rows][cols] the GEMM's input, x' = dx * q */
    int ld_blocks;   /* blocks a row, padded: the widest quantized matrix's, rounded up to QGROUP */
} QuantActs;

static inline int is_quantized(const Tensor *W) { return W->dtype == DT_Q8_0 || W->dtype == DT_Q4_0; }

typedef int8_t vbyte __attribute__((vector_size(VL)));

/* VL floats to the nearest integers, halves to even: the conversion instruction in the default
 * rounding mode. Not the 1.5 * 2^23 addition: the compiler would fuse it with the multiply before it
 * into one FMA, which rounds the exact product rather than its fp32 rounding (model.h rounds x * (127 /
 * amax) as an fp32 product, and a product just off a tie can round to the tie). */
static inline vint round_half_even(vfloat v) {
    vint r;
#if VL == 16
    __m512i i = _mm512_cvtps_epi32(_mm512_loadu_ps((const float *)&v));
#elif VL == 8
    __m256i i = _mm256_cvtps_epi32(_mm256_loadu_ps((const float *)&v));
#elif defined(__SSE2__)
    __m128i i = _mm_cvtps_epi32(_mm_loadu_ps((const float *)&v));
#else
    vint i;
    for (int k = 0; k < VL; k++) i[k] = (int32_t)rintf(v[k]);
#endif
    memcpy(&r, &i, sizeof r);
    return r;
}

/* Block b of row i of x (x[b*QBLOCK] onwards) into qa's row i. */
static void quantize_block(QuantActs *qa, int i, int b, const float *x) {
    size_t at = (size_t)i * qa->ld_blocks + b;
    const float *xb = x + (size_t)b * QBLOCK;
    int8_t *q = qa->q + at * QBLOCK;
    vfloat m = {0};
    for (int k = 0; k < QBLOCK; k += VL) {
        vfloat a = as_f32(as_i32(load_f32(xb + k)) & 0x7fffffff);
        m = blend(a > m, a, m);
    }
    float amax = 0;
    for (int k = 0; k < VL; k++) amax = m[k] > amax ? m[k] : amax;
    /* amax == 0, or 127 / amax overflows (amax < 3.7e-37): x * 0 gives every q = 0 (model.h) */
    float inv = amax > 0 ? 127.0f / amax : 0.0f;
    if (inv == INFINITY) inv = 0.0f;
    vint s = {0};
    for (int k = 0; k < QBLOCK; k += VL) {
        vint v = round_half_even(load_f32(xb + k) * inv); /* |x * inv| <= 127 */
        vbyte qb = __builtin_convertvector(v, vbyte);
        memcpy(q + k, &qb, sizeof qb);
        s += v;
    }
    qa->dx[at] = amax / 127.0f;
    qa->qsum[at] = 0;
    for (int k = 0; k < VL; k++) qa->qsum[at] += s[k];
}

/* The zero blocks of qa's row i past its first nb, up to ld_blocks. */
static void quantize_pad(QuantActs *qa, int i, int nb) {
    int ld = qa->ld_blocks;
    memset(qa->q + ((size_t)i * ld + nb) * QBLOCK, 0, (size_t)(ld - nb) * QBLOCK);
    memset(qa->dx + (size_t)i * ld + nb, 0, (ld - nb) * sizeof *qa->dx);
    memset(qa->qsum + (size_t)i * ld + nb, 0, (ld - nb) * sizeof *qa->qsum);
}

/* Row i of x [n] into qa's row i, and its zero padding up to ld_blocks. */
static void quantize_row(QuantActs *qa, int i, const float *x, int n) {
    for (int b = 0; b < n / QBLOCK; b++) quantize_block(qa, i, b, x);
    quantize_pad(qa, i, n / QBLOCK);
}

/* Row `row` of a quantized W [rows, n] times quantized row i of qa: per block the integer sum
 * isum = sum of w_q * q, then the sum over blocks of isum * (d * dx) in fp32 lanes (blocks VL apart),
 * then across the lanes. The order of additions depends only on n. */
#if VL == 16
/* 16 int32 lanes of products of unsigned u and signed s bytes, 4 products a lane. */
static inline __m512i dot_lanes(__m512i u, __m512i s) {
#if defined(__AVX512VNNI__)
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, s);
#else
    return _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1));
#endif
}

/* The 16 block sums of blocks g .. g+15, from r[i] holding the lanes of blocks g+2i (lanes 0-7) and
 * g+2i+1 (lanes 8-15): a tree of lane-wise additions (the sum of each 128-bit lane of r[4j..4j+3]
 * lands in one register, then the two lanes of each block are added) and one permutation back to
 * block order, rather than 16 separate horizontal sums. */
static inline __m512i block_sums16(const __m512i r[8]) {
    __m512i t[4], u[2];
    for (int i = 0; i < 4; i++)
        t[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]), _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]));
    for (int i = 0; i < 2; i++) /* lane L of u[i], element j: the sum of lane L of r[4i + j] */
        u[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * i], t[2 * i + 1]), _mm512_unpackhi_epi64(t[2 * i], t[2 * i + 1]));
    /* lanes 0-1 of a register of r are its first block, lanes 2-3 its second: the blocks
     * g+0,2,4,6 | g+1,3,5,7 | g+8,10,12,14 | g+9,11,13,15 */
    __m512i s = _mm512_add_epi32(_mm512_shuffle_i32x4(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_i32x4(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15), s);
}

/* acc + the block sums of blocks g .. g+15 (zero past nb) times their scales d * dx. */
static inline __m512 add_scaled(__m512 acc, __m512i isum, const uint16_t *sc, const float *dx, int g, int nb) {
    __mmask16 in_row = nb - g >= 16 ? 0xFFFF : (1u << (nb - g)) - 1; /* the scales past the row's end: not read */
    __m512 d = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(in_row, sc + g));
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_mul_ps(d, _mm512_loadu_ps(dx + g)), acc);
}

static float dot_row_q8(const int8_t *w, const uint16_t *sc, const int8_t *q, const float *dx, const int32_t *qsum, int nb) {
    __m512 acc = _mm512_setzero_ps();
    for (int g = 0; g < nb; g += QGROUP) {
        __m512i r[8];
        for (int i = 0; i < 8; i++) {
            int b = g + 2 * i;
            if (b >= nb) { r[i] = _mm512_setzero_si512(); continue; }
            const int8_t *wb = w + (size_t)b * QBLOCK; /* a row's last block may be alone in its pair */
            __m512i wv = b + 1 < nb ? _mm512_loadu_si512(wb) : _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)wb));
            __m512i x = _mm512_loadu_si512(q + b * QBLOCK);
#if defined(__AVX512VNNI__)
            /* vpdpbusd multiplies unsigned by signed bytes: w + 128 (w with its sign bit flipped) times x,
             * 128 * sum q taken off below; one instruction fewer than |w| times x with w's sign */
            r[i] = dot_lanes(_mm512_xor_si512(wv, _mm512_set1_epi8(-128)), x);
#else
            /* maddubs would saturate its pairs of (w + 128) * x (up to 2 * 255 * 127): |w| times x with
             * w's sign */
            __m512i xs = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(wv), _mm512_setzero_si512(), x);
            r[i] = dot_lanes(_mm512_abs_epi8(wv), xs);
#endif
        }
        __m512i s = block_sums16(r);
#if defined(__AVX512VNNI__)
        s = _mm512_sub_epi32(s, _mm512_slli_epi32(_mm512_loadu_si512(qsum + g), 7));
#endif
        acc = add_scaled(acc, s, sc, dx, g, nb);
    }
    return _mm512_reduce_add_ps(acc);
}

static float dot_row_q4(const uint8_t *w, const uint16_t *sc, const int8_t *q, const float *dx, const int32_t *qsum, int nb) {
    const __m512i dup = _mm512_setr_epi64(0, 1, 0, 1, 2, 3, 2, 3), low4 = _mm512_set1_epi8(15);
    __m512 acc = _mm512_setzero_ps();
    for (int g = 0; g < nb; g += QGROUP) {
        __m512i r[8];
        for (int i = 0; i < 8; i++) {
            int b = g + 2 * i;
            if (b >= nb) { r[i] = _mm512_setzero_si512(); continue; }
            const uint8_t *wb = w + (size_t)b * (QBLOCK / 2); /* a row's last block may be alone in its pair */
            __m256i pair = b + 1 < nb ? _mm256_loadu_si256((const __m256i *)wb) : _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)wb));
            /* 128-bit lanes: block b's bytes twice, then block b+1's; the second copy of each shifted
             * down a nibble: the lanes hold elements 0-15, 16-31 of b, then of b+1, as q does */
            __m512i v = _mm512_permutexvar_epi64(dup, _mm512_castsi256_si512(pair));
            v = _mm512_and_si512(_mm512_mask_srli_epi16(v, 0xFF00FF00, v, 4), low4);
            r[i] = dot_lanes(v, _mm512_loadu_si512(q + b * QBLOCK));
        }
        /* sum (n - 8) q = sum n q - 8 sum q */
        __m512i s = _mm512_sub_epi32(block_sums16(r), _mm512_slli_epi32(_mm512_loadu_si512(qsum + g), 3));
        acc = add_scaled(acc, s, sc, dx, g, nb);
    }
    return _mm512_reduce_add_ps(acc);
}
#elif VL == 8 && defined(__AVX2__)
/* 8 int32 lanes of products of unsigned u and signed s bytes, 4 products a lane. */
static inline __m256i dot_lanes(__m256i u, __m256i s) {
#if defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), u, s);
#else
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
#endif
}

/* The 8 block sums of blocks g .. g+7, from r[i] holding the lanes of block g+i. */
static inline __m256i block_sums8(const __m256i r[8]) {
    /* each 128-bit half of a: the sums of that half of r[0..3]; of b: of r[4..7] */
    __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(r[0], r[1]), _mm256_hadd_epi32(r[2], r[3]));
    __m256i b = _mm256_hadd_epi32(_mm256_hadd_epi32(r[4], r[5]), _mm256_hadd_epi32(r[6], r[7]));
    return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* acc + the block sums of blocks g .. g+7 (zero past nb) times their scales d * dx. */
static inline __m256 add_scaled(__m256 acc, __m256i isum, const uint16_t *sc, const float *dx, int g, int nb) {
    uint16_t part[8] = {0}; /* the scales past the row's end: not read */
    if (nb - g < 8) memcpy(part, sc + g, (nb - g) * sizeof *sc);
    __m256 d = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(nb - g < 8 ? part : sc + g)));
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), _mm256_mul_ps(d, _mm256_loadu_ps(dx + g)), acc);
}

static float dot_row_q8(const int8_t *w, const uint16_t *sc, const int8_t *q, const float *dx, const int32_t *qsum, int nb) {
    __m256 acc = _mm256_setzero_ps();
    for (int g = 0; g < nb; g += 8) {
        __m256i r[8];
        for (int i = 0; i < 8; i++) {
            int b = g + i;
            if (b >= nb) { r[i] = _mm256_setzero_si256(); continue; }
            __m256i wv = _mm256_loadu_si256((const __m256i *)(w + (size_t)b * QBLOCK));
            __m256i x = _mm256_loadu_si256((const __m256i *)(q + b * QBLOCK));
            /* maddubs multiplies unsigned by signed bytes: |w| times x with w's sign */
            r[i] = dot_lanes(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(x, wv));
        }
        acc = add_scaled(acc, block_sums8(r), sc, dx, g, nb);
    }
    vfloat v;
    memcpy(&v, &acc, sizeof v);
    return hsum(v);
}

static float dot_row_q4(const uint8_t *w, const uint16_t *sc, const int8_t *q, const float *dx, const int32_t *qsum, int nb) {
    const __m128i low4 = _mm_set1_epi8(15);
    __m256 acc = _mm256_setzero_ps();
    for (int g = 0; g < nb; g += 8) {
        __m256i r[8];
        for (int i = 0; i < 8; i++) {
            int b = g + i;
            if (b >= nb) { r[i] = _mm256_setzero_si256(); continue; }
            __m128i p = _mm_loadu_si128((const __m128i *)(w + (size_t)b * (QBLOCK / 2)));
            /* elements 0-15 (low nibbles), then 16-31 (high nibbles), as q holds them */
            __m256i v = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(p, 4), low4), _mm_and_si128(p, low4));
            r[i] = dot_lanes(v, _mm256_loadu_si256((const __m256i *)(q + b * QBLOCK)));
        }
        /* sum (n - 8) q = sum n q - 8 sum q */
        __m256i s = _mm256_sub_epi32(block_sums8(r), _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(qsum + g)), 3));
        acc = add_scaled(acc, s, sc, dx, g, nb);
    }
    vfloat v;
    memcpy(&v, &acc, sizeof v);
    return hsum(v);
}
#else
/* Without AVX2: integer loops that the compiler vectorizes as the machine allows, then the
 * scaled sums VL blocks at a time. */
static float sum_scaled(const int32_t *isum, const uint16_t *sc, const float *dx, int nb) {
    vfloat acc = {0};
    for (int b = 0; b < nb; b += VL) { /* past nb: isum and dx are 0, and the scales are not read */
        vfloat d = {0}, s = {0};
        for (int k = 0; k < VL && b + k < nb; k++) d[k] = f16_scale(sc[b + k]), s[k] = isum[b + k];
        acc += s * (d * load_f32(dx + b));
    }
    return hsum(acc);
}

static float dot_row_q8(const int8_t *w, const uint16_t *sc, const int8_t *q, const float *dx, const int32_t *qsum, int nb) {
    int32_t isum[nb];
    for (int b = 0; b < nb; b++) {
        int32_t s = 0;
        for (int k = 0; k < QBLOCK; k++) s += w[(size_t)b * QBLOCK + k] * q[b * QBLOCK + k];
        isum[b] = s;
    }
    return sum_scaled(isum, sc, dx, nb);
}

static float dot_row_q4(const uint8_t *w, const uint16_t *sc, const int8_t *q, const float *dx, const int32_t *qsum, int nb) {
    int32_t isum[nb];
    for (int b = 0; b < nb; b++) {
        const uint8_t *p = w + (size_t)b * (QBLOCK / 2);
        int32_t s = 0;
        for (int k = 0; k < QBLOCK / 2; k++) s += (p[k] & 15) * q[b * QBLOCK + k] + (p[k] >> 4) * q[b * QBLOCK + QBLOCK / 2 + k];
        isum[b] = s - 8 * qsum[b]; /* sum (n - 8) q = sum n q - 8 sum q */
    }
    return sum_scaled(isum, sc, dx, nb);
}
#endif

static float dot_row_quant(const Tensor *W, size_t row, const QuantActs *qa, int i, int n) {
    int nb = n / QBLOCK;
    size_t off = (size_t)i * qa->ld_blocks;
    const int8_t *q = qa->q + off * QBLOCK;
    const uint16_t *sc = W->scales + row * nb;
    if (W->dtype == DT_Q8_0) return dot_row_q8((const int8_t *)W->data + row * n, sc, q, qa->dx + off, qa->qsum + off, nb);
    return dot_row_q4((const uint8_t *)W->data + row * n / 2, sc, q, qa->dx + off, qa->qsum + off, nb);
}

/* Rows 0..n-1 of x (stride ldx, cols wide) into qa. */
static void quantize_rows(QuantActs *qa, const float *x, int ldx, int n, int cols) {
#pragma omp parallel for schedule(static) if ((size_t)n * cols >= PARALLEL_MIN)
    for (int i = 0; i < n; i++) quantize_row(qa, i, x + (size_t)i * ldx, cols);
}

/* Row r of W times nseq input rows (stride ldx): out[s][r] (stride ldo) = W[r,:] . x[s], or with add,
 * out[s][r] += W[r,:] . x[s] (the residual stream takes out_proj's rows so). A quantized W reads its
 * input from qa, where x was quantized beforehand. Each weight row is read once for all sequences:
 * batched decode turns matrix-vector work into matrix-matrix work. */
static inline void matvec_row(float *out, int ldo, const float *x, int ldx, int nseq, const Tensor *W, int r,
                              int cols, const QuantActs *qa, int add) {
    for (int s = 0; s < nseq; s++) {
        float v = is_quantized(W) ? dot_row_quant(W, r, qa, s, cols) : dot_row(W, r, x + (size_t)s * ldx, cols);
        if (add) out[(size_t)s * ldo + r] += v;
        else out[(size_t)s * ldo + r] = v;
    }
}

/* All the rows of W, split across the threads of the enclosing parallel region (an orphaned
 * worksharing loop; its closing barrier is where the output is complete). */
static void matvec_for(float *out, int ldo, const float *x, int ldx, int nseq, const Tensor *W, int rows, int cols,
                       const QuantActs *qa, int add) {
#pragma omp for schedule(static)
    for (int r = 0; r < rows; r++) matvec_row(out, ldo, x, ldx, nseq, W, r, cols, qa, add);
}

/* out[s][r] = W[r,:] . x[s] for nseq input rows (strides ldx, ldo), in a parallel region of its own
 * (`parallel for`, whose loop ends at the region's closing barrier, where `parallel` around
 * matvec_for would wait at two). A quantized W's input rows are quantized first, once for all the
 * rows of W (qa: the engine's scratch). */
static void matvec(float *out, int ldo, const float *x, int ldx, int nseq, const Tensor *W, int rows, int cols, QuantActs *qa) {
    if (is_quantized(W)) quantize_rows(qa, x, ldx, nseq, cols);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) matvec_row(out, ldo, x, ldx, nseq, W, r, cols, qa, 0);
}

/* ----------------------------------------------------------------------------------------------
 * Prefill GEMM: out[T, rows] = x[T, cols] @ W[rows, cols]^T. W is packed (and widened) in panels of
 * NR rows x KC columns that stay in L1; a micro-kernel computes MR tokens x NR rows with the
 * accumulators in registers; every output element sums over k in order.
 * The accumulators are MR x 2 vectors: 16 of the 32 registers of AVX-512, 12 of the 16 of AVX. */
enum { NV = 2, NR = NV * VL, MR = VL == 16 ? 8 : 6, KC = 256 };

static void pack_panel(float *buf, const Tensor *W, int r0, int rows, int k0, int kc, int cols) {
    for (int j = 0; j < NR; j++) {
        int k = 0;
        if (r0 + j >= rows) { /* past the last row: zeros, computed but never stored */
            for (; k < kc; k++) buf[k * NR + j] = 0.0f;
            continue;
        }
        size_t row = (size_t)(r0 + j) * cols + k0;
        for (; k + VL <= kc; k += VL) { /* widen VL at a time, then transpose into the panel */
            vfloat v = load_w(W, row + k);
            for (int t = 0; t < VL; t++) buf[(k + t) * NR + j] = v[t];
        }
        for (; k < kc; k++) buf[k * NR + j] = load1(W, row + k);
    }
}

/* MR tokens (rows xr[i] of x, offset to column k0 by the caller) times one packed panel. */
static inline void micro_kernel(float *out[MR], const float *xr[MR], const float *panel, int kc, int accumulate) {
    vfloat acc[MR][NV];
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++) acc[i][v] = accumulate ? load_f32(out[i] + VL * v) : (vfloat){0};
    for (int k = 0; k < kc; k++) {
        vfloat w[NV];
        for (int v = 0; v < NV; v++) w[v] = load_f32(panel + k * NR + VL * v);
        for (int i = 0; i < MR; i++) {
            float xi = xr[i][k];
            for (int v = 0; v < NV; v++) acc[i][v] += w[v] * xi;
        }
    }
    for (int i = 0; i < MR; i++)
        for (int v = 0; v < NV; v++) store_f32(out[i] + VL * v, acc[i][v]);
}

typedef struct {
    float *pack;  /* per thread: NR * KC floats */
    float *tile;  /* per thread: MR * NR floats, for panels past the last row */
} GemmScratch;

static void gemm(float *out, int ldo, const float *x, int ldx, int T, const Tensor *W, int rows, int cols,
                 const GemmScratch *scr) {
    int panels = (rows + NR - 1) / NR;
#pragma omp parallel
    {
        int tid = omp_get_thread_num();
        float *pack = scr[tid].pack, *tile = scr[tid].tile;
#pragma omp for schedule(static)
        for (int p = 0; p < panels; p++) {
            int r0 = p * NR, full = r0 + NR <= rows;
            for (int k0 = 0; k0 < cols; k0 += KC) {
                int kc = cols - k0 < KC ? cols - k0 : KC;
                /* Packed once for all the tokens: packing it again for each block of tokens cost
                 * 12-16% of the GEMM (one AVX2 core, max of 10 runs: 72-81 against 83-90 GFLOP/s). */
                pack_panel(pack, W, r0, rows, k0, kc, cols);
                for (int m = 0; m < T; m += MR) {
                    const float *xr[MR];
                    float *o[MR];
                    /* Past the last token, repeat it: computed but not stored. */
                    for (int i = 0; i < MR; i++) {
                        int t = m + i < T ? m + i : T - 1;
                        xr[i] = x + (size_t)t * ldx + k0;
                        o[i] = full && m + i < T ? out + (size_t)(m + i) * ldo + r0 : tile + i * NR;
                    }
                    if (!full || m + MR > T) /* partial tile: accumulate through the scratch tile */
                        for (int i = 0; i < MR; i++)
                            if (o[i] == tile + i * NR && k0 > 0 && m + i < T)
                                for (int j = 0; j < NR && r0 + j < rows; j++) tile[i * NR + j] = out[(size_t)(m + i) * ldo + r0 + j];
                    micro_kernel(o, xr, pack, kc, k0 > 0);
                    for (int i = 0; i < MR; i++)
                        if (o[i] == tile + i * NR && m + i < T)
                            for (int j = 0; j < NR && r0 + j < rows; j++) out[(size_t)(m + i) * ldo + r0 + j] = tile[i * NR + j];
                }
            }
        }
    }
}

/* ----------------------------------------------------------------------------------------------
 * The engine. */
/* Most tokens of one prefill call (engine_prefill_chunk): its activation buffers hold this many rows. */
#define PREFILL_CHUNK 512

/* Mamba-2 prefill: tokens per SSD chunk. The result does not depend on it (up to rounding); 64 keeps
 * a chunk's x, B, C and the decay products of one head in L1. */
#define SSD_CHUNK 64

typedef struct Engine Engine;
typedef void (*LayerFn)(Engine *e, int l, const int *seqs, int n, int prefill);
typedef void (*StepFn)(Engine *e, const int *tokens, int n); /* a decode step: logits into e->logits */

struct Engine {
    const Model *m;
    Config c;
    LayerFn layer;          /* mamba1_layer or mamba2_layer */
    StepFn step;            /* mamba1_step (one parallel region) or layers_step (Mamba-2) */
    int max_seqs, max_rows; /* max_rows = rows of the activation buffers: max(max_seqs, PREFILL_CHUNK) */
    int *slots;             /* 0 .. max_seqs-1: a decode step's row i is slot i */
    int n_threads;
    int conv_ch;            /* channels of the conv: d_inner (Mamba-1), d_inner + 2*n_groups*d_state (Mamba-2) */
    int proj_ld;            /* in_proj's output width: 2*d_inner (Mamba-1), 2*d_inner + 2*G*N + n_heads (Mamba-2) */
    int conv_in;            /* where the conv's input starts in an in_proj row: 0 (x first), d_inner (after z) */
    float *A;               /* Mamba-1: [n_layer][d_state][d_inner], -exp(A_log) transposed; Mamba-2: [n_layer][n_heads] */
    float *conv_wT;         /* [n_layer][d_conv][conv_ch]: conv weights, transposed */
    float *state;           /* [max_seqs][state_floats]: per layer conv [conv_ch][d_conv-1], then the SSM state */
    size_t state_floats, layer_floats;
    /* activations, max_rows rows each */
    float *x;      /* residual stream [d_model] */
    float *h;      /* normed [d_model] */
    float *proj;   /* in_proj output [proj_ld]: x, z (Mamba-1); z, x, B, C, dt (Mamba-2) */
    float *u;      /* conv + SiLU output [conv_ch] */
    float *dbc;    /* Mamba-1: x_proj output [dt_rank + 2*d_state] */
    float *delta;  /* Mamba-1: softplus(dt_proj(dt_in) + bias) [d_inner]; Mamba-2: dt [n_heads] */
    float *y;      /* SSM output, gated [d_inner] */
    float *cb;     /* Mamba-2 prefill: C.B^T per chunk and group [PREFILL_CHUNK/SSD_CHUNK][n_groups][SSD_CHUNK^2] */
    float *logits; /* [logit_rows][vocab_rows] */
    int logit_rows;
    GemmScratch *scratch;
    Candidate *cand; /* engine_step_sample: SAMPLER_CAND(vocab_size) a thread, allocated at its first call */
    QuantActs qacts; /* a quantized file: the quantized inputs of its quantized matrices */
    QuantActs qinner; /* decode: u and y quantized (max_seqs rows), written while in_proj reads h's from qacts */
    char name[64];
};

static float *conv_state(Engine *e, int seq, int l) {
    return e->state + (size_t)seq * e->state_floats + (size_t)l * e->layer_floats;
}
static float *ssm_state(Engine *e, int seq, int l) {
    return conv_state(e, seq, l) + (size_t)e->conv_ch * (e->c.d_conv - 1);
}

static void *alloc_floats(size_t n, int *ok) {
    void *p = NULL;
    if (posix_memalign(&p, 64, (n ? n : 1) * sizeof(float)) != 0) { *ok = 0; return NULL; }
    memset(p, 0, (n ? n : 1) * sizeof(float));
    return p;
}

static void mamba1_layer(Engine *e, int l, const int *seqs, int n, int prefill);
static void mamba2_layer(Engine *e, int l, const int *seqs, int n, int prefill);
static void mamba1_step(Engine *e, const int *tokens, int n);
static void layers_step(Engine *e, const int *tokens, int n);

/* The CPU engine has no devices to choose from: cli.c refuses --gpus for ./run. */
int engine_devices(char *err, size_t errlen) { return 0; }

Engine *engine_new(const Model *m, int device, int max_seqs, char *err, size_t errlen) {
    const Config *c = &m->config;
    if (device != 0) { snprintf(err, errlen, "the CPU engine has no device %d", device); return NULL; }
    Engine *e = calloc(1, sizeof *e);
    if (!e) { snprintf(err, errlen, "out of memory"); return NULL; }
    int m2 = c->arch == ARCH_MAMBA2;
    e->m = m;
    e->c = *c;
    e->layer = m2 ? mamba2_layer : mamba1_layer;
    e->step = m2 ? layers_step : mamba1_step;
    e->max_seqs = max_seqs;
    e->max_rows = max_seqs > PREFILL_CHUNK ? max_seqs : PREFILL_CHUNK;
    e->n_threads = omp_get_max_threads();
    e->conv_ch = conv_channels(c);
    e->proj_ld = m2 ? e->conv_ch + c->d_inner + c->n_heads : 2 * c->d_inner;
    e->conv_in = m2 ? c->d_inner : 0;
    e->layer_floats = layer_state_floats(c);
    e->state_floats = (size_t)c->n_layer * e->layer_floats;
    size_t R = e->max_rows, E = c->d_inner, X = e->conv_ch;
    int ok = 1;
    e->A = alloc_floats((size_t)c->n_layer * (m2 ? (size_t)c->n_heads : E * c->d_state), &ok);
    e->conv_wT = alloc_floats((size_t)c->n_layer * X * c->d_conv, &ok);
    e->state = alloc_floats((size_t)max_seqs * e->state_floats, &ok);
    e->x = alloc_floats(R * c->d_model, &ok);
    e->h = alloc_floats(R * c->d_model, &ok);
    e->proj = alloc_floats(R * e->proj_ld, &ok);
    e->u = alloc_floats(R * X, &ok);
    if (!m2) e->dbc = alloc_floats(R * (c->dt_rank + 2 * c->d_state), &ok);
    e->delta = alloc_floats(R * (m2 ? (size_t)c->n_heads : E), &ok);
    e->y = alloc_floats(R * E, &ok);
    if (m2) e->cb = alloc_floats((size_t)(PREFILL_CHUNK / SSD_CHUNK) * c->n_groups * SSD_CHUNK * SSD_CHUNK, &ok);
    e->logit_rows = max_seqs;
    e->logits = alloc_floats((size_t)max_seqs * c->vocab_rows, &ok);
    if ((e->slots = malloc(max_seqs * sizeof(int))))
        for (int i = 0; i < max_seqs; i++) e->slots[i] = i;
    else ok = 0;
    e->scratch = calloc(e->n_threads, sizeof(GemmScratch));
    if (!e->scratch) ok = 0;
    for (int t = 0; ok && t < e->n_threads; t++) {
        e->scratch[t].pack = alloc_floats(NR * KC, &ok);
        e->scratch[t].tile = alloc_floats(MR * NR, &ok);
    }
    if (c->dtype == DT_Q8_0 || c->dtype == DT_Q4_0) { /* in_proj and lm_head read d_model, x_proj and out_proj d_inner */
        int cols = c->d_model > c->d_inner ? c->d_model : c->d_inner;
        QuantActs *qa = &e->qacts;
        qa->ld_blocks = (cols / QBLOCK + QGROUP - 1) / QGROUP * QGROUP;
        qa->q = alloc_floats(R * qa->ld_blocks * (QBLOCK / sizeof(float)), &ok); /* int8: a float holds 4 */
        qa->dx = alloc_floats(R * qa->ld_blocks, &ok);
        qa->qsum = alloc_floats(R * qa->ld_blocks, &ok);
        qa->deq = alloc_floats(R * cols, &ok);
        QuantActs *qi = &e->qinner;
        qi->ld_blocks = qa->ld_blocks;
        qi->q = alloc_floats((size_t)max_seqs * qi->ld_blocks * (QBLOCK / sizeof(float)), &ok);
        qi->dx = alloc_floats((size_t)max_seqs * qi->ld_blocks, &ok);
        qi->qsum = alloc_floats((size_t)max_seqs * qi->ld_blocks, &ok);
    }
    if (!ok) {
        engine_free(e);
        snprintf(err, errlen, "out of memory allocating the engine's buffers");
        return NULL;
    }
    /* The conv and scan kernels read these a block of channels at a time. */
    for (int l = 0; l < c->n_layer; l++) {
        const float *A_log = m->weights.layers[l].A_log.data, *cw = m->weights.layers[l].conv_w.data;
        int N = c->d_state, K = c->d_conv;
        if (m2)
            for (int hd = 0; hd < c->n_heads; hd++) e->A[(size_t)l * c->n_heads + hd] = -expf(A_log[hd]);
        else
            for (size_t ch = 0; ch < E; ch++)
                for (int k = 0; k < N; k++) e->A[((size_t)l * N + k) * E + ch] = -expf(A_log[ch * N + k]);
        for (size_t ch = 0; ch < X; ch++)
            for (int k = 0; k < K; k++) e->conv_wT[((size_t)l * K + k) * X + ch] = cw[ch * K + k];
    }
    snprintf(e->name, sizeof e->name, "CPU, %d thread%s", e->n_threads, e->n_threads == 1 ? "" : "s");
    return e;
}

void engine_free(Engine *e) {
    if (!e) return;
    free(e->A); free(e->conv_wT); free(e->state); free(e->x); free(e->h); free(e->proj); free(e->u);
    free(e->dbc); free(e->delta); free(e->y); free(e->cb); free(e->logits); free(e->slots); free(e->cand);
    for (int t = 0; e->scratch && t < e->n_threads; t++) { free(e->scratch[t].pack); free(e->scratch[t].tile); }
    free(e->scratch);
    free(e->qacts.q); free(e->qacts.dx); free(e->qacts.qsum); free(e->qacts.deq);
    free(e->qinner.q); free(e->qinner.dx); free(e->qinner.qsum);
    free(e);
}

const char *engine_name(const Engine *e) { return e->name; }
int engine_prefill_chunk(const Engine *e) { return PREFILL_CHUNK; }
size_t engine_state_floats(const Engine *e) { return e->state_floats; }
/* A caller's slot, count or token outside what engine.h allows is a one-line error (run.cu's
 * words), not a read or write out of bounds. */
static void check_seq(const Engine *e, int seq, const char *what) {
    if (seq < 0 || seq >= e->max_seqs) {
        fprintf(stderr, "error: %s: slot %d out of range (0..%d)\n", what, seq, e->max_seqs - 1);
        exit(1);
    }
}
static void check_tokens(const Engine *e, const int *tokens, int n) {
    for (int i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= e->c.vocab_rows) {
            fprintf(stderr, "error: token id %d out of range (0..%d)\n", tokens[i], e->c.vocab_rows - 1);
            exit(1);
        }
}
static void check_nseq(const Engine *e, int nseq, const char *what) {
    if (nseq < 1 || nseq > e->max_seqs) {
        fprintf(stderr, "error: %s: %d sequences (1..%d)\n", what, nseq, e->max_seqs);
        exit(1);
    }
}

void engine_reset(Engine *e, int seq) {
    check_seq(e, seq, "engine_reset");
    memset(conv_state(e, seq, 0), 0, e->state_floats * sizeof(float));
}
void engine_get_state(Engine *e, int seq, float *out) {
    check_seq(e, seq, "engine_get_state");
    memcpy(out, conv_state(e, seq, 0), e->state_floats * sizeof(float));
}
void engine_set_state(Engine *e, int seq, const float *in) {
    check_seq(e, seq, "engine_set_state");
    memcpy(conv_state(e, seq, 0), in, e->state_floats * sizeof(float));
}
void engine_copy_state(Engine *e, int to, int from) {
    check_seq(e, to, "engine_copy_state");
    check_seq(e, from, "engine_copy_state");
    if (to != from) memcpy(conv_state(e, to, 0), conv_state(e, from, 0), e->state_floats * sizeof(float));
}

/* ----------------------------------------------------------------------------------------------
 * The pieces of a layer, each over n rows (tokens of one sequence, or one token of n sequences). */

static void embed(Engine *e, const int *tokens, int n) {
    const Tensor *emb = &e->m->weights.embedding;
    int D = e->c.d_model;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < D; j++) e->x[(size_t)i * D + j] = load1(emb, (size_t)tokens[i] * D + j);
}

/* h = x / sqrt(mean(x^2) + eps) * weight, over one row of D, and per row of n. */
static void rmsnorm_row(float *h, const float *x, const float *w, int D, float eps) {
    float ss = 0;
    for (int j = 0; j < D; j++) ss += x[j] * x[j];
    float inv = 1.0f / sqrtf(ss / D + eps);
    for (int j = 0; j < D; j++) h[j] = x[j] * inv * w[j];
}

static void rmsnorm(float *h, const float *x, const Tensor *weight, int n, int D, float eps) {
#pragma omp parallel for schedule(static) if ((size_t)n * D >= PARALLEL_MIN)
    for (int i = 0; i < n; i++) rmsnorm_row(h + (size_t)i * D, x + (size_t)i * D, weight->data, D, eps);
}

/* rows of v [n, cols] += b [cols] */
static void add_rows(float *v, const float *b, int n, int cols) {
#pragma omp parallel for schedule(static) if ((size_t)n * cols >= PARALLEL_MIN)
    for (int i = 0; i < n; i++)
        for (int j = 0; j < cols; j++) v[(size_t)i * cols + j] += b[j];
}

/* out [n, rows] = x [n, cols] @ W^T through the GEMM; a quantized W multiplies x' = dx * q, the
 * input quantized as decode quantizes it, so that prefill and token-by-token agree to rounding. */
static void prefill_gemm(Engine *e, float *out, int ldo, const float *x, int ldx, int n, const Tensor *W, int rows, int cols) {
    if (is_quantized(W)) {
        QuantActs *qa = &e->qacts;
        quantize_rows(qa, x, ldx, n, cols);
#pragma omp parallel for schedule(static) if ((size_t)n * cols >= PARALLEL_MIN)
        for (int i = 0; i < n; i++) {
            const int8_t *q = qa->q + (size_t)i * qa->ld_blocks * QBLOCK;
            const float *dx = qa->dx + (size_t)i * qa->ld_blocks;
            for (int k = 0; k < cols; k++) qa->deq[(size_t)i * cols + k] = dx[k / QBLOCK] * q[k];
        }
        x = qa->deq;
        ldx = cols;
    }
    gemm(out, ldo, x, ldx, n, W, rows, cols, e->scratch);
}

/* Projections: one token of many sequences through matvec, many tokens of one sequence through
 * the GEMM (both give each output element from its own input row only). */
static void project(Engine *e, float *out, int ldo, const float *x, int ldx, int n, const Tensor *W, int rows, int cols, int prefill) {
    /* Fewer rows than one micro-kernel tile would waste the GEMM's packing: stream them instead. */
    if (prefill && n >= MR) prefill_gemm(e, out, ldo, x, ldx, n, W, rows, cols);
    else matvec(out, ldo, x, ldx, n, W, rows, cols, &e->qacts);
}

/* The conv and the scan work on blocks of VL channels, one channel a lane, and run through the
 * tokens of one slot with the block's state in registers. Prefill calls them with the n tokens of
 * its chunk, decode with the one token of each slot, so both paths do the same arithmetic. The
 * last block of a d_inner that is not a multiple of VL runs with its missing lanes zero. */
static inline vfloat load_lanes(const float *p, int m) {
    if (m == VL) return load_f32(p);
    vfloat v = {0};
    memcpy(&v, p, m * sizeof(float));
    return v;
}
static inline void store_lanes(float *p, vfloat v, int m) { memcpy(p, &v, m * sizeof(float)); }
/* lane j = p[j * stride]: the states are stored channel-major, [d_inner][...] */
static inline vfloat gather_lanes(const float *p, int stride, int m) {
    vfloat v = {0};
    for (int j = 0; j < m; j++) v[j] = p[j * stride];
    return v;
}
static inline void scatter_lanes(float *p, int stride, vfloat v, int m) {
    for (int j = 0; j < m; j++) p[j * stride] = v[j];
}

/* Causal depthwise conv over rows r0..r0+n-1 of the conv's input (x for Mamba-1; x, B and C for
 * Mamba-2: conv_in onwards in each in_proj row), for channels c0..c0+m-1 of slot seq:
 * u = conv_b + sum_k conv_w[k] * (the K-1 previous inputs, then this one). SiLU comes after. */
static void conv_block(Engine *e, int l, int seq, int r0, int n, int c0, int m) {
    int X = e->conv_ch, K = e->c.d_conv;
    const float *wT = e->conv_wT + (size_t)l * K * X, *bias = e->m->weights.layers[l].conv_b.data;
    float *st = conv_state(e, seq, l) + (size_t)c0 * (K - 1);
    vfloat win[64];
    for (int k = 0; k < K - 1; k++) win[k] = gather_lanes(st + k, K - 1, m);
    vfloat b = load_lanes(bias + c0, m);
    for (int t = r0; t < r0 + n; t++) {
        win[K - 1] = load_lanes(e->proj + (size_t)t * e->proj_ld + e->conv_in + c0, m);
        vfloat acc = {0};
        for (int k = 0; k < K; k++) acc += win[k] * load_lanes(wT + (size_t)k * X + c0, m);
        store_lanes(e->u + (size_t)t * X + c0, acc + b, m);
        for (int k = 0; k < K - 1; k++) win[k] = win[k + 1];
    }
    for (int k = 0; k < K - 1; k++) scatter_lanes(st + k, K - 1, win[k], m);
}

/* Mamba-1's selective scan over rows r0..r0+n-1 for channels c0..c0+m-1 of slot seq:
 *   state = exp(delta*A) * state + (delta*u) * B;  y = (state . C + D*u) * silu(z). */
static void scan_block(Engine *e, int l, int seq, int r0, int n, int c0, int m) {
    const Config *c = &e->c;
    int E = c->d_inner, N = c->d_state, R = c->dt_rank, P = R + 2 * N;
    const float *AT = e->A + (size_t)l * N * E, *Dv = e->m->weights.layers[l].D.data;
    float *st = ssm_state(e, seq, l) + (size_t)c0 * N;
    vfloat h[N], A[N];
    for (int k = 0; k < N; k++) {
        h[k] = gather_lanes(st + k, N, m);
        A[k] = load_lanes(AT + (size_t)k * E + c0, m);
    }
    vfloat D = load_lanes(Dv + c0, m);
    for (int t = r0; t < r0 + n; t++) {
        const float *B = e->dbc + (size_t)t * P + R, *C = B + N;
        vfloat dt = load_lanes(e->delta + (size_t)t * E + c0, m), u = load_lanes(e->u + (size_t)t * E + c0, m);
        vfloat z = load_lanes(e->proj + (size_t)t * 2 * E + E + c0, m), dtu = dt * u, y = {0};
        for (int k = 0; k < N; k++) {
            h[k] = vexp(dt * A[k]) * h[k] + dtu * B[k];
            y += h[k] * C[k];
        }
        y = (y + D * u) * (z / (1.0f + vexp(-z)));
        store_lanes(e->y + (size_t)t * E + c0, y, m);
    }
    for (int k = 0; k < N; k++) scatter_lanes(st + k, N, h[k], m);
}

/* Runs conv_block or scan_block over `channels` channels in blocks of VL: rows 0..n-1 are
 * consecutive tokens of slot seqs[0] in prefill, and the next token of slot seqs[i] for row i in decode. */
typedef void (*BlockFn)(Engine *e, int l, int seq, int r0, int n, int c0, int m);

static void over_channels(Engine *e, BlockFn fn, int l, const int *seqs, int n, int prefill, int channels) {
    int blocks = (channels + VL - 1) / VL;
#pragma omp parallel for schedule(static)
    for (int b = 0; b < blocks; b++) {
        int c0 = b * VL, m = channels - c0 < VL ? channels - c0 : VL;
        if (prefill) fn(e, l, seqs[0], 0, n, c0, m);
        else for (int i = 0; i < n; i++) fn(e, l, seqs[i], i, 1, c0, m);
    }
}

/* v /= sqrt(mean(v^2) + eps), in place over n floats. */
static void unit_rms(float *v, int n, float eps) {
    float ss = 0;
    for (int j = 0; j < n; j++) ss += v[j] * v[j];
    float inv = 1.0f / sqrtf(ss / n + eps);
    for (int j = 0; j < n; j++) v[j] *= inv;
}

/* Falcon-Mamba: each of dt_in, B and C in a row of x_proj's output over its RMS, no weight. */
static void falcon_dbc_norm(const Config *c, float *v) {
    unit_rms(v, c->dt_rank, c->mixer_eps);
    unit_rms(v + c->dt_rank, c->d_state, c->mixer_eps);
    unit_rms(v + c->dt_rank + c->d_state, c->d_state, c->mixer_eps);
}

/* A Mamba-1 layer (and Falcon-Mamba's, which adds one normalisation) over n rows. Decode steps go
 * through mamba1_step_layer instead, which computes the same. */
static void mamba1_layer(Engine *e, int l, const int *seqs, int n, int prefill) {
    const Config *c = &e->c;
    const LayerWeights *L = &e->m->weights.layers[l];
    int D = c->d_model, E = c->d_inner, R = c->dt_rank, N = c->d_state, P = R + 2 * N;
    rmsnorm(e->h, e->x, &L->norm, n, D, c->norm_eps);
    project(e, e->proj, 2 * E, e->h, D, n, &L->in_proj, 2 * E, D, prefill);       /* x and z */
    over_channels(e, conv_block, l, seqs, n, prefill, E);                         /* u = conv(x) */
    silu_inplace(e->u, (size_t)n * E);                                            /* u = silu(u) */
    project(e, e->dbc, P, e->u, E, n, &L->x_proj, P, E, prefill);                 /* dt_in, B, C */
    if (c->arch == ARCH_FALCON_MAMBA)
        for (int i = 0; i < n; i++) falcon_dbc_norm(c, e->dbc + (size_t)i * P);
    project(e, e->delta, E, e->dbc, P, n, &L->dt_proj_w, E, R, prefill);          /* delta */
    add_rows(e->delta, L->dt_proj_b.data, n, E);                                  /* + bias */
    softplus_inplace(e->delta, (size_t)n * E);
    over_channels(e, scan_block, l, seqs, n, prefill, E);                         /* y */
    project(e, e->h, D, e->y, E, n, &L->out_proj, D, E, prefill);                 /* h is free: reuse it */
    add_rows(e->x, e->h, 1, n * D);                                               /* residual */
}

/* ----------------------------------------------------------------------------------------------
 * Mamba-1 and Falcon-Mamba decode: one token of each of n sequences (row i: slot seqs[i]), one
 * parallel region a step.
 *
 * A decode step's matrices are small (130m: 2.4 M weights in in_proj), and each parallel region
 * costs a fork and a join; under passive waiting (cli.c) each wakes the other threads from a futex
 * sleep. mamba1_layer's 6 regions a layer (in_proj, conv, x_proj, dt_proj, scan, out_proj: 12
 * hand-offs) were most of the ~5 ms that a 130m token took beyond streaming its weights (README,
 * Quantized weights). So mamba1_step runs the whole step (layers, final norm, lm_head) in one
 * region, and a layer is a sequence of orphaned worksharing loops whose closing barriers fall only
 * where data crosses threads:
 *   1. per row: RMSNorm, and the row quantized for a quantized in_proj   -> in_proj reads all of h
 *   2. per block of VL channels: in_proj's x and z rows of the block, and its conv and SiLU (the
 *      conv of channel c reads only in_proj's row c; see below)           -> x_proj reads all of u
 *   3. x_proj's rows                                                      -> dt_proj reads all of dt_in,
 *                                                                            the scan all of B and C
 *      (Falcon-Mamba: per row, dt_in, B and C over their RMS              -> the same)
 *   4. per block of channels: dt_proj's rows of the block, + bias, softplus, then its scan (the dt of
 *      channel c reads only row c of dt_proj)                             -> out_proj reads all of y
 *   5. out_proj's rows, each added into the residual stream as it comes   -> the next RMSNorm reads all of x
 * 5 barriers a layer (one more for Falcon-Mamba) instead of 12 hand-offs; the step adds the final
 * norm's barrier, and its fork and join. A quantized x_proj or out_proj reads its input quantized:
 * steps 2 and 4 then take their channels a quantization block (QBLOCK channels, a whole number of
 * VL blocks; d_inner is a multiple of QBLOCK in a quantized file) at a time, and the thread that
 * completes a block of u or y quantizes it (quantize_block: what quantize_row does to that block),
 * into e->qinner, since in_proj may still be reading h's quantized rows from e->qacts. Quantizing
 * whole rows after the barrier instead took a pass by one thread and a barrier of its own, twice a
 * layer (130m q8_0, 2 threads, passive waiting: 7-14% slower).
 * Each element comes from the same functions, with the same operands in the same order, as in
 * mamba1_layer, with one exception: SiLU and softplus run per block of channels rather than over
 * the flat [n][d_inner] array, so when d_inner is not a multiple of VL the last elements of each row
 * take the scalar form (libm's expf, log1pf) instead of vexp/vlog, a few ulps apart, where a vector
 * of the flat array straddled two rows. With one sequence the two splits agree (the flat array is
 * one row); a batched row now gets exactly what it gets alone (before: up to 1.2e-6 apart in the
 * logits of test models with d_inner 72 and 88; the real models' d_inner are multiples of 16). */
static void mamba1_step_layer(Engine *e, int l, const int *seqs, int n) {
    const Config *c = &e->c;
    const LayerWeights *L = &e->m->weights.layers[l];
    QuantActs *qa = &e->qacts, *qi = &e->qinner;
    int D = c->d_model, E = c->d_inner, R = c->dt_rank, N = c->d_state, P = R + 2 * N;
    int qx = is_quantized(&L->x_proj), qo = is_quantized(&L->out_proj);
    int w2 = qx ? QBLOCK : VL, w4 = qo ? QBLOCK : VL; /* channels an iteration of steps 2 and 4 */
    int g2 = (E + w2 - 1) / w2, g4 = (E + w4 - 1) / w4;
    const float *dt_bias = L->dt_proj_b.data;
#pragma omp for schedule(static)
    for (int i = 0; i < n; i++) {
        rmsnorm_row(e->h + (size_t)i * D, e->x + (size_t)i * D, L->norm.data, D, c->norm_eps);
        if (is_quantized(&L->in_proj)) quantize_row(qa, i, e->h + (size_t)i * D, D);
    }
    /* in_proj's x rows, then its z rows, of this thread's channels, then their conv: three loops of
     * the same iterations, schedule and region, which OpenMP deals out to the threads alike, so each
     * thread's conv reads only the rows that it computed itself, and nowait needs no barrier. The
     * rows and the conv of each block in turn in one loop (the weights' stream broken every VL
     * rows) decoded 130m fp16 about 10% slower on one thread, 6-15% on two. */
#pragma omp for schedule(static) nowait
    for (int g = 0; g < g2; g++)
        for (int r = g * w2; r < (g + 1) * w2 && r < E; r++) matvec_row(e->proj, 2 * E, e->h, D, n, &L->in_proj, r, D, qa, 0);     /* x */
#pragma omp for schedule(static) nowait
    for (int g = 0; g < g2; g++)
        for (int r = g * w2; r < (g + 1) * w2 && r < E; r++) matvec_row(e->proj, 2 * E, e->h, D, n, &L->in_proj, E + r, D, qa, 0); /* z */
#pragma omp for schedule(static)
    for (int g = 0; g < g2; g++) {
        for (int c0 = g * w2; c0 < (g + 1) * w2 && c0 < E; c0 += VL) {
            int m = E - c0 < VL ? E - c0 : VL;
            for (int i = 0; i < n; i++) {
                conv_block(e, l, seqs[i], i, 1, c0, m);
                silu_slice(e->u + (size_t)i * E + c0, m);
            }
        }
        for (int i = 0; qx && i < n; i++) {
            quantize_block(qi, i, g, e->u + (size_t)i * E);
            if (g == E / QBLOCK - 1) quantize_pad(qi, i, E / QBLOCK);
        }
    }
    matvec_for(e->dbc, P, e->u, E, n, &L->x_proj, P, E, qi, 0);                 /* dt_in, B, C */
    if (c->arch == ARCH_FALCON_MAMBA) {
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) falcon_dbc_norm(c, e->dbc + (size_t)i * P);
    }
#pragma omp for schedule(static)
    for (int g = 0; g < g4; g++) {
        for (int c0 = g * w4; c0 < (g + 1) * w4 && c0 < E; c0 += VL) {
            int m = E - c0 < VL ? E - c0 : VL;
            /* dt_proj is fp16 in a quantized file (model.h): its input is never quantized */
            for (int r = c0; r < c0 + m; r++) matvec_row(e->delta, E, e->dbc, P, n, &L->dt_proj_w, r, R, NULL, 0);
            for (int i = 0; i < n; i++) {
                float *dt = e->delta + (size_t)i * E + c0;
                for (int j = 0; j < m; j++) dt[j] += dt_bias[c0 + j];
                softplus_slice(dt, m);
                scan_block(e, l, seqs[i], i, 1, c0, m);
            }
        }
        for (int i = 0; qo && i < n; i++) {
            quantize_block(qi, i, g, e->y + (size_t)i * E);
            if (g == E / QBLOCK - 1) quantize_pad(qi, i, E / QBLOCK);
        }
    }
    matvec_for(e->x, D, e->y, E, n, &L->out_proj, D, E, qi, 1);                 /* x += out_proj(y) */
}

/* The decode step of Mamba-1 and Falcon-Mamba: the n rows through every layer, the final norm and
 * lm_head, all in one parallel region (see above); leaves the logits in e->logits. */
static void mamba1_step(Engine *e, const int *tokens, int n) {
    const Config *c = &e->c;
    const Tensor *lm_head = &e->m->weights.lm_head;
    int D = c->d_model;
    embed(e, tokens, n);
#pragma omp parallel
    {
        for (int l = 0; l < c->n_layer; l++) mamba1_step_layer(e, l, e->slots, n);
#pragma omp for schedule(static)
        for (int i = 0; i < n; i++) {
            rmsnorm_row(e->h + (size_t)i * D, e->x + (size_t)i * D, e->m->weights.norm_f.data, D, c->norm_eps);
            if (is_quantized(lm_head)) quantize_row(&e->qacts, i, e->h + (size_t)i * D, D);
        }
        /* nowait: the region's end is the barrier */
#pragma omp for schedule(static) nowait
        for (int r = 0; r < c->vocab_rows; r++) matvec_row(e->logits, c->vocab_rows, e->h, D, n, lm_head, r, D, &e->qacts, 0);
    }
}

/* ----------------------------------------------------------------------------------------------
 * Mamba-2. A row of in_proj's output is [z (E) | x (E) B (G*N) C (G*N) | dt (H)]; after the conv,
 * a row of u is [x | B | C]. Head h (head_dim channels) reads group h / (H/G) of B and C. */

static float dot(const float *a, const float *b, int n) {
    vfloat acc = {0};
    int k = 0;
    for (; k + VL <= n; k += VL) acc += load_f32(a + k) * load_f32(b + k);
    float s = hsum(acc);
    for (; k < n; k++) s += a[k] * b[k];
    return s;
}

static void axpy(float *restrict y, float a, const float *restrict x, int n) {
    for (int k = 0; k < n; k++) y[k] += a * x[k];
}

/* dt = softplus(dt_in + dt_bias), clamped to [dt_min, dt_max] (mamba_ssm's dt_limit), per row and head. */
static void mamba2_dt(Engine *e, int l, int n) {
    const Config *c = &e->c;
    const float *bias = e->m->weights.layers[l].dt_bias.data;
    int H = c->n_heads;
    for (int i = 0; i < n; i++)
        for (int hd = 0; hd < H; hd++) {
            float v = e->proj[(size_t)i * e->proj_ld + c->d_inner + e->conv_ch + hd] + bias[hd];
            v = v > 20.0f ? v : log1pf(expf(v));
            e->delta[(size_t)i * H + hd] = fminf(fmaxf(v, c->dt_min), c->dt_max);
        }
}

/* One token of slot seq (row `row`) through head hd:
 *   state[p][:] = exp(dt*A) * state[p][:] + dt*x[p] * B;  y[p] = state[p][:] . C + D*x[p]. */
static void ssm2_step(Engine *e, int l, int seq, int row, int hd) {
    const Config *c = &e->c;
    int E = c->d_inner, N = c->d_state, P = c->head_dim, H = c->n_heads, GN = c->n_groups * N;
    int g = hd / (H / c->n_groups);
    const float *x = e->u + (size_t)row * e->conv_ch + (size_t)hd * P, *B = e->u + (size_t)row * e->conv_ch + E + (size_t)g * N;
    const float *C = B + GN;
    float dt = e->delta[(size_t)row * H + hd], dA = expf(dt * e->A[(size_t)l * H + hd]);
    float Dh = ((const float *)e->m->weights.layers[l].D.data)[hd];
    float *st = ssm_state(e, seq, l) + (size_t)hd * P * N, *y = e->y + (size_t)row * E + (size_t)hd * P;
    vfloat vdA = splat(dA);
    for (int p = 0; p < P; p++) {
        float *s = st + (size_t)p * N, dtx = dt * x[p];
        vfloat vdtx = splat(dtx), acc = {0};
        int k = 0;
        for (; k + VL <= N; k += VL) {
            vfloat v = vdA * load_f32(s + k) + vdtx * load_f32(B + k);
            store_f32(s + k, v);
            acc += v * load_f32(C + k);
        }
        float yp = hsum(acc);
        for (; k < N; k++) {
            s[k] = dA * s[k] + dtx * B[k];
            yp += s[k] * C[k];
        }
        y[p] = yp + Dh * x[p];
    }
}

/* Prefill, the chunked ("state space duality") form: C_t . B_j for j <= t within each chunk of
 * SSD_CHUNK tokens and each group, shared by the group's heads. */
static void ssd_cb(Engine *e, int n) {
    const Config *c = &e->c;
    int E = c->d_inner, N = c->d_state, G = c->n_groups, X = e->conv_ch, chunks = (n + SSD_CHUNK - 1) / SSD_CHUNK;
#pragma omp parallel for collapse(2) schedule(static)
    for (int ch = 0; ch < chunks; ch++)
        for (int g = 0; g < G; g++) {
            int t0 = ch * SSD_CHUNK, q = n - t0 < SSD_CHUNK ? n - t0 : SSD_CHUNK;
            float *cb = e->cb + ((size_t)ch * G + g) * SSD_CHUNK * SSD_CHUNK;
            for (int t = 0; t < q; t++) {
                const float *C = e->u + (size_t)(t0 + t) * X + E + (size_t)(G + g) * N;
                for (int j = 0; j <= t; j++) cb[t * SSD_CHUNK + j] = dot(C, e->u + (size_t)(t0 + j) * X + E + (size_t)g * N, N);
            }
        }
}

/* Head hd of slot seq through n tokens, a chunk at a time. With a_t = exp(dt_t * A) and the state S
 * carried in from the previous chunk, token t of a chunk gives
 *   y_t = (a_0 ... a_t) * (S . C_t) + sum_{j<=t} (C_t . B_j) * (a_{j+1} ... a_t) * dt_j * x_j + D * x_t
 * and the chunk leaves S' = (a_0 ... a_last) * S + sum_j (a_{j+1} ... a_last) * dt_j * x_j (outer) B_j.
 * The decays are running products of the a_t, the same factors the token-by-token state update
 * multiplies in, rather than exponentials of differences of long sums (which lose digits). */
static void ssd_head(Engine *e, int l, int seq, int n, int hd) {
    const Config *c = &e->c;
    int E = c->d_inner, N = c->d_state, P = c->head_dim, H = c->n_heads, G = c->n_groups, X = e->conv_ch;
    int g = hd / (H / G);
    float A = e->A[(size_t)l * H + hd], Dh = ((const float *)e->m->weights.layers[l].D.data)[hd];
    float *st = ssm_state(e, seq, l) + (size_t)hd * P * N;
    float a[SSD_CHUNK], dt[SSD_CHUNK], w[SSD_CHUNK];
    for (int t0 = 0; t0 < n; t0 += SSD_CHUNK) {
        int q = n - t0 < SSD_CHUNK ? n - t0 : SSD_CHUNK;
        const float *cb = e->cb + ((size_t)(t0 / SSD_CHUNK) * G + g) * SSD_CHUNK * SSD_CHUNK;
        const float *u0 = e->u + (size_t)t0 * X;
        for (int t = 0; t < q; t++) {
            dt[t] = e->delta[(size_t)(t0 + t) * H + hd];
            a[t] = expf(dt[t] * A);
        }
        float from_start = 1.0f; /* a_0 ... a_t */
        for (int t = 0; t < q; t++) {
            const float *x = u0 + (size_t)t * X + (size_t)hd * P, *C = u0 + (size_t)t * X + E + (size_t)(G + g) * N;
            float *y = e->y + (size_t)(t0 + t) * E + (size_t)hd * P;
            from_start *= a[t];
            for (int p = 0; p < P; p++) y[p] = from_start * dot(st + (size_t)p * N, C, N) + Dh * x[p];
            float decay = 1.0f; /* a_{j+1} ... a_t */
            for (int j = t; j >= 0; j--) {
                axpy(y, cb[t * SSD_CHUNK + j] * decay * dt[j], u0 + (size_t)j * X + (size_t)hd * P, P);
                decay *= a[j];
            }
        }
        float decay = 1.0f; /* a_{j+1} ... a_last, then a_0 ... a_last */
        for (int j = q - 1; j >= 0; j--) {
            w[j] = decay * dt[j];
            decay *= a[j];
        }
        for (int p = 0; p < P; p++) {
            float *s = st + (size_t)p * N;
            for (int k = 0; k < N; k++) s[k] *= decay;
            for (int j = 0; j < q; j++)
                axpy(s, w[j] * u0[(size_t)j * X + (size_t)hd * P + p], u0 + (size_t)j * X + E + (size_t)g * N, N);
        }
    }
}

/* y = RMSNorm over each group of E/G channels of (y * silu(z)), times the gated norm's weight. */
static void gated_norm(Engine *e, const LayerWeights *L, int n) {
    const Config *c = &e->c;
    int E = c->d_inner, gs = E / c->n_groups;
    const float *w = L->gnorm.data;
#pragma omp parallel for schedule(static) if ((size_t)n * E >= PARALLEL_MIN)
    for (int i = 0; i < n; i++) {
        float *y = e->y + (size_t)i * E;
        const float *z = e->proj + (size_t)i * e->proj_ld; /* z opens the row */
        int j = 0;
        for (; j + VL <= E; j += VL) {
            vfloat vz = load_f32(z + j);
            store_f32(y + j, load_f32(y + j) * (vz / (1.0f + vexp(-vz))));
        }
        for (; j < E; j++) y[j] *= z[j] / (1.0f + expf(-z[j]));
        for (int g0 = 0; g0 < E; g0 += gs) {
            float inv = 1.0f / sqrtf(dot(y + g0, y + g0, gs) / gs + c->norm_eps);
            for (int k = g0; k < g0 + gs; k++) y[k] *= inv * w[k];
        }
    }
}

/* A Mamba-2 layer over n rows. */
static void mamba2_layer(Engine *e, int l, const int *seqs, int n, int prefill) {
    const Config *c = &e->c;
    const LayerWeights *L = &e->m->weights.layers[l];
    int D = c->d_model, E = c->d_inner, H = c->n_heads, X = e->conv_ch, W = e->proj_ld;
    rmsnorm(e->h, e->x, &L->norm, n, D, c->norm_eps);
    project(e, e->proj, W, e->h, D, n, &L->in_proj, W, D, prefill);              /* z, x B C, dt */
    over_channels(e, conv_block, l, seqs, n, prefill, X);                         /* u = conv(x B C) */
    silu_inplace(e->u, (size_t)n * X);                                            /* u = silu(u) */
    mamba2_dt(e, l, n);                                                           /* dt */
    if (prefill) {                                                                /* y = SSM(x, B, C, dt) */
        ssd_cb(e, n);
#pragma omp parallel for schedule(static)
        for (int hd = 0; hd < H; hd++) ssd_head(e, l, seqs[0], n, hd);
    } else {
#pragma omp parallel for collapse(2) schedule(static)
        for (int i = 0; i < n; i++)
            for (int hd = 0; hd < H; hd++) ssm2_step(e, l, seqs[i], i, hd);
    }
    gated_norm(e, L, n);                                                          /* y = norm(y * silu(z)) */
    project(e, e->h, D, e->y, E, n, &L->out_proj, D, E, prefill);                 /* h is free: reuse it */
    add_rows(e->x, e->h, 1, n * D);                                               /* residual */
}

/* Runs n rows through every layer and leaves normed final hidden states in e->h. */
static void forward_layers(Engine *e, const int *tokens, const int *seqs, int n, int prefill) {
    embed(e, tokens, n);
    for (int l = 0; l < e->c.n_layer; l++) e->layer(e, l, seqs, n, prefill);
    rmsnorm(e->h, e->x, &e->m->weights.norm_f, n, e->c.d_model, e->c.norm_eps);
}

static int grow_logits(Engine *e, int rows) {
    if (rows <= e->logit_rows) return 1;
    int ok = 1;
    float *p = alloc_floats((size_t)rows * e->c.vocab_rows, &ok);
    if (!ok) return 0;
    free(e->logits);
    e->logits = p;
    e->logit_rows = rows;
    return 1;
}

const float *engine_prefill(Engine *e, int seq, const int *tokens, int n, int all_logits) {
    const Config *c = &e->c;
    check_seq(e, seq, "engine_prefill");
    if (n < 1 || n > PREFILL_CHUNK) {
        fprintf(stderr, "error: engine_prefill: %d tokens (1..%d)\n", n, PREFILL_CHUNK);
        exit(1);
    }
    check_tokens(e, tokens, n);
    int seqs[1] = {seq};
    forward_layers(e, tokens, seqs, n, 1);
    if (all_logits) {
        if (!grow_logits(e, n)) { fprintf(stderr, "error: out of memory for %d rows of logits\n", n); exit(1); }
        prefill_gemm(e, e->logits, c->vocab_rows, e->h, c->d_model, n, &e->m->weights.lm_head, c->vocab_rows, c->d_model);
    } else {
        matvec(e->logits, c->vocab_rows, e->h + (size_t)(n - 1) * c->d_model, c->d_model, 1,
               &e->m->weights.lm_head, c->vocab_rows, c->d_model, &e->qacts);
    }
    return e->logits;
}

/* One prompt after another: the CPU's prefill GEMMs are compute-bound, so rows of several prompts
 * in one GEMM would save little. Each prompt's last row of logits goes to row i. */
const float *engine_prefill_many(Engine *e, const int *seqs, const int *tokens, const int *lens, int n) {
    const Config *c = &e->c;
    if (n < 1 || n > e->max_seqs) {
        fprintf(stderr, "error: engine_prefill_many: %d prompts (1..%d)\n", n, e->max_seqs);
        exit(1);
    }
    for (int i = 0, total = 0; i < n; i++) {
        check_seq(e, seqs[i], "engine_prefill_many");
        if (lens[i] < 1 || lens[i] > PREFILL_CHUNK - total) {
            fprintf(stderr, "error: engine_prefill_many: prompts of more than %d tokens in all\n", PREFILL_CHUNK);
            exit(1);
        }
        check_tokens(e, tokens + total, lens[i]);
        total += lens[i];
    }
    for (int i = 0; i < n; i++) {
        forward_layers(e, tokens, seqs + i, lens[i], 1);
        matvec(e->logits + (size_t)i * c->vocab_rows, c->vocab_rows, e->h + (size_t)(lens[i] - 1) * c->d_model,
               c->d_model, 1, &e->m->weights.lm_head, c->vocab_rows, c->d_model, &e->qacts);
        tokens += lens[i];
    }
    return e->logits;
}

/* A decode step through the layer functions, a parallel region per projection (Mamba-2). */
static void layers_step(Engine *e, const int *tokens, int n) {
    const Config *c = &e->c;
    forward_layers(e, tokens, e->slots, n, 0);
    matvec(e->logits, c->vocab_rows, e->h, c->d_model, n, &e->m->weights.lm_head, c->vocab_rows, c->d_model, &e->qacts);
}

const float *engine_step(Engine *e, const int *tokens, int nseq) {
    check_nseq(e, nseq, "engine_step");
    check_tokens(e, tokens, nseq);
    e->step(e, tokens, nseq);
    return e->logits;
}

void engine_step_argmax(Engine *e, const int *tokens, int nseq, int *ids) {
    const float *logits = engine_step(e, tokens, nseq);
    for (int i = 0; i < nseq; i++) ids[i] = logits_argmax(logits + (size_t)i * e->c.vocab_rows, e->c.vocab_size);
}

/* The rows are sampled on the host, on the engine's threads: each row's pick is its own. The
 * penalty changes the engine's own rows, which no caller sees after this call. */
void engine_step_sample(Engine *e, const int *tokens, int nseq, const SampleDraw *draws, int *ids) {
    engine_step(e, tokens, nseq);
    char msg[96];
    if (!sampler_draws_valid(draws, nseq, e->c.vocab_size, msg, sizeof msg)) {
        fprintf(stderr, "error: engine_step_sample: %s\n", msg);
        exit(1);
    }
    const size_t per_thread = SAMPLER_CAND(e->c.vocab_size);
    if (!e->cand && !(e->cand = malloc(e->n_threads * per_thread * sizeof *e->cand))) die(EXIT_RUNTIME, "out of memory");
#pragma omp parallel for schedule(dynamic) num_threads(e->n_threads) if (nseq > 1)
    for (int i = 0; i < nseq; i++) {
        float *row = e->logits + (size_t)i * e->c.vocab_rows;
        sampler_penalize(&draws[i], row);
        ids[i] = sampler_pick(&draws[i], row, e->c.vocab_size, e->cand + omp_get_thread_num() * per_thread);
    }
}
