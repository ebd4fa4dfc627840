/* run.cu: the NVIDIA GPU engine (see engine.h) for Mamba-1, Falcon-Mamba and Mamba-2; the command line
 * is shared, in cli.c.
 *
 * The weights are copied to the GPU once, in the file's dtype (fp32, fp16, bf16, or the q8_0/q4_0
 * blocks of model.h); all arithmetic accumulates in fp32 and the conv and SSM states are fp32, laid
 * out per slot exactly as run.c's
 * (model.h: layer_state_floats; per layer the conv state [conv_channels][d_conv-1], then the SSM state
 * [d_inner][d_state], for Mamba-2 [n_heads][head_dim][d_state]).
 *
 * Mamba-1 decode (engine_step, forward_step), nseq sequences at once, per layer:
 *   rmsnorm     the residual add and the RMSNorm, a block per sequence, every load in flight at once
 *   in_proj     GEMV: a warp per row group (or GEMV_KSPLIT warps, when whole rows give too few
 *               blocks), 16-byte weight loads, each weight read once for up to GEMV_MAX_SEQS
 *               sequences (cuBLAS GEMMs beyond that); the warps holding x rows finish with the conv
 *               step of those channels (ConvEpi)
 *   x_proj      GEMV, XPROJ_KSPLIT warps per row (few rows, long ones)
 *   (Falcon-Mamba: mixer_norm, the weightless RMS norm of dt_in, B and C, a block per sequence)
 *   ssm_step    dt_proj + softplus, the selective state update, D skip, SiLU(z) gate: 4 lanes per
 *               channel, weights and state loaded before waiting for x_proj; past GEMV_MAX_SEQS
 *               sequences, a block takes 4 of them and stages its dt_proj rows once for all
 *               (ssm_step_batch_kernel)
 *   out_proj    GEMV
 * Mamba-2 decode (forward_step_mamba2), per layer:
 *   rmsnorm, in_proj GEMV (z, xBC, dt) whose xBC rows finish with the conv step (ConvEpi with a row
 *   offset); ssd_step (dt, exp(dt A), the state update over head_dim x d_state, y, D skip: a block
 *   per (8 rows of head_dim, head, sequence), a warp per row streaming it once); gated_norm (y *
 *   silu(z), one RMS per group, a block per (group, sequence)); out_proj GEMV.
 * The whole step for a given nseq is captured once in a CUDA graph (tokens in, logits out included,
 * or instead each row's token picked on the device: its argmax, or its SampleDraw's pick with CUB's
 * segmented sort in between, cuda/sample.cuh) and replayed for every token; its kernels use
 * programmatic dependent launch, so each one starts (and loads its first weights) while the previous
 * one finishes. Untied models (Falcon-Mamba, some Mamba-2) read their own lm_head; tied ones the
 * embedding.
 *
 * Prefill (engine_prefill), a chunk of one sequence (a long prompt's full chunks replay a graph of
 * the whole chunk, captured at load: run_prefill): cuBLAS
 * tensor-core GEMMs for the projections (fp32 accumulation; fp32 weights stay fp32, no TF32) and a
 * causal conv kernel over the chunk; then
 *   Mamba-1 (forward_prefill; Falcon-Mamba adds mixer_norm after x_proj): a selective scan with
 *   SCAN_LANES lanes a channel, its states in their registers, stepping through time with the chunk
 *   staged in shared memory, cut into segments along time so that a chunk's channels fill the GPU
 *   (scan_kernel, scan_chunk, scan_segments);
 *   Mamba-2 (forward_prefill_mamba2): conv_advance for the conv state, then the SSM in the chunked
 *   ("state space duality") form of run.c (ssd_chunked; cuda/ssd_chunk.cuh has the algorithm): per
 *   64-token chunk, C.B^T per group, M x per head (M: C.B^T masked by the decays and dt, D on its
 *   diagonal), C times the state carried in, and the chunk's contribution to the state, as batched
 *   cuBLAS GEMMs over the (chunk, head) pairs through pointer tables (fp16/bf16 models: TF32 tensor
 *   cores; fp32: fp32), with kernels for the decays (running products of exp(dt A), as decode
 *   multiplies them), the mask, and the state passed from chunk to chunk; then the gated norm and the
 *   out_proj GEMM. Chunks under SSD_MIN_CHUNKED tokens take ssd_scan instead, the recurrence token by
 *   token as decode runs it (a block per (4 rows of head_dim, head), 16 lanes per row each holding
 *   d_state/16 states in registers); RUNCUDA_SSD=scan or =chunk forces one or the other.
 * An engine lives on one device (engine_new's; each engine.h call makes it the calling thread's
 * current device), so ./runcuda --gpus runs one engine a GPU, each from a thread of its own. Its
 * one-time set-up (module loading, cuBLAS's choices, the one-sequence decode graph) is done in
 * engine_new by a warm-up prompt (warm_up).
 * GEMM inputs are narrowed to the weights' dtype; for bf16 the inputs of in_proj, out_proj and
 * lm_head also carry their rounding error as a second GEMM (8 bits of mantissa alone would cost ~1%
 * of the logits).
 *
 * Quantized files (q8_0, q4_0): each matrix is a Mat that knows its own type (cuda/quant.cuh): the
 * embedding (lm_head), in_proj, out_proj and x_proj are quantized, dt_proj is fp16, so the layer
 * functions run with T = fp16 (cdtype, the compute dtype) and only the projections look at the
 * matrix's type. Their activations are quantized per block of 32 as model.h specifies ("ACTIVATIONS
 * OF A QUANTIZED MATRIX"), as run.c does: gemv picks gemv_q_kernel for one sequence (x quantized in
 * registers by the warps, integer dot products with dp4a, fp32 sums over blocks), and for more
 * quant_x_kernel (x quantized once, into the scratch xq) then gemv_qx_kernel (the same products on
 * the stored pieces); gemm first dequantizes the matrix into the fp16 scratch wq (dequant_kernel),
 * and multiplies it by x' = dx * q narrowed to fp16 (quant_narrow_kernel, from the fp32 activations
 * the producing kernels then write instead of fp16 ones), for its cuBLAS call; dt_proj's input is
 * narrowed as in an fp16 file. The layer-0 norm widens the embedding row (mat_elem). */
#include <algorithm>
#include <climits>
#include <type_traits>
#include <utility>

extern "C" {
#include "engine.h"
}

/* One header per op, as llm.c does; all of them compile into this one translation unit. */
#include "cuda/common.cuh"
#include "cuda/norm.cuh"
#include "cuda/conv.cuh"
#include "cuda/gemv.cuh"
#include "cuda/scan.cuh"
#include "cuda/ssd.cuh"
#include "cuda/ssd_chunk.cuh"
#include "cuda/sample.cuh"

/* ----------------------------------------------------------------------------------------------
 * The engine */

/* Most tokens of one prefill call (engine_prefill_chunk): the activation buffers hold this many rows
 * (2.8b shape, fp16: 156 KB a row, 327 MB). Longer chunks make larger GEMMs and fewer scan segments
 * and SSD passes a token. On an H200 (bench_gpu, fp16, prefill of 2048 tokens, 2026-12-02), 512 /
 * 1024 / 2048 in trial builds before the chunk graph: 2.8b 45,361 / 52,295 / 55,216 tok/s, 130m
 * 286,315 / 408,317 / 526,917; with the graph, 512 -> 2048: 2.8b 48,909 -> 56,849, 130m 337,515 ->
 * 564,048, m2-2.7b 37,545 -> 44,038, m2-130m 195,048 -> 371,237 (Mamba-2 at 512 with the graph:
 * m2-2.7b 41,714, m2-130m 223,893). A prompt of 512 tokens is no longer a full chunk, so it runs
 * without a graph: 2.8b 48,646 -> 44,821 tok/s (11.4 ms), 130m 338,586 -> 295,311. */
enum { PREFILL_CHUNK = 2048 };

typedef struct {
    const float *norm, *conv_w, *conv_b, *dt_b, *A, *D; /* fp32 vectors; A = -exp(A_log) */
    const float *dt_bias, *gnorm;                       /* Mamba-2 */
    Mat in_proj, x_proj, dt_w, out_proj;                 /* each in its own type (cuda/quant.cuh) */
} GpuLayer;

/* How a decode step ends: the logits copied out, or each row's token picked on the device and only
 * the ids copied out (the argmax, or a SampleDraw's pick). */
enum StepEnd { STEP_LOGITS, STEP_ARGMAX, STEP_SAMPLE, STEP_ENDS };

/* One batched GEMM of the Mamba-2 chunked prefill (cuda/ssd_chunk.cuh): C_b = op(A_b) op(B_b), plus
 * C_b when beta = 1, fp32 buffers, column-major as cuBLAS sees them, for the entries b = c * per_chunk
 * + (head or group) of chunks c. The operands of a (chunk, head) pair sit at two strides (a chunk's
 * rows, a head's columns), so the entries' pointers are tables, filled once at start-up (the buffers
 * never move), rather than the one stride of a strided-batched call. */
typedef struct {
    cublasOperation_t ta, tb;
    int m, n, k, lda, ldb, ldc;
    float beta;
    int per_chunk;       /* entries a chunk: H (per head), G (cb: per group) */
    const void **A, **B; /* device tables of the entries' pointers */
    void **C;
} SsdGemm;
enum { SSD_G_STATES, SSD_G_YOFF, SSD_G_CB, SSD_G_YDIAG, SSD_GEMMS }; /* in the order they run */
enum { SSD_AUTO, SSD_SCAN, SSD_CHUNKED }; /* RUNCUDA_SSD: unset, scan, chunk */
/* Prefills of fewer tokens run token by token (ssd_scan_kernel) unless RUNCUDA_SSD says otherwise: the
 * chunked form costs seven launches and whole 64-token chunks of work whatever n is, the scan a time
 * proportional to n (up to about 0.75 us a token a 2.7b layer, from the 17,854 tok/s measured with it alone).
 * An estimate of the crossover, not a measurement: bench_gpu's "short" case times both. */
#define SSD_MIN_CHUNKED 32

