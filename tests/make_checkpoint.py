#!/usr/bin/env python3
"""Deterministic synthetic Mamba checkpoints (Mamba-1, Mamba-2, Falcon-Mamba), in the exact key names and
shapes of the real ones.

    python3 tests/make_checkpoint.py --shape SHAPE --layout original|hf OUT_DIR [--seed N]
                                     [--shards N] [--vocab N] [--tokenizer PATH]

Shapes (see SHAPES):
  tiny, 130m, 2.8b     Mamba-1 (MambaLMHeadModel / MambaForCausalLM), d_state 16, tied, 50277 -> 50280 rows
  falcon-tiny          Falcon-Mamba (FalconMambaForCausalLM): Mamba-1 "tiny" + mixer_rms_eps 1e-6, untied
                       lm_head, 50280 rows; hf layout only
  m2tiny               Mamba-2: d_model 64, 2 layers, d_state 16, headdim 16 (8 heads), 1 group, tied
  m2-130m              Mamba-2: state-spaces/mamba2-130m's shapes (768, 24 layers, d_state 128, 24 heads of 64)
  m2codestral          Mamba-2: Mamba-Codestral-7B scaled down: d_model 256, 4 layers, 16 heads of 32,
                       8 groups, d_state 32, untied lm_head
  (Mamba-2 shapes: vocab 50277 padded to a multiple of 16 = 50288 rows, d_conv 4, expand 2, chunk_size 256)

original: config.json (d_model, n_layer, ssm_cfg, ...) + pytorch_model.bin (torch.save; needs torch),
          lm_head.weight tied to backbone.embedding.weight (one shared tensor), or its own tensor (untied)
hf:       config.json as transformers' MambaConfig / Mamba2Config / FalconMambaConfig writes it +
          model.safetensors (own writer, numpy only; with --shards N > 1: model-0000i-of-0000N.safetensors
          + model.safetensors.index.json), backbone.embeddings.weight, lm_head.weight only when untied
Both get a copy of the GPT-NeoX tokenizer.json when one is found.

The weights are a pure function of (seed, tensor name, element index): a splitmix64 hash of a
counter in uint64 arithmetic, mapped to float64 with exact operations and rounded once to fp32,
so they come out bit-identical on any machine and numpy version (no numpy random streams).
The few transcendental values (A_log, dt_proj.bias) use Python's math module per element.
"""
import argparse
import json
import math
import os
import shutil
import struct
import sys
from collections import OrderedDict

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

