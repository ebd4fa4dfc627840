/* model.c: maps model.bin and checks every header field against the file before any use.
 * The format is described in model.h. */
#include "model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

size_t dtype_size(int dtype) { return dtype == DT_F32 ? 4 : 2; }

const char *dtype_name(int dtype) {
    static const char *names[] = {"fp32", "fp16", "bf16", "q8_0", "q4_0"};
    return dtype >= 0 && dtype <= DT_Q4_0 ? names[dtype] : "?";
}

const char *arch_name(int arch) {
    return arch == ARCH_MAMBA1 ? "Mamba-1" : arch == ARCH_MAMBA2 ? "Mamba-2" : arch == ARCH_FALCON_MAMBA ? "Falcon-Mamba" : "?";
}

int conv_channels(const Config *c) {
    return c->arch == ARCH_MAMBA2 ? c->d_inner + 2 * c->n_groups * c->d_state : c->d_inner;
}

size_t layer_state_floats(const Config *c) {
    return (size_t)conv_channels(c) * (c->d_conv - 1) + (size_t)c->d_inner * c->d_state;
}

float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0x1f) {
        bits = sign | 0x7f800000 | (mant << 13); /* inf, nan */
    } else if (exp != 0) {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    } else if (mant == 0) {
        bits = sign;
    } else { /* subnormal: renormalize */
        exp = 113;
        while (!(mant & 0x400)) { mant <<= 1; exp--; }
        bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
    }
    union { uint32_t u; float f; } v = { bits };
    return v.f;
}

static uint32_t rd_u32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static int32_t rd_i32(const uint8_t *p) { int32_t v; memcpy(&v, p, 4); return v; }
static uint64_t rd_u64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static float rd_f32(const uint8_t *p) { float v; memcpy(&v, p, 4); return v; }

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

/* Walks the weight layout of model.h. With base == NULL only counts bytes (returned);
 * otherwise also points w's tensors into base. Sizes were bounded by model_open first.
 * A tensor is a vec (fp32), a mat (the header's dtype), or a mat that a quantized file keeps in fp16. */