struct Engine {
    Config c;
    int device;           /* the GPU: every engine.h call makes it the calling thread's current one */
    int cdtype;           /* the compute dtype: dense matrices and narrowed GEMM inputs (fp16 in a quantized file) */
    int max_seqs, rows;   /* rows of the activation buffers: max(max_seqs, PREFILL_CHUNK) */
    int R;                /* x_proj outputs: dt_rank + 2*d_state (Mamba-1, Falcon-Mamba) */
    int Z, X;             /* in_proj outputs (2*d_inner; Mamba-2: 2*d_inner + 2*G*N + H), conv channels */
    bool dt_clamp;        /* Mamba-2: dt clamped to [dt_min, dt_max] */
    size_t state_floats, layer_floats;
    int ssm_vec;          /* every SSM state row and A row starts on 16 bytes, whole float4s long */
    char name[300];
    cudaStream_t stream;
    cublasHandle_t blas;
    void *blas_ws;
    uint8_t *wdev;        /* the file's weight section, on the device */
    GpuLayer *layers;     /* host array of device pointers */
    Mat emb, lm_head;
    const float *norm_f;
    f16 *wq;              /* quantized files: one quantized matrix dequantized for a GEMM (the largest's size) */
    uint4 *xq;            /* quantized files: a GEMV's x of 2 .. GEMV_MAX_SEQS sequences, quantized */
    float *A;             /* [n_layer][d_inner][d_state] (Mamba-2: [n_layer][n_heads]) */
    float *states;        /* [max_seqs][state_floats], each slot as engine_get_state's flat array */
    /* activations, fp32, `rows` rows; the *T twins hold GEMM inputs in cdtype (NULL for fp32) */
    float *res;           /* the residual stream */
    float *hid, *hn, *xz, *xc, *dbc, *dt, *y; /* xz: in_proj's output [Z]; xc: the conv's [X] */
    float *ys;            /* Mamba-2: y before the gated norm */
    void *hnT, *xcT, *dbcT, *yT;
    void *hnLo, *yLo;     /* bf16: the rounding errors of hnT and yT (see store_narrow); else NULL */
    int *tok, *h_tok;     /* device tokens, pinned host staging */
    float *logits, *h_logits;         /* max_seqs rows */
    float *logits_all, *h_logits_all; /* PREFILL_CHUNK rows, allocated at the first all_logits prefill */
    int *ids, *h_ids;                 /* max_seqs: each row's token (engine_step_argmax, engine_step_sample) */
    SampleDraw *draws, *h_draws;      /* max_seqs: engine_step_sample's draws, pinned host staging */
    SampleRow *sample_rows;           /* max_seqs: what sample_prep_kernel leaves for sample_pick_kernel */
    unsigned *keys[2];                /* [max_seqs][vocab_size] each: the candidates' probabilities' bits, */
    int *vals[2];                     /* and their ids, sorted from [0] into [1] or back (cub::DoubleBuffer);
                                         before them, vals[1] holds the penalty's ids (penalty_kernel) */
    int *h_pen;                       /* pinned staging of the penalty's ids, h_pen_cap of them (grown as needed) */
    size_t h_pen_cap;
    int *seg_begin, *seg_end;         /* max_seqs: each row's segment of keys */
    void *sort_tmp;                   /* the sorts' scratch (segmented, or one row whole), sort_bytes */
    size_t sort_bytes;
    int4 *prompts, *h_prompts;        /* max_seqs: a prefill's prompts (prompt_of), pinned host staging */
    cudaGraphExec_t *graphs;          /* [STEP_ENDS][max_seqs + 1]: the step for each nseq, captured at
                                         first use, for each way a step ends (StepEnd) */
    cudaGraphExec_t chunk_graph;      /* a prompt's full chunk of prefill (run_prefill), captured at the second */
    bool chunk_ran;                   /* a full chunk ran without the graph */
    SsdChunk chunk;       /* Mamba-2 prefill, the chunked form: its buffers (PREFILL_CHUNK tokens) */
    SsdGemm ssd_gemms[SSD_GEMMS];
    const void **ssd_ptrs; /* the GEMMs' pointer tables, on the device */
    cublasComputeType_t ssd_compute; /* fp32 models: fp32; fp16/bf16: TF32 tensor cores */
    int ssd_mode;         /* SSD_AUTO, or forced by RUNCUDA_SSD */
    float *seg_h, *seg_dt; /* the scan's segments: [SCAN_MAX_SEGS][d_inner][d_state], [SCAN_MAX_SEGS][d_inner] */
    int sms;              /* streaming multiprocessors */
    int scan_segs;        /* 0: chosen per chunk (scan_segments); else forced (RUNCUDA_SCAN_SEGS) */
    bool use_pdl;         /* programmatic dependent launch in the decode graphs (RUNCUDA_PDL=0: off) */
    int gemv_min_blocks;  /* fewer GEMV blocks of whole rows than this: rows split over warps (gemv_nb) */
    int gemv_ksplit;      /* 0: as gemv_nb chooses; 1 or 4: forced (RUNCUDA_GEMV_KSPLIT) */
    bool dt_fma;          /* batched decode's dt_proj without tensor cores (RUNCUDA_DT=fma) */
    bool capturing;       /* a decode step is being captured */
    bool after_kernel;    /* the last thing captured was one of our kernels: the next may overlap it */
};

/* Activations that feed a projection: fp32 for the GEMV kernels and fp32 GEMMs, the compute dtype
 * for fp16/bf16 GEMMs. A kernel writes the buffer that the next projection reads. In a quantized
 * file, fp32 for the GEMMs too: gemm quantizes them per block from fp32 (quant_narrow_kernel), as
 * the GEMV does, and narrows the result itself. */
static bool narrow_gemm(const Engine *e, bool gemm) { return gemm && e->cdtype != DT_F32 && !quantized(e->c.dtype); }
static float *f32_out(const Engine *e, float *buf, bool gemm) { return narrow_gemm(e, gemm) ? NULL : buf; }
template <typename T> static T *t_out(const Engine *e, void *bufT, bool gemm) {
    return narrow_gemm(e, gemm) ? (T *)bufT : NULL;
}
/* A GEMM input: fp32 for fp32 weights, else narrowed (hi) and, for some bf16 inputs, its rounding
 * error (lo). Quantized files: also the fp32 activations (f32), which gemm quantizes into hi (bufT,
 * then scratch) when the matrix is quantized; dt_proj's input (fp16 matrix) is narrowed as it is. */
typedef struct {
    const void *hi, *lo;
    const float *f32;
} GemmIn;
static GemmIn gemm_in(const Engine *e, const float *buf, const void *bufT, const void *bufLo = nullptr) {
    GemmIn in = {e->cdtype == DT_F32 ? (const void *)buf : bufT, bufLo, quantized(e->c.dtype) ? buf : nullptr};
    return in;
}

static float *conv_state(Engine *e, int seq, int l) { return e->states + seq * e->state_floats + l * e->layer_floats; }
static float *ssm_state(Engine *e, int seq, int l) {
    return conv_state(e, seq, l) + (size_t)e->X * (e->c.d_conv - 1);
}

template <typename T> static cudaDataType_t cuda_type();
template <> cudaDataType_t cuda_type<float>() { return CUDA_R_32F; }
template <> cudaDataType_t cuda_type<f16>() { return CUDA_R_16F; }
template <> cudaDataType_t cuda_type<bf16>() { return CUDA_R_16BF; }

/* Launches a kernel on the engine's stream. Inside decode graphs, one that follows another of our
 * kernels uses programmatic dependent launch (see launch_next), unless RUNCUDA_PDL=0 in the
 * environment; after a copy or a cuBLAS call the dependency stays an ordinary one. */
template <typename... P, typename... A>
static void launch(Engine *e, void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A &&...args) {
    cudaLaunchAttribute attr = {};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = e->stream;
    cfg.attrs = &attr;
    cfg.numAttrs = e->capturing && e->use_pdl && e->after_kernel ? 1 : 0;
    CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...));
    e->after_kernel = true;
}

/* W [R][K] as cuBLAS takes it: a dense matrix as it is (type T); a quantized one dequantized into
 * e->wq first, fp16 (the GEMM's T, a quantized file's cdtype). */
static const void *gemm_weights(Engine *e, const Mat &W, int R, int K) {
    if (!quantized(W.dtype)) return W.w;
    const size_t n = (size_t)R * K;
    const unsigned blocks = (unsigned)((n / 8 + 255) / 256);
    if (W.dtype == DT_Q8_0)
        launch(e, dequant_kernel<DT_Q8_0>, blocks, 256, 0, (const uint8_t *)W.w, W.scales, e->wq, n);
    else
        launch(e, dequant_kernel<DT_Q4_0>, blocks, 256, 0, (const uint8_t *)W.w, W.scales, e->wq, n);
    return e->wq;
}

/* out[n][R] (row stride ldo, fp32) = in[n][K] (row stride ldi, dtype T) @ W[R][K]^T, on tensor cores
 * for fp16/bf16, fp32 accumulation; plus in.lo @ W^T when set. cuBLAS is column-major: this is
 * out^T = W^T' in^T. A quantized W multiplies x' = dx * q, x quantized per block (model.h) from the
 * fp32 in.f32 and narrowed to fp16 into in.hi. */
