/* tokenizer.c: the tokenizer section of model.bin (format in model.h) -> text <-> ids.
 *
 * kind 1, byte-level BPE, follows Hugging Face `tokenizers` step by step, so the ids are the same:
 *   1. added tokens with normalized=false are split out of the raw text (leftmost-longest, as the
 *      Aho-Corasick trie of AddedVocabulary does);
 *   2. every other piece is normalized (NFC) on its own, then the added tokens with normalized=true
 *      are split out of it the same way;
 *   3. every remaining piece is cut by the GPT-2 regex
 *        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
 *      (first alternative that matches wins, as in Oniguruma; \s is Unicode White_Space), written
 *      out by hand below;
 *   4. every word goes through BPE on its bytes: repeatedly merge the adjacent pair of lowest rank,
 *      leftmost first on ties (a binary heap over a linked list of symbols: O(n log n) per word),
 *      with a cache of words already seen.
 * kind 2, SentencePiece, goes through the SentencePiece library (sentencepiece_shim.cc) when
 * compiled with -DHAVE_SENTENCEPIECE.
 */
#include "tokenizer.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#ifdef HAVE_SENTENCEPIECE
#include "sentencepiece_shim.h"
#endif

#define KIND_BPE 1
#define KIND_SPM 2
#define BPE_F_NFC 1u
#define BPE_F_PREFIX_SPACE 2u
/* Falcon's pre-tokenizer sequence (model.h): Punctuation (contiguous) before the GPT-2 regex,
 * Digits (contiguous) and the isolated digit triples after it. */
#define BPE_F_PUNCT 4u
#define BPE_F_DIGITS 8u
#define BPE_F_DIGIT_TRIPLES 16u
#define BPE_F_ALL (BPE_F_NFC | BPE_F_PREFIX_SPACE | BPE_F_PUNCT | BPE_F_DIGITS | BPE_F_DIGIT_TRIPLES)
#define ADD_SPECIAL 1u
#define ADD_NORMALIZED 2u
#define ADD_LSTRIP 4u
#define ADD_RSTRIP 8u
#define ADD_SINGLE_WORD 16u

/* ---------------------------------------------------------------------------------------------- */
/* small helpers */

static void seterr(char *err, size_t errlen, const char *fmt, ...) {
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t hash_bytes(const uint8_t *p, size_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xff51afd7ed558ccdull);
    while (n >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        h = (h ^ v) * 0x100000001B3ull;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t v = 0;
    memcpy(&v, p, n);
    h = (h ^ v) * 0xff51afd7ed558ccdull;
    h ^= h >> 32;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 29;
    return h;
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

/* Growable int array (the caller's output). */
typedef struct {
    int **ids;
    size_t *cap;
    size_t n;
    int oom;
} IdOut;

static int out_reserve(IdOut *o, size_t extra) {
    if (o->n + extra <= *o->cap) return 0;
    size_t nc = *o->cap ? *o->cap : 256;
    while (nc < o->n + extra) nc *= 2;
    int *p = realloc(*o->ids, nc * sizeof(int));
    if (!p) {
        o->oom = 1;
        return -1;
    }
    *o->ids = p;
    *o->cap = nc;
    return 0;
}

static inline void out_push(IdOut *o, int id) {
    if (o->n >= *o->cap && out_reserve(o, 1)) return;
    (*o->ids)[o->n++] = id;
}

/* ---------------------------------------------------------------------------------------------- */
/* UTF-8 */

/* Length of the valid UTF-8 character at p (strict: no overlongs, no surrogates, <= U+10FFFF),
 * or 0 when the bytes there are not one. */
static inline int utf8_valid_len(const uint8_t *p, size_t n) {
    uint8_t c = p[0];
    if (c < 0x80) return 1;
    if (c < 0xC2) return 0;
    if (c < 0xE0) return (n >= 2 && (p[1] & 0xC0) == 0x80) ? 2 : 0;
    if (c < 0xF0) {
        if (n < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && p[1] < 0xA0) return 0; /* overlong */
        if (c == 0xED && p[1] >= 0xA0) return 0; /* surrogate */
        return 3;
    }
    if (c < 0xF5) {
        if (n < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && p[1] < 0x90) return 0; /* overlong */
        if (c == 0xF4 && p[1] >= 0x90) return 0; /* > U+10FFFF */
        return 4;
    }
    return 0;
}

/* Offset of the first invalid byte, or -1 when all of it is valid UTF-8. */
static long utf8_check(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            /* fast path over ASCII, 8 bytes at a time */
            while (i + 8 <= n) {
                uint64_t v;
                memcpy(&v, s + i, 8);
                if (v & 0x8080808080808080ull) break;
                i += 8;
            }
            while (i < n && s[i] < 0x80) i++;
            continue;
        }
        int l = utf8_valid_len(s + i, n - i);
        if (!l) return (long)i;
        i += l;
    }
    return -1;
}

/* Decodes the (valid) character at s[*i], advancing *i. */
static inline int32_t utf8_next(const uint8_t *s, size_t n, size_t *i) {
    uint8_t c = s[*i];
    if (c < 0x80) {
        (*i)++;
        return c;
    }
    if (c < 0xE0) {
        int32_t cp = ((c & 0x1F) << 6) | (s[*i + 1] & 0x3F);
        *i += 2;
        return cp;
    }
    if (c < 0xF0) {
        int32_t cp = ((c & 0x0F) << 12) | ((s[*i + 1] & 0x3F) << 6) | (s[*i + 2] & 0x3F);
        *i += 3;
        return cp;
    }
    int32_t cp = ((c & 0x07) << 18) | ((s[*i + 1] & 0x3F) << 12) | ((s[*i + 2] & 0x3F) << 6) |
                 (s[*i + 3] & 0x3F);
    *i += 4;
    (void)n;
    return cp;
}

/* ---------------------------------------------------------------------------------------------- */
/* character classes of the pre-tokenizer regex */

enum { C_OTHER = 0, C_LETTER = 1, C_NUMBER = 2, C_SPACE = 3 };
static uint8_t ascii_class[128];
static int ascii_class_ready;

/* \s of Oniguruma with Unicode: the White_Space property. */
static inline int is_unicode_space(int32_t c) {
    if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D);
    if (c < 0x85) return 0;
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

static inline int char_class(int32_t c) {
    if (c < 128) return ascii_class[c];
    if (is_unicode_space(c)) return C_SPACE;
    utf8proc_category_t cat = utf8proc_category(c);
    if (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) return C_LETTER;
    if (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) return C_NUMBER;
    return C_OTHER;
}