SHAPES = {
    # Mamba-1: d_model, n_layer, vocab_size (unpadded); d_state 16, d_conv 4, expand 2, pad multiple 8, tied
    "tiny": dict(d_model=64, n_layer=2, vocab_size=50277),
    "130m": dict(d_model=768, n_layer=24, vocab_size=50277),
    "2.8b": dict(d_model=2560, n_layer=64, vocab_size=50277),  # 11 GB in fp32: for the GPU machine
    # Mamba-1 in sizes no real checkpoint has, for the kernels' general paths: d_state 6 (no float4
    # rows), dt_rank 3 (no 16-byte pieces), d_model 44 (fp16 rows not whole 16-byte pieces), d_inner
    # 88 (the last block of 16 channels half full)
    "odd": dict(d_model=44, n_layer=2, vocab_size=50277, d_state=6),
    # Falcon-Mamba: Mamba-1 + weightless RMS norms of dt_in, B, C (mixer_rms_eps); untied head
    "falcon-tiny": dict(arch="falcon_mamba", d_model=64, n_layer=2, vocab_size=50277, tied=False,
                        mixer_rms_eps=1e-6),
    # Mamba-2 (d_conv 4, expand 2, chunk_size 256, pad multiple 16)
    "m2tiny": dict(arch="mamba2", d_model=64, n_layer=2, vocab_size=50277, d_state=16, headdim=16, ngroups=1,
                   tied=True),
    "m2-130m": dict(arch="mamba2", d_model=768, n_layer=24, vocab_size=50277, d_state=128, headdim=64, ngroups=1,
                    tied=True),
    "m2codestral": dict(arch="mamba2", d_model=256, n_layer=4, vocab_size=50277, d_state=32, headdim=32, ngroups=8,
                        tied=False),
}
SHAPE_HELP = {
    "tiny": "Mamba-1, d_model 64, 2 layers", "130m": "Mamba-1, mamba-130m shapes",
    "2.8b": "Mamba-1, mamba-2.8b shapes (11 GB)", "odd": "Mamba-1, d_model 44, 2 layers, d_state 6",
    "falcon-tiny": "Falcon-Mamba, tiny's shapes, untied, hf only",
    "m2tiny": "Mamba-2, d_model 64, 2 layers, 8 heads of 16, d_state 16",
    "m2-130m": "Mamba-2, mamba2-130m shapes", "m2codestral": "Mamba-2, Codestral scaled down: 8 groups, untied",
}
D_STATE, D_CONV, EXPAND, PAD_MULTIPLE = 16, 4, 2, 8
M2_PAD_MULTIPLE, M2_CHUNK = 16, 256  # mamba_ssm's Mamba-2 defaults (pad_vocab_size_multiple, chunk_size)
EMBED_SCALE = 0.1  # std of the embedding (real init: 0.02); larger spreads the logits
OUT_SCALE = 8.0  # out_proj bound times 1/sqrt(d_inner): the layers, not the own embedding row, decide the next token
# Mamba-2: the gated RMSNorm makes y unit-RMS before out_proj (Mamba-1's y is far smaller), so a smaller
# bound: the layer output's RMS is then ~0.29 (M2_OUT_SCALE / sqrt(3)), as Mamba-1's ~0.32 with OUT_SCALE 8,
# about 3x the embedding's 0.1
M2_OUT_SCALE = 0.5

TOKENIZER_CANDIDATES = [
    os.path.join(REPO, "shared", "tokenizers", "gpt-neox-20b", "tokenizer.json"),
    os.path.join(REPO, "..", "shared", "tokenizers", "gpt-neox-20b", "tokenizer.json"),
    "/work/shared/tokenizers/gpt-neox-20b/tokenizer.json",
    os.path.join(HERE, "data", "tokenizer.json"),
]

_M64 = (1 << 64) - 1


def dims(shape, vocab=None):
    s = dict(SHAPES[shape])
    if vocab is not None:
        s["vocab_size"] = int(vocab)
    s.setdefault("arch", "mamba")
    s.setdefault("tied", True)
    d = s["d_model"]
    if s["arch"] == "mamba2":
        E = EXPAND * d
        H = E // s["headdim"]
        assert H * s["headdim"] == E and H % s["ngroups"] == 0, shape
        s.update(d_conv=D_CONV, expand=EXPAND, d_inner=E, dt_rank=0, n_heads=H, chunk_size=M2_CHUNK,
                 conv_dim=E + 2 * s["ngroups"] * s["d_state"], pad_multiple=M2_PAD_MULTIPLE)
    else:
        s.update(d_state=s.get("d_state", D_STATE), d_conv=D_CONV, expand=EXPAND, d_inner=EXPAND * d, dt_rank=math.ceil(d / 16),
                 pad_multiple=PAD_MULTIPLE)
    m = s["pad_multiple"]
    s["vocab_rows"] = (s["vocab_size"] + m - 1) // m * m
    return s


def _salt(shape):
    """Prefix of the hash names: '' for the Mamba-1 shapes (their weights never change), the family otherwise
    (so falcon-tiny does not share its values with tiny)."""
    a = SHAPES[shape].get("arch", "mamba")
    return "" if a == "mamba" else a + ":"


def _fnv1a(text):
    h = 0xCBF29CE484222325
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x100000001B3) & _M64
    return h


def uniform01(seed, name, n):
    """n float64 values in [0, 1), each a multiple of 2^-53: splitmix64 of (key + i * gamma)."""
    key = np.uint64(_fnv1a("%d:%s" % (seed, name)))
    x = np.arange(n, dtype=np.uint64)
    x *= np.uint64(0x9E3779B97F4A7C15)
    x += key
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    x >>= np.uint64(11)
    u = x.astype(np.float64)
    u *= 2.0 ** -53
    return u