template <typename T>
static void gemm(Engine *e, float *out, int ldo, const Mat &Wm, GemmIn in, int ldi, int n, int R, int K) {
    if (quantized(Wm.dtype)) {
        const size_t cnt = (size_t)n * ldi; /* every caller's rows are contiguous (ldi == K) */
        launch(e, quant_narrow_kernel<T>, (unsigned)((cnt + 255) / 256), 256, 0, in.f32, (T *)in.hi, cnt);
    }
    const void *W = gemm_weights(e, Wm, R, K);
    const float one = 1.0f, zero = 0.0f;
    BLAS_CHECK(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, R, n, K, &one, W, cuda_type<T>(), K, in.hi,
                            cuda_type<T>(), ldi, &zero, out, CUDA_R_32F, ldo, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    if (in.lo)
        BLAS_CHECK(cublasGemmEx(e->blas, CUBLAS_OP_T, CUBLAS_OP_N, R, n, K, &one, W, cuda_type<T>(), K, in.lo,
                                cuda_type<T>(), ldi, &one, out, CUDA_R_32F, ldo, CUBLAS_COMPUTE_32F,
                                CUBLAS_GEMM_DEFAULT));
    e->after_kernel = false;
}

/* The GEMV kernel of W's type: dense (T), or q8_0 or q4_0 (Q): for one sequence gemv_q_kernel, which
 * quantizes x itself; for more, quant_x_kernel quantizes the NB rows of x once into e->xq, then
 * gemv_qx_kernel reads them (cuda/gemv.cuh, gemv_q_body). */
template <int DT, int NB, int ROWS, int KSPLIT>
static void gemv_q_launch(Engine *e, float *y, const Mat &W, const float *x, int R, int K, const ConvEpi &conv,
                          int grid) {
    if constexpr (NB == 1) {
        launch(e, gemv_q_kernel<DT, ROWS, KSPLIT>, grid, GEMV_WARPS * 32, 0, W, x, y, R, K, conv);
    } else {
        const int n = NB * (K / 8); /* pieces: K is whole blocks */
        launch(e, quant_x_kernel<DT>, (n + 255) / 256, 256, 0, x, e->xq, n);
        launch(e, gemv_qx_kernel<DT, NB, ROWS, KSPLIT>, grid, GEMV_WARPS * 32, 0, W, e->xq, y, R, K, conv);
    }
}
template <typename T, int NB, int ROWS, int KSPLIT, bool Q>
static void gemv_launch(Engine *e, float *y, const Mat &W, const float *x, int R, int K, const ConvEpi &conv) {
    const int per_block = GEMV_WARPS / KSPLIT * ROWS, grid = (R + per_block - 1) / per_block;
    if constexpr (Q) {
        if (W.dtype == DT_Q8_0) gemv_q_launch<DT_Q8_0, NB, ROWS, KSPLIT>(e, y, W, x, R, K, conv, grid);
        else gemv_q_launch<DT_Q4_0, NB, ROWS, KSPLIT>(e, y, W, x, R, K, conv, grid);
    } else {
        const int vec = K % (16 / (int)sizeof(T)) == 0;
        launch(e, gemv_kernel<T, NB, ROWS, KSPLIT>, grid, GEMV_WARPS * 32, 0, (const T *)W.w, x, y, R, K, vec, conv);
    }
}

/* Rows per warp: more for larger batches, so the x loads are shared by several rows. Quantized weights
 * (Q): 8 for one sequence, whose x quantization in the warp (gemv_q_kernel, once per piece) the rows
 * share; 4 for more, whose x is quantized once per GEMV (quant_x_kernel) and read with one 16-byte
 * load a piece and sequence, shared by the 4 rows. Not 8: from 5 sequences the conv epilogue's lane
 * per (row, sequence) allows no more than 4; below that, 8 rows' partial sums (8 x NB registers)
 * would leave fewer pieces in flight (gemv_qx_u), and the whole-row blocks would halve, moving the
 * row split below and with it the order of the sums. split: x_proj's shape (few rows, K long), a row
 * per XPROJ_KSPLIT warps. Otherwise a warp takes whole rows, unless that gives fewer than
 * gemv_min_blocks blocks (too few loads in flight to keep the memory busy): then GEMV_KSPLIT warps
 * share each row group. */
template <typename T, int NB, bool Q>
static void gemv_shape(Engine *e, bool split, float *y, const Mat &W, const float *x, int R, int K,
                       const ConvEpi &conv) {
    constexpr int ROWS = Q ? (NB == 1 ? 8 : 4) : NB > 2 ? 4 : 2;
    const int whole_rows_blocks = (R + GEMV_WARPS * ROWS - 1) / (GEMV_WARPS * ROWS);
    const bool ksplit = e->gemv_ksplit ? e->gemv_ksplit > 1 : whole_rows_blocks < e->gemv_min_blocks;
    if (split) gemv_launch<T, NB, 1, XPROJ_KSPLIT, Q>(e, y, W, x, R, K, conv);
    else if (ksplit) gemv_launch<T, NB, ROWS, GEMV_KSPLIT, Q>(e, y, W, x, R, K, conv);
    else gemv_launch<T, NB, ROWS, 1, Q>(e, y, W, x, R, K, conv);
}
template <typename T, int NB>
static void gemv_nb(Engine *e, bool split, float *y, const Mat &W, const float *x, int R, int K,
                    const ConvEpi &conv) {
    if (quantized(W.dtype)) gemv_shape<T, NB, true>(e, split, y, W, x, R, K, conv);
    else gemv_shape<T, NB, false>(e, split, y, W, x, R, K, conv);
}

/* y[B][R] = x[B][K] @ W[R][K]^T, fp32, B <= GEMV_MAX_SEQS; with conv, the conv step of the x rows
 * follows (in_proj). */
template <typename T>
static void gemv(Engine *e, float *y, const Mat &W, const float *x, int B, int R, int K,
                 const ConvEpi *conv = nullptr, bool split = false) {
    const ConvEpi cv = conv ? *conv : ConvEpi{};
    switch (B) {
    case 1: gemv_nb<T, 1>(e, split, y, W, x, R, K, cv); break;
    case 2: gemv_nb<T, 2>(e, split, y, W, x, R, K, cv); break;
    case 3: gemv_nb<T, 3>(e, split, y, W, x, R, K, cv); break;
    case 4: gemv_nb<T, 4>(e, split, y, W, x, R, K, cv); break;
    case 5: gemv_nb<T, 5>(e, split, y, W, x, R, K, cv); break;
    case 6: gemv_nb<T, 6>(e, split, y, W, x, R, K, cv); break;
    case 7: gemv_nb<T, 7>(e, split, y, W, x, R, K, cv); break;
    case 8: gemv_nb<T, 8>(e, split, y, W, x, R, K, cv); break;
    default: fprintf(stderr, "error: gemv batch %d > %d\n", B, (int)GEMV_MAX_SEQS); exit(1);
    }
}

/* Calls f with NS, d_state rounded up to a power of two (at least SSM_LANES), as a compile-time
 * constant: the states a scan thread holds, and SSM_LANES times those a lane holds in ssm_step. */
template <typename F> static void with_states(int N, F f) {
    if (N <= SSM_LANES) f(std::integral_constant<int, SSM_LANES>());
    else if (N <= 2 * SSM_LANES) f(std::integral_constant<int, 2 * SSM_LANES>());
    else if (N <= 4 * SSM_LANES) f(std::integral_constant<int, 4 * SSM_LANES>());
    else f(std::integral_constant<int, 8 * SSM_LANES>());
}

/* The norm of layer l (l = n_layer: the final one), over e->hid and the residual stream, which it
 * updates in place. */
template <typename T>
static NormIn<T> norm_in(const Engine *e, int l, const float *weight) {
    NormIn<T> a;
    a.res = e->res;
    a.add = e->hid;
    a.tokens = l == 0 ? e->tok : nullptr;
    a.emb = e->emb;
    a.w = weight;
    a.eps = e->c.norm_eps;
    return a;
}

template <typename T>
static void rmsnorm(Engine *e, int nrows, const NormIn<T> &a, float *out, T *outT, T *outLo) {
    launch(e, rmsnorm_kernel<T>, nrows, NORM_THREADS, 0, a, e->c.d_model, out, outT, outLo);
}

/* A decode projection of B rows of the norm's output: rmsnorm, then a GEMV (small batches) or a
 * GEMM. conv: see ConvEpi (GEMV only). Two ways of saving the norm's kernel measured slower on an
 * H200: each GEMV block computing the norm before its main loop; and the GEMV reading the residual
 * stream itself, its warps summing x^2 on the way and applying the norm's weight and 1/rms to the
 * sums (out_proj adding into the residual), which adds work to every piece of an issue-bound loop
 * (README, "Measured and not kept"). */
template <typename T>
static void norm_project(Engine *e, const NormIn<T> &a, float *out, const Mat &W, int B, int R,
                         const ConvEpi *conv = nullptr) {
    const int D = e->c.d_model;
    if (B <= GEMV_MAX_SEQS) {
        rmsnorm<T>(e, B, a, e->hn, nullptr, nullptr);
        gemv<T>(e, out, W, e->hn, B, R, D, conv);
    } else {
        rmsnorm<T>(e, B, a, f32_out(e, e->hn, true), t_out<T>(e, e->hnT, true), t_out<T>(e, e->hnLo, true));
        gemm<T>(e, out, R, W, gemm_in(e, e->hn, e->hnT, e->hnLo), D, B, R, D);
    }
}

/* A decode projection of B rows of an fp32 input (or its narrowed twin for a GEMM). */
template <typename T>
static void project(Engine *e, float *out, const Mat &W, const float *in, GemmIn inT, int B, int R, int K) {
    if (B <= GEMV_MAX_SEQS) gemv<T>(e, out, W, in, B, R, K);
    else gemm<T>(e, out, R, W, inT, K, B, R, K);
}

/* ----------------------------------------------------------------------------------------------
 * Decode: one token for each of slots 0..B-1. Tokens in e->tok, logits out in e->logits. */
template <typename T>
static void forward_step(Engine *e, int B) {
    const Config *c = &e->c;
    const int D = c->d_model, E = c->d_inner, N = c->d_state, R = e->R;
    const bool big = B > GEMV_MAX_SEQS; /* projections as GEMMs */
    for (int l = 0; l < c->n_layer; l++) {
        const GpuLayer *w = &e->layers[l];
        /* residual += hidden (layer 0: residual = embedding row); xz = in_proj @ (rmsnorm(residual) * norm);
         * small batches: xc = silu(conv(conv state, x)) in the same kernel */
        const ConvEpi conv = {conv_state(e, 0, l), e->state_floats, w->conv_w, w->conv_b, E, c->d_conv, e->xc, 0};
        norm_project<T>(e, norm_in<T>(e, l, w->norm), e->xz, w->in_proj, B, 2 * E, big ? nullptr : &conv);
        /* (big: xc = silu(conv(conv state, x))); dbc = x_proj @ xc: dt_in, B, C */
        if (big) {
            launch(e, conv_step_kernel<T>, dim3((E + CONV_THREADS - 1) / CONV_THREADS, B), CONV_THREADS, 0,
                   (const float *)e->xz, 2 * E, conv.state, conv.slot_stride, conv.w, conv.b, E, conv.K, e->xc,
                   t_out<T>(e, e->xcT, true));
            /* (x_proj as GEMVs, a group of GEMV_MAX_SEQS sequences a blockIdx.y, measured slower:
             * each row's blocks read their group's x again; README, "Measured and not kept") */
            gemm<T>(e, e->dbc, R, w->x_proj, gemm_in(e, e->xc, e->xcT), E, B, R, E);
        } else {
            gemv<T>(e, e->dbc, w->x_proj, e->xc, B, R, E, nullptr, true);
        }
        if (c->arch == ARCH_FALCON_MAMBA) /* dt_in, B, C each RMS-normalized */
            launch(e, mixer_norm_kernel, B, MIXER_NORM_THREADS, 0, e->dbc, R, c->dt_rank, N, c->mixer_eps);
        /* dt = softplus(dt_proj @ dt_in + bias); state update; y = (state . C + D x) * silu(z) */
        with_states(N, [&](auto ns) {
            constexpr int SPL = decltype(ns)::value / SSM_LANES;
            const T *dt_w = (const T *)w->dt_w.w;
            const int dtvec = c->dt_rank % (16 / sizeof(T)) == 0, vec = e->ssm_vec && N == SSM_LANES * SPL;
            /* batches over 8, fp16/bf16: dt_proj on the tensor cores (ssm_step_batch_kernel) */
            const int dtmma = sizeof(T) == 2 && c->dt_rank % 16 == 0 && R % 2 == 0 && !e->dt_fma;
            const int cblocks = (E + SSM_CHANNELS - 1) / SSM_CHANNELS;
            float *ssm = ssm_state(e, 0, l), *y = f32_out(e, e->y, big);
            T *yT = t_out<T>(e, e->yT, big), *yLo = t_out<T>(e, e->yLo, big);
            if (big)
                launch(e, dtmma ? ssm_step_batch_kernel<T, SPL, sizeof(T) == 2> : ssm_step_batch_kernel<T, SPL, false>,
                       dim3(cblocks, (B + SSM_SEQS - 1) / SSM_SEQS), SSM_THREADS * SSM_SEQS,
                       ssm_batch_smem(c->dt_rank, sizeof(T), R), (const float *)e->dbc, R, c->dt_rank, N, dt_w, dtvec,
                       (int)(R % 4 == 0), w->dt_b, w->A, w->D, (const float *)e->xc, (const float *)e->xz, ssm,
                       e->state_floats, vec, E, B, y, yT, yLo);
            else
                launch(e, ssm_step_kernel<T, SPL>, dim3(cblocks, B), SSM_THREADS, R * sizeof(float),
                       (const float *)e->dbc, R, c->dt_rank, N, dt_w, dtvec, w->dt_b, w->A, w->D,
                       (const float *)e->xc, (const float *)e->xz, ssm, e->state_floats, vec, E, y, yT, yLo);
        });
        /* hidden = out_proj @ y */
        project<T>(e, e->hid, w->out_proj, e->y, gemm_in(e, e->y, e->yT, e->yLo), B, D, E);
    }
    /* residual += hidden; logits = lm_head @ (rmsnorm(residual) * norm_f) */
    norm_project<T>(e, norm_in<T>(e, c->n_layer, e->norm_f), e->logits, e->lm_head, B, c->vocab_rows);
}

/* How many segments the scan of an n-token chunk is cut into: enough for SCAN_BLOCKS_PER_SM blocks
 * a multiprocessor (1, one pass, when the channels alone give that many), each segment
 * SCAN_MIN_SEG tokens at least. On an H200 (132 multiprocessors) the 2.8b shape (160 blocks of 32
 * channels) takes 4 segments and the 130m shape (48 blocks) 11.
 * Measured there (bench_gpu, fp16, prefill of 2048 tokens, 2026-12-02, 512-token chunks then),
 * tok/s by segments:
 *   2.8b  1: 23,025   2: 27,501   4: 36,077  (a lane a channel, 14 segments: 35,394)
 *   130m  1: 91,948   4: 171,957  11: 246,123 (a lane a channel, 16 segments: 200,360)
 * With 2048-token chunks (2026-12-03, one call, two rounds within 1%):
 *   2.8b  2: 50,521   3: 55,357   4: 56,457   6: 54,957
 *   130m  6: 468,665  8: 528,205  11: 565,137  16: 565,166
 * One pass is slower even though the others compute each segment twice: one 2.8b pass over 512
 * tokens took 291 us a layer under ncu, a thread per channel's sequential loop over 512 tokens,
 * latency-bound with 5 warps a multiprocessor. RUNCUDA_SCAN_SEGS=k forces k. */
static int scan_segments(const Engine *e, int n, int cblocks) {
    if (e->scan_segs) return std::min(e->scan_segs, n); /* forced (the checks use it on short chunks) */
    int segs = (SCAN_BLOCKS_PER_SM * e->sms + cblocks - 1) / cblocks;
    segs = std::min(segs, std::min((int)SCAN_MAX_SEGS, n / SCAN_MIN_SEG));
    return std::max(segs, 1);
}

/* Prefill, every family: xc = silu(causal conv over [conv state, the layer's inputs]) for each prompt,
 * over its own slot's conv state (which stays as it is); the input of row t, channel c is in[t * ld + c],
 * over `channels` channels; xcT: xc narrowed for a GEMM, or NULL. */
template <typename T>
static void conv_chunk(Engine *e, int l, const GpuLayer *w, const float *in, int ld, int channels, int longest, int nsg,
                       T *xcT) {
    const int K = e->c.d_conv;
    const dim3 grid((channels + CONV_THREADS - 1) / CONV_THREADS, (longest + CONV_RUN - 1) / CONV_RUN, nsg);
    launch(e, conv_chunk_kernel<T>, grid, CONV_THREADS, conv_chunk_smem(K), (const int4 *)e->prompts, in, ld,
           (const float *)conv_state(e, 0, l), e->state_floats, w->conv_w, w->conv_b, channels, K, e->xc, xcT);
}

/* One prompt of a prefill: its slot, its first row among the prefill's rows, and its tokens. */
struct Seg {
    int seq, t0, n;
};
/* p + off, or NULL: a buffer that the dtype may leave out, offset to a prompt's rows. */
template <typename P> static P *rows_at(P *p, size_t off) { return p ? p + off : p; }
static int longest_prompt(const Seg *sg, int nsg) {
    int m = 0;
    for (int i = 0; i < nsg; i++) m = sg[i].n > m ? sg[i].n : m;
    return m;
}

/* The selective scan of layer l over a prefill chunk (scan_kernel): one prompt cut into segments
 * along time to give the scan more threads (scan_segments), or several prompts at once, a segment
 * each. */
template <typename T>
static void scan_chunk(Engine *e, const GpuLayer *w, int l, const Seg *sg, int nsg, int n) {
    const Config *c = &e->c;
    const int E = c->d_inner, N = c->d_state, R = e->R, K = c->d_conv;
    const int cblocks = (E * SCAN_LANES + SCAN_THREADS - 1) / SCAN_THREADS;
    const int want = nsg == 1 ? scan_segments(e, n, cblocks) : 1;
    const int seg_len = (n + want - 1) / want, segs = (n + seg_len - 1) / seg_len; /* every segment holds tokens */
    T *yT = (T *)e->yT, *yLo = (T *)e->yLo;
    float *ssm0 = ssm_state(e, 0, l), *conv0 = conv_state(e, 0, l);
    with_states(N, [&](auto ns) {
        constexpr int NS = decltype(ns)::value;
        if (segs > 1) {
            launch(e, scan_kernel<T, NS, SCAN_LOCAL>, dim3(cblocks, segs - 1), SCAN_THREADS, 0,
                   (const int4 *)e->prompts, seg_len, e->seg_h, e->seg_dt, (const float *)e->dt, w->dt_b, w->A, w->D,
                   (const float *)e->xc, (const float *)e->xz, (const float *)e->dbc, E, N, c->dt_rank, R, K, ssm0,
                   conv0, e->state_floats, (float *)nullptr, (T *)nullptr, (T *)nullptr);
            launch(e, scan_combine_kernel, (E * N + 255) / 256, 256, 0, (const int4 *)e->prompts, segs, w->A,
                   (const float *)ssm0, e->state_floats, e->seg_h, (const float *)e->seg_dt, E, N);
        }
        launch(e, scan_kernel<T, NS, SCAN_OUT>, dim3(cblocks, segs, nsg), SCAN_THREADS, 0, (const int4 *)e->prompts,
               seg_len, e->seg_h, e->seg_dt, (const float *)e->dt, w->dt_b, w->A, w->D, (const float *)e->xc,
               (const float *)e->xz, (const float *)e->dbc, E, N, c->dt_rank, R, K, ssm0, conv0, e->state_floats,
               f32_out(e, e->y, true), t_out<T>(e, yT, true), yLo);
    });
}

template <typename T>
static void prefill_logits(Engine *e, const Seg *sg, int nsg, int n, int all_logits, float *logits);

/* ----------------------------------------------------------------------------------------------
 * Prefill: n tokens (in e->tok) of slot seq; logits of the last token into e->logits, or of every
 * token into logits (all_logits). */
template <typename T>
static void forward_prefill(Engine *e, const Seg *sg, int nsg, int n, int all_logits, float *logits) {
    const Config *c = &e->c;
    const int D = c->d_model, E = c->d_inner, N = c->d_state, R = e->R;
    const bool narrow = e->cdtype != DT_F32;
    const int longest = longest_prompt(sg, nsg);
    T *hnT = (T *)e->hnT, *xcT = (T *)e->xcT, *yT = (T *)e->yT, *dbcT = (T *)e->dbcT;
    T *hnLo = (T *)e->hnLo, *yLo = (T *)e->yLo;
    for (int l = 0; l < c->n_layer; l++) {
        const GpuLayer *w = &e->layers[l];
        /* residual += hidden (layer 0: residual = embedding rows); hn = rmsnorm(residual) * norm */
        rmsnorm<T>(e, n, norm_in<T>(e, l, w->norm), f32_out(e, e->hn, true), t_out<T>(e, hnT, true), hnLo);
        /* xz = hn @ in_proj^T */
        gemm<T>(e, e->xz, 2 * E, w->in_proj, gemm_in(e, e->hn, hnT, hnLo), D, n, 2 * E, D);
        /* xc = silu(causal conv over [conv state, x]), each prompt over its own slot's conv state */
        conv_chunk<T>(e, l, w, (const float *)e->xz, 2 * E, E, longest, nsg, t_out<T>(e, xcT, true));
        /* dbc = xc @ x_proj^T: dt_in, B, C per token */
        gemm<T>(e, e->dbc, R, w->x_proj, gemm_in(e, e->xc, xcT), E, n, R, E);
        if (c->arch == ARCH_FALCON_MAMBA) /* dt_in, B, C each RMS-normalized */
            launch(e, mixer_norm_kernel, n, MIXER_NORM_THREADS, 0, e->dbc, R, c->dt_rank, N, c->mixer_eps);
        /* dt (before bias and softplus, which the scan applies) = dt_in @ dt_proj^T */
        if (narrow) {
            size_t cnt = (size_t)n * R;
            launch(e, narrow_kernel<T>, (unsigned)((cnt + 255) / 256), 256, 0, (const float *)e->dbc, dbcT, cnt);
        }
        gemm<T>(e, e->dt, E, w->dt_w, gemm_in(e, e->dbc, dbcT), R, n, E, c->dt_rank);
        /* the selective scan: y, the final SSM state, the conv state advanced */
        scan_chunk<T>(e, w, l, sg, nsg, n);
        /* hidden = y @ out_proj^T */
        gemm<T>(e, e->hid, D, w->out_proj, gemm_in(e, e->y, yT, yLo), E, n, D, E);
    }
    prefill_logits<T>(e, sg, nsg, n, all_logits, logits);
}

/* The end of a prefill, every family: residual += hidden, then the final norm and lm_head, for the
 * last token (GEMV) or for all (GEMM). */
template <typename T>
static void prefill_logits(Engine *e, const Seg *sg, int nsg, int n, int all_logits, float *logits) {
    const Config *c = &e->c;
    const int D = c->d_model;
    T *hnT = (T *)e->hnT, *hnLo = (T *)e->hnLo;
    NormIn<T> final = norm_in<T>(e, c->n_layer, e->norm_f);
    if (all_logits) {
        rmsnorm<T>(e, n, final, f32_out(e, e->hn, true), t_out<T>(e, hnT, true), hnLo);
        gemm<T>(e, logits, c->vocab_rows, e->lm_head, gemm_in(e, e->hn, hnT, hnLo), D, n, c->vocab_rows, D);
        return;
    }
    /* each prompt's last row, normed into row i of hn; then one GEMV (or GEMM) for all of them */
    const bool big = nsg > GEMV_MAX_SEQS;
    for (int i = 0; i < nsg; i++) {
        NormIn<T> last = final;
        const size_t at = (size_t)(sg[i].t0 + sg[i].n - 1) * D, to = (size_t)i * D;
        last.res += at;
        last.add += at;
        if (big)
            rmsnorm<T>(e, 1, last, rows_at(f32_out(e, e->hn, true), to), rows_at(t_out<T>(e, hnT, true), to),
                       rows_at(hnLo, to));
        else
            rmsnorm<T>(e, 1, last, e->hn + to, nullptr, nullptr);
    }
    if (big) gemm<T>(e, logits, c->vocab_rows, e->lm_head, gemm_in(e, e->hn, hnT, hnLo), D, nsg, c->vocab_rows, D);
    else gemv<T>(e, logits, e->lm_head, e->hn, nsg, c->vocab_rows, D);
}


/* ----------------------------------------------------------------------------------------------
 * Mamba-2 (E = d_inner, H heads of P channels, G groups, N = d_state, X = E + 2GN, Z = E + X + H) */

static Ssd ssd_args(const Engine *e, const GpuLayer *w) {
    const Config *c = &e->c;
    Ssd a;
    a.zx = e->xz;
    a.xc = e->xc;
    a.dt_bias = w->dt_bias;
    a.A = w->A;
    a.D = w->D;
    a.E = c->d_inner;
    a.H = c->n_heads;
    a.P = c->head_dim;
    a.G = c->n_groups;
    a.N = c->d_state;
    a.X = e->X;
    a.Z = e->Z;
    a.dt_min = c->dt_min;
    a.dt_max = c->dt_max;
    a.clamp = e->dt_clamp;
    a.ys = e->ys;
    return a;
}

/* Decode, Mamba-2: one token for each of slots 0..B-1. Tokens in e->tok, logits out in e->logits. */
template <typename T>
static void forward_step_mamba2(Engine *e, int B) {
    const Config *c = &e->c;
    const int D = c->d_model, E = c->d_inner, X = e->X, Z = e->Z;
    const bool big = B > GEMV_MAX_SEQS; /* projections as GEMMs */
    for (int l = 0; l < c->n_layer; l++) {
        const GpuLayer *w = &e->layers[l];
        /* residual += hidden (layer 0: residual = embedding row); xz = in_proj @ (rmsnorm(residual) * norm):
         * z, xBC, dt_raw; small batches: xc = silu(conv(conv state, xBC)) in the same kernel */
        const ConvEpi conv = {conv_state(e, 0, l), e->state_floats, w->conv_w, w->conv_b, X, c->d_conv, e->xc, E};
        norm_project<T>(e, norm_in<T>(e, l, w->norm), e->xz, w->in_proj, B, Z, big ? nullptr : &conv);
        if (big)
            launch(e, conv_step_kernel<T>, dim3((X + CONV_THREADS - 1) / CONV_THREADS, B), CONV_THREADS, 0,
                   (const float *)e->xz + E, Z, conv.state, conv.slot_stride, conv.w, conv.b, X, conv.K, e->xc,
                   (T *)nullptr);
        /* dt, the state update, ys = state . C + D x */
        launch(e, ssd_step_kernel, dim3((c->head_dim + SSD_STEP_ROWS - 1) / SSD_STEP_ROWS, c->n_heads, B),
               SSD_STEP_ROWS * 32, 0, ssd_args(e, w), ssm_state(e, 0, l), e->state_floats);
        /* y = gated group norm of ys with silu(z) */
        launch(e, gated_norm_kernel<T>, dim3(c->n_groups, B), GNORM_THREADS, 0, (const float *)e->ys,
               (const float *)e->xz, Z, w->gnorm, E, c->n_groups, c->norm_eps, f32_out(e, e->y, big),
               t_out<T>(e, e->yT, big), t_out<T>(e, e->yLo, big));
        /* hidden = out_proj @ y */
        project<T>(e, e->hid, w->out_proj, e->y, gemm_in(e, e->y, e->yT, e->yLo), B, D, E);
    }
    /* residual += hidden; logits = lm_head @ (rmsnorm(residual) * norm_f) */
    norm_project<T>(e, norm_in<T>(e, c->n_layer, e->norm_f), e->logits, e->lm_head, B, c->vocab_rows);
}

/* Calls f with SPL, the states an ssd_scan lane holds (d_state / SSD_LPR rounded up to a power of two). */
template <typename F> static void with_ssd_states(int N, F f) {
    if (N <= SSD_LPR) f(std::integral_constant<int, 1>());
    else if (N <= 2 * SSD_LPR) f(std::integral_constant<int, 2>());
    else if (N <= 4 * SSD_LPR) f(std::integral_constant<int, 4>());
    else if (N <= 8 * SSD_LPR) f(std::integral_constant<int, 8>());
    else f(std::integral_constant<int, 16>());
}

/* One batched GEMM of the chunked form over the first `chunks` chunks. */
static void ssd_gemm(Engine *e, const SsdGemm &g, int chunks) {
    const float one = 1.0f;
    BLAS_CHECK(cublasGemmBatchedEx(e->blas, g.ta, g.tb, g.m, g.n, g.k, &one, g.A, CUDA_R_32F, g.lda, g.B, CUDA_R_32F,
                                   g.ldb, &g.beta, g.C, CUDA_R_32F, g.ldc, chunks * g.per_chunk, e->ssd_compute,
                                   CUBLAS_GEMM_DEFAULT));
    e->after_kernel = false;
}

/* The SSM of layer l of a Mamba-2 model over n tokens of one prompt (e->prompts[0]) in the chunked
 * form (cuda/ssd_chunk.cuh has the algorithm): ys, and the prompt's slot's SSM state advanced. */
static void ssd_chunked(Engine *e, const GpuLayer *w, int l, int n) {
    const Config *c = &e->c;
    const int chunks = (n + SSD_CHUNK_LEN - 1) / SSD_CHUNK_LEN, PN = c->head_dim * c->d_state;
    const dim3 tiles(c->n_heads, chunks);
    const Ssd a = ssd_args(e, w);
    launch(e, ssd_decay_kernel, tiles, SSD_CHUNK_THREADS, 0, a, e->chunk, n);
    ssd_gemm(e, e->ssd_gemms[SSD_G_STATES], chunks);
    launch(e, ssd_pass_kernel, (unsigned)(((size_t)c->n_heads * PN + SSD_PASS_THREADS - 1) / SSD_PASS_THREADS),
           SSD_PASS_THREADS, 0, e->chunk, (const int4 *)e->prompts, ssm_state(e, 0, l), e->state_floats, chunks,
           c->n_heads, PN);
    ssd_gemm(e, e->ssd_gemms[SSD_G_YOFF], chunks);
    ssd_gemm(e, e->ssd_gemms[SSD_G_CB], chunks);
    launch(e, ssd_mask_kernel, tiles, SSD_CHUNK_THREADS, 0, a, e->chunk, n);
    ssd_gemm(e, e->ssd_gemms[SSD_G_YDIAG], chunks);
}

/* Prefill, Mamba-2: n tokens (in e->tok) of slot seq. */
template <typename T>
static void forward_prefill_mamba2(Engine *e, const Seg *sg, int nsg, int n, int all_logits, float *logits) {
    const Config *c = &e->c;
    const int D = c->d_model, E = c->d_inner, X = e->X, Z = e->Z, K = c->d_conv;
    T *hnT = (T *)e->hnT, *yT = (T *)e->yT, *hnLo = (T *)e->hnLo, *yLo = (T *)e->yLo;
    /* The chunked form runs on one prompt (its GEMMs' pointer tables address rows from 0); prompts
     * admitted together are short, and take the recurrence token by token. */
    const bool chunked = nsg == 1 && (e->ssd_mode == SSD_CHUNKED || (e->ssd_mode == SSD_AUTO && n >= SSD_MIN_CHUNKED));
    const int longest = longest_prompt(sg, nsg);
    const int padded = (n + SSD_CHUNK_LEN - 1) / SSD_CHUNK_LEN * SSD_CHUNK_LEN;
    if (chunked && padded > n) /* the last chunk's padding rows of xc, which its GEMMs read: zeros, not stale rows */
        CHECK(cudaMemsetAsync(e->xc + (size_t)n * X, 0, (size_t)(padded - n) * X * sizeof(float), e->stream));
    for (int l = 0; l < c->n_layer; l++) {
        const GpuLayer *w = &e->layers[l];
        /* residual += hidden (layer 0: residual = embedding rows); hn = rmsnorm(residual) * norm */
        rmsnorm<T>(e, n, norm_in<T>(e, l, w->norm), f32_out(e, e->hn, true), t_out<T>(e, hnT, true), hnLo);
        /* xz = hn @ in_proj^T: z, xBC, dt_raw per token */
        gemm<T>(e, e->xz, Z, w->in_proj, gemm_in(e, e->hn, hnT, hnLo), D, n, Z, D);
        /* xc = silu(causal conv over [conv state, xBC]); then the conv state advanced; each prompt on
         * its own slot's states */
        const float *xbc = (const float *)e->xz + E;
        conv_chunk<T>(e, l, w, xbc, Z, X, longest, nsg, (T *)nullptr);
        launch(e, conv_advance_kernel, dim3((X + CONV_THREADS - 1) / CONV_THREADS, 1, nsg), CONV_THREADS, 0,
               (const int4 *)e->prompts, xbc, Z, conv_state(e, 0, l), e->state_floats, X, K);
        /* the SSM over each prompt: ys, and the SSM state left; chunked, or the recurrence token by token */
        if (chunked)
            ssd_chunked(e, w, l, n);
        else
            with_ssd_states(c->d_state, [&](auto spl) {
                launch(e, ssd_scan_kernel<decltype(spl)::value>,
                       dim3((c->head_dim + SSD_ROWS - 1) / SSD_ROWS, c->n_heads, nsg), SSD_THREADS, 0, ssd_args(e, w),
                       (const int4 *)e->prompts, ssm_state(e, 0, l), e->state_floats);
            });
        /* y = gated group norm of ys with silu(z); hidden = y @ out_proj^T */
        launch(e, gated_norm_kernel<T>, dim3(c->n_groups, n), GNORM_THREADS, 0, (const float *)e->ys,
               (const float *)e->xz, Z, w->gnorm, E, c->n_groups, c->norm_eps, f32_out(e, e->y, true),
               t_out<T>(e, yT, true), yLo);
        gemm<T>(e, e->hid, D, w->out_proj, gemm_in(e, e->y, yT, yLo), E, n, D, E);
    }
    prefill_logits<T>(e, sg, nsg, n, all_logits, logits);
}

/* Each family's forward pass, for the weights' dtype T. */
template <typename T> static void step_fn(Engine *e, int B) {
    if (e->c.arch == ARCH_MAMBA2) forward_step_mamba2<T>(e, B);
    else forward_step<T>(e, B); /* Mamba-1, Falcon-Mamba */
}
template <typename T> static void prefill_fn(Engine *e, const Seg *sg, int nsg, int n, int all_logits, float *logits) {
    if (e->c.arch == ARCH_MAMBA2) forward_prefill_mamba2<T>(e, sg, nsg, n, all_logits, logits);
    else forward_prefill<T>(e, sg, nsg, n, all_logits, logits); /* Mamba-1, Falcon-Mamba */
}

/* ----------------------------------------------------------------------------------------------
 * engine.h */

#define TRY(call)                                                                                    \
    do {                                                                                             \
        cudaError_t err_ = (call);                                                                   \
        if (err_ != cudaSuccess) {                                                                   \
            snprintf(err, errlen, "CUDA: %s: %s", #call, cudaGetErrorString(err_));                 \
            return 0;                                                                                \
        }                                                                                            \
    } while (0)

/* Device memory, zeroed: no kernel (ours or cuBLAS's, which may read whole tiles) ever reads bytes
 * that nothing wrote, such as the rows of a buffer past the current batch. */
template <typename P> static cudaError_t dev_alloc(Engine *e, P **p, size_t bytes) {
    cudaError_t st = cudaMalloc((void **)p, bytes);
    return st == cudaSuccess ? cudaMemsetAsync(*p, 0, bytes, e->stream) : st;
}

static_assert(PREFILL_CHUNK % SSD_CHUNK_LEN == 0, "a prefill chunk is whole SSD chunks");
/* The chunked Mamba-2 prefill's buffers and GEMMs (cuda/ssd_chunk.cuh), for PREFILL_CHUNK tokens; after
 * xc and ys exist. The GEMM operands (row-major buffers seen column-major by cuBLAS), with t the
 * chunk's rows, L = SSD_CHUNK_LEN:
 *   states (P x N, [p][n])  = xw_t[h]^T . B_t[g]   cuBLAS: (N x P) = B' (N x L, ld X) . xw'^T (P x L, ld E)
 *   ys_t[h] (L x P)         = C_t[g] . states^T    (P x L, ld E) = states'^T (N x P, ld N) . C' (N x L, ld X)
 *   cb (L x L, [i][j])      = C_t[g] . B_t[g]^T    (L x L, ld L) = B'^T (N x L, ld X) . C' (N x L, ld X)
 *   ys_t[h] += M . x_t[h]                          (P x L, ld E) = x' (P x L, ld X) . M' (L x L, ld L) */
static int ssd_chunk_init(Engine *e, char *err, size_t errlen) {
    const Config *c = &e->c;
    const int L = SSD_CHUNK_LEN, chunks = PREFILL_CHUNK / L, H = c->n_heads, G = c->n_groups, P = c->head_dim;
    const int N = c->d_state, E = c->d_inner, X = e->X;
    SsdChunk *k = &e->chunk;
    const size_t per_head = (size_t)chunks * H, fsz = sizeof(float);
    TRY(dev_alloc(e, &k->dt, per_head * L * fsz));
    TRY(dev_alloc(e, &k->a, per_head * L * fsz));
    TRY(dev_alloc(e, &k->from_start, per_head * L * fsz));
    TRY(dev_alloc(e, &k->to_end, per_head * fsz));
    TRY(dev_alloc(e, &k->xw, (size_t)PREFILL_CHUNK * E * fsz));
    TRY(dev_alloc(e, &k->cb, (size_t)chunks * G * L * L * fsz));
    TRY(dev_alloc(e, &k->m, per_head * L * L * fsz));
    TRY(dev_alloc(e, &k->states, per_head * P * N * fsz));

    SsdGemm *g = e->ssd_gemms;
    g[SSD_G_STATES] = {CUBLAS_OP_N, CUBLAS_OP_T, N, P, L, X, E, N, 0.0f, H, nullptr, nullptr, nullptr};
    g[SSD_G_YOFF] = {CUBLAS_OP_T, CUBLAS_OP_N, P, L, N, N, X, E, 0.0f, H, nullptr, nullptr, nullptr};
    g[SSD_G_CB] = {CUBLAS_OP_T, CUBLAS_OP_N, L, L, N, X, X, L, 0.0f, G, nullptr, nullptr, nullptr};
    g[SSD_G_YDIAG] = {CUBLAS_OP_N, CUBLAS_OP_N, P, L, L, X, L, E, 1.0f, H, nullptr, nullptr, nullptr};
    /* The pointer tables: [gemm][A, B, C][chunk * per_chunk + head or group], per_head entries each. */
    const size_t entries = (size_t)SSD_GEMMS * 3 * per_head;
    TRY(dev_alloc(e, &e->ssd_ptrs, entries * sizeof(void *)));
    const void **host = (const void **)calloc(entries, sizeof(void *));
    if (!host) {
        snprintf(err, errlen, "out of host memory");
        return 0;
    }
    auto set = [&](int gemm, size_t b, const float *A, const float *B, float *C) {
        host[(gemm * 3 + 0) * per_head + b] = A;
        host[(gemm * 3 + 1) * per_head + b] = B;
        host[(gemm * 3 + 2) * per_head + b] = C;
    };
    for (int ch = 0; ch < chunks; ch++) {
        const float *rows = e->xc + (size_t)ch * L * X; /* the chunk's rows of xc: x, B, C */
        for (int h = 0; h < H; h++) {
            const size_t b = (size_t)ch * H + h;
            const int grp = h / (H / G);
            const float *Bg = rows + E + (size_t)grp * N, *Cg = Bg + (size_t)G * N;
            float *ys = e->ys + (size_t)ch * L * E + (size_t)h * P, *st = k->states + b * P * N;
            set(SSD_G_STATES, b, Bg, k->xw + (size_t)ch * L * E + (size_t)h * P, st);
            set(SSD_G_YOFF, b, st, Cg, ys);
            set(SSD_G_YDIAG, b, rows + (size_t)h * P, k->m + b * L * L, ys);
        }
        for (int grp = 0; grp < G; grp++) {
            const float *Bg = rows + E + (size_t)grp * N, *Cg = Bg + (size_t)G * N;
            set(SSD_G_CB, (size_t)ch * G + grp, Bg, Cg, k->cb + ((size_t)ch * G + grp) * L * L);
        }
    }
    for (int i = 0; i < SSD_GEMMS; i++) {
        g[i].A = e->ssd_ptrs + (i * 3 + 0) * per_head;
        g[i].B = e->ssd_ptrs + (i * 3 + 1) * per_head;
        g[i].C = (void **)(e->ssd_ptrs + (i * 3 + 2) * per_head);
    }
    cudaError_t st = cudaMemcpyAsync(e->ssd_ptrs, host, entries * sizeof(void *), cudaMemcpyHostToDevice, e->stream);
    if (st == cudaSuccess) st = cudaStreamSynchronize(e->stream);
    free(host);
    TRY(st);
    /* fp16/bf16 models: the products on tensor cores (TF32, fp32 accumulation), when every operand starts
     * on 16 bytes (cuBLAS cannot check each pointer of a batched call); fp32 models: fp32, as the CPU. */
    const bool aligned = E % 4 == 0 && N % 4 == 0 && P % 4 == 0;
    e->ssd_compute = c->dtype != DT_F32 && aligned ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    const char *mode = getenv("RUNCUDA_SSD");
    if (mode && *mode && strcmp(mode, "scan") && strcmp(mode, "chunk")) {
        snprintf(err, errlen, "RUNCUDA_SSD is \"%s\": scan or chunk (unset: chosen by length)", mode);
        return 0;
    }
    e->ssd_mode = !mode || !*mode ? SSD_AUTO : !strcmp(mode, "scan") ? SSD_SCAN : SSD_CHUNKED;
    return 1;
}

/* engine_step_sample's buffers (cuda/sample.cuh): each row's segment of candidates (probability bits
 * and ids), twice (the sort goes from one to the other), [max_seqs][vocab_size], and the sort's scratch. */
static int sample_init(Engine *e, char *err, size_t errlen) {
    const int V = e->c.vocab_size, S = e->max_seqs;
    if ((long long)S * V > INT_MAX) {
        snprintf(err, errlen, "%d sequences of a %d-token vocabulary are more candidates than the GPU's sampler takes (%d)",
                 S, V, INT_MAX);
        return 0;
    }
    TRY(dev_alloc(e, &e->draws, S * sizeof(SampleDraw)));
    TRY(cudaMallocHost((void **)&e->h_draws, S * sizeof(SampleDraw)));
    TRY(dev_alloc(e, &e->sample_rows, S * sizeof(SampleRow)));
    for (int k = 0; k < 2; k++) {
        TRY(dev_alloc(e, &e->keys[k], (size_t)S * V * sizeof(unsigned)));
        TRY(dev_alloc(e, &e->vals[k], (size_t)S * V * sizeof(int)));
    }
    TRY(dev_alloc(e, &e->seg_begin, S * sizeof(int)));
    TRY(dev_alloc(e, &e->seg_end, S * sizeof(int)));
    int *begin = (int *)malloc(S * sizeof(int));
    if (!begin) {
        snprintf(err, errlen, "out of host memory");
        return 0;
    }
    for (int r = 0; r < S; r++) begin[r] = r * V;
    cudaError_t st = cudaMemcpy(e->seg_begin, begin, S * sizeof(int), cudaMemcpyHostToDevice);
    free(begin);
    TRY(st);
    cub::DoubleBuffer<unsigned> keys(e->keys[0], e->keys[1]);
    cub::DoubleBuffer<int> vals(e->vals[0], e->vals[1]);
    size_t whole_bytes = 0; /* one row's sort (sample_launches) */
    TRY(cub::DeviceSegmentedRadixSort::SortPairsDescending(nullptr, e->sort_bytes, keys, vals, S * V, S, e->seg_begin,
                                                           e->seg_end, 0, SAMPLE_KEY_BITS, e->stream));
    TRY(cub::DeviceRadixSort::SortPairsDescending(nullptr, whole_bytes, keys, vals, V, 0, SAMPLE_KEY_BITS, e->stream));
    e->sort_bytes = std::max(e->sort_bytes, whole_bytes);
    TRY(dev_alloc(e, &e->sort_tmp, e->sort_bytes));
    return 1;
}

static int engine_init(Engine *e, const Model *m, int max_seqs, char *err, size_t errlen) {
    const Config *c = &m->config;
    e->c = *c;
    e->cdtype = quantized(c->dtype) ? DT_F16 : c->dtype; /* a quantized file's dt_proj is fp16 */
    e->max_seqs = max_seqs;
    e->rows = max_seqs > PREFILL_CHUNK ? max_seqs : PREFILL_CHUNK;
    const bool m2 = c->arch == ARCH_MAMBA2;
    e->R = c->dt_rank + 2 * c->d_state;
    e->X = conv_channels(c);
    e->Z = m2 ? c->d_inner + e->X + c->n_heads : 2 * c->d_inner;
    e->dt_clamp = m2 && (c->dt_min > 0.0f || c->dt_max < INFINITY);
    e->layer_floats = layer_state_floats(c);
    e->state_floats = (size_t)c->n_layer * e->layer_floats;
    e->ssm_vec = c->d_state % 4 == 0 && (size_t)c->d_inner * (c->d_conv - 1) % 4 == 0;

    cudaDeviceProp prop;
    TRY(cudaSetDevice(e->device));
    TRY(cudaGetDeviceProperties(&prop, e->device));
    snprintf(e->name, sizeof e->name, "CUDA, %s (GPU %d)", prop.name, e->device);
    e->sms = prop.multiProcessorCount;
    TRY(cudaStreamCreateWithFlags(&e->stream, cudaStreamNonBlocking));

    cublasStatus_t bs = cublasCreate(&e->blas);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuBLAS: cublasCreate: %s", cublasGetStatusString(bs));
        return 0;
    }
    /* A workspace of our own, so that cuBLAS allocates nothing while a step is being captured. */
    const size_t ws_bytes = 32u << 20;
    TRY(dev_alloc(e, &e->blas_ws, ws_bytes));
    if ((bs = cublasSetStream(e->blas, e->stream)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetWorkspace(e->blas, e->blas_ws, ws_bytes)) != CUBLAS_STATUS_SUCCESS ||
        (bs = cublasSetMathMode(e->blas, CUBLAS_DEFAULT_MATH)) != CUBLAS_STATUS_SUCCESS) {
        snprintf(err, errlen, "cuBLAS setup: %s", cublasGetStatusString(bs));
        return 0;
    }

    /* The weights: the file's weight section in one copy; each tensor keeps its offset. */
    uint64_t woff, wbytes;
    memcpy(&woff, (const uint8_t *)m->map + 80, 8);
    memcpy(&wbytes, (const uint8_t *)m->map + 88, 8);
    const uint8_t *host = (const uint8_t *)m->map + woff;
    TRY(dev_alloc(e, &e->wdev, wbytes));
    TRY(cudaMemcpyAsync(e->wdev, host, wbytes, cudaMemcpyHostToDevice, e->stream));
#define DEV(t) ((const void *)(e->wdev + ((const uint8_t *)(t).data - host)))
    /* a matrix: its data, and a quantized one's scales, which lie in the same section */
    auto mat = [&](const Tensor &t) {
        Mat w = {DEV(t), t.scales ? (const f16 *)(e->wdev + ((const uint8_t *)t.scales - host)) : nullptr, t.dtype};
        return w;
    };
    e->emb = mat(m->weights.embedding);
    e->lm_head = mat(m->weights.lm_head);
    e->norm_f = (const float *)DEV(m->weights.norm_f);

    /* A = -exp(A_log), computed on the host as run.c does: [d_inner][d_state] a layer, Mamba-2 [n_heads]. */
    const size_t an = m2 ? (size_t)c->n_heads : (size_t)c->d_inner * c->d_state;
    float *A = (float *)malloc(an * c->n_layer * sizeof(float));
    e->layers = (GpuLayer *)calloc(c->n_layer, sizeof(GpuLayer));
    if (!A || !e->layers) {
        free(A);
        snprintf(err, errlen, "out of host memory");
        return 0;
    }
    for (int l = 0; l < c->n_layer; l++) {
        const float *A_log = (const float *)m->weights.layers[l].A_log.data;
        for (size_t i = 0; i < an; i++) A[l * an + i] = -expf(A_log[i]);
    }
    cudaError_t st = dev_alloc(e, &e->A, an * c->n_layer * sizeof(float));
    if (st == cudaSuccess) st = cudaMemcpyAsync(e->A, A, an * c->n_layer * sizeof(float), cudaMemcpyHostToDevice, e->stream);
    if (st == cudaSuccess) st = cudaStreamSynchronize(e->stream); /* also ends the weights' copy */
    free(A);
    TRY(st);
    for (int l = 0; l < c->n_layer; l++) {
        const LayerWeights *L = &m->weights.layers[l];
        GpuLayer *g = &e->layers[l];
        g->norm = (const float *)DEV(L->norm);
        g->conv_w = (const float *)DEV(L->conv_w);
        g->conv_b = (const float *)DEV(L->conv_b);
        g->D = (const float *)DEV(L->D);
        g->A = e->A + l * an;
        g->in_proj = mat(L->in_proj);
        g->out_proj = mat(L->out_proj);
        if (m2) {
            g->dt_bias = (const float *)DEV(L->dt_bias);
            g->gnorm = (const float *)DEV(L->gnorm);
        } else {
            g->dt_b = (const float *)DEV(L->dt_proj_b);
            g->x_proj = mat(L->x_proj);
            g->dt_w = mat(L->dt_proj_w);
        }
    }
#undef DEV

    /* States and activations */
    const size_t rows = e->rows, E = c->d_inner, D = c->d_model, ts = dtype_size(e->cdtype);
    TRY(dev_alloc(e, &e->states, max_seqs * e->state_floats * sizeof(float)));
    TRY(dev_alloc(e, &e->res, rows * D * sizeof(float)));
    TRY(dev_alloc(e, &e->hid, rows * D * sizeof(float)));
    TRY(dev_alloc(e, &e->hn, rows * D * sizeof(float)));
    TRY(dev_alloc(e, &e->xz, rows * e->Z * sizeof(float)));
    TRY(dev_alloc(e, &e->xc, rows * e->X * sizeof(float)));
    TRY(dev_alloc(e, &e->y, rows * E * sizeof(float)));
    if (m2) {
        TRY(dev_alloc(e, &e->ys, rows * E * sizeof(float)));
        if (!ssd_chunk_init(e, err, errlen)) return 0;
    } else {
        TRY(dev_alloc(e, &e->dbc, rows * e->R * sizeof(float)));
        TRY(dev_alloc(e, &e->dt, rows * E * sizeof(float)));
    }
    if (e->cdtype != DT_F32) {
        TRY(dev_alloc(e, &e->hnT, rows * D * ts));
        TRY(dev_alloc(e, &e->yT, rows * E * ts));
        if (!m2) {
            TRY(dev_alloc(e, &e->xcT, rows * E * ts));
            TRY(dev_alloc(e, &e->dbcT, rows * e->R * ts));
        }
    }
    if (e->cdtype == DT_BF16) { /* bf16 keeps 8 bits: in_proj's and out_proj's inputs need the rest */
        TRY(dev_alloc(e, &e->hnLo, rows * D * ts));
        TRY(dev_alloc(e, &e->yLo, rows * E * ts));
    }
    if (quantized(c->dtype)) { /* the largest quantized matrix: embedding (lm_head), in_proj, x_proj or out_proj */
        const size_t most = std::max(std::max((size_t)c->vocab_rows * D, (size_t)e->Z * D),
                                     std::max(m2 ? 0 : (size_t)e->R * E, D * E));
        TRY(dev_alloc(e, &e->wq, most * sizeof(f16)));
        /* a GEMV's x quantized for up to GEMV_MAX_SEQS sequences: a 16-byte XPiece per 8 values of the
         * longest row a GEMV'd quantized matrix multiplies (d_model: in_proj, lm_head; d_inner: x_proj,
         * out_proj) */
        const size_t longest = std::max((size_t)D, E);
        TRY(dev_alloc(e, &e->xq, (size_t)GEMV_MAX_SEQS * (longest / 8) * sizeof(uint4)));
    }
    if (!m2) {
        TRY(dev_alloc(e, &e->seg_h, (size_t)SCAN_MAX_SEGS * E * c->d_state * sizeof(float)));
        TRY(dev_alloc(e, &e->seg_dt, (size_t)SCAN_MAX_SEGS * E * sizeof(float)));
    }
    TRY(dev_alloc(e, &e->tok, rows * sizeof(int)));
    TRY(cudaMallocHost((void **)&e->h_tok, rows * sizeof(int)));
    TRY(dev_alloc(e, &e->logits, (size_t)max_seqs * c->vocab_rows * sizeof(float)));
    TRY(cudaMallocHost((void **)&e->h_logits, (size_t)max_seqs * c->vocab_rows * sizeof(float)));
    TRY(dev_alloc(e, &e->ids, max_seqs * sizeof(int)));
    TRY(cudaMallocHost((void **)&e->h_ids, max_seqs * sizeof(int)));
    TRY(dev_alloc(e, &e->prompts, max_seqs * sizeof(int4)));
    TRY(cudaMallocHost((void **)&e->h_prompts, max_seqs * sizeof(int4)));
    if (!sample_init(e, err, errlen)) return 0;
    e->graphs = (cudaGraphExec_t *)calloc(STEP_ENDS * (max_seqs + 1), sizeof(cudaGraphExec_t));
    if (!e->graphs) {
        snprintf(err, errlen, "out of host memory");
        return 0;
    }
    TRY(cudaStreamSynchronize(e->stream));
    const char *pdl = getenv("RUNCUDA_PDL");
    e->use_pdl = !(pdl && !strcmp(pdl, "0"));
    const char *ks = getenv("RUNCUDA_GEMV_KSPLIT");
    e->gemv_ksplit = ks ? atoi(ks) : 0;
    e->gemv_min_blocks = e->sms * GEMV_BLOCKS_PER_SM;
    const char *dt = getenv("RUNCUDA_DT");
    e->dt_fma = dt && !strcmp(dt, "fma");
    const char *sg = getenv("RUNCUDA_SCAN_SEGS");
    e->scan_segs = sg ? std::max(0, std::min(atoi(sg), (int)SCAN_MAX_SEGS)) : 0;
    return 1;
}

/* The current device is per host thread, and a stream, a cuBLAS handle or a graph belongs to the
 * device it was made on: each engine.h call first makes the engine's device current, so that an
 * engine works from whatever thread calls it. */
static void use_device(const Engine *e) { CHECK(cudaSetDevice(e->device)); }

int engine_devices(char *err, size_t errlen) {
    int n = 0;
    cudaError_t st = cudaGetDeviceCount(&n);
    if (st != cudaSuccess) {
        snprintf(err, errlen, "no CUDA device: %s", cudaGetErrorString(st));
        return -1;
    }
    return n;
}

/* The first calls of an engine pay one-time costs: the kernels' modules load at their first launch
 * (lazy loading, CUDA_MODULE_LOADING's default; cuBLAS's too, and it picks other kernels for other
 * prompt lengths), cuBLAS picks its GEMM algorithms, the decode graph and the full prefill chunk's
 * graph are captured. Paid here, at load, on slot 0, which is then zeroed again: two full chunks,
 * prompts of half a chunk, a quarter, ... one token, and one decode step; so the first prompt of a
 * run is as fast as a warmed benchmark's. (A prompt of a length in between may still meet a GEMM
 * kernel cuBLAS has not loaded; the decode graphs of more than one sequence are captured at their
 * first use.) */
static void warm_up(Engine *e) {
    static const int zeros[PREFILL_CHUNK] = {0};
    int id;
    engine_prefill(e, 0, zeros, PREFILL_CHUNK, 0);
    engine_prefill(e, 0, zeros, PREFILL_CHUNK, 0); /* the graph of a full chunk */
    for (int n = PREFILL_CHUNK / 2; n >= 1; n /= 2) engine_prefill(e, 0, zeros, n, 0);
    engine_step(e, zeros, 1);
    engine_step_argmax(e, zeros, 1, &id); /* greedy generation's graph */
    const SampleDraw d = {1.0f, 0.9f, -INFINITY, 0.5f, 0}; /* temperature 1, top-p 0.9 */
    engine_step_sample(e, zeros, 1, &d, &id); /* sampled generation's (and the sort's kernels) */
    engine_reset(e, 0);
    CHECK(cudaStreamSynchronize(e->stream));
}

Engine *engine_new(const Model *m, int device, int max_seqs, char *err, size_t errlen) {
    const Config *c = &m->config;
    int ndev = engine_devices(err, errlen);
    if (ndev < 0) return NULL;
    if (ndev == 0) {
        snprintf(err, errlen, "no CUDA device: none found");
        return NULL;
    }
    if (device < 0 || device >= ndev) {
        snprintf(err, errlen, "no CUDA device %d (%d visible)", device, ndev);
        return NULL;
    }
    if (max_seqs < 1) {
        snprintf(err, errlen, "max_seqs must be at least 1");
        return NULL;
    }
    const int max_state = c->arch == ARCH_MAMBA2 ? (int)MAX_SSD_STATE : (int)MAX_SCAN_STATE;
    if (c->d_state > max_state || c->d_state < 1 || c->d_conv < 1 || c->d_model > NORM_THREADS * NORM_PER) {
        snprintf(err, errlen,
                 "the CUDA engine needs 1 <= d_state <= %d (%s), d_conv >= 1 and d_model <= %d (d_state %d, "
                 "d_conv %d, d_model %d)",
                 max_state, arch_name(c->arch), (int)(NORM_THREADS * NORM_PER), c->d_state, c->d_conv, c->d_model);
        return NULL;
    }
    if (c->arch == ARCH_MAMBA2 && c->d_inner / c->n_groups > GNORM_THREADS * GNORM_PER) {
        snprintf(err, errlen, "the CUDA engine needs d_inner / n_groups <= %d (the gated norm's group; here %d)",
                 (int)(GNORM_THREADS * GNORM_PER), c->d_inner / c->n_groups);
        return NULL;
    }
    Engine *e = (Engine *)calloc(1, sizeof(Engine));
    if (!e) {
        snprintf(err, errlen, "out of host memory");
        return NULL;
    }
    e->device = device;
    if (!engine_init(e, m, max_seqs, err, errlen)) {
        engine_free(e);
        return NULL;
    }
    warm_up(e);
    return e;
}

/* Freeing: errors are ignored, there is nothing left to do about them. */
void engine_free(Engine *e) {
    if (!e) return;
    (void)cudaSetDevice(e->device);
    if (e->graphs)
        for (int i = 0; i < STEP_ENDS * (e->max_seqs + 1); i++)
            if (e->graphs[i]) (void)cudaGraphExecDestroy(e->graphs[i]);
    free(e->graphs);
    if (e->chunk_graph) (void)cudaGraphExecDestroy(e->chunk_graph);
    if (e->blas) (void)cublasDestroy(e->blas);
    void *dev[] = {e->blas_ws, e->wdev, e->wq, e->A, e->states, e->res, e->hid, e->hn, e->xz, e->xc, e->dbc, e->dt,
                   e->xq, e->y, e->ys, e->hnT, e->xcT, e->dbcT, e->yT, e->hnLo, e->yLo, e->seg_h, e->seg_dt, e->tok, e->ids, e->prompts, e->logits,
                   e->draws, e->sample_rows, e->keys[0], e->keys[1], e->vals[0], e->vals[1], e->seg_begin, e->seg_end, e->sort_tmp,
                   e->logits_all, e->chunk.dt, e->chunk.a, e->chunk.from_start, e->chunk.to_end, e->chunk.xw,
                   e->chunk.cb, e->chunk.m, e->chunk.states, e->ssd_ptrs};
    for (size_t i = 0; i < sizeof dev / sizeof dev[0]; i++) (void)cudaFree(dev[i]);
    (void)cudaFreeHost(e->h_tok);
    (void)cudaFreeHost(e->h_ids);
    (void)cudaFreeHost(e->h_draws);
    (void)cudaFreeHost(e->h_pen);
    (void)cudaFreeHost(e->h_prompts);
    (void)cudaFreeHost(e->h_logits);
    (void)cudaFreeHost(e->h_logits_all);
    if (e->stream) (void)cudaStreamDestroy(e->stream);
    free(e->layers);
    free(e);
}

const char *engine_name(const Engine *e) { return e->name; }
int engine_prefill_chunk(const Engine *) { return PREFILL_CHUNK; }
size_t engine_state_floats(const Engine *e) { return e->state_floats; }

static void check_seq(const Engine *e, int seq, const char *what) {
    if (seq < 0 || seq >= e->max_seqs) {
        fprintf(stderr, "error: %s: slot %d out of range (0..%d)\n", what, seq, e->max_seqs - 1);
        exit(1);
    }
}

/* Copies tokens into the pinned staging buffer, refusing ids outside the embedding. */
static void stage_tokens(Engine *e, const int *tokens, int n) {
    for (int i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= e->c.vocab_rows) {
            fprintf(stderr, "error: token id %d out of range (0..%d)\n", tokens[i], e->c.vocab_rows - 1);
            exit(1);
        }
        e->h_tok[i] = tokens[i];
    }
}

