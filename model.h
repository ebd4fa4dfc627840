/* model.h: the model.bin file format, and its reader, shared by run.c, run.cu and tokenizer.c.
 *
 * This comment is the one description of the format; export.py writes exactly this.
 * Everything is little-endian. Offsets are from the start of the file.
 *
 * HEADER (256 bytes)
 *   off  type     field
 *     0  char[8]  magic "MAMBABIN"
 *     8  u32      version (MODEL_VERSION = 2; version 1 files, which are all Mamba-1, still load)
 *    12  u32      header_bytes (256)
 *    16  i32      d_model        width of the residual stream
 *    20  i32      n_layer
 *    24  i32      d_inner        width of the SSM (expand * d_model; Mamba-2: n_heads * head_dim)
 *    28  i32      d_state        SSM state size per channel (N)
 *    32  i32      d_conv         causal conv kernel width
 *    36  i32      dt_rank        Mamba-1 and Falcon-Mamba; 0 for Mamba-2
 *    40  i32      vocab_rows     rows of the embedding = length of the logits (padded vocabulary)
 *    44  i32      vocab_size     ids >= vocab_size are padding: never sampled
 *    48  i32      dtype          of the matrices: 0 = fp32, 1 = fp16, 2 = bf16, 3 = q8_0, 4 = q4_0
 *                                (vectors are always fp32; QUANTIZED MATRICES below)
 *    52  i32      tied           1: logits = embedding @ h; 0: a separate lm_head follows norm_f
 *    56  f32      norm_eps       RMSNorm epsilon (the block norms, norm_f, and Mamba-2's gated norm)
 *    60  u32      arch           1 = Mamba-1, 2 = Mamba-2, 3 = Falcon-Mamba (version 1: 0, read as Mamba-1)
 *    64  u64      tokenizer_offset   (256: the tokenizer section follows the header)
 *    72  u64      tokenizer_bytes
 *    80  u64      weights_offset     multiple of 4096, so the weights are page-aligned for mmap
 *    88  u64      weights_bytes
 *    96  u64      file_bytes         the whole file; a shorter file is truncated
 *   104  i32      n_heads        Mamba-2: heads (H); 0 otherwise
 *   108  i32      head_dim       Mamba-2: channels per head (P), n_heads * head_dim = d_inner; 0 otherwise
 *   112  i32      n_groups       Mamba-2: groups of heads sharing B and C (G), n_heads % n_groups == 0
 *   116  i32      chunk_size     Mamba-2: the checkpoint's SSD chunk length (informational: the result
 *                                does not depend on it)
 *   120  f32      dt_min         Mamba-2: dt is clamped to [dt_min, dt_max] after the softplus
 *   124  f32      dt_max         (mamba_ssm's dt_limit; 0 and +inf = no clamp)
 *   128  f32      mixer_eps      Falcon-Mamba: epsilon of the weightless RMSNorm of dt_in, B and C
 *   132  zero
 *   136  u64      chat_offset    the chat template section (below); 0 with chat_bytes 0: none
 *   144  u64      chat_bytes
 *   152  zero up to 256
 *
 * TOKENIZER SECTION (at tokenizer_offset, tokenizer_bytes long)
 *   u32 magic "TOKN" (bytes 'T','O','K','N'), u32 version (1), u32 kind (1 = byte-level BPE,
 *   2 = SentencePiece), i32 bos_id, i32 eos_id (generation stops there), i32 pad_id (-1 = none)
 *   kind 1, byte-level BPE (GPT-2 / GPT-NeoX style):
 *     u32 flags: bit 0 = NFC normalizer, bit 1 = add_prefix_space; Falcon's pre-tokenizer sequence:
 *         bit 2 = Punctuation (contiguous) before the GPT-2 regex, bit 3 = Digits (contiguous, not
 *         individual) after it, bit 4 = Split "[0-9][0-9][0-9]" isolated after that (needs bit 3;
 *         bit 2 excludes bit 1)
 *     u32 n_vocab, then for each id 0..n_vocab-1: u32 len, len bytes (the token's raw bytes,
 *         with the byte-to-unicode mapping already undone; len 0 = unused id)
 *     u32 n_merges, then n_merges x (u32 left, u32 right, u32 merged): rank = index
 *     u32 n_added, then n_added x (u32 id, u32 flags): added tokens, matched in the text before
 *         pre-tokenization; their content is vocab[id]. flags: bit 0 special, bit 1 normalized,
 *         bit 2 lstrip, bit 3 rstrip, bit 4 single_word
 *   kind 2, SentencePiece: u32 n_bytes, then the serialized SentencePiece ModelProto
 *   (a file holding only this section is a tokenizer file, for ./run -z)
 *
 * CHAT TEMPLATE SECTION (optional; at chat_offset, chat_bytes long, after the tokenizer section and
 * before the weights: export.py puts it right after the tokenizer section)
 *   UTF-8 text, no NUL, not terminated: the model's chat template in chat mode's format (chat.c: one
 *   line per role, "ROLE: PREFIX{}SUFFIX", with \n, \t and \\ escapes), which export.py derives
 *   from tokenizer_config.json's Jinja chat_template (or leaves out, with a warning, when the template
 *   cannot be expressed that way). Readers that do not chat ignore it.
 *
 * WEIGHTS (at weights_offset; each tensor starts on a 64-byte boundary, zero padding between)
 *   "mat" tensors are stored in the header's dtype; "vec" tensors are always fp32.
 *   embedding    mat [vocab_rows, d_model]
 *   per layer, for l = 0 .. n_layer-1, Mamba-1 and Falcon-Mamba (E = d_inner, N = d_state, R = dt_rank):
 *     norm       vec [d_model]
 *     in_proj    mat [2*E, d_model]           rows 0..E-1 give x, the rest give z
 *     conv_w     vec [E, d_conv]
 *     conv_b     vec [E]
 *     x_proj     mat [R + 2*N, E]             rows: dt_in, then B, then C
 *     dt_proj_w  mat [E, R]
 *     dt_proj_b  vec [E]
 *     A_log      vec [E, N]                   A = -exp(A_log)
 *     D          vec [E]
 *     out_proj   mat [d_model, E]
 *   per layer, Mamba-2 (H = n_heads, G = n_groups, N = d_state, X = E + 2*G*N, the conv's channels):
 *     norm       vec [d_model]
 *     in_proj    mat [2*E + 2*G*N + H, d_model]   rows: z (E), x (E), B (G*N), C (G*N), dt (H)
 *     conv_w     vec [X, d_conv]              over x, B and C
 *     conv_b     vec [X]
 *     dt_bias    vec [H]
 *     A_log      vec [H]                      one A = -exp(A_log) per head
 *     D          vec [H]
 *     gnorm      vec [E]                      weight of the gated RMSNorm, one RMS per group of E/G
 *     out_proj   mat [d_model, E]
 *   norm_f       vec [d_model]
 *   lm_head      mat [vocab_rows, d_model]    only when tied == 0
 *   weights_bytes = the end of the last tensor, rounded up to 64.
 *
 * QUANTIZED MATRICES (dtype 3 and 4). The embedding (and lm_head), in_proj, out_proj and Mamba-1's
 * x_proj are block-quantized; dt_proj (rows of dt_rank values, not whole blocks, 1-2% of the bytes)
 * is stored as fp16. A quantized mat [rows, cols] (cols a multiple of 32) is split along each row
 * into blocks of 32 values, each with one fp16 scale d, and stored as
 *   quants  rows x cols/32 blocks, in row order:
 *             q8_0: 32 bytes a block, int8 q in [-127, 127], value = d * q
 *             q4_0: 16 bytes a block, byte j holds element j in its low nibble and element j + 16
 *                   in its high nibble, u4 q in [0, 15], value = d * (q - 8)
 *   zero padding to a multiple of 64 bytes (from the tensor's start), then
 *   scales  rows x cols/32 fp16 d, in the same order.
 * The quants are kept apart from the scales (not interleaved with them, as 34- or 18-byte blocks
 * would be) so that a block's quants lie at a multiple of 16 (q4_0) or 32 (q8_0) bytes from the
 * tensor's 64-byte-aligned start: the engines read them with aligned vector loads.
 * export.py rounds d to fp16 first, then q = round-half-to-even(x / d) (clamped); q4_0's d is
 * the block's value of largest magnitude over -8, so that value is exactly -8 * d. Every d is
 * finite: model.c refuses a file with an infinite or NaN scale.
 *
 * ACTIVATIONS OF A QUANTIZED MATRIX. Both engines multiply a quantized W by an x that they quantize
 * the same way, in blocks of 32 along the row, so that a block's dot product is a sum of integer
 * products (AVX-512 VNNI, AVX2 maddubs, CUDA dp4a) and one multiply by two scales:
 *   amax = max |x_k| over the block; amax == 0, or so small that 127 / amax overflows (amax below
 *   127 / FLT_MAX, about 3.7e-37): every q_k = 0 (and dx = amax / 127, which then multiplies 0); else
 *   q_k = round-half-to-even(x_k * (127 / amax)), in [-127, 127], and dx = amax / 127 (both fp32)
 *   W[r,:] . x = sum over blocks b of  d[r,b] * dx[b] * sum_k w_q[r,b,k] * q[b,k]
 * with w_q the block's integers (q8_0: q; q4_0: q - 8); the integer sums are exact, the sum over
 * blocks is fp32 in an order each engine picks. Prefill's GEMMs multiply by x' = dx * q (fp32), so a
 * prompt's prefill and its token-by-token run agree to rounding. The embedding lookup is a copy of
 * a row, not a product: its values are d * w_q exactly.
 */
