#!/usr/bin/env python3
"""A model.bin with random weights in the exact shapes of a released Mamba-1 or Mamba-2 checkpoint,
for timing (speed does not depend on the values). Writes the format of model.h directly, quickly:
the matrices repeat one block of random values.

    python3 bench/make_synth.py --shape 130m|370m|790m|1.4b|2.8b|m2-130m|m2-2.7b [--dtype fp16|bf16|fp32|q8_0|q4_0] OUT.bin

q8_0/q4_0: the quantized matrices (all but dt_proj, which is fp16: model.h) are random quants with
one fp16 scale for every block. Its tokenizer section is a minimal byte-level one (256 single-byte
tokens), enough for ./runcuda; --tokenizer PATH (a tokenizer.json or SentencePiece .model, as
export.py takes it) embeds a real one instead, so that prompts of words are as many tokens as with
the released model (GPT-NeoX's tokenizer.json for the Mamba shapes: about 1.2 tokens a word of
English, where the byte-level one takes a token per byte)."""
import argparse
import math
import os
import struct
import sys

import numpy as np

SHAPES = {"130m": (768, 24), "370m": (1024, 48), "790m": (1536, 48), "1.4b": (2048, 48), "2.8b": (2560, 64),
          "m2-130m": (768, 24), "m2-2.7b": (2560, 64)}  # Mamba-2: d_state 128, headdim 64, ngroups 1
DTYPES = {"fp32": (0, "<f4"), "fp16": (1, "<f2"), "bf16": (2, None), "q8_0": (3, None), "q4_0": (4, None)}
QBLOCK = 32
ALIGN = 64


def tokenizer_section():
    sec = b"TOKN" + struct.pack("<IIiiiII", 1, 1, 0, 0, -1, 0, 256)
    for b in range(256):
        sec += struct.pack("<I", 1) + bytes([b])
    return sec + struct.pack("<II", 0, 0)  # no merges, no added tokens


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="130m")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    ap.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json or SentencePiece .model to embed")
    ap.add_argument("out")
    a = ap.parse_args()
    D, L = SHAPES[a.shape]
    mamba2 = a.shape.startswith("m2-")
    E, N, K, R, V, VS = 2 * D, 16, 4, math.ceil(D / 16), 50280, 50277
    H, P, G = 0, 0, 0
    if mamba2:
        N, R, V, H, P, G = 128, 0, 50288, 2 * D // 64, 64, 1
    code, np_dt = DTYPES[a.dtype]
    quant = code >= 3
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(1 << 22) * 0.02).astype(np.float32)
    if a.dtype == "bf16":
        block = (block.view(np.uint32) >> 16).astype("<u2")
    elif quant:  # the fp16 of dt_proj in a quantized file; the quants: q8_0 int8 in [-127, 127], q4_0 any byte
        block16 = block.astype("<f2")
        lo, hi = (-127, 128) if a.dtype == "q8_0" else (-128, 128)
        block = rng.integers(lo, hi, 1 << 22).astype(np.int8).view(np.uint8)
    else:
        block = block.astype(np_dt)

    def mat(rows, cols):  # bytes of a [rows, cols] matrix: the random block, repeated
        n = rows * cols
        if not quant:
            return np.resize(block, n).tobytes()
        qb = np.resize(block, n if a.dtype == "q8_0" else n // 2).tobytes()  # quants, padding, scales
        return qb + b"\0" * (-len(qb) % ALIGN) + np.full(n // QBLOCK, 0.0002, "<f2").tobytes()

    def mat16(rows, cols):  # dt_proj: fp16 in a quantized file
        return np.resize(block16, rows * cols).tobytes() if quant else mat(rows, cols)

    def vec(values):
        return np.asarray(values, "<f4").tobytes()

    tensors = [lambda: mat(V, D)]
    for _ in range(L):
        if mamba2:
            X = E + 2 * G * N
            tensors += [lambda: vec(np.ones(D)), lambda: mat(2 * E + 2 * G * N + H, D),
                        lambda: vec(rng.standard_normal(X * K) * 0.1), lambda: vec(np.zeros(X)),
                        lambda: vec(np.full(H, math.log(math.expm1(0.01)))), lambda: vec(np.log(np.arange(1, H + 1))),
                        lambda: vec(np.ones(H)), lambda: vec(np.ones(E)), lambda: mat(D, E)]
            continue
        tensors += [lambda: vec(np.ones(D)), lambda: mat(2 * E, D),
                    lambda: vec(rng.standard_normal(E * K) * 0.1), lambda: vec(np.zeros(E)),
                    lambda: mat(R + 2 * N, E), lambda: mat16(E, R),
                    lambda: vec(np.full(E, math.log(math.expm1(0.01)))),
                    lambda: vec(np.tile(np.log(np.arange(1, N + 1)), E)), lambda: vec(np.ones(E)),
                    lambda: mat(D, E)]
    tensors.append(lambda: vec(np.ones(D)))

    if a.tokenizer:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        import export
        try:
            tok, n_pieces = export.build_tokenizer(a.tokenizer)
            if n_pieces > VS:
                sys.exit("make_synth: %s: %d tokens, more than the %d of the shape" % (a.tokenizer, n_pieces, VS))
        except export.ExportError as e:
            sys.exit("make_synth: %s" % e)
    else:
        tok = tokenizer_section()
    w_off = (256 + len(tok) + 4095) // 4096 * 4096
    with open(a.out, "wb") as f:
        f.seek(w_off)
        off = 0
        for t in tensors:
            b = t()
            f.write(b)
            off += len(b)
            pad = -off % ALIGN
            f.write(b"\0" * pad)
            off += pad
        h = b"MAMBABIN" + struct.pack("<II", 2, 256)
        h += struct.pack("<10i", D, L, E, N, K, R, V, VS, code, 1)
        h += struct.pack("<fI", 1e-5, 2 if mamba2 else 1) + struct.pack("<5Q", 256, len(tok), w_off, off, w_off + off)
        h += struct.pack("<4i3f", H, P, G, 256 if mamba2 else 0, 0.0, math.inf if mamba2 else 0.0, 0.0)
        f.seek(0)
        f.write(h + b"\0" * (256 - len(h)) + tok)
    print("wrote %s: %s-shaped, %s, %.2f GB of weights" % (a.out, a.shape, a.dtype, off / 1e9))


if __name__ == "__main__":
    main()