void engine_reset(Engine *e, int seq) {
    use_device(e);
    check_seq(e, seq, "engine_reset");
    CHECK(cudaMemsetAsync(conv_state(e, seq, 0), 0, e->state_floats * sizeof(float), e->stream));
}

void engine_get_state(Engine *e, int seq, float *out) {
    use_device(e);
    check_seq(e, seq, "engine_get_state");
    CHECK(cudaMemcpyAsync(out, conv_state(e, seq, 0), e->state_floats * sizeof(float), cudaMemcpyDeviceToHost, e->stream));
    CHECK(cudaStreamSynchronize(e->stream));
}

void engine_set_state(Engine *e, int seq, const float *in) {
    use_device(e);
    check_seq(e, seq, "engine_set_state");
    CHECK(cudaMemcpyAsync(conv_state(e, seq, 0), in, e->state_floats * sizeof(float), cudaMemcpyHostToDevice, e->stream));
    CHECK(cudaStreamSynchronize(e->stream));
}

void engine_copy_state(Engine *e, int to, int from) {
    use_device(e);
    check_seq(e, to, "engine_copy_state");
    check_seq(e, from, "engine_copy_state");
    if (to == from) return;
    CHECK(cudaMemcpyAsync(conv_state(e, to, 0), conv_state(e, from, 0), e->state_floats * sizeof(float),
                          cudaMemcpyDeviceToDevice, e->stream));
}

