#!/usr/bin/env python3
"""Small valid model.bin files (a few KB each) for fuzz_model's seed corpus, tests/fuzz/corpus_model/.

    python3 tests/fuzz/make_model_seeds.py tests/fuzz/corpus_model

libFuzzer copies, mutates and (in the harness) writes every input whole, so the cost of one execution
grows with the size of the largest seed: a real tiny model (230 KB) made the campaign run ~200
executions a second. These files keep every path of model_open (each architecture, fp32 and both
quantized layouts with their scales, a tokenizer and a chat template section) at tiny shapes. The
weights layout is model.c's layout_weights: each tensor at a multiple of 64 bytes; a quantized matrix
is its quants, padding to 64, then one fp16 scale per 32 values."""
import os
import struct
import sys

ALIGN, QBLOCK = 64, 32
F32, F16, BF16, Q8_0, Q4_0 = 0, 1, 2, 3, 4


def align(n, a=ALIGN):
    return (n + a - 1) // a * a


def layout(c):
    """(kind, rows, cols) of every tensor in model.h's order; kind: vec, mat, or mat16 (fp16 when quantized)."""
    D, E, N, R, V, K = c["d_model"], c["d_inner"], c["d_state"], c["dt_rank"], c["vocab_rows"], c["d_conv"]
    out = [("mat", V, D)]
    for _ in range(c["n_layer"]):
        if c["arch"] == 2:
            H, GN = c["n_heads"], c["n_groups"] * N
            out += [("vec", 1, D), ("mat", 2 * E + 2 * GN + H, D), ("vec", E + 2 * GN, K), ("vec", 1, E + 2 * GN),
                    ("vec", 1, H), ("vec", 1, H), ("vec", 1, H), ("vec", 1, E), ("mat", D, E)]
        else:
            out += [("vec", 1, D), ("mat", 2 * E, D), ("vec", E, K), ("vec", 1, E), ("mat", R + 2 * N, E),
                    ("mat16", E, R), ("vec", 1, E), ("vec", E, N), ("vec", 1, E), ("mat", D, E)]
    out.append(("vec", 1, D))
    if not c["tied"]:
        out.append(("mat", V, D))
    return out


def weights(c):
    """The weights section: small nonzero values, finite fp16 scales (1.0)."""
    quant = c["dtype"] >= Q8_0
    blob = bytearray()
    for kind, rows, cols in layout(c):
        n = rows * cols
        dtype = F32 if kind == "vec" else F16 if kind == "mat16" and quant else c["dtype"]
        if dtype >= Q8_0:
            blob += bytes((i * 7) & 0x7F for i in range(n if dtype == Q8_0 else n // 2))
            blob += b"\0" * (align(len(blob)) - len(blob))
            blob += struct.pack("<H", 0x3C00) * (n // QBLOCK)
        elif dtype == F16:
            blob += struct.pack("<%de" % n, *[0.01 * (i % 5) for i in range(n)])
        elif dtype == BF16:
            blob += b"".join(struct.pack("<f", 0.01 * (i % 5))[2:] for i in range(n))
        else:
            blob += struct.pack("<%df" % n, *[0.01 * (i % 5) for i in range(n)])
        blob += b"\0" * (align(len(blob)) - len(blob))
    return bytes(blob)


def model_bin(c, tokenizer=b"", chat=b""):
    w = weights(c)
    tok_off = 256
    chat_off = tok_off + len(tokenizer) if chat else 0
    w_off = align(tok_off + len(tokenizer) + len(chat), 4096)
    h = struct.pack("<8sII10ifIQQQQQ", b"MAMBABIN", 2, 256, c["d_model"], c["n_layer"], c["d_inner"], c["d_state"],
                    c["d_conv"], c["dt_rank"], c["vocab_rows"], c["vocab_rows"], c["dtype"], c["tied"], 1e-5, c["arch"],
                    tok_off, len(tokenizer), w_off, len(w), w_off + len(w))
    h += struct.pack("<4i3f", c.get("n_heads", 0), c.get("head_dim", 0), c.get("n_groups", 0), c.get("chunk", 0),
                     c.get("dt_min", 0.0), c.get("dt_max", 0.0), c.get("mixer_eps", 0.0))
    h += struct.pack("<4xQQ", chat_off, len(chat))
    body = h + b"\0" * (tok_off - len(h)) + tokenizer + chat
    return body + b"\0" * (w_off - len(body)) + w


# A byte-level BPE section (tokenizer.h): kind 1, bos, eos, pad, then the pieces and merges as
# tokenizer_load reads them is more than model_open looks at: it only bounds the section.
TOKENIZER = struct.pack("<4i", 1, 0, 1, -1) + b"\0" * 48

# Quantized files need d_model and d_inner to be multiples of 32; the others are smaller still.
M1 = dict(arch=1, d_model=4, n_layer=1, d_inner=8, d_state=2, d_conv=2, dt_rank=1, vocab_rows=4, dtype=F32, tied=1)
Q = dict(d_model=32, d_inner=64)
M2 = dict(arch=2, dt_rank=0, n_heads=2, head_dim=4, n_groups=1, chunk=256, dt_max=1e30)
SEEDS = {
    "m1_f32": (M1, b"", b""),
    "m1_f16_untied_chat": (dict(M1, dtype=F16, tied=0, n_layer=2), TOKENIZER, b"{{ messages }}"),
    "m1_q8_0": (dict(M1 | Q, dtype=Q8_0), TOKENIZER, b""),
    "m1_q4_0": (dict(M1 | Q, dtype=Q4_0, tied=0), b"", b""),
    "falcon_bf16": (dict(M1, arch=3, dtype=BF16, tied=0, mixer_eps=1e-6), b"", b""),
    "m2_f32": (M1 | M2 | dict(d_state=4), TOKENIZER, b""),
    "m2_q8_0_groups": (M1 | M2 | Q | dict(dtype=Q8_0, n_heads=4, head_dim=16, n_groups=2, dt_min=0.001, dt_max=0.1),
                       b"", b"chat"),
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fuzz/corpus_model"
    for name, (c, tok, chat) in SEEDS.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(model_bin(c, tok, chat))


if __name__ == "__main__":
    main()