static void init_ascii_class(void) {
    if (ascii_class_ready) return;
    for (int c = 0; c < 128; c++) {
        int k = C_OTHER;
        if (is_unicode_space(c)) k = C_SPACE;
        else if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) k = C_LETTER;
        else if (c >= '0' && c <= '9') k = C_NUMBER;
        ascii_class[c] = (uint8_t)k;
    }
    ascii_class_ready = 1;
}

/* ---------------------------------------------------------------------------------------------- */
/* added-token trie (byte-wise; leftmost-longest matching) */

typedef struct {
    int32_t child, sibling; /* first child / next sibling, -1 = none */
    int32_t token;          /* index into Tokenizer.added, -1 = none */
    uint8_t byte;
} TrieNode;

typedef struct {
    TrieNode *nodes;
    int n, cap;
    uint8_t first[256]; /* bytes that start some token */
    int n_tokens;
} Trie;

static int trie_new_node(Trie *t, uint8_t b) {
    if (t->n == t->cap) {
        int nc = t->cap ? t->cap * 2 : 64;
        TrieNode *p = realloc(t->nodes, (size_t)nc * sizeof(TrieNode));
        if (!p) return -1;
        t->nodes = p;
        t->cap = nc;
    }
    TrieNode *nd = &t->nodes[t->n];
    nd->child = nd->sibling = nd->token = -1;
    nd->byte = b;
    return t->n++;
}

static int trie_init(Trie *t) {
    memset(t, 0, sizeof(*t));
    return trie_new_node(t, 0) < 0 ? -1 : 0;
}

static int trie_insert(Trie *t, const uint8_t *s, size_t n, int token) {
    int node = 0;
    for (size_t i = 0; i < n; i++) {
        int c = t->nodes[node].child;
        while (c >= 0 && t->nodes[c].byte != s[i]) c = t->nodes[c].sibling;
        if (c < 0) {
            c = trie_new_node(t, s[i]);
            if (c < 0) return -1;
            t->nodes[c].sibling = t->nodes[node].child;
            t->nodes[node].child = c;
        }
        node = c;
    }
    /* the same content twice: the first one inserted wins */
    if (t->nodes[node].token < 0) t->nodes[node].token = token;
    t->first[s[0]] = 1;
    t->n_tokens++;
    return 0;
}

/* Longest token starting at s[0..n); returns its length and sets *token, or 0. */
static size_t trie_longest(const Trie *t, const uint8_t *s, size_t n, int *token) {
    int node = 0;
    size_t best = 0;
    for (size_t i = 0; i < n; i++) {
        int c = t->nodes[node].child;
        while (c >= 0 && t->nodes[c].byte != s[i]) c = t->nodes[c].sibling;
        if (c < 0) break;
        node = c;
        if (t->nodes[c].token >= 0) {
            best = i + 1;
            *token = t->nodes[c].token;
        }
    }
    return best;
}

/* ---------------------------------------------------------------------------------------------- */
/* the tokenizer */

typedef struct {
    uint64_t key; /* left << 32 | right; UINT64_MAX = empty */
    uint32_t rank, merged;
} MergeSlot;

typedef struct {
    uint32_t id, flags;
} AddedTok;

/* word cache: open addressing; keys and values in arenas */
typedef struct {
    uint64_t hash;
    uint32_t key_off, key_len; /* into cache_bytes */
    uint32_t val_off, val_len; /* into cache_ids */
} CacheSlot;

struct Tokenizer {
    int kind;
    int bos, eos, pad;
    int n_vocab;
    /* kind 1 */
    uint32_t flags;
    const uint8_t **tok;
    uint32_t *toklen;
    MergeSlot *merges;
    size_t merge_mask;
    int byte_id[256]; /* -1: the byte has no token (dropped, as HF does without an unk token) */
    AddedTok *added;
    int n_added;
    Trie raw_trie, norm_trie;
    int has_raw, has_norm;
    /* cache */
    CacheSlot *cache;
    size_t cache_mask, cache_used;
    uint8_t *cache_bytes;
    size_t cache_bytes_n, cache_bytes_cap;
    int *cache_ids;
    size_t cache_ids_n, cache_ids_cap;
    /* BPE scratch */
    int32_t *sym_id, *sym_prev, *sym_next;
    uint32_t *sym_len;
    uint64_t *heap;
    size_t scratch_cap, heap_cap;
    /* decode surfaces (kind 2: the text each id decodes to; kind 1: tok/toklen) */
    uint8_t **surface;
    uint32_t *surface_len;
    uint16_t *is_byte_piece; /* kind 2: 1 + byte value for <0xNN> pieces, 0 otherwise */
    uint8_t *starts_ws;     /* kind 2: surface starts with the space that stands for U+2581 */
    int strip_first_space;
#ifdef HAVE_SENTENCEPIECE
    SpmModel *spm;
#endif
};

int tokenizer_n_vocab(const Tokenizer *t) { return t->n_vocab; }
int tokenizer_bos(const Tokenizer *t) { return t->bos; }
int tokenizer_eos(const Tokenizer *t) { return t->eos; }

const char *tokenizer_piece(const Tokenizer *t, int id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) {
        *len = 0;
        return "";
    }
    if (t->kind == KIND_BPE) {
        *len = t->toklen[id];
        return (const char *)t->tok[id];
    }
    *len = t->surface_len[id];
    return (const char *)t->surface[id];
}

void tokenizer_free(Tokenizer *t) {
    if (!t) return;
    free(t->tok);
    free(t->toklen);
    free(t->merges);
    free(t->added);
    free(t->raw_trie.nodes);
    free(t->norm_trie.nodes);
    free(t->cache);
    free(t->cache_bytes);
    free(t->cache_ids);
    free(t->sym_id);
    free(t->sym_prev);
    free(t->sym_next);
    free(t->sym_len);
    free(t->heap);
    if (t->surface) {
        for (int i = 0; i < t->n_vocab; i++) free(t->surface[i]);
        free(t->surface);
    }
    free(t->surface_len);
    free(t->is_byte_piece);
    free(t->starts_ws);
#ifdef HAVE_SENTENCEPIECE
    if (t->spm) spm_free(t->spm);
#endif
    free(t);
}

/* bounds-checked reader */
typedef struct {
    const uint8_t *p;
    size_t n, off;
} Reader;