/* The prompts sg (n tokens in all, staged in e->h_tok, their table in e->h_prompts) through every
 * layer, in the weights' dtype: the copies of both in, then the kernels. */
static void prefill_launches(Engine *e, const Seg *sg, int nsg, int n, int all_logits, float *logits) {
    CHECK(cudaMemcpyAsync(e->tok, e->h_tok, n * sizeof(int), cudaMemcpyHostToDevice, e->stream));
    CHECK(cudaMemcpyAsync(e->prompts, e->h_prompts, nsg * sizeof(int4), cudaMemcpyHostToDevice, e->stream));
    switch (e->cdtype) {
    case DT_F32: prefill_fn<float>(e, sg, nsg, n, all_logits, logits); break;
    case DT_F16: prefill_fn<f16>(e, sg, nsg, n, all_logits, logits); break;
    default: prefill_fn<bf16>(e, sg, nsg, n, all_logits, logits); break;
    }
}

/* The prompts sg (n tokens in all, from tokens) through every layer. A long prompt's full chunks
 * (one prompt of PREFILL_CHUNK tokens, the last row's logits) replay a graph captured at the second
 * (warm_up runs both): the host then launches once a chunk instead of once a kernel and GEMM. (On
 * an H200, bench_gpu prefill of 2048 tokens, fp16, 2026-12-02: with 512-token chunks, 130m 297,736
 * -> 337,130 tok/s, 2.8b 45,320 -> 48,472; with 2048-token chunks, 130m 522,818 -> 564,349, 2.8b
 * 55,995 -> 57,036.) Its launches depend on nothing else of the prompt: the kernels take the slot
 * from e->prompts, Mamba-2's SSD pass included. */