def sym(seed, name, shape, bound):
    """Uniform in [-bound, bound), rounded to fp32."""
    n = int(np.prod(shape))
    u = uniform01(seed, name, n)
    u *= 2.0
    u -= 1.0
    u *= float(bound)
    return u.astype(np.float32).reshape(shape)


def _inv_softplus_dt(seed, name, n):
    """n dt_bias values: the inverse softplus of dt sampled log-uniformly in [0.001, 0.1] (floor 1e-4)."""
    lo, hi = math.log(0.001), math.log(0.1)
    u = uniform01(seed, name, n)
    bias = []
    for v in u.tolist():
        dt = max(math.exp(lo + v * (hi - lo)), 1e-4)
        bias.append(dt + math.log(-math.expm1(-dt)))  # inverse softplus
    return np.array(bias, dtype=np.float64).astype(np.float32)


def weights(shape="tiny", seed=0, vocab=None):
    """Yields (original-layout name, fp32 array) in state-dict order; lm_head.weight (last) only when untied."""
    s = dims(shape, vocab)
    if s["arch"] == "mamba2":
        yield from _weights_mamba2(shape, s, seed)
        return
    salt = _salt(shape)
    D, E, N, K, R, V = s["d_model"], s["d_inner"], s["d_state"], s["d_conv"], s["dt_rank"], s["vocab_rows"]
    # uniform with std EMBED_SCALE: bound = sqrt(3) * std
    yield "backbone.embedding.weight", sym(seed, salt + "embedding", (V, D), math.sqrt(3.0) * EMBED_SCALE)
    a_log_row = np.array([math.log(n) for n in range(1, N + 1)], dtype=np.float64).astype(np.float32)
    lo, hi = math.log(0.001), math.log(0.1)
    for l in range(s["n_layer"]):
        p = "backbone.layers.%d." % l
        norm = sym(seed, salt + p + "norm", (D,), 0.1)
        norm += np.float32(1.0)
        yield p + "norm.weight", norm
        yield p + "mixer.in_proj.weight", sym(seed, salt + p + "in_proj", (2 * E, D), 1.0 / math.sqrt(D))
        yield p + "mixer.conv1d.weight", sym(seed, salt + p + "conv_w", (E, 1, K), 1.0 / math.sqrt(K))
        yield p + "mixer.conv1d.bias", sym(seed, salt + p + "conv_b", (E,), 1.0 / math.sqrt(K))
        yield p + "mixer.x_proj.weight", sym(seed, salt + p + "x_proj", (R + 2 * N, E), 1.0 / math.sqrt(E))
        yield p + "mixer.dt_proj.weight", sym(seed, salt + p + "dt_w", (E, R), 1.0 / math.sqrt(R))
        u = uniform01(seed, salt + p + "dt_b", E)
        bias = []
        for v in u.tolist():
            dt = max(math.exp(lo + v * (hi - lo)), 1e-4)
            bias.append(dt + math.log(-math.expm1(-dt)))  # inverse softplus
        yield p + "mixer.dt_proj.bias", np.array(bias, dtype=np.float64).astype(np.float32)
        yield p + "mixer.A_log", np.tile(a_log_row, (E, 1))
        yield p + "mixer.D", np.ones(E, dtype=np.float32)
        yield p + "mixer.out_proj.weight", sym(seed, salt + p + "out_proj", (D, E), OUT_SCALE / math.sqrt(E))
    norm_f = sym(seed, salt + "norm_f", (D,), 0.1)
    norm_f += np.float32(1.0)
    yield "backbone.norm_f.weight", norm_f
    if not s["tied"]:
        yield "lm_head.weight", sym(seed, salt + "lm_head", (V, D), math.sqrt(3.0) * EMBED_SCALE)