static int rd_u32(Reader *r, uint32_t *v) {
    if (r->n - r->off < 4) return -1;
    const uint8_t *q = r->p + r->off;
    *v = (uint32_t)q[0] | (uint32_t)q[1] << 8 | (uint32_t)q[2] << 16 | (uint32_t)q[3] << 24;
    r->off += 4;
    return 0;
}

static int merge_find(const Tokenizer *t, uint32_t left, uint32_t right, uint32_t *rank,
                      uint32_t *merged) {
    uint64_t key = (uint64_t)left << 32 | right;
    size_t h = mix64(key) & t->merge_mask;
    for (;;) {
        const MergeSlot *s = &t->merges[h];
        if (s->key == key) {
            *rank = s->rank;
            *merged = s->merged;
            return 1;
        }
        if (s->key == UINT64_MAX) return 0;
        h = (h + 1) & t->merge_mask;
    }
}

static Tokenizer *load_bpe(Tokenizer *t, Reader *r, char *err, size_t errlen) {
    uint32_t flags, n_vocab, n_merges, n_added;
    if (rd_u32(r, &flags) || rd_u32(r, &n_vocab)) {
        seterr(err, errlen, "tokenizer: truncated BPE header");
        goto fail;
    }
    if ((flags & ~BPE_F_ALL) || ((flags & BPE_F_DIGIT_TRIPLES) && !(flags & BPE_F_DIGITS)) ||
        ((flags & BPE_F_PUNCT) && (flags & BPE_F_PREFIX_SPACE))) {
        seterr(err, errlen, "tokenizer: unknown BPE flags 0x%x", flags);
        goto fail;
    }
    if (n_vocab == 0 || n_vocab > (1u << 24) || n_vocab > (r->n - r->off) / 4) {
        seterr(err, errlen, "tokenizer: bad vocabulary size %u", n_vocab);
        goto fail;
    }
    t->flags = flags;
    t->n_vocab = (int)n_vocab;
    t->tok = calloc(n_vocab, sizeof(*t->tok));
    t->toklen = calloc(n_vocab, sizeof(*t->toklen));
    if (!t->tok || !t->toklen) {
        seterr(err, errlen, "tokenizer: out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < n_vocab; i++) {
        uint32_t len;
        if (rd_u32(r, &len) || len > r->n - r->off) {
            seterr(err, errlen, "tokenizer: vocabulary truncated at id %u", i);
            goto fail;
        }
        t->tok[i] = r->p + r->off;
        t->toklen[i] = len;
        r->off += len;
    }
    if (rd_u32(r, &n_merges) || n_merges > (r->n - r->off) / 12) {
        seterr(err, errlen, "tokenizer: merges truncated");
        goto fail;
    }
    size_t mcap = 16;
    while (mcap < (size_t)n_merges * 2) mcap *= 2;
    t->merges = malloc(mcap * sizeof(MergeSlot));
    if (!t->merges) {
        seterr(err, errlen, "tokenizer: out of memory");
        goto fail;
    }
    for (size_t i = 0; i < mcap; i++) t->merges[i].key = UINT64_MAX;
    t->merge_mask = mcap - 1;
    for (uint32_t i = 0; i < n_merges; i++) {
        uint32_t a = 0, b = 0, m = 0;
        rd_u32(r, &a);
        rd_u32(r, &b);
        rd_u32(r, &m);
        if (a >= n_vocab || b >= n_vocab || m >= n_vocab) {
            seterr(err, errlen, "tokenizer: merge %u has an id out of range", i);
            goto fail;
        }
        if (!t->toklen[a] || !t->toklen[b] || (uint64_t)t->toklen[a] + t->toklen[b] != t->toklen[m] ||
            memcmp(t->tok[m], t->tok[a], t->toklen[a]) ||
            memcmp(t->tok[m] + t->toklen[a], t->tok[b], t->toklen[b])) {
            seterr(err, errlen, "tokenizer: merge %u (%u + %u -> %u) is not a concatenation", i, a,
                   b, m);
            goto fail;
        }
        uint64_t key = (uint64_t)a << 32 | b;
        size_t h = mix64(key) & t->merge_mask;
        while (t->merges[h].key != UINT64_MAX && t->merges[h].key != key)
            h = (h + 1) & t->merge_mask;
        /* a repeated pair: the later one wins, as in HF's merge map */
        t->merges[h].key = key;
        t->merges[h].rank = i;
        t->merges[h].merged = m;
    }
    if (rd_u32(r, &n_added) || n_added > (r->n - r->off) / 8) {
        seterr(err, errlen, "tokenizer: added tokens truncated");
        goto fail;
    }
    t->n_added = (int)n_added;
    t->added = calloc(n_added ? n_added : 1, sizeof(AddedTok));
    uint8_t *is_added = calloc(n_vocab, 1);
    if (!t->added || !is_added || trie_init(&t->raw_trie) || trie_init(&t->norm_trie)) {
        free(is_added);
        seterr(err, errlen, "tokenizer: out of memory");
        goto fail;
    }
    for (uint32_t i = 0; i < n_added; i++) {
        uint32_t id = 0, fl = 0;
        rd_u32(r, &id);
        rd_u32(r, &fl);
        if (id >= n_vocab || !t->toklen[id] || (fl & ~31u)) {
            seterr(err, errlen, "tokenizer: added token %u is bad (id %u, flags 0x%x)", i, id, fl);
            free(is_added);
            goto fail;
        }
        if (utf8_check(t->tok[id], t->toklen[id]) >= 0) {
            seterr(err, errlen, "tokenizer: added token %u (id %u) is not valid UTF-8", i, id);
            free(is_added);
            goto fail;
        }
        t->added[i].id = id;
        t->added[i].flags = fl;
        is_added[id] = 1;
    }
    if (r->off != r->n) {
        seterr(err, errlen, "tokenizer: %zu stray bytes after the BPE section", r->n - r->off);
        free(is_added);
        goto fail;
    }
    /* the trie of normalized tokens holds their normalized content */
    for (int i = 0; i < t->n_added; i++) {
        const AddedTok *a = &t->added[i];
        int rc;
        if ((a->flags & ADD_NORMALIZED) && (t->flags & BPE_F_NFC)) {
            uint8_t *nfc = NULL;
            utf8proc_ssize_t nl = utf8proc_map(t->tok[a->id], t->toklen[a->id], &nfc,
                                               UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            rc = nl > 0 ? trie_insert(&t->norm_trie, nfc, (size_t)nl, i) : -1;
            free(nfc);
        } else if (a->flags & ADD_NORMALIZED) {
            rc = trie_insert(&t->norm_trie, t->tok[a->id], t->toklen[a->id], i);
        } else {
            rc = trie_insert(&t->raw_trie, t->tok[a->id], t->toklen[a->id], i);
        }
        if (rc) {
            seterr(err, errlen, "tokenizer: out of memory");
            free(is_added);
            goto fail;
        }
    }
    t->has_raw = t->raw_trie.n_tokens > 0;
    t->has_norm = t->norm_trie.n_tokens > 0;
    /* the token of each single byte (a model token, not an added one, when both exist) */
    for (int b = 0; b < 256; b++) t->byte_id[b] = -1;
    for (int pass = 0; pass < 2; pass++)
        for (uint32_t i = 0; i < n_vocab; i++)
            if (t->toklen[i] == 1 && is_added[i] == pass && t->byte_id[t->tok[i][0]] < 0)
                t->byte_id[t->tok[i][0]] = (int)i;
    free(is_added);
    /* the word cache: small at first, doubled at half load (cache_grow), so that loading a
     * tokenizer for a short text does not clear a table sized for a book (1.5 MB at 65536 slots:
     * most of fuzz_tokenizer's time per input went into its page faults) */
    t->cache_mask = (1u << 10) - 1;
    t->cache = calloc(t->cache_mask + 1, sizeof(CacheSlot));
    if (!t->cache) {
        seterr(err, errlen, "tokenizer: out of memory");
        goto fail;
    }
    return t;
fail:
    tokenizer_free(t);
    return NULL;
}

#ifdef HAVE_SENTENCEPIECE
static Tokenizer *load_spm(Tokenizer *t, Reader *r, char *err, size_t errlen) {
    uint32_t nb;
    if (rd_u32(r, &nb) || nb > r->n - r->off) {
        seterr(err, errlen, "tokenizer: SentencePiece model truncated");
        goto fail;
    }
    if (r->off + nb != r->n) {
        seterr(err, errlen, "tokenizer: %zu stray bytes after the SentencePiece model",
               r->n - r->off - nb);
        goto fail;
    }
    char e2[200];
    t->spm = spm_load(r->p + r->off, nb, e2, sizeof e2);
    if (!t->spm) {
        seterr(err, errlen, "tokenizer: %s", e2);
        goto fail;
    }
    int n = spm_n_vocab(t->spm);
    if (n <= 0) {
        seterr(err, errlen, "tokenizer: SentencePiece model has no pieces");
        goto fail;
    }
    t->n_vocab = n;
    t->strip_first_space = spm_strips_leading_space(t->spm);
    t->surface = calloc((size_t)n, sizeof(uint8_t *));
    t->surface_len = calloc((size_t)n, sizeof(uint32_t));
    t->is_byte_piece = calloc((size_t)n, sizeof(uint16_t));
    t->starts_ws = calloc((size_t)n, 1);
    if (!t->surface || !t->surface_len || !t->is_byte_piece || !t->starts_ws) {
        seterr(err, errlen, "tokenizer: out of memory");
        goto fail;
    }
    for (int i = 0; i < n; i++) {
        const char *piece;
        size_t plen;
        int type = spm_piece_info(t->spm, i, &piece, &plen);
        uint8_t *s = malloc(plen + 8);
        if (!s) {
            seterr(err, errlen, "tokenizer: out of memory");
            goto fail;
        }
        size_t sl = 0;
        if (type == SPM_PIECE_CONTROL) {
            sl = 0;
        } else if (type == SPM_PIECE_UNKNOWN) {
            size_t ul;
            const char *u = spm_unk_surface(t->spm, &ul);
            uint8_t *s2 = realloc(s, ul + 8);
            if (!s2) {
                free(s);
                seterr(err, errlen, "tokenizer: out of memory");
                goto fail;
            }
            s = s2;
            memcpy(s, u, ul);
            sl = ul;
        } else if (type == SPM_PIECE_BYTE) {
            unsigned v;
            if (plen == 6 && sscanf(piece, "<0x%2X>", &v) == 1) {
                s[0] = (uint8_t)v;
                sl = 1;
                t->is_byte_piece[i] = (uint16_t)(1 + v);
            }
        } else {
            /* U+2581 -> ' ' */
            for (size_t k = 0; k < plen;) {
                if (k + 3 <= plen && (uint8_t)piece[k] == 0xE2 && (uint8_t)piece[k + 1] == 0x96 &&
                    (uint8_t)piece[k + 2] == 0x81) {
                    if (k == 0) t->starts_ws[i] = 1;
                    s[sl++] = ' ';
                    k += 3;
                } else {
                    s[sl++] = (uint8_t)piece[k++];
                }
            }
        }
        t->surface[i] = s;
        t->surface_len[i] = (uint32_t)sl;
    }
    if (t->bos < -1 || t->bos >= n || t->eos < -1 || t->eos >= n || t->pad < -1 || t->pad >= n) {
        seterr(err, errlen, "tokenizer: bos/eos/pad id out of range");
        goto fail;
    }
    return t;
fail:
    tokenizer_free(t);
    return NULL;
}
#endif

Tokenizer *tokenizer_load(const uint8_t *data, size_t n, char *err, size_t errlen) {
    init_ascii_class();
    Reader r = {data, n, 0};
    uint32_t magic, version, kind, bos, eos, pad;
    if (!data || n < 24) {
        seterr(err, errlen, "tokenizer: section too short (%zu bytes)", n);
        return NULL;
    }
    rd_u32(&r, &magic);
    if (memcmp(data, "TOKN", 4)) {
        seterr(err, errlen, "tokenizer: bad magic (not a tokenizer section)");
        return NULL;
    }
    rd_u32(&r, &version);
    rd_u32(&r, &kind);
    rd_u32(&r, &bos);
    rd_u32(&r, &eos);
    rd_u32(&r, &pad);
    if (version != 1) {
        seterr(err, errlen, "tokenizer: unsupported version %u", version);
        return NULL;
    }
    if (kind != KIND_BPE && kind != KIND_SPM) {
        seterr(err, errlen, "tokenizer: unknown kind %u", kind);
        return NULL;
    }
#ifndef HAVE_SENTENCEPIECE
    if (kind == KIND_SPM) {
        seterr(err, errlen,
               "tokenizer: this is a SentencePiece model and this build lacks SentencePiece "
               "(rebuild with libsentencepiece-dev installed)");
        return NULL;
    }
#endif
    Tokenizer *t = calloc(1, sizeof(Tokenizer));
    if (!t) {
        seterr(err, errlen, "tokenizer: out of memory");
        return NULL;
    }
    t->kind = (int)kind;
    t->bos = (int32_t)bos;
    t->eos = (int32_t)eos;
    t->pad = (int32_t)pad;
    if (kind == KIND_BPE) {
        t = load_bpe(t, &r, err, errlen);
        if (t && (t->bos < -1 || t->bos >= t->n_vocab || t->eos < -1 || t->eos >= t->n_vocab ||
                  t->pad < -1 || t->pad >= t->n_vocab)) {
            seterr(err, errlen, "tokenizer: bos/eos/pad id out of range");
            tokenizer_free(t);
            return NULL;
        }
        return t;
    }
#ifdef HAVE_SENTENCEPIECE
    return load_spm(t, &r, err, errlen);
#else
    tokenizer_free(t);
    return NULL;
#endif
}

/* ---------------------------------------------------------------------------------------------- */
/* BPE of one word */

static int scratch_reserve(Tokenizer *t, size_t n) {
    if (n <= t->scratch_cap) return 0;
    size_t nc = t->scratch_cap ? t->scratch_cap : 64;
    while (nc < n) nc *= 2;
    int32_t *a = realloc(t->sym_id, nc * sizeof(int32_t));
    if (!a) return -1;
    t->sym_id = a;
    int32_t *b = realloc(t->sym_prev, nc * sizeof(int32_t));
    if (!b) return -1;
    t->sym_prev = b;
    int32_t *c = realloc(t->sym_next, nc * sizeof(int32_t));
    if (!c) return -1;
    t->sym_next = c;
    uint32_t *d = realloc(t->sym_len, nc * sizeof(uint32_t));
    if (!d) return -1;
    t->sym_len = d;
    t->scratch_cap = nc;
    return 0;
}

/* The queue of candidate merges: a 4-ary min-heap of (rank << 32 | position), so the lowest rank
 * comes first and, among equal ranks, the leftmost position (HF's Merge ordering). */
static int heap_reserve(Tokenizer *t, size_t n) {
    if (n <= t->heap_cap) return 0;
    size_t nc = t->heap_cap ? t->heap_cap * 2 : 64;
    while (nc < n) nc *= 2;
    uint64_t *p = realloc(t->heap, nc * sizeof(uint64_t));
    if (!p) return -1;
    t->heap = p;
    t->heap_cap = nc;
    return 0;
}

static inline void heap_sift_down(uint64_t *h, size_t n, size_t i, uint64_t v) {
    for (;;) {
        size_t c = 4 * i + 1;
        if (c >= n) break;
        size_t m = c;
        size_t e = c + 4 < n ? c + 4 : n;
        for (size_t k = c + 1; k < e; k++)
            if (h[k] < h[m]) m = k;
        if (h[m] >= v) break;
        h[i] = h[m];
        i = m;
    }
    h[i] = v;
}

static int heap_push(Tokenizer *t, size_t *hn, uint64_t it) {
    if (*hn == t->heap_cap && heap_reserve(t, *hn + 1)) return -1;
    uint64_t *h = t->heap;
    size_t i = (*hn)++;
    while (i > 0) {
        size_t parent = (i - 1) / 4;
        if (it >= h[parent]) break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = it;
    return 0;
}

static uint64_t heap_pop(Tokenizer *t, size_t *hn) {
    uint64_t *h = t->heap;
    uint64_t top = h[0];
    uint64_t last = h[--(*hn)];
    if (*hn) heap_sift_down(h, *hn, 0, last);
    return top;
}

/* BPE of the bytes w[0..n) appended to o. Mirrors HF's Word::merge_all: pop the lowest (rank,
 * position); skip it when that symbol is gone or its pair has changed since it was queued (a pair
 * has one rank, so an equal rank means the same pair); merge; queue the two new pairs. */
static int bpe_word(Tokenizer *t, const uint8_t *w, size_t n, IdOut *o) {
    if (scratch_reserve(t, n)) return -1;
    int32_t *id = t->sym_id, *prev = t->sym_prev, *next = t->sym_next;
    uint32_t *len = t->sym_len;
    /* symbols: one per byte that has a token (bytes without one are dropped, like HF without unk) */
    size_t ns = 0;
    for (size_t i = 0; i < n; i++) {
        int b = t->byte_id[w[i]];
        if (b < 0) continue;
        id[ns] = b;
        len[ns] = 1;
        prev[ns] = (int32_t)ns - 1;
        next[ns] = (int32_t)ns + 1;
        ns++;
    }
    if (!ns) return 0;
    next[ns - 1] = -1;
    size_t hn = 0;
    uint32_t rank, merged;
    if (heap_reserve(t, ns)) return -1;
    for (size_t i = 0; i + 1 < ns; i++)
        if (merge_find(t, (uint32_t)id[i], (uint32_t)id[i + 1], &rank, &merged))
            t->heap[hn++] = (uint64_t)rank << 32 | i;
    if (hn > 1) /* heapify, O(n) */
        for (size_t i = (hn - 2) / 4 + 1; i-- > 0;) heap_sift_down(t->heap, hn, i, t->heap[i]);
    while (hn) {
        uint64_t top = heap_pop(t, &hn);
        uint32_t p = (uint32_t)top, top_rank = (uint32_t)(top >> 32);
        if (len[p] == 0) continue;
        int32_t q = next[p];
        if (q < 0) continue;
        if (!merge_find(t, (uint32_t)id[p], (uint32_t)id[q], &rank, &merged) || rank != top_rank)
            continue;
        id[p] = (int32_t)merged;
        len[p] += len[q];
        len[q] = 0;
        next[p] = next[q];
        if (next[q] >= 0) prev[next[q]] = (int32_t)p;
        if (prev[p] >= 0) {
            int32_t a = prev[p];
            if (merge_find(t, (uint32_t)id[a], (uint32_t)id[p], &rank, &merged))
                if (heap_push(t, &hn, (uint64_t)rank << 32 | (uint32_t)a)) return -1;
        }
        if (next[p] >= 0) {
            if (merge_find(t, (uint32_t)id[p], (uint32_t)id[next[p]], &rank, &merged))
                if (heap_push(t, &hn, (uint64_t)rank << 32 | p)) return -1;
        }
    }
    for (int32_t i = 0; i >= 0; i = next[i]) out_push(o, id[i]);
    return o->oom ? -1 : 0;
}

#define CACHE_MAX_WORD 256
#define CACHE_MAX_ENTRIES (1u << 19) /* then the cache starts over */
#define CACHE_MAX_BYTES (16u << 20)

static void cache_clear(Tokenizer *t) {
    memset(t->cache, 0, (t->cache_mask + 1) * sizeof(CacheSlot));
    t->cache_used = 0;
    t->cache_bytes_n = 0;
    t->cache_ids_n = 0;
}

static int cache_grow(Tokenizer *t) {
    size_t nmask = t->cache_mask * 2 + 1;
    CacheSlot *nc = calloc(nmask + 1, sizeof(CacheSlot));
    if (!nc) return -1;
    for (size_t i = 0; i <= t->cache_mask; i++) {
        CacheSlot *s = &t->cache[i];
        if (!s->key_len) continue;
        size_t h = s->hash & nmask;
        while (nc[h].key_len) h = (h + 1) & nmask;
        nc[h] = *s;
    }
    free(t->cache);
    t->cache = nc;
    t->cache_mask = nmask;
    return 0;
}

/* Encodes one pre-token word (through the cache). */
static int encode_word(Tokenizer *t, const uint8_t *w, size_t n, IdOut *o) {
    if (n == 1) {
        if (t->byte_id[w[0]] >= 0) out_push(o, t->byte_id[w[0]]);
        return o->oom ? -1 : 0;
    }
    if (n > CACHE_MAX_WORD) return bpe_word(t, w, n, o);
    uint64_t h = hash_bytes(w, n);
    size_t i = h & t->cache_mask;
    for (;;) {
        CacheSlot *s = &t->cache[i];
        if (!s->key_len) break;
        if (s->hash == h && s->key_len == n && !memcmp(t->cache_bytes + s->key_off, w, n)) {
            if (!s->val_len) return 0; /* a word with no ids (below): both arrays may be NULL */
            if (out_reserve(o, s->val_len)) return -1;
            memcpy(*o->ids + o->n, t->cache_ids + s->val_off, s->val_len * sizeof(int));
            o->n += s->val_len;
            return 0;
        }
        i = (i + 1) & t->cache_mask;
    }
    size_t start = o->n;
    if (bpe_word(t, w, n, o)) return -1;
    size_t nid = o->n - start;
    /* insert (best effort: on any allocation failure just skip caching) */
    if (t->cache_used >= CACHE_MAX_ENTRIES || t->cache_bytes_n + n > CACHE_MAX_BYTES) {
        cache_clear(t);
    } else if ((t->cache_used + 1) * 2 > t->cache_mask + 1) {
        if (cache_grow(t)) return 0;
    }
    if (t->cache_bytes_n + n > t->cache_bytes_cap) {
        size_t nc = t->cache_bytes_cap ? t->cache_bytes_cap * 2 : 1 << 16;
        while (nc < t->cache_bytes_n + n) nc *= 2;
        uint8_t *p = realloc(t->cache_bytes, nc);
        if (!p) return 0;
        t->cache_bytes = p;
        t->cache_bytes_cap = nc;
    }
    if (t->cache_ids_n + nid > t->cache_ids_cap) {
        size_t nc = t->cache_ids_cap ? t->cache_ids_cap * 2 : 1 << 14;
        while (nc < t->cache_ids_n + nid) nc *= 2;
        int *p = realloc(t->cache_ids, nc * sizeof(int));
        if (!p) return 0;
        t->cache_ids = p;
        t->cache_ids_cap = nc;
    }
    i = h & t->cache_mask;
    while (t->cache[i].key_len) i = (i + 1) & t->cache_mask;
    CacheSlot *s = &t->cache[i];
    s->hash = h;
    s->key_off = (uint32_t)t->cache_bytes_n;
    s->key_len = (uint32_t)n;
    s->val_off = (uint32_t)t->cache_ids_n;
    s->val_len = (uint32_t)nid;
    memcpy(t->cache_bytes + t->cache_bytes_n, w, n);
    t->cache_bytes_n += n;
    if (nid) /* a word of bytes the vocabulary lacks has no ids: then *o->ids may still be NULL */
        memcpy(t->cache_ids + t->cache_ids_n, *o->ids + start, nid * sizeof(int));
    t->cache_ids_n += nid;
    t->cache_used++;
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* Falcon's digit stages. They run on the byte-level text (after the GPT-2 regex and the byte to
 * unicode mapping), where every byte is one character: a byte is numeric (Rust's char::is_numeric,
 * which HF's Digits uses) when it is an ASCII digit or maps to itself as one of the Latin-1 numerals
 * ² ³ ¹ ¼ ½ ¾, which UTF-8 continuation bytes can be: 'м' (D0 BC) splits into D0 and BC. */

static inline int byte_is_numeric(uint8_t b) {
    return (b >= '0' && b <= '9') || b == 0xB2 || b == 0xB3 || b == 0xB9 || (b >= 0xBC && b <= 0xBE);
}
static inline int ascii_digit(uint8_t b) { return b >= '0' && b <= '9'; }

/* Split "[0-9][0-9][0-9]", behavior Isolated: the leftmost non-overlapping digit triples become
 * words of their own, the stretches between them too. */
static int encode_triples(Tokenizer *t, const uint8_t *w, size_t n, IdOut *o) {
    size_t start = 0, i = 0;
    while (i + 3 <= n) {
        if (!(ascii_digit(w[i]) && ascii_digit(w[i + 1]) && ascii_digit(w[i + 2]))) {
            i++;
            continue;
        }
        if (i > start && encode_word(t, w + start, i - start, o)) return -1;
        if (encode_word(t, w + i, 3, o)) return -1;
        start = i += 3;
    }
    return start < n ? encode_word(t, w + start, n - start, o) : 0;
}

/* A word of the GPT-2 regex, through the digit stages the tokenizer has: Digits (contiguous) cuts
 * it into runs of numeric and of other bytes, then the triples split the numeric runs. */
static int emit_word(Tokenizer *t, const uint8_t *w, size_t n, IdOut *o) {
    if (!(t->flags & BPE_F_DIGITS)) return encode_word(t, w, n, o);
    size_t i = 0;
    while (i < n) {
        int num = byte_is_numeric(w[i]);
        size_t j = i + 1;
        while (j < n && byte_is_numeric(w[j]) == num) j++;
        int rc = num && (t->flags & BPE_F_DIGIT_TRIPLES) ? encode_triples(t, w + i, j - i, o)
                                                         : encode_word(t, w + i, j - i, o);
        if (rc) return -1;
        i = j;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* the pre-tokenizer: splits s[0..n) (valid UTF-8) by the GPT-2 regex and encodes each word */

/* end of the run of characters of class k starting at i */
static inline size_t run_of(const uint8_t *s, size_t n, size_t i, int k) {
    while (i < n) {
        if (s[i] < 0x80) {
            if (ascii_class[s[i]] != k) break;
            i++;
            continue;
        }
        size_t j = i;
        int32_t c = utf8_next(s, n, &j);
        if (char_class(c) != k) break;
        i = j;
    }
    return i;
}

static int pretokenize_and_encode(Tokenizer *t, const uint8_t *s, size_t n, IdOut *o) {
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        int32_t c = utf8_next(s, n, &j); /* j: end of the first character */
        size_t end;
        if (c == '\'' && j < n) {
            /* 's|'t|'re|'ve|'m|'ll|'d */
            uint8_t a = s[j], b = j + 1 < n ? s[j + 1] : 0;
            if (a == 's' || a == 't' || a == 'm' || a == 'd') end = j + 1;
            else if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
                end = j + 2;
            else end = 0;
            if (end) {
                if (emit_word(t, s + i, end - i, o)) return -1;
                i = end;
                continue;
            }
        }
        int k = char_class(c);
        if (c == ' ' && j < n) {
            /* ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+' with the space */
            size_t j2 = j;
            int k2 = char_class(utf8_next(s, n, &j2));
            if (k2 != C_SPACE) {
                end = run_of(s, n, j2, k2);
                if (emit_word(t, s + i, end - i, o)) return -1;
                i = end;
                continue;
            }
        }
        if (k != C_SPACE) {
            end = run_of(s, n, j, k);
        } else {
            /* '\s+(?!\S)' then '\s+' */
            size_t run_end = run_of(s, n, j, C_SPACE);
            if (run_end == n) {
                end = n;
            } else {
                /* followed by a non-space: give back the last whitespace character, unless it is
                 * the only one (then '\s+' takes it) */
                size_t last = run_end - 1;
                while ((s[last] & 0xC0) == 0x80) last--;
                end = last > i ? last : run_end;
            }
        }
        if (emit_word(t, s + i, end - i, o)) return -1;
        i = end;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------- */
/* added tokens, normalization */

static int is_word_char(int32_t c) {
    int k = char_class(c);
    return k == C_LETTER || k == C_NUMBER || c == '_';
}

static int last_char_is_word(const uint8_t *s, size_t n) {
    if (!n) return 0;
    size_t i = n - 1;
    while (i > 0 && (s[i] & 0xC0) == 0x80) i--;
    size_t j = i;
    return is_word_char(utf8_next(s, n, &j));
}

static int first_char_is_word(const uint8_t *s, size_t n) {
    if (!n) return 0;
    size_t j = 0;
    return is_word_char(utf8_next(s, n, &j));
}

typedef int (*PieceFn)(Tokenizer *t, const uint8_t *s, size_t n, IdOut *o);

/* Splits s by the added tokens of trie (HF AddedVocabulary::find_matches): pieces between matches
 * go to fn, matches become their token's id. */
static int split_added(Tokenizer *t, const Trie *trie, const uint8_t *s, size_t n, IdOut *o,
                       PieceFn fn) {
    size_t start_offset = 0, i = 0;
    while (i < n) {
        if (!trie->first[s[i]]) {
            i++;
            continue;
        }
        int tok = -1;
        size_t mlen = trie_longest(trie, s + i, n - i, &tok);
        if (!mlen) {
            i++;
            continue;
        }
        size_t start = i, stop = i + mlen;
        const AddedTok *a = &t->added[tok];
        if (a->flags & ADD_SINGLE_WORD) {
            if (last_char_is_word(s, start) || first_char_is_word(s + stop, n - stop)) {
                i = stop; /* not a single word: skipped, the search goes on after it */
                continue;
            }
        }
        if (a->flags & ADD_LSTRIP) {
            size_t ns = start;
            while (ns > start_offset) {
                size_t p = ns - 1;
                while (p > 0 && (s[p] & 0xC0) == 0x80) p--;
                size_t q = p;
                if (!is_unicode_space(utf8_next(s, n, &q))) break;
                ns = p;
            }
            start = ns;
        }
        if (a->flags & ADD_RSTRIP) {
            while (stop < n) {
                size_t q = stop;
                if (!is_unicode_space(utf8_next(s, n, &q))) break;
                stop = q;
            }
        }
        if (start > start_offset && fn(t, s + start_offset, start - start_offset, o)) return -1;
        out_push(o, (int)a->id);
        if (o->oom) return -1;
        start_offset = i = stop;
    }
    if (start_offset < n && fn(t, s + start_offset, n - start_offset, o)) return -1;
    return 0;
}

/* HF's Punctuation pre-tokenizer: ASCII punctuation and the Unicode categories P*. */
static int is_punctuation(int32_t c) {
    if (c < 128) return (c >= '!' && c <= '/') || (c >= ':' && c <= '@') || (c >= '[' && c <= '`') ||
                        (c >= '{' && c <= '~');
    utf8proc_category_t cat = utf8proc_category(c);
    return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

/* Punctuation, behavior Contiguous: runs of punctuation and runs of the rest, each then split by
 * the GPT-2 regex on its own (so " ..." gives " " and "...", not one word). */
static int split_punctuation(Tokenizer *t, const uint8_t *s, size_t n, IdOut *o) {
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        int punct = is_punctuation(utf8_next(s, n, &j));
        while (j < n) {
            size_t k = j;
            if (is_punctuation(utf8_next(s, n, &k)) != punct) break;
            j = k;
        }
        if (pretokenize_and_encode(t, s + i, j - i, o)) return -1;
        i = j;
    }
    return 0;
}

static int piece_after_norm_split(Tokenizer *t, const uint8_t *s, size_t n, IdOut *o) {
    if (t->flags & BPE_F_PUNCT) return split_punctuation(t, s, n, o);
    if ((t->flags & BPE_F_PREFIX_SPACE) && s[0] != ' ') {
        /* ByteLevel add_prefix_space: prepend a space to each piece that lacks one */
        uint8_t *b = malloc(n + 1);
        if (!b) return -1;
        b[0] = ' ';
        memcpy(b + 1, s, n);
        int rc = pretokenize_and_encode(t, b, n + 1, o);
        free(b);
        return rc;
    }
    return pretokenize_and_encode(t, s, n, o);
}

static int piece_after_raw_split(Tokenizer *t, const uint8_t *s, size_t n, IdOut *o) {
    uint8_t *nfc = NULL;
    if (t->flags & BPE_F_NFC) {
        /* characters below U+0300 (lead bytes below 0xCC) never change under NFC */
        int need = 0;
        for (size_t i = 0; i < n; i++)
            if (s[i] >= 0xCC) {
                need = 1;
                break;
            }
        if (need) {
            utf8proc_ssize_t nl = utf8proc_map(s, (utf8proc_ssize_t)n, &nfc,
                                               UTF8PROC_STABLE | UTF8PROC_COMPOSE);
            if (nl < 0) {
                free(nfc);
                return -1;
            }
            s = nfc;
            n = (size_t)nl;
        }
    }
    int rc = 0;
    if (n) {
        if (t->has_norm) rc = split_added(t, &t->norm_trie, s, n, o, piece_after_norm_split);
        else rc = piece_after_norm_split(t, s, n, o);
    }
    free(nfc);
    return rc;
}

long tokenizer_encode(Tokenizer *t, const char *text, size_t len, int **ids, size_t *cap,
                      char *err, size_t errlen) {
    const uint8_t *s = (const uint8_t *)text;
    long bad = utf8_check(s, len);
    if (bad >= 0) {
        seterr(err, errlen, "invalid UTF-8 at byte offset %ld (byte 0x%02x)", bad, s[bad]);
        return -1;
    }
    IdOut o = {ids, cap, 0, 0};
    if (len == 0) return 0;
#ifdef HAVE_SENTENCEPIECE
    if (t->kind == KIND_SPM) {
        char e2[200];
        long n = spm_encode(t->spm, text, len, ids, cap, e2, sizeof e2);
        if (n < 0) seterr(err, errlen, "%s", e2);
        return n;
    }
#endif
    int rc = t->has_raw ? split_added(t, &t->raw_trie, s, len, &o, piece_after_raw_split)
                        : piece_after_raw_split(t, s, len, &o);
    if (rc) {
        seterr(err, errlen, "tokenizer: out of memory");
        return -1;
    }
    return (long)o.n;
}

/* ---------------------------------------------------------------------------------------------- */
/* streaming decode */

static const uint8_t REPL[3] = {0xEF, 0xBF, 0xBD};

static size_t put(char *out, size_t outcap, size_t k, const uint8_t *b, size_t n) {
    if (k + n > outcap) return k; /* too small a buffer: drop rather than overflow */
    memcpy(out + k, b, n);
    return k + n;
}

/* Is b an acceptable next byte after the valid prefix p[0..np)? */
static int utf8_continues(const unsigned char *p, int np, uint8_t b) {
    if ((b & 0xC0) != 0x80) return 0;
    if (np == 1) {
        if (p[0] == 0xE0) return b >= 0xA0;
        if (p[0] == 0xED) return b < 0xA0;
        if (p[0] == 0xF0) return b >= 0x90;
        if (p[0] == 0xF4) return b < 0x90;
    }
    return 1;
}

static int utf8_need(uint8_t lead) { return lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4; }

/* Feeds bytes b[0..n) through the UTF-8 assembler. per_byte: an invalid sequence gives one U+FFFD
 * per byte (SentencePiece), else one per maximal subpart (Rust's from_utf8_lossy, used by HF). */
static size_t feed_bytes(DecodeStream *s, const uint8_t *b, size_t n, int per_byte, char *out,
                         size_t outcap, size_t k) {
    for (size_t i = 0; i < n; i++) {
        uint8_t c = b[i];
        if (s->n_pending) {
            if (utf8_continues(s->pending, s->n_pending, c)) {
                s->pending[s->n_pending++] = c;
                if (s->n_pending == utf8_need(s->pending[0])) {
                    k = put(out, outcap, k, s->pending, (size_t)s->n_pending);
                    s->n_pending = 0;
                }
                continue;
            }
            int reps = per_byte ? s->n_pending : 1;
            for (int r = 0; r < reps; r++) k = put(out, outcap, k, REPL, 3);
            s->n_pending = 0;
        }
        if (c < 0x80) k = put(out, outcap, k, &c, 1);
        else if (c >= 0xC2 && c <= 0xF4) s->pending[s->n_pending++] = c;
        else k = put(out, outcap, k, REPL, 3);
    }
    return k;
}

static size_t flush_pending(DecodeStream *s, int per_byte, char *out, size_t outcap, size_t k) {
    if (s->n_pending) {
        int reps = per_byte ? s->n_pending : 1;
        for (int r = 0; r < reps; r++) k = put(out, outcap, k, REPL, 3);
        s->n_pending = 0;
    }
    return k;
}

size_t tokenizer_decode_stream(const Tokenizer *t, DecodeStream *s, int id, char *out,
                               size_t outcap) {
    size_t k = 0;
    if (id < 0 || id >= t->n_vocab) return 0;
    if (t->kind == KIND_BPE) {
        s->n_fed++;
        return feed_bytes(s, t->tok[id], t->toklen[id], 0, out, outcap, 0);
    }
    /* SentencePiece, as its Decode does: byte pieces are assembled into characters (an invalid
     * byte gives one U+FFFD); any other piece first flushes the pending bytes. At the start of the
     * text (s->n_fed == 0: nothing output yet, no leading space dropped yet) a piece loses its
     * leading space (add_dummy_prefix; with remove_extra_whitespaces, every such piece until
     * something is output). Control pieces output nothing. */
    if (t->is_byte_piece[id]) {
        uint8_t b = (uint8_t)(t->is_byte_piece[id] - 1);
        s->n_fed = 1; /* a byte always ends up as output */
        return feed_bytes(s, &b, 1, 1, out, outcap, k);
    }
    k = flush_pending(s, 1, out, outcap, k);
    if (k) s->n_fed = 1;
    const uint8_t *p = t->surface[id];
    size_t n = t->surface_len[id];
    if (s->n_fed == 0 && t->strip_first_space && t->starts_ws[id]) {
        p++;
        n--;
        if (t->strip_first_space == 1) s->n_fed = 1; /* only the first one */
    }
    if (n) s->n_fed = 1;
    return put(out, outcap, k, p, n);
}

size_t tokenizer_decode_flush(const Tokenizer *t, DecodeStream *s, char *out, size_t outcap) {
    return flush_pending(s, t->kind != KIND_BPE, out, outcap, 0);
}