static void run_prefill(Engine *e, const Seg *sg, int nsg, const int *tokens, int n, int all_logits, float *logits) {
    stage_tokens(e, tokens, n);
    for (int i = 0; i < nsg; i++) e->h_prompts[i] = make_int4(sg[i].seq, sg[i].t0, sg[i].n, 0);
    if (nsg > 1 || n != PREFILL_CHUNK || all_logits) {
        prefill_launches(e, sg, nsg, n, all_logits, logits);
        return;
    }
    if (!e->chunk_graph && !e->chunk_ran) { /* the first runs as it comes: module loading, cuBLAS's choices */
        e->chunk_ran = true;
        prefill_launches(e, sg, 1, n, 0, logits);
        return;
    }
    if (!e->chunk_graph) {
        cudaGraph_t g;
        CHECK(cudaStreamBeginCapture(e->stream, cudaStreamCaptureModeThreadLocal));
        prefill_launches(e, sg, 1, n, 0, logits);
        CHECK(cudaStreamEndCapture(e->stream, &g));
        CHECK(cudaGraphInstantiate(&e->chunk_graph, g, 0));
        CHECK(cudaGraphDestroy(g));
    }
    CHECK(cudaGraphLaunch(e->chunk_graph, e->stream));
}

const float *engine_prefill(Engine *e, int seq, const int *tokens, int n, int all_logits) {
    use_device(e);
    check_seq(e, seq, "engine_prefill");
    if (n < 1 || n > PREFILL_CHUNK) {
        fprintf(stderr, "error: engine_prefill: %d tokens (1..%d)\n", n, (int)PREFILL_CHUNK);
        exit(1);
    }
    const size_t row_bytes = (size_t)e->c.vocab_rows * sizeof(float);
    if (all_logits && !e->logits_all) {
        CHECK(dev_alloc(e, &e->logits_all, PREFILL_CHUNK * row_bytes));
        CHECK(cudaMallocHost((void **)&e->h_logits_all, PREFILL_CHUNK * row_bytes));
    }
    float *logits = all_logits ? e->logits_all : e->logits, *h_logits = all_logits ? e->h_logits_all : e->h_logits;
    const Seg sg = {seq, 0, n};
    run_prefill(e, &sg, 1, tokens, n, all_logits, logits);
    CHECK(cudaMemcpyAsync(h_logits, logits, (all_logits ? n : 1) * row_bytes, cudaMemcpyDeviceToHost, e->stream));
    CHECK(cudaStreamSynchronize(e->stream));
    return h_logits;
}

