#!/usr/bin/env python3
"""A plain numpy reference of the Mamba-1 forward pass (docs/mamba.md), reading model.bin.

Token by token, with a conv state and an SSM state per layer, in float64 by default. Its own
reader of model.bin (independent of export.py's writer and of model.c), so it doubles as a check
of the format.

    python3 tests/ref_numpy.py model.bin --tokens 510,1200,15 [--greedy 16] [--float32]

Library use:
    m = RefModel("model.bin");  logits = m.forward([1, 2, 3])       # [3, vocab_rows], token by token
    logits = m.forward_batch([1, 2, 3])                              # the same, sequence-parallel (faster)
    st = m.new_state(); row = m.step(tok, st)                        # one decode step
    toks = m.greedy(prompt, n)                                       # argmax over ids < vocab_size
"""
import argparse
import struct
import sys

import numpy as np

HEADER_FMT = "<8sII10ifIQQQQQ"
HEADER_FIELDS = ["magic", "version", "header_bytes", "d_model", "n_layer", "d_inner", "d_state", "d_conv", "dt_rank",
                 "vocab_rows", "vocab_size", "dtype", "tied", "norm_eps", "reserved", "tokenizer_offset",
                 "tokenizer_bytes", "weights_offset", "weights_bytes", "file_bytes"]


def read_header(buf):
    vals = struct.unpack_from(HEADER_FMT, buf, 0)
    h = dict(zip(HEADER_FIELDS, vals))
    if h["magic"] != b"MAMBABIN":
        raise ValueError("bad magic %r" % h["magic"])
    return h


def parse_tokenizer(sec):
    """The tokenizer section as a dict (kind 1: vocab list of bytes, merges [n,3], added [(id, flags)])."""
    sec = bytes(sec)
    magic, version, kind, bos, eos, pad = struct.unpack_from("<4sIIiii", sec, 0)
    if magic != b"TOKN":
        raise ValueError("bad tokenizer magic %r" % magic)
    t = dict(version=version, kind=kind, bos=bos, eos=eos, pad=pad)
    p = 24
    if kind == 1:
        flags, n = struct.unpack_from("<II", sec, p)
        p += 8
        vocab = []
        for _ in range(n):
            (ln,) = struct.unpack_from("<I", sec, p)
            vocab.append(sec[p + 4:p + 4 + ln])
            p += 4 + ln
        (nm,) = struct.unpack_from("<I", sec, p)
        p += 4
        merges = np.frombuffer(sec, dtype="<u4", count=3 * nm, offset=p).reshape(nm, 3)
        p += 12 * nm
        (na,) = struct.unpack_from("<I", sec, p)
        p += 4
        added = [struct.unpack_from("<II", sec, p + 8 * i) for i in range(na)]
        p += 8 * na
        t.update(flags=flags, vocab=vocab, merges=merges, added=added)
    elif kind == 2:
        (nb,) = struct.unpack_from("<I", sec, p)
        p += 4
        t["proto"] = sec[p:p + nb]
        p += nb
    else:
        raise ValueError("unknown tokenizer kind %d" % kind)
    if p != len(sec):
        raise ValueError("tokenizer section is %d bytes, parsed %d" % (len(sec), p))
    return t


def _to_f32(raw, dtype):
    if dtype == 0:
        return raw.view("<f4")
    if dtype == 1:
        return raw.view("<f2").astype(np.float32)
    if dtype == 2:
        return (raw.view("<u2").astype(np.uint32) << np.uint32(16)).view(np.float32)
    raise ValueError("bad dtype %d" % dtype)