def _weights_mamba2(shape, s, seed):
    salt = _salt(shape)
    D, E, N, K, V = s["d_model"], s["d_inner"], s["d_state"], s["d_conv"], s["vocab_rows"]
    H, G, X = s["n_heads"], s["ngroups"], s["conv_dim"]
    yield "backbone.embedding.weight", sym(seed, salt + "embedding", (V, D), math.sqrt(3.0) * EMBED_SCALE)
    for l in range(s["n_layer"]):
        p = "backbone.layers.%d." % l
        norm = sym(seed, salt + p + "norm", (D,), 0.1)
        norm += np.float32(1.0)
        yield p + "norm.weight", norm
        # rows: z (E), x (E), B (G*N), C (G*N), dt (H)
        yield p + "mixer.in_proj.weight", sym(seed, salt + p + "in_proj", (2 * E + 2 * G * N + H, D), 1.0 / math.sqrt(D))
        yield p + "mixer.conv1d.weight", sym(seed, salt + p + "conv_w", (X, 1, K), 1.0 / math.sqrt(K))
        yield p + "mixer.conv1d.bias", sym(seed, salt + p + "conv_b", (X,), 1.0 / math.sqrt(K))
        yield p + "mixer.dt_bias", _inv_softplus_dt(seed, salt + p + "dt_bias", H)
        # A = uniform in [1, 16] per head (mamba_ssm's A_init_range), A_log = log(A)
        u = uniform01(seed, salt + p + "A", H)
        yield p + "mixer.A_log", np.array([math.log(1.0 + 15.0 * v) for v in u.tolist()], np.float64).astype(np.float32)
        d = sym(seed, salt + p + "D", (H,), 0.1)
        d += np.float32(1.0)
        yield p + "mixer.D", d
        g = sym(seed, salt + p + "gnorm", (E,), 0.1)
        g += np.float32(1.0)
        yield p + "mixer.norm.weight", g
        yield p + "mixer.out_proj.weight", sym(seed, salt + p + "out_proj", (D, E), M2_OUT_SCALE / math.sqrt(E))
    norm_f = sym(seed, salt + "norm_f", (D,), 0.1)
    norm_f += np.float32(1.0)
    yield "backbone.norm_f.weight", norm_f
    if not s["tied"]:
        yield "lm_head.weight", sym(seed, salt + "lm_head", (V, D), math.sqrt(3.0) * EMBED_SCALE)




CHECKSUM_TENSORS = ["backbone.embedding.weight", "backbone.layers.0.mixer.in_proj.weight",
                    "backbone.layers.0.mixer.dt_proj.bias", "backbone.layers.0.mixer.A_log",
                    "backbone.norm_f.weight"]
CHECKSUM_TENSORS_M2 = ["backbone.embedding.weight", "backbone.layers.0.mixer.in_proj.weight",
                       "backbone.layers.0.mixer.dt_bias", "backbone.layers.0.mixer.A_log",
                       "backbone.layers.0.mixer.norm.weight", "backbone.norm_f.weight"]


def checksum_names(shape):
    s = dims(shape)
    names = list(CHECKSUM_TENSORS_M2 if s["arch"] == "mamba2" else CHECKSUM_TENSORS)
    if not s["tied"]:
        names.append("lm_head.weight")
    return names


def checksums(named, shape=None):
    """float64 sums and sums of squares of a few tensors: {name: [sum, sumsq]}; named: name -> array.
    The tensors: checksum_names(shape); without shape, the Mamba-1 list (the Mamba-2 one when named has
    Mamba-2 keys)."""
    if shape is not None:
        names = checksum_names(shape)
    elif "backbone.layers.0.mixer.dt_bias" in named:
        names = CHECKSUM_TENSORS_M2
    else:
        names = CHECKSUM_TENSORS
    out = {}
    for n in names:
        a = np.asarray(named[n], dtype=np.float64)
        out[n] = [float(a.sum()), float((a * a).sum())]
    return out


def find_tokenizer():
    for p in TOKENIZER_CANDIDATES:
        if os.path.exists(p):
            return os.path.abspath(p)
    return None


