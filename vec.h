/* vec.h: vectors of VL floats through GCC/clang vector extensions, VL the width of the machine's
 * registers: 16 with AVX-512, 8 with AVX, else 4 (SSE, NEON). Wider than the registers would be
 * wrong for GCC: without AVX-512 it keeps a 64-byte vector in memory, not in two registers
 * (measured on an AVX2 machine: 4 GFLOP/s in the prefill GEMM against OpenBLAS's 100).
 * Used by run.c and bench/bandwidth.c. */
#ifndef VEC_H
#define VEC_H

#include <stdint.h>

#if defined(__AVX512F__)
#define VL 16
#elif defined(__AVX__)
#define VL 8
#else
#define VL 4
#endif
typedef float vfloat __attribute__((vector_size(VL * 4)));
typedef uint16_t vhalf __attribute__((vector_size(VL * 2)));
typedef uint32_t vuint __attribute__((vector_size(VL * 4)));
typedef int32_t vint __attribute__((vector_size(VL * 4)));

#endif