enum { VEC, MAT, MAT_F16 };
static size_t layout_weights(const Config *c, const uint8_t *base, Weights *w) {
    size_t off = 0;
    int quantized = c->dtype >= DT_Q8_0;
#define TENSOR(dst, rows, cols, kind)                                                              \
    do {                                                                                           \
        Tensor *t_ = (dst);                                                                        \
        size_t n_ = (size_t)(rows) * (cols);                                                       \
        t_->dtype = (kind) == VEC ? DT_F32 : (kind) == MAT_F16 && quantized ? DT_F16 : c->dtype;   \
        t_->data = base ? base + off : NULL;                                                       \
        t_->scales = NULL;                                                                         \
        if (t_->dtype >= DT_Q8_0) { /* quants, padding to 64, then one fp16 scale a block */        \
            off = align_up(off + (t_->dtype == DT_Q8_0 ? n_ : n_ / 2), MODEL_ALIGN);               \
            t_->scales = base ? (const uint16_t *)(base + off) : NULL;                             \
            for (size_t b_ = 0; base && !w->bad_scale && b_ < n_ / QBLOCK; b_++)                   \
                if ((t_->scales[b_] & 0x7c00) == 0x7c00) w->bad_scale = off + 2 * b_ + 1;          \
            off += n_ / QBLOCK * 2;                                                                \
        } else {                                                                                   \
            off += n_ * dtype_size(t_->dtype);                                                     \
        }                                                                                          \
        off = align_up(off, MODEL_ALIGN);                                                          \
    } while (0)
    Tensor scratch;
    size_t D = c->d_model, E = c->d_inner, N = c->d_state, R = c->dt_rank, V = c->vocab_rows;
    size_t H = c->n_heads, GN = (size_t)c->n_groups * N, X = conv_channels(c);
    TENSOR(base ? &w->embedding : &scratch, V, D, MAT);
    for (int l = 0; l < c->n_layer; l++) {
        LayerWeights *L = base ? &w->layers[l] : NULL;
        if (c->arch == ARCH_MAMBA2) {
            TENSOR(L ? &L->norm : &scratch, 1, D, VEC);
            TENSOR(L ? &L->in_proj : &scratch, 2 * E + 2 * GN + H, D, MAT);
            TENSOR(L ? &L->conv_w : &scratch, X, c->d_conv, VEC);
            TENSOR(L ? &L->conv_b : &scratch, 1, X, VEC);
            TENSOR(L ? &L->dt_bias : &scratch, 1, H, VEC);
            TENSOR(L ? &L->A_log : &scratch, 1, H, VEC);
            TENSOR(L ? &L->D : &scratch, 1, H, VEC);
            TENSOR(L ? &L->gnorm : &scratch, 1, E, VEC);
            TENSOR(L ? &L->out_proj : &scratch, D, E, MAT);
            continue;
        }
        TENSOR(L ? &L->norm : &scratch, 1, D, VEC);
        TENSOR(L ? &L->in_proj : &scratch, 2 * E, D, MAT);
        TENSOR(L ? &L->conv_w : &scratch, E, c->d_conv, VEC);
        TENSOR(L ? &L->conv_b : &scratch, 1, E, VEC);
        TENSOR(L ? &L->x_proj : &scratch, R + 2 * N, E, MAT);
        TENSOR(L ? &L->dt_proj_w : &scratch, E, R, MAT_F16);
        TENSOR(L ? &L->dt_proj_b : &scratch, 1, E, VEC);
        TENSOR(L ? &L->A_log : &scratch, E, N, VEC);
        TENSOR(L ? &L->D : &scratch, 1, E, VEC);
        TENSOR(L ? &L->out_proj : &scratch, D, E, MAT);
    }
    TENSOR(base ? &w->norm_f : &scratch, 1, D, VEC);
    if (!c->tied) TENSOR(base ? &w->lm_head : &scratch, V, D, MAT);
    else if (base) w->lm_head = w->embedding;
#undef TENSOR
    (void)scratch;
    return off;
}

size_t model_weight_bytes(const Config *c) { return layout_weights(c, NULL, NULL); }

#define FAIL(...) do { snprintf(err, errlen, __VA_ARGS__); goto fail; } while (0)

int model_open(Model *m, const char *path, char *err, size_t errlen) {
    memset(m, 0, sizeof *m);
    int fd = open(path, O_RDONLY);
    if (fd < 0) { snprintf(err, errlen, "cannot open model file %s: %s", path, strerror(errno)); return -1; }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        snprintf(err, errlen, "model file %s is not a regular file", path);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    if (size < MODEL_HEADER_BYTES) { /* nothing to map (mmap refuses 0 bytes): model_parse says so */
        close(fd);
        return model_parse(m, NULL, size, path, err, errlen);
    }
    /* MAP_POPULATE maps every page now, at load, rather than in page faults during the first token. */
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) { snprintf(err, errlen, "cannot map %s: %s", path, strerror(errno)); return -1; }
    if (model_parse(m, map, size, path, err, errlen) == 0) return 0;
    munmap(map, size);
    return -1;
}

