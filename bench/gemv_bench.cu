/* bench/gemv_bench.cu: run.cu's decode GEMV kernel alone, batch 1, fp16 weights, on the matrices of
 * the 130m and 2.8b shapes, in each of its configurations, against cuBLAS and the read bandwidth.
 *
 *   nvcc -O3 -arch=sm_90 -I. -o gemv_bench bench/gemv_bench.cu build/cuda/model.o -lcublas && ./gemv_bench
 *   (after make runcuda, which builds build/cuda/model.o)
 *
 * Each kernel runs 200 times, each time on another of as many copies of the matrix as fill 1 GiB,
 * so that the L2 cache (50 MB on an H100 or H200) never holds the weights, as in a real decode step.
 * Prints microseconds a call and GB/s of weights read, and the largest difference from the
 * whole-rows configuration (the others sum in another order; cuBLAS takes x in fp16). This is where
 * the decode section of run.cu's choices (gemv_nb) and the README's GEMV figures come from. */
#include "run.cu"

#include <vector>

/* Reads n 16-byte words and keeps nothing: the rate at which the GPU reads its memory. */
__global__ void read_kernel(const uint4 *p, size_t n, float *out) {
    float s = 0.0f;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint4 u = p[i];
        s += __uint_as_float(u.x ^ u.y ^ u.z ^ u.w);
    }
    if (s == 12345.0f) *out = s; /* never true in practice; keeps the loads */
}

int main() {
    int sms;
    CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    cudaEvent_t t0, t1;
    CHECK(cudaEventCreate(&t0));
    CHECK(cudaEventCreate(&t1));
    {
        const size_t bytes = 2ull << 30;
        uint4 *p;
        float *o;
        CHECK(cudaMalloc(&p, bytes));
        CHECK(cudaMalloc(&o, sizeof(float)));
        CHECK(cudaMemset(p, 1, bytes));
        read_kernel<<<sms * 16, 256>>>(p, bytes / 16, o);
        CHECK(cudaEventRecord(t0));
        for (int i = 0; i < 10; i++) read_kernel<<<sms * 16, 256>>>(p, bytes / 16, o);
        CHECK(cudaEventRecord(t1));
        CHECK(cudaEventSynchronize(t1));
        float ms;
        CHECK(cudaEventElapsedTime(&ms, t0, t1));
        printf("read bandwidth: %.0f GB/s\n", 10.0 * bytes / ms / 1e6);
        CHECK(cudaFree(p));
        CHECK(cudaFree(o));
    }
    cublasHandle_t blas;
    BLAS_CHECK(cublasCreate(&blas));
    struct Shape {
        const char *name;
        int R, K;
    } shapes[] = {{"2.8b in_proj", 10240, 2560}, {"2.8b out_proj", 2560, 5120}, {"2.8b x_proj", 192, 5120},
                  {"2.8b lm_head", 50280, 2560}, {"130m in_proj", 3072, 768},   {"130m out_proj", 768, 1536},
                  {"130m x_proj", 80, 1536},     {"130m lm_head", 50280, 768}};
    for (const Shape &s : shapes) {
        const size_t wn = (size_t)s.R * s.K, wbytes = wn * sizeof(f16);
        const int copies = (int)std::max<size_t>(2, (1ull << 30) / wbytes);
        f16 *W, *xh;
        float *x, *y;
        CHECK(cudaMalloc(&W, wbytes * copies));
        CHECK(cudaMalloc(&x, s.K * sizeof(float)));
        CHECK(cudaMalloc(&xh, s.K * sizeof(f16)));
        CHECK(cudaMalloc(&y, s.R * sizeof(float)));
        std::vector<f16> hw(wn), hxh(s.K);
        std::vector<float> hx(s.K), ref(s.R), got(s.R);
        for (size_t i = 0; i < wn; i++) hw[i] = __float2half((float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f);
        for (int i = 0; i < s.K; i++) {
            hx[i] = (float)(i % 17) / 17.0f - 0.5f;
            hxh[i] = __float2half(hx[i]);
        }
        for (int c = 0; c < copies; c++) CHECK(cudaMemcpy(W + c * wn, hw.data(), wbytes, cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(x, hx.data(), s.K * sizeof(float), cudaMemcpyHostToDevice));
        CHECK(cudaMemcpy(xh, hxh.data(), s.K * sizeof(f16), cudaMemcpyHostToDevice));
        printf("%s (%d x %d, %.1f MB)\n", s.name, s.R, s.K, wbytes / 1e6);
        const ConvEpi none = {};
        auto time = [&](const char *name, bool is_ref, auto launch) {
            launch(W);
            CHECK(cudaDeviceSynchronize());
            CHECK(cudaMemcpy(got.data(), y, s.R * sizeof(float), cudaMemcpyDeviceToHost));
            if (is_ref) ref = got;
            float diff = 0.0f;
            for (int i = 0; i < s.R; i++) diff = fmaxf(diff, fabsf(got[i] - ref[i]));
            const int iters = 200;
            CHECK(cudaEventRecord(t0));
            for (int i = 0; i < iters; i++) launch(W + (size_t)(i % copies) * wn);
            CHECK(cudaEventRecord(t1));
            CHECK(cudaEventSynchronize(t1));
            float ms;
            CHECK(cudaEventElapsedTime(&ms, t0, t1));
            printf("  %-36s %8.2f us %6.0f GB/s   max diff %.1e\n", name, ms * 1e3 / iters,
                   (double)wbytes * iters / ms / 1e6, diff);
        };
        /* the configurations gemv_nb picks from at batch 1: 2 rows a warp, whole or split */
        time("whole rows (a warp per 2 rows)", true, [&](const f16 *w) {
            const int per = GEMV_WARPS * 2;
            gemv_kernel<f16, 1, 2, 1><<<(s.R + per - 1) / per, GEMV_WARPS * 32>>>(w, x, y, s.R, s.K, 1, none);
        });
        time("split (GEMV_KSPLIT warps per 2 rows)", false, [&](const f16 *w) {
            const int per = GEMV_WARPS / GEMV_KSPLIT * 2;
            gemv_kernel<f16, 1, 2, GEMV_KSPLIT><<<(s.R + per - 1) / per, GEMV_WARPS * 32>>>(w, x, y, s.R, s.K, 1,
                                                                                          none);
        });
        time("x_proj's (XPROJ_KSPLIT warps a row)", false, [&](const f16 *w) {
            gemv_kernel<f16, 1, 1, XPROJ_KSPLIT><<<s.R, GEMV_WARPS * 32>>>(w, x, y, s.R, s.K, 1, none);
        });
        const float one = 1.0f, zero = 0.0f;
        time("cuBLAS GemmEx, n = 1, x in fp16", false, [&](const f16 *w) {
            BLAS_CHECK(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, s.R, 1, s.K, &one, w, CUDA_R_16F, s.K, xh,
                                    CUDA_R_16F, s.K, &zero, y, CUDA_R_32F, s.R, CUBLAS_COMPUTE_32F,
                                    CUBLAS_GEMM_DEFAULT));
        });
        CHECK(cudaFree(W));
        CHECK(cudaFree(x));
        CHECK(cudaFree(xh));
        CHECK(cudaFree(y));
    }
    return 0;
}