#ifndef MODEL_H
#define MODEL_H

#include <stddef.h>
#include <stdint.h>

#define MODEL_MAGIC "MAMBABIN"
#define MODEL_VERSION 2
#define MODEL_HEADER_BYTES 256
#define MODEL_ALIGN 64

enum { DT_F32 = 0, DT_F16 = 1, DT_BF16 = 2, DT_Q8_0 = 3, DT_Q4_0 = 4 };
#define QBLOCK 32 /* values per block of a quantized matrix */
enum { ARCH_MAMBA1 = 1, ARCH_MAMBA2 = 2, ARCH_FALCON_MAMBA = 3 };

typedef struct {
    int arch; /* ARCH_* */
    int d_model, n_layer, d_inner, d_state, d_conv, dt_rank;
    int vocab_rows, vocab_size;
    int dtype, tied;
    float norm_eps;
    int n_heads, head_dim, n_groups, chunk_size; /* Mamba-2 */
    float dt_min, dt_max;                        /* Mamba-2 */
    float mixer_eps;                             /* Falcon-Mamba */
} Config;

/* A tensor inside the mapped file: its bytes start at data, in dtype (DT_*); a quantized one's
 * fp16 scales start at scales ([rows][cols / QBLOCK]). */
typedef struct {
    const void *data;
    const uint16_t *scales;
    int dtype;
} Tensor;