def load_model_bin(path):
    """(header, tokenizer section bytes, weights dict of fp32 arrays, layers list of dicts)."""
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    h = read_header(bytes(buf[:256]))
    if h["file_bytes"] != len(buf):
        raise ValueError("file is %d bytes, header says %d" % (len(buf), h["file_bytes"]))
    tok = bytes(buf[h["tokenizer_offset"]:h["tokenizer_offset"] + h["tokenizer_bytes"]])
    D, E, N, K, R, V = (h[k] for k in ("d_model", "d_inner", "d_state", "d_conv", "dt_rank", "vocab_rows"))
    off = [0]
    msize = 4 if h["dtype"] == 0 else 2

    def take(kind, shape):
        off[0] = (off[0] + 63) // 64 * 64
        n = int(np.prod(shape))
        es = msize if kind == "mat" else 4
        start = h["weights_offset"] + off[0]
        raw = buf[start:start + n * es]
        off[0] += n * es
        return _to_f32(np.asarray(raw), h["dtype"] if kind == "mat" else 0).reshape(shape)

    w = {"embedding": take("mat", (V, D))}
    layers = []
    for _ in range(h["n_layer"]):
        L = {}
        L["norm"] = take("vec", (D,))
        L["in_proj"] = take("mat", (2 * E, D))
        L["conv_w"] = take("vec", (E, K))
        L["conv_b"] = take("vec", (E,))
        L["x_proj"] = take("mat", (R + 2 * N, E))
        L["dt_proj_w"] = take("mat", (E, R))
        L["dt_proj_b"] = take("vec", (E,))
        L["A_log"] = take("vec", (E, N))
        L["D"] = take("vec", (E,))
        L["out_proj"] = take("mat", (D, E))
        layers.append(L)
    w["norm_f"] = take("vec", (D,))
    w["lm_head"] = take("mat", (V, D)) if h["tied"] == 0 else w["embedding"]
    end = (off[0] + 63) // 64 * 64
    if end != h["weights_bytes"]:
        raise ValueError("weights end at %d, header says weights_bytes %d" % (end, h["weights_bytes"]))
    return h, tok, w, layers


def softplus(v):
    return np.where(v > 20.0, v, np.log1p(np.exp(np.minimum(v, 20.0))))


def silu(v):
    return v / (1.0 + np.exp(-v))