int model_parse(Model *m, void *map, size_t size, const char *path, char *err, size_t errlen) {
    memset(m, 0, sizeof *m);
    if (size < MODEL_HEADER_BYTES) FAIL("%s: not a model.bin (%zu bytes, shorter than its header)", path, size);
    m->map = map;
    m->map_bytes = size;
    const uint8_t *h = map;
    Config *c = &m->config;

    if (memcmp(h, MODEL_MAGIC, 8) != 0) FAIL("%s: not a model.bin (bad magic; convert checkpoints with export.py)", path);
    uint32_t version = rd_u32(h + 8);
    if (version != 1 && version != MODEL_VERSION)
        FAIL("%s: model.bin format version %u; this program reads versions 1 and %d (%s)", path, version, MODEL_VERSION,
             version > MODEL_VERSION ? "a newer export.py wrote it: update this program" : "re-export it with export.py");
    if (rd_u32(h + 12) != MODEL_HEADER_BYTES) FAIL("%s: header size %u, expected %d", path, rd_u32(h + 12), MODEL_HEADER_BYTES);
    c->d_model = rd_i32(h + 16);
    c->n_layer = rd_i32(h + 20);
    c->d_inner = rd_i32(h + 24);
    c->d_state = rd_i32(h + 28);
    c->d_conv = rd_i32(h + 32);
    c->dt_rank = rd_i32(h + 36);
    c->vocab_rows = rd_i32(h + 40);
    c->vocab_size = rd_i32(h + 44);
    c->dtype = rd_i32(h + 48);
    c->tied = rd_i32(h + 52);
    c->norm_eps = rd_f32(h + 56);
    uint32_t arch = rd_u32(h + 60);
    if (version == 1) {
        if (arch != 0) FAIL("%s: version 1 header with a nonzero reserved field (%u): damaged", path, arch);
        arch = ARCH_MAMBA1;
    }
    if (arch < ARCH_MAMBA1 || arch > ARCH_FALCON_MAMBA)
        FAIL("%s: unknown architecture %u (this program knows 1 = Mamba-1, 2 = Mamba-2, 3 = Falcon-Mamba)", path, arch);
    c->arch = (int)arch;
    if (version >= 2) {
        c->n_heads = rd_i32(h + 104);
        c->head_dim = rd_i32(h + 108);
        c->n_groups = rd_i32(h + 112);
        c->chunk_size = rd_i32(h + 116);
        c->dt_min = rd_f32(h + 120);
        c->dt_max = rd_f32(h + 124);
        c->mixer_eps = rd_f32(h + 128);
    }
    int m2 = c->arch == ARCH_MAMBA2;
    /* Bounds generous enough for any released model but small enough that no size computation overflows. */
    struct { const char *name; int v, lo, hi; } f[] = {
        {"d_model", c->d_model, 1, 1 << 16},   {"n_layer", c->n_layer, 1, 1024},
        {"d_inner", c->d_inner, 1, 1 << 17},   {"d_state", c->d_state, 1, 1024},
        {"d_conv", c->d_conv, 2, 64},          {"dt_rank", c->dt_rank, m2 ? 0 : 1, m2 ? 0 : 1 << 14},
        {"vocab_rows", c->vocab_rows, 1, 1 << 22}, {"vocab_size", c->vocab_size, 1, c->vocab_rows},
        {"dtype", c->dtype, 0, DT_Q4_0},             {"tied", c->tied, 0, 1},
        {"n_heads", c->n_heads, m2, m2 ? 1 << 14 : 0}, {"head_dim", c->head_dim, m2, m2 ? 1 << 14 : 0},
        {"n_groups", c->n_groups, m2, m2 ? 1 << 14 : 0}, {"chunk_size", c->chunk_size, 0, 1 << 20},
    };
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
        if (f[i].v < f[i].lo || f[i].v > f[i].hi)
            FAIL("%s: header field %s = %d is out of range [%d, %d]", path, f[i].name, f[i].v, f[i].lo, f[i].hi);
    if (!(c->norm_eps > 0 && c->norm_eps < 1)) FAIL("%s: header field norm_eps = %g is out of range (0, 1)", path, c->norm_eps);
    if (m2) {
        if ((long)c->n_heads * c->head_dim != c->d_inner)
            FAIL("%s: n_heads %d x head_dim %d is not d_inner %d", path, c->n_heads, c->head_dim, c->d_inner);
        if (c->n_heads % c->n_groups != 0 || c->d_inner % c->n_groups != 0)
            FAIL("%s: n_heads %d is not a multiple of n_groups %d", path, c->n_heads, c->n_groups);
        if ((long)c->n_groups * c->d_state > 1 << 20)
            FAIL("%s: n_groups %d x d_state %d is too large", path, c->n_groups, c->d_state);
        if (!(c->dt_min >= 0 && c->dt_max >= c->dt_min)) /* also refuses NaN */
            FAIL("%s: header fields dt_min %g, dt_max %g are not a range", path, c->dt_min, c->dt_max);
    }
    if (c->dtype >= DT_Q8_0 && (c->d_model % QBLOCK != 0 || c->d_inner % QBLOCK != 0))
        FAIL("%s: %s needs d_model (%d) and d_inner (%d) to be multiples of %d", path, dtype_name(c->dtype), c->d_model,
             c->d_inner, QBLOCK);
    if (c->arch == ARCH_FALCON_MAMBA && !(c->mixer_eps > 0 && c->mixer_eps < 1))
        FAIL("%s: header field mixer_eps = %g is out of range (0, 1)", path, c->mixer_eps);

    uint64_t tok_off = rd_u64(h + 64), tok_bytes = rd_u64(h + 72);
    uint64_t w_off = rd_u64(h + 80), w_bytes = rd_u64(h + 88), file_bytes = rd_u64(h + 96);
    if (file_bytes != size)
        FAIL("%s: file is %zu bytes but its header says %llu (truncated or damaged)", path, size, (unsigned long long)file_bytes);
    if (tok_off != MODEL_HEADER_BYTES || tok_bytes > size - tok_off)
        FAIL("%s: tokenizer section [%llu, +%llu) lies outside the file", path, (unsigned long long)tok_off, (unsigned long long)tok_bytes);
    size_t need = model_weight_bytes(c);
    if (w_off % 4096 != 0 || w_off < tok_off + tok_bytes || w_off > size || w_bytes != need || w_bytes > size - w_off)
        FAIL("%s: weights section (offset %llu, %llu bytes) does not match the header's shapes (%zu bytes) and file size",
             path, (unsigned long long)w_off, (unsigned long long)w_bytes, need);

    uint64_t chat_off = version >= 2 ? rd_u64(h + 136) : 0, chat_bytes = version >= 2 ? rd_u64(h + 144) : 0;
    if ((chat_off == 0) != (chat_bytes == 0) || (chat_bytes && (chat_off < tok_off + tok_bytes || chat_off > w_off || chat_bytes > w_off - chat_off)))
        FAIL("%s: chat template section [%llu, +%llu) is not between the tokenizer section and the weights", path,
             (unsigned long long)chat_off, (unsigned long long)chat_bytes);
    if (chat_bytes && memchr(h + chat_off, '\0', chat_bytes))
        FAIL("%s: the chat template section holds a NUL byte (damaged)", path);
    m->tokenizer = h + tok_off;
    m->tokenizer_bytes = tok_bytes;
    m->chat_template = chat_bytes ? (const char *)h + chat_off : NULL;
    m->chat_template_bytes = chat_bytes;
    m->weights.layers = calloc(c->n_layer, sizeof(LayerWeights));
    if (!m->weights.layers) FAIL("out of memory");
    layout_weights(c, h + w_off, &m->weights);
    if (m->weights.bad_scale) /* export.py writes finite scales only: the file was damaged since */
        FAIL("%s: the fp16 scale at byte %llu of the weights is infinite or NaN (damaged file)", path,
             (unsigned long long)m->weights.bad_scale - 1);
    return 0;
fail:
    free(m->weights.layers);
    memset(m, 0, sizeof *m);
    return -1;
}

void model_close(Model *m) {
    if (m->map) munmap(m->map, m->map_bytes);
    free(m->weights.layers);
    memset(m, 0, sizeof *m);
}