/* One layer's tensors; each family uses the ones of its layout above and leaves the others NULL. */
typedef struct {
    Tensor norm, in_proj, conv_w, conv_b, A_log, D, out_proj;
    Tensor x_proj, dt_proj_w, dt_proj_b; /* Mamba-1, Falcon-Mamba */
    Tensor dt_bias, gnorm;               /* Mamba-2 */
} LayerWeights;

typedef struct {
    Tensor embedding, norm_f, lm_head; /* lm_head == embedding when tied */
    LayerWeights *layers;              /* n_layer of them */
    size_t bad_scale;                  /* model_open's check: 1 + the offset of the first non-finite scale, or 0 */
} Weights;

typedef struct {
    Config config;
    Weights weights;
    const uint8_t *tokenizer; /* the tokenizer section inside the mapping */
    size_t tokenizer_bytes;
    const char *chat_template; /* the chat template section (not NUL-terminated), or NULL */
    size_t chat_template_bytes;
    void *map;                /* the whole file, memory-mapped read-only */
    size_t map_bytes;
} Model;

/* Maps and checks path. On failure writes a one-line reason into err and returns -1. */
int model_open(Model *m, const char *path, char *err, size_t errlen);
void model_close(Model *m);
/* model_open's checks on a file's size bytes at map (path names it in the messages); m points into
 * them. For bytes that model_open did not map (tests/fuzz/fuzz_model.c): no model_close, but
 * free(m->weights.layers) after a success. */
int model_parse(Model *m, void *map, size_t size, const char *path, char *err, size_t errlen);

/* Bytes of one element of an unquantized dtype (fp32, fp16, bf16), and a dtype's name ("fp32",
 * "fp16", "bf16", "q8_0", "q4_0"). */
size_t dtype_size(int dtype);
const char *dtype_name(int dtype);
/* Total bytes of the weight matrices and vectors that one decode step reads. */
size_t model_weight_bytes(const Config *c);
/* The family's name ("Mamba-1", "Mamba-2", "Falcon-Mamba"). */
const char *arch_name(int arch);
/* Channels of the causal conv: d_inner for Mamba-1, d_inner + 2 * n_groups * d_state for Mamba-2
 * (x, B and C go through it). */
int conv_channels(const Config *c);
/* Floats of one layer's recurrent state: the conv's last d_conv-1 inputs per channel, then the SSM
 * state ([d_inner][d_state] in both families: Mamba-2's [n_heads][head_dim][d_state]). */
size_t layer_state_floats(const Config *c);

/* fp16 / bf16 to fp32, exact. */
static inline float bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}
float f16_to_f32(uint16_t h);

#endif