def original_config(s):
    if s["arch"] == "mamba2":
        # mamba_ssm's MambaConfig with ssm_cfg layer Mamba2. m2-130m's ssm_cfg is {"layer": "Mamba2"} alone, as in
        # state-spaces/mamba2-130m (every other value a Mamba2 default); the others spell out their own values.
        ssm = {"layer": "Mamba2"}
        if (s["d_state"], s["headdim"], s["ngroups"]) != (128, 64, 1):
            ssm.update(d_state=s["d_state"], headdim=s["headdim"], ngroups=s["ngroups"], chunk_size=s["chunk_size"])
        return {"d_model": s["d_model"], "d_intermediate": 0, "n_layer": s["n_layer"], "vocab_size": s["vocab_size"],
                "ssm_cfg": ssm, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
                "fused_add_norm": True, "pad_vocab_size_multiple": s["pad_multiple"], "tie_embeddings": s["tied"]}
    if s["arch"] != "mamba":
        raise ValueError("the original layout exists for Mamba-1 and Mamba-2 only (Falcon-Mamba: --layout hf)")
    return {"d_model": s["d_model"], "n_layer": s["n_layer"], "vocab_size": s["vocab_size"], "ssm_cfg": {},
            "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True,
            "pad_vocab_size_multiple": PAD_MULTIPLE, "tie_embeddings": True}


def hf_config(s):
    if s["arch"] == "mamba2":
        # the keys transformers' Mamba2Config writes (time_step_limit's inf: json writes Infinity, as HF does)
        return {"architectures": ["Mamba2ForCausalLM"], "bos_token_id": 0, "chunk_size": s["chunk_size"],
                "conv_kernel": s["d_conv"], "eos_token_id": 0, "expand": s["expand"], "head_dim": s["headdim"],
                "hidden_act": "silu", "hidden_size": s["d_model"], "initializer_range": 0.1,
                "layer_norm_epsilon": 1e-05, "model_type": "mamba2", "n_groups": s["ngroups"],
                "num_heads": s["n_heads"], "num_hidden_layers": s["n_layer"], "pad_token_id": 0,
                "rescale_prenorm_residual": False, "residual_in_fp32": True, "rms_norm": True,
                "state_size": s["d_state"], "tie_word_embeddings": s["tied"], "time_step_floor": 0.0001,
                "time_step_limit": [0.0, float("inf")], "time_step_max": 0.1, "time_step_min": 0.001,
                "time_step_rank": "auto", "torch_dtype": "float32", "use_bias": False, "use_cache": True,
                "use_conv_bias": True, "vocab_size": s["vocab_rows"]}
    # the keys transformers' MambaConfig.to_json_file writes (state-spaces/mamba-130m-hf)
    cfg = {"architectures": ["MambaForCausalLM"], "bos_token_id": 0, "conv_kernel": s["d_conv"],
           "eos_token_id": 0, "expand": s["expand"], "hidden_act": "silu", "hidden_size": s["d_model"],
           "initializer_range": 0.1, "intermediate_size": s["d_inner"], "layer_norm_epsilon": 1e-05,
           "model_type": "mamba", "num_hidden_layers": s["n_layer"], "pad_token_id": 0,
           "rescale_prenorm_residual": False, "residual_in_fp32": True, "state_size": s["d_state"],
           "tie_word_embeddings": True, "time_step_floor": 0.0001, "time_step_init_scheme": "random",
           "time_step_max": 0.1, "time_step_min": 0.001, "time_step_rank": s["dt_rank"], "time_step_scale": 1.0,
           "torch_dtype": "float32", "use_bias": False, "use_cache": True, "use_conv_bias": True,
           "use_mambapy": False, "vocab_size": s["vocab_rows"]}
    if s["arch"] == "falcon_mamba":  # FalconMambaConfig = MambaConfig + mixer_rms_eps (tiiuae/falcon-mamba-7b)
        cfg.update(architectures=["FalconMambaForCausalLM"], model_type="falcon_mamba",
                   mixer_rms_eps=s["mixer_rms_eps"], tie_word_embeddings=s["tied"])
    return cfg


