#!/usr/bin/env python3
"""A minimal model.bin (format version 2, model.h's top comment) writer for the tests, independent of export.py:
fp32 only, an empty tokenizer section (the numpy reference does not need one).

    python3 tests/mbin_writer.py --shape m2tiny OUT.bin [--seed N] [--vocab N]

Library use: write_model_bin(path, shape, seed=0, vocab=None) from make_checkpoint.py's generator.
"""
import argparse
import math
import os
import struct
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_checkpoint as mc  # noqa: E402

ARCH = {"mamba": 1, "mamba2": 2, "falcon_mamba": 3}


def tensors(named, s):
    """model.bin's tensor order (model.h), fp32: list of (name, array)."""
    out = [("embedding", named["backbone.embedding.weight"])]
    K = s["d_conv"]
    for l in range(s["n_layer"]):
        p = "backbone.layers.%d." % l
        m = p + "mixer."
        out.append((p + "norm", named[p + "norm.weight"]))
        out.append((m + "in_proj", named[m + "in_proj.weight"]))
        out.append((m + "conv_w", named[m + "conv1d.weight"].reshape(-1, K)))
        out.append((m + "conv_b", named[m + "conv1d.bias"]))
        if s["arch"] == "mamba2":
            for k in ("dt_bias", "A_log", "D", "norm.weight", "out_proj.weight"):
                out.append((m + k, named[m + k]))
        else:
            for k in ("x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight"):
                out.append((m + k, named[m + k]))
    out.append(("norm_f", named["backbone.norm_f.weight"]))
    if not s["tied"]:
        out.append(("lm_head", named["lm_head.weight"]))
    return out


def write_model_bin(path, shape, seed=0, vocab=None, dt_limit=(0.0, math.inf), named=None):
    """Writes path; returns make_checkpoint.dims(shape, vocab). named: the generator's tensors when at hand."""
    s = mc.dims(shape, vocab)
    named = dict(mc.weights(shape, seed, vocab)) if named is None else named
    m2 = s["arch"] == "mamba2"
    blobs, off = [], 0
    for _, a in tensors(named, s):
        a = np.ascontiguousarray(a, dtype="<f4")
        pad = (-off) % 64
        blobs.append(b"\0" * pad)
        blobs.append(a.tobytes())
        off += pad + a.nbytes
    wbytes = off + (-off) % 64
    blobs.append(b"\0" * (wbytes - off))
    woff = 4096
    hdr = struct.pack("<8sII10ifIQQQQQ", b"MAMBABIN", 2, 256, s["d_model"], s["n_layer"], s["d_inner"], s["d_state"],
                      s["d_conv"], s["dt_rank"], s["vocab_rows"], s["vocab_size"], 0, 1 if s["tied"] else 0, 1e-5,
                      ARCH[s["arch"]], 256, 0, woff, wbytes, woff + wbytes)
    hdr += struct.pack("<4i3f", s["n_heads"] if m2 else 0, s["headdim"] if m2 else 0, s["ngroups"] if m2 else 0,
                       s["chunk_size"] if m2 else 0, dt_limit[0] if m2 else 0.0, dt_limit[1] if m2 else 0.0,
                       s.get("mixer_rms_eps", 0.0))
    hdr += b"\0" * (woff - len(hdr))
    with open(path, "wb") as f:
        f.write(hdr)
        for b in blobs:
            f.write(b)
    return s


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(mc.SHAPES), default="m2tiny")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=None)
    ap.add_argument("out")
    a = ap.parse_args(argv)
    write_model_bin(a.out, a.shape, a.seed, a.vocab)
    print("wrote", a.out)


if __name__ == "__main__":
    main()