const float *engine_prefill_many(Engine *e, const int *seqs, const int *tokens, const int *lens, int n) {
    use_device(e);
    if (n < 1 || n > e->max_seqs) {
        fprintf(stderr, "error: engine_prefill_many: %d prompts (1..%d)\n", n, e->max_seqs);
        exit(1);
    }
    Seg sg[n];
    int total = 0;
    for (int i = 0; i < n; i++) {
        check_seq(e, seqs[i], "engine_prefill_many");
        if (lens[i] < 1 || lens[i] > PREFILL_CHUNK - total) {
            fprintf(stderr, "error: engine_prefill_many: prompts of more than %d tokens in all\n", (int)PREFILL_CHUNK);
            exit(1);
        }
        sg[i] = (Seg){seqs[i], total, lens[i]};
        total += lens[i];
    }
    run_prefill(e, sg, n, tokens, total, 0, e->logits);
    CHECK(cudaMemcpyAsync(e->h_logits, e->logits, (size_t)n * e->c.vocab_rows * sizeof(float), cudaMemcpyDeviceToHost,
                          e->stream));
    CHECK(cudaStreamSynchronize(e->stream));
    return e->h_logits;
}

/* The rows' tokens from their draws (staged in e->draws), on the device: cuda/sample.cuh. */
static void sample_launches(Engine *e, int nseq) {
    const int V = e->c.vocab_size;
    const size_t ld = e->c.vocab_rows;
    launch(e, penalty_kernel, nseq, PENALTY_THREADS, 0, e->logits, ld, (const SampleDraw *)e->draws,
           (const int *)e->vals[1]);
    const int whole = nseq == 1; /* one row: sorted whole, by the whole GPU (cuda/sample.cuh) */
    launch(e, sample_prep_kernel, nseq, SAMPLE_THREADS, 0, (const float *)e->logits, ld, V, (const SampleDraw *)e->draws,
           e->ids, e->sample_rows, e->keys[0], e->vals[0], e->seg_end, whole);
    cub::DoubleBuffer<unsigned> keys(e->keys[0], e->keys[1]);
    cub::DoubleBuffer<int> vals(e->vals[0], e->vals[1]);
    size_t bytes = e->sort_bytes;
    if (whole)
        CHECK(cub::DeviceRadixSort::SortPairsDescending(e->sort_tmp, bytes, keys, vals, V, 0, SAMPLE_KEY_BITS, e->stream));
    else
        CHECK(cub::DeviceSegmentedRadixSort::SortPairsDescending(e->sort_tmp, bytes, keys, vals, nseq * V, nseq,
                                                                 e->seg_begin, e->seg_end, 0, SAMPLE_KEY_BITS, e->stream));
    e->after_kernel = false;
    launch(e, sample_pick_kernel, nseq, PICK_THREADS, 0, (const float *)e->logits, ld, V, (const SampleDraw *)e->draws,
           (const SampleRow *)e->sample_rows, (const unsigned *)keys.Current(), (const int *)vals.Current(),
           (const int *)e->seg_end, e->ids);
}