_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.uint16): "BF16"}


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, array); arrays are written little-endian in the given order.
    A uint16 array is written as BF16 bits."""
    header = {"__metadata__": metadata or {"format": "pt"}}
    off = 0
    for name, a in tensors:
        n = a.size * a.dtype.itemsize
        header[name] = {"dtype": _ST_DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + n]}
        off += n
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for _, a in tensors:
            np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tofile(f)


def write_checkpoint(out_dir, shape="tiny", layout="original", seed=0, shards=1, vocab=None, tokenizer="auto"):
    s = dims(shape, vocab)
    os.makedirs(out_dir, exist_ok=True)
    if layout == "original" and s["arch"] == "falcon_mamba":
        raise ValueError("Falcon-Mamba checkpoints exist in the hf layout only")
    named = OrderedDict(weights(shape, seed, vocab))
    if layout == "original":
        import torch  # only this layout needs torch
        cfg = original_config(s)
        sd = OrderedDict((k, torch.from_numpy(v)) for k, v in named.items())
        if "lm_head.weight" not in sd:
            sd["lm_head.weight"] = sd["backbone.embedding.weight"]  # tied: one shared storage
        torch.save(sd, os.path.join(out_dir, "pytorch_model.bin"))
    elif layout == "hf":
        items = [("backbone.embeddings.weight" if k == "backbone.embedding.weight" else k, v) for k, v in named.items()]
        if shards <= 1:
            write_safetensors(os.path.join(out_dir, "model.safetensors"), items)
        else:
            total = sum(a.nbytes for _, a in items)
            groups, cur, acc = [], [], 0
            for it in items:
                cur.append(it)
                acc += it[1].nbytes
                if acc >= total * (len(groups) + 1) / shards and len(groups) < shards - 1:
                    groups.append(cur)
                    cur = []
            groups.append(cur)
            groups = [g for g in groups if g]
            wm = OrderedDict()
            for i, g in enumerate(groups):
                fn = "model-%05d-of-%05d.safetensors" % (i + 1, len(groups))
                write_safetensors(os.path.join(out_dir, fn), g)
                for n, _ in g:
                    wm[n] = fn
            with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)
        cfg = hf_config(s)
    else:
        raise ValueError("layout must be original or hf")
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    if tokenizer == "auto":
        tokenizer = find_tokenizer()
        if tokenizer is None:
            print("make_checkpoint: warning: no GPT-NeoX tokenizer.json found; none written", file=sys.stderr)
    if tokenizer:
        shutil.copyfile(tokenizer, os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "checksums.json"), "w") as f:
        json.dump({"shape": shape, "seed": seed, "vocab_size": s["vocab_size"], "checksums": checksums(named, shape)},
                  f, indent=1)
    return s


def main(argv=None):
    shapes_help = "; ".join("%s: %s" % (k, SHAPE_HELP[k]) for k in SHAPES)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=list(SHAPES), default="tiny", help=shapes_help)
    ap.add_argument("--layout", choices=["original", "hf"], default="original")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=1, help="hf layout: split into this many safetensors shards")
    ap.add_argument("--vocab", type=int, default=None, help="unpadded vocab size (default 50277)")
    ap.add_argument("--tokenizer", default="auto", help="tokenizer.json to copy in ('' for none)")
    ap.add_argument("out_dir")
    a = ap.parse_args(argv)
    try:
        s = write_checkpoint(a.out_dir, a.shape, a.layout, a.seed, a.shards, a.vocab, a.tokenizer)
    except ValueError as e:
        ap.error(str(e))
    print("wrote %s: %s layout, %s shape (%s, d_model %d, n_layer %d, vocab %d -> %d rows, %s), seed %d"
          % (a.out_dir, a.layout, a.shape, s["arch"], s["d_model"], s["n_layer"], s["vocab_size"], s["vocab_rows"],
             "tied" if s["tied"] else "untied", a.seed))


if __name__ == "__main__":
    main()