class RefModel:
    def __init__(self, path, dtype=np.float64):
        self.header, self.tokenizer_section, w, layers = load_model_bin(path)
        self.dt = dtype
        c = lambda a: np.asarray(a, dtype=dtype)  # noqa: E731
        self.embedding = c(w["embedding"])
        self.lm_head = self.embedding if self.header["tied"] else c(w["lm_head"])
        self.norm_f = c(w["norm_f"])
        self.layers = [{k: c(v) for k, v in L.items()} for L in layers]
        for L in self.layers:
            L["A"] = -np.exp(L["A_log"])
        self.eps = float(self.header["norm_eps"])
        self.vocab_size = self.header["vocab_size"]

    def new_state(self):
        h = self.header
        return [(np.zeros((h["d_inner"], h["d_conv"]), self.dt), np.zeros((h["d_inner"], h["d_state"]), self.dt))
                for _ in range(h["n_layer"])]

    def rmsnorm(self, x, w):
        return x / np.sqrt(np.mean(x * x) + self.eps) * w

    def step(self, token, state):
        """One token through the model; updates state in place; returns logits [vocab_rows]."""
        h = self.header
        E, R, N = h["d_inner"], h["dt_rank"], h["d_state"]
        residual = self.embedding[token].copy()
        hidden = None
        for L, (conv, ssm) in zip(self.layers, state):
            if hidden is not None:
                residual = residual + hidden
            x0 = self.rmsnorm(residual, L["norm"])
            xz = L["in_proj"] @ x0
            x, z = xz[:E], xz[E:]
            conv[:, :-1] = conv[:, 1:]
            conv[:, -1] = x
            x = silu(np.sum(conv * L["conv_w"], axis=1) + L["conv_b"])
            dbc = L["x_proj"] @ x
            dt_in, B, C = dbc[:R], dbc[R:R + N], dbc[R + N:]
            dt = softplus(L["dt_proj_w"] @ dt_in + L["dt_proj_b"])
            ssm *= np.exp(dt[:, None] * L["A"])
            ssm += (dt * x)[:, None] * B[None, :]
            y = ssm @ C + L["D"] * x
            y = y * silu(z)
            hidden = L["out_proj"] @ y
        residual = residual + hidden
        return self.lm_head @ self.rmsnorm(residual, self.norm_f)

    def forward(self, tokens, state=None):
        """Logits for every position: [len(tokens), vocab_rows]."""
        state = self.new_state() if state is None else state
        return np.stack([self.step(int(t), state) for t in tokens])

    def forward_batch(self, tokens):
        """The same logits as forward() from zero state, computed sequence-parallel: the projections as
        matrix products over all tokens, the conv over time, only the SSM recurrence step by step."""
        h = self.header
        E, R, N, K = h["d_inner"], h["dt_rank"], h["d_state"], h["d_conv"]
        T = len(tokens)
        residual = self.embedding[np.asarray(tokens, dtype=np.int64)].copy()
        hidden = None
        for L in self.layers:
            if hidden is not None:
                residual = residual + hidden
            x0 = residual / np.sqrt(np.mean(residual * residual, axis=1, keepdims=True) + self.eps) * L["norm"]
            xz = x0 @ L["in_proj"].T
            x, z = xz[:, :E], xz[:, E:]
            xp = np.concatenate([np.zeros((K - 1, E), self.dt), x])
            conv = sum(xp[k:k + T] * L["conv_w"][:, k] for k in range(K)) + L["conv_b"]
            x = silu(conv)
            dbc = x @ L["x_proj"].T
            dt = softplus(dbc[:, :R] @ L["dt_proj_w"].T + L["dt_proj_b"])
            B, C = dbc[:, R:R + N], dbc[:, R + N:]
            s = np.zeros((E, N), self.dt)
            y = np.empty((T, E), self.dt)
            for t in range(T):
                s = np.exp(dt[t][:, None] * L["A"]) * s + (dt[t] * x[t])[:, None] * B[t][None, :]
                y[t] = s @ C[t]
            y = (y + L["D"] * x) * silu(z)
            hidden = y @ L["out_proj"].T
        residual = residual + hidden
        xf = residual / np.sqrt(np.mean(residual * residual, axis=1, keepdims=True) + self.eps) * self.norm_f
        return xf @ self.lm_head.T

    def argmax(self, logits):
        return int(np.argmax(logits[:self.vocab_size]))

    def greedy(self, prompt, n, state=None):
        state = self.new_state() if state is None else state
        logits = None
        for t in prompt:
            logits = self.step(int(t), state)
        out = []
        for _ in range(n):
            t = self.argmax(logits)
            out.append(t)
            logits = self.step(t, state)
        return out


def main(argv=None):
    ap = argparse.ArgumentParser(description="numpy reference forward of a model.bin")
    ap.add_argument("model")
    ap.add_argument("--tokens", required=True, help="comma-separated prompt ids")
    ap.add_argument("--greedy", type=int, default=0, help="greedy-generate this many tokens")
    ap.add_argument("--float32", action="store_true")
    a = ap.parse_args(argv)
    m = RefModel(a.model, np.float32 if a.float32 else np.float64)
    toks = [int(x) for x in a.tokens.split(",") if x.strip()]
    logits = m.forward(toks)
    for i, row in enumerate(logits):
        top = np.argsort(-row[:m.vocab_size])[:5]
        print("pos %d tok %d: max|logit| %.4f top5 %s" % (i, toks[i], np.abs(row).max(),
                                                          " ".join("%d:%.4f" % (j, row[j]) for j in top)))
    if a.greedy:
        print("greedy:", ",".join(str(t) for t in m.greedy(toks, a.greedy)))


if __name__ == "__main__":
    sys.exit(main())