/* The step for nseq sequences, captured into a graph at its first use: tokens (and draws) from the
 * pinned staging buffers in, every layer, then the logits out to pinned memory, or each row's token
 * picked on the device (its argmax, or its draw's pick) and only those ids out. */
static cudaGraphExec_t step_graph(Engine *e, int nseq, StepEnd end) {
    cudaGraphExec_t *g_exec = &e->graphs[end * (e->max_seqs + 1) + nseq];
    if (*g_exec) return *g_exec;
    cudaGraph_t g;
    CHECK(cudaStreamBeginCapture(e->stream, cudaStreamCaptureModeThreadLocal));
    CHECK(cudaMemcpyAsync(e->tok, e->h_tok, nseq * sizeof(int), cudaMemcpyHostToDevice, e->stream));
    if (end == STEP_SAMPLE)
        CHECK(cudaMemcpyAsync(e->draws, e->h_draws, nseq * sizeof(SampleDraw), cudaMemcpyHostToDevice, e->stream));
    e->capturing = true;
    e->after_kernel = false;
    switch (e->cdtype) {
    case DT_F32: step_fn<float>(e, nseq); break;
    case DT_F16: step_fn<f16>(e, nseq); break;
    default: step_fn<bf16>(e, nseq); break;
    }
    if (end == STEP_LOGITS) {
        e->capturing = false;
        CHECK(cudaMemcpyAsync(e->h_logits, e->logits, (size_t)nseq * e->c.vocab_rows * sizeof(float),
                              cudaMemcpyDeviceToHost, e->stream));
    } else {
        if (end == STEP_ARGMAX)
            launch(e, argmax_kernel, nseq, ARGMAX_THREADS, 0, (const float *)e->logits, (size_t)e->c.vocab_rows,
                   e->c.vocab_size, e->ids);
        else
            sample_launches(e, nseq);
        e->capturing = false;
        CHECK(cudaMemcpyAsync(e->h_ids, e->ids, nseq * sizeof(int), cudaMemcpyDeviceToHost, e->stream));
    }
    CHECK(cudaStreamEndCapture(e->stream, &g));
    CHECK(cudaGraphInstantiate(g_exec, g, 0));
    CHECK(cudaGraphDestroy(g));
    return *g_exec;
}

static void run_step(Engine *e, const int *tokens, int nseq, StepEnd end, const char *what) {
    use_device(e);
    if (nseq < 1 || nseq > e->max_seqs) {
        fprintf(stderr, "error: %s: %d sequences (1..%d)\n", what, nseq, e->max_seqs);
        exit(1);
    }
    stage_tokens(e, tokens, nseq);
    CHECK(cudaGraphLaunch(step_graph(e, nseq, end), e->stream));
    CHECK(cudaStreamSynchronize(e->stream));
}

const float *engine_step(Engine *e, const int *tokens, int nseq) {
    run_step(e, tokens, nseq, STEP_LOGITS, "engine_step");
    return e->h_logits;
}

void engine_step_argmax(Engine *e, const int *tokens, int nseq, int *ids) {
    run_step(e, tokens, nseq, STEP_ARGMAX, "engine_step_argmax");
    memcpy(ids, e->h_ids, nseq * sizeof(int));
}

/* The penalty's ids of the rows, one list after another, into e->vals[1] (penalty_kernel reads them
 * there, before the sort uses that buffer), copied ahead of the step's graph on its stream. */
static void stage_penalties(Engine *e, const SampleDraw *draws, int nseq) {
    char msg[96];
    if (!sampler_draws_valid(draws, nseq, e->c.vocab_size, msg, sizeof msg)) {
        fprintf(stderr, "error: engine_step_sample: %s\n", msg);
        exit(1);
    }
    size_t total = 0;
    for (int i = 0; i < nseq; i++) total += draws[i].n_pen;
    if (!total) return;
    if (total > e->h_pen_cap) {
        CHECK(cudaFreeHost(e->h_pen));
        e->h_pen = nullptr;
        CHECK(cudaMallocHost((void **)&e->h_pen, total * sizeof(int)));
        e->h_pen_cap = total;
    }
    size_t at = 0;
    for (int i = 0; i < nseq; i++) {
        memcpy(e->h_pen + at, draws[i].pen, draws[i].n_pen * sizeof(int));
        at += draws[i].n_pen;
    }
    CHECK(cudaMemcpyAsync(e->vals[1], e->h_pen, total * sizeof(int), cudaMemcpyHostToDevice, e->stream));
}

void engine_step_sample(Engine *e, const int *tokens, int nseq, const SampleDraw *draws, int *ids) {
    use_device(e);
    if (nseq >= 1 && nseq <= e->max_seqs) {
        memcpy(e->h_draws, draws, nseq * sizeof(SampleDraw));
        stage_penalties(e, draws, nseq);
    }
    run_step(e, tokens, nseq, STEP_SAMPLE, "engine_step_sample");
    memcpy(ids, e->h_ids, nseq * sizeof(int));
}
