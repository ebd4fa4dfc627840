#!/usr/bin/env python3
"""A plain numpy reference of the Mamba forward pass (docs/mamba.md), reading model.bin: Mamba-1,
Mamba-2 and Falcon-Mamba (format version 2, the header's arch field; version-1 files are Mamba-1).

Token by token, with a conv state and an SSM state per layer, in float64 by default. Its own
reader of model.bin (independent of export.py's writer and of model.c), so it doubles as a check
of the format.

Mamba-2, per layer (E = d_inner, H heads of P = head_dim, G groups, N = d_state, X = E + 2GN):
  zxbcdt = in_proj @ rmsnorm(residual) -> z [E], xBC [X], dt [H]; xBC = silu(causal conv + bias) -> x, B [G,N], C [G,N]
  dt = softplus(dt + dt_bias) (clamped to [dt_min, dt_max]); A = -exp(A_log); head h reads group h // (H/G)
  state[h] = exp(dt A) state[h] + dt x[h] outer B[g];  y[h] = state[h] @ C[g] + D[h] x[h]
  u = y * silu(z); one RMS per group of E/G channels (mamba_ssm's RMSNormGated, group_size E/G) * gnorm; out_proj
Falcon-Mamba: Mamba-1 with dt_in, B and C divided by sqrt(mean(v^2) + mixer_eps) right after x_proj.
forward_batch() of Mamba-2 is the chunked SSD form (mamba_ssm's ssd_minimal.py), not the recurrence.

    python3 tests/ref_numpy.py model.bin --tokens 510,1200,15 [--greedy 16] [--float32]

Library use:
    m = RefModel("model.bin");  logits = m.forward([1, 2, 3])       # [3, vocab_rows], token by token
    logits = m.forward_batch([1, 2, 3])                              # the same, sequence-parallel (faster)
    st = m.new_state(); row = m.step(tok, st)                        # one decode step
    logits = m.forward_batch(tokens, chunk=64, state=st)             # Mamba-2: SSD with 64-token chunks; st updated
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
# version 2, at offset 104: the Mamba-2 and Falcon-Mamba fields
HEADER2_FMT = "<4i3f"
HEADER2_FIELDS = ["n_heads", "head_dim", "n_groups", "chunk_size", "dt_min", "dt_max", "mixer_eps"]
ARCH_MAMBA1, ARCH_MAMBA2, ARCH_FALCON = 1, 2, 3
ARCH_NAMES = {ARCH_MAMBA1: "Mamba-1", ARCH_MAMBA2: "Mamba-2", ARCH_FALCON: "Falcon-Mamba"}


def read_header(buf):
    """The header as a dict. "reserved" is the raw u32 at offset 60 (version 1: 0); "arch" is that value with
    0 read as 1 (Mamba-1)."""
    vals = struct.unpack_from(HEADER_FMT, buf, 0)
    h = dict(zip(HEADER_FIELDS, vals))
    if h["magic"] != b"MAMBABIN":
        raise ValueError("bad magic %r" % h["magic"])
    h.update(zip(HEADER2_FIELDS, struct.unpack_from(HEADER2_FMT, buf, 104)))
    h["arch"] = h["reserved"] or ARCH_MAMBA1
    if h["version"] not in (1, 2):
        raise ValueError("unknown version %d" % h["version"])
    if h["version"] == 1 and h["reserved"] != 0:
        raise ValueError("version 1 with arch %d" % h["reserved"])
    if h["arch"] not in ARCH_NAMES:
        raise ValueError("unknown arch %d" % h["arch"])
    if h["arch"] == ARCH_MAMBA2:
        if h["n_heads"] <= 0 or h["n_heads"] * h["head_dim"] != h["d_inner"] or h["n_groups"] <= 0 \
                or h["n_heads"] % h["n_groups"] != 0:
            raise ValueError("bad Mamba-2 shape: n_heads %d head_dim %d n_groups %d d_inner %d"
                             % (h["n_heads"], h["head_dim"], h["n_groups"], h["d_inner"]))
    return h


def conv_channels(h):
    """Channels of the causal conv: d_inner (Mamba-1, Falcon), d_inner + 2 * n_groups * d_state (Mamba-2)."""
    if h["arch"] == ARCH_MAMBA2:
        return h["d_inner"] + 2 * h["n_groups"] * h["d_state"]
    return h["d_inner"]


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


def quantize_acts(x):
    """The activations of a quantized matrix (model.h): x [..., cols] quantized per block of 32 along the last
    axis, in float32 as the engines do it: (q [..., cols/32, 32] float32 integers, dx [..., cols/32] float32)."""
    b = np.asarray(x, np.float32).reshape(np.shape(x)[:-1] + (-1, 32))
    amax = np.abs(b).max(axis=-1)
    with np.errstate(over="ignore"):
        inv = np.float32(127) / np.where(amax > 0, amax, np.float32(1))
    inv = np.where((amax > 0) & np.isfinite(inv), inv, np.float32(0))  # amax == 0 or 127/amax overflows: every q 0
    q = np.rint(b * inv[..., None])  # a float32 product; rint: half to even
    return q, amax / np.float32(127)


def dequantize_acts(x):
    """x' = dx * q (float32): what a quantized matrix multiplies instead of x (the prefill GEMM's input)."""
    q, dx = quantize_acts(x)
    return (q * dx[..., None]).reshape(np.shape(x))


def load_model_bin(path, offsets=None):
    """(header, tokenizer section bytes, weights dict of fp32 arrays, layers list of dicts). offsets: a dict
    to fill with each tensor's file offset (name -> offset; a quantized one: (quants, scales))."""
    buf = np.memmap(path, dtype=np.uint8, mode="r")
    h = read_header(bytes(buf[:256]))
    if h["file_bytes"] != len(buf):
        raise ValueError("file is %d bytes, header says %d" % (len(buf), h["file_bytes"]))
    tok = bytes(buf[h["tokenizer_offset"]:h["tokenizer_offset"] + h["tokenizer_bytes"]])
    D, E, N, K, R, V = (h[k] for k in ("d_model", "d_inner", "d_state", "d_conv", "dt_rank", "vocab_rows"))
    off = [0]
    if h["dtype"] not in (0, 1, 2, 3, 4):
        raise ValueError("unknown dtype %d" % h["dtype"])

    def take(kind, shape, name):
        """kind: "vec" (fp32), "mat" (the header's dtype), "mat16" (a mat that quantized files keep in fp16)."""
        off[0] = (off[0] + 63) // 64 * 64
        n = int(np.prod(shape))
        dt = 0 if kind == "vec" else 1 if kind == "mat16" and h["dtype"] >= 3 else h["dtype"]
        start = h["weights_offset"] + off[0]
        if dt < 3:
            if offsets is not None:
                offsets[name] = start
            es = 4 if dt == 0 else 2
            raw = buf[start:start + n * es]
            off[0] += n * es
            return _to_f32(np.asarray(raw), dt).reshape(shape)
        # quantized (model.h): quants [rows][cols/32 blocks], padding to 64, fp16 scales [rows][cols/32]
        rows, cols = shape
        nb = cols // 32
        qbytes = n if dt == 3 else n // 2
        q = np.asarray(buf[start:start + qbytes]).reshape(rows, nb, -1)
        s0 = start + (qbytes + 63) // 64 * 64
        if offsets is not None:
            offsets[name] = (start, s0)
        scale = np.asarray(buf[s0:s0 + rows * nb * 2]).view("<f2").astype(np.float32).reshape(rows, nb, 1)
        off[0] = s0 - h["weights_offset"] + rows * nb * 2
        if dt == 3:
            v = q.view(np.int8).astype(np.float32)
        else:  # byte j of a block: element j (low nibble), element j + 16 (high nibble)
            v = np.concatenate([q & 15, q >> 4], axis=2).astype(np.float32) - 8
        return (v * scale).reshape(shape)

    w = {"embedding": take("mat", (V, D), "embedding")}
    layers = []
    H, G = h["n_heads"], h["n_groups"]
    X = conv_channels(h)
    for _ in range(h["n_layer"]):
        L = {}
        if h["arch"] == ARCH_MAMBA2:
            L["norm"] = take("vec", (D,), "%d.norm" % len(layers))
            L["in_proj"] = take("mat", (2 * E + 2 * G * N + H, D), "%d.in_proj" % len(layers))  # rows z, x, B, C, dt
            L["conv_w"] = take("vec", (X, K), "%d.conv_w" % len(layers))
            L["conv_b"] = take("vec", (X,), "%d.conv_b" % len(layers))
            L["dt_bias"] = take("vec", (H,), "%d.dt_bias" % len(layers))
            L["A_log"] = take("vec", (H,), "%d.A_log" % len(layers))
            L["D"] = take("vec", (H,), "%d.D" % len(layers))
            L["gnorm"] = take("vec", (E,), "%d.gnorm" % len(layers))
            L["out_proj"] = take("mat", (D, E), "%d.out_proj" % len(layers))
            layers.append(L)
            continue
        L["norm"] = take("vec", (D,), "%d.norm" % len(layers))
        L["in_proj"] = take("mat", (2 * E, D), "%d.in_proj" % len(layers))
        L["conv_w"] = take("vec", (E, K), "%d.conv_w" % len(layers))
        L["conv_b"] = take("vec", (E,), "%d.conv_b" % len(layers))
        L["x_proj"] = take("mat", (R + 2 * N, E), "%d.x_proj" % len(layers))
        L["dt_proj_w"] = take("mat16", (E, R), "%d.dt_proj_w" % len(layers))
        L["dt_proj_b"] = take("vec", (E,), "%d.dt_proj_b" % len(layers))
        L["A_log"] = take("vec", (E, N), "%d.A_log" % len(layers))
        L["D"] = take("vec", (E,), "%d.D" % len(layers))
        L["out_proj"] = take("mat", (D, E), "%d.out_proj" % len(layers))
        layers.append(L)
    w["norm_f"] = take("vec", (D,), "norm_f")
    w["lm_head"] = take("mat", (V, D), "lm_head") if h["tied"] == 0 else w["embedding"]
    end = (off[0] + 63) // 64 * 64
    if end != h["weights_bytes"]:
        raise ValueError("weights end at %d, header says weights_bytes %d" % (end, h["weights_bytes"]))
    return h, tok, w, layers


def softplus(v):
    return np.where(v > 20.0, v, np.log1p(np.exp(np.minimum(v, 20.0))))


def silu(v):
    return v / (1.0 + np.exp(-v))


def rms(v, eps):
    """v / sqrt(mean(v^2) + eps) over the last axis (weightless)."""
    return v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + eps)


def segsum(a):
    """[..., T] -> [..., T, T]: out[..., i, j] = sum(a[..., j+1:i+1]) for i >= j, -inf above the diagonal."""
    T = a.shape[-1]
    cs = np.cumsum(a, axis=-1)
    d = cs[..., :, None] - cs[..., None, :]
    mask = np.tril(np.ones((T, T), dtype=bool))
    return np.where(mask, d, -np.inf)


def ssd_chunked(x, dt, A, B, C, chunk, initial_state=None):
    """The SSD form of the Mamba-2 scan (mamba_ssm/modules/ssd_minimal.py), D and the gate not included.
    x [T, H, P], dt [T, H] (after softplus/clamp), A [H], B and C [T, H, N] (already per head).
    Returns y [T, H, P] and the final state [H, P, N]."""
    T, H, P = x.shape
    N = B.shape[-1]
    dtype = x.dtype
    Q = int(chunk)
    pad = (-T) % Q
    X = x * dt[:, :, None]
    a = A[None, :] * dt                                     # [T, H]
    if pad:
        X = np.concatenate([X, np.zeros((pad, H, P), dtype)])
        a = np.concatenate([a, np.zeros((pad, H), dtype)])
        B = np.concatenate([B, np.zeros((pad, H, N), dtype)])
        C = np.concatenate([C, np.zeros((pad, H, N), dtype)])
    c = (T + pad) // Q
    X, B, C = X.reshape(c, Q, H, P), B.reshape(c, Q, H, N), C.reshape(c, Q, H, N)
    a = a.reshape(c, Q, H).transpose(2, 0, 1)               # [H, c, Q]
    a_cs = np.cumsum(a, axis=-1)
    # 1. within a chunk: (C_l . B_s) * decay(s -> l) * dt_s x_s, s <= l
    Lmat = np.exp(segsum(a))                                # [H, c, Q(l), Q(s)]
    CB = np.einsum("clhn,cshn->chls", C, B)
    y_diag = np.einsum("chls,cshp->clhp", CB * Lmat.transpose(1, 0, 2, 3), X)
    # 2. each chunk's own final state (from zero)
    decay_states = np.exp(a_cs[:, :, -1:] - a_cs)          # [H, c, Q]
    states = np.einsum("clhn,hcl,clhp->chpn", B, decay_states, X, optimize=True)
    # 3. states passed from chunk to chunk
    init = np.zeros((1, H, P, N), dtype) if initial_state is None else np.asarray(initial_state, dtype)[None]
    states = np.concatenate([init, states])                 # [c+1, H, P, N]
    decay_chunk = np.exp(segsum(np.pad(a_cs[:, :, -1], ((0, 0), (1, 0)))))  # [H, c+1, c+1]
    new_states = np.einsum("hzc,chpn->zhpn", decay_chunk, states)
    states, final = new_states[:-1], new_states[-1]
    # 4. the carried-in state's contribution to each position
    y_off = np.einsum("clhn,chpn,hcl->clhp", C, states, np.exp(a_cs), optimize=True)
    y = (y_diag + y_off).reshape(c * Q, H, P)[:T]
    return y, final


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
        self.arch = self.header["arch"]
        h = self.header
        if self.arch == ARCH_MAMBA2:
            self.H, self.P, self.G, self.N = h["n_heads"], h["head_dim"], h["n_groups"], h["d_state"]
            self.head_group = np.arange(self.H) // (self.H // self.G)
            self.dt_min, self.dt_max = float(h["dt_min"]), float(h["dt_max"])
            self.chunk_size = h["chunk_size"] or 256
            # the gated norm's groups: n_groups (mamba_ssm). 1 = one RMS over the whole d_inner width, which is
            # what transformers' MambaRMSNormGated computes (differs from mamba_ssm when n_groups > 1)
            self.gated_norm_groups = self.G
        self.mixer_eps = float(h["mixer_eps"])
        self.quantized = h["dtype"] >= 3

    def proj(self, W, x):
        """W @ x over x's last axis; a quantized file's quantized matrices (all but dt_proj) multiply x quantized."""
        if self.quantized:
            x = dequantize_acts(x).astype(self.dt)
        return x @ W.T

    def new_state(self):
        """Per layer (conv state, ssm state). Mamba-1 / Falcon: conv [d_inner, d_conv] (the window including the
        current input), ssm [d_inner, d_state]. Mamba-2: conv [X, d_conv - 1] (the last d_conv-1 inputs of the
        X = d_inner + 2GN conv channels, oldest first), ssm [n_heads, head_dim, d_state]."""
        h = self.header
        if self.arch == ARCH_MAMBA2:
            return [(np.zeros((conv_channels(h), h["d_conv"] - 1), self.dt), np.zeros((self.H, self.P, self.N), self.dt))
                    for _ in range(h["n_layer"])]
        return [(np.zeros((h["d_inner"], h["d_conv"]), self.dt), np.zeros((h["d_inner"], h["d_state"]), self.dt))
                for _ in range(h["n_layer"])]

    def rmsnorm(self, x, w):
        return x / np.sqrt(np.mean(x * x) + self.eps) * w

    def gated_norm(self, u, w, groups=None):
        """RMSNorm of u (already y * silu(z)) with one RMS per group of d_inner/groups consecutive channels."""
        g = self.gated_norm_groups if groups is None else groups
        shp = u.shape
        v = u.reshape(shp[:-1] + (g, shp[-1] // g))
        v = v / np.sqrt(np.mean(v * v, axis=-1, keepdims=True) + self.eps)
        return v.reshape(shp) * w

    def _dt2(self, dt_raw, L):
        dt = softplus(dt_raw + L["dt_bias"])
        if self.dt_min > 0 or self.dt_max < np.inf:
            dt = np.clip(dt, self.dt_min, self.dt_max)
        return dt

    def _mixer2_step(self, L, x0, conv, ssm):
        E, G, N, H, P = self.header["d_inner"], self.G, self.N, self.H, self.P
        X = E + 2 * G * N
        zxbcdt = self.proj(L["in_proj"], x0)
        z, xbc, dt = zxbcdt[:E], zxbcdt[E:E + X], zxbcdt[E + X:]
        win = np.concatenate([conv, xbc[:, None]], axis=1)  # [X, K]
        conv[:] = win[:, 1:]
        xbc = silu(np.sum(win * L["conv_w"], axis=1) + L["conv_b"])
        x = xbc[:E].reshape(H, P)
        B = xbc[E:E + G * N].reshape(G, N)[self.head_group]  # [H, N]
        C = xbc[E + G * N:].reshape(G, N)[self.head_group]
        dt = self._dt2(dt, L)
        ssm *= np.exp(dt * L["A"])[:, None, None]
        ssm += (dt[:, None] * x)[:, :, None] * B[:, None, :]
        y = np.einsum("hpn,hn->hp", ssm, C) + L["D"][:, None] * x
        u = y.reshape(E) * silu(z)
        return self.proj(L["out_proj"], self.gated_norm(u, L["gnorm"]))

    def _mixer1_step(self, L, x0, conv, ssm):
        h = self.header
        E, R, N = h["d_inner"], h["dt_rank"], h["d_state"]
        xz = self.proj(L["in_proj"], x0)
        x, z = xz[:E], xz[E:]
        conv[:, :-1] = conv[:, 1:]
        conv[:, -1] = x
        x = silu(np.sum(conv * L["conv_w"], axis=1) + L["conv_b"])
        dbc = self.proj(L["x_proj"], x)
        dt_in, B, C = dbc[:R], dbc[R:R + N], dbc[R + N:]
        if self.arch == ARCH_FALCON:
            dt_in, B, C = rms(dt_in, self.mixer_eps), rms(B, self.mixer_eps), rms(C, self.mixer_eps)
        dt = softplus(L["dt_proj_w"] @ dt_in + L["dt_proj_b"])
        ssm *= np.exp(dt[:, None] * L["A"])
        ssm += (dt * x)[:, None] * B[None, :]
        y = ssm @ C + L["D"] * x
        y = y * silu(z)
        return self.proj(L["out_proj"], y)

    def step(self, token, state):
        """One token through the model; updates state in place; returns logits [vocab_rows]."""
        mixer = self._mixer2_step if self.arch == ARCH_MAMBA2 else self._mixer1_step
        residual = self.embedding[token].copy()
        hidden = None
        for L, (conv, ssm) in zip(self.layers, state):
            if hidden is not None:
                residual = residual + hidden
            hidden = mixer(L, self.rmsnorm(residual, L["norm"]), conv, ssm)
        residual = residual + hidden
        return self.proj(self.lm_head, self.rmsnorm(residual, self.norm_f))

    def forward(self, tokens, state=None):
        """Logits for every position: [len(tokens), vocab_rows]."""
        state = self.new_state() if state is None else state
        return np.stack([self.step(int(t), state) for t in tokens])

    def forward_batch(self, tokens, chunk=None, state=None, head=True):
        """The same logits as forward(), computed sequence-parallel: the projections as matrix products over all
        tokens, the conv over time; Mamba-1 / Falcon: the SSM recurrence step by step; Mamba-2: the chunked SSD
        form with chunk-token chunks (default: the header's chunk_size). From zero state, or from state (then
        updated in place to the states after the tokens, as forward() leaves them). head=False: the final
        normed hidden states [T, d_model] instead of the logits (logits = that @ lm_head.T)."""
        h = self.header
        E, R, N, K = h["d_inner"], h["dt_rank"], h["d_state"], h["d_conv"]
        T = len(tokens)
        residual = self.embedding[np.asarray(tokens, dtype=np.int64)].copy()
        hidden = None
        for li, L in enumerate(self.layers):
            if hidden is not None:
                residual = residual + hidden
            x0 = residual / np.sqrt(np.mean(residual * residual, axis=1, keepdims=True) + self.eps) * L["norm"]
            if self.arch == ARCH_MAMBA2:
                hidden = self._mixer2_batch(L, x0, chunk, None if state is None else state[li])
                continue
            xz = self.proj(L["in_proj"], x0)
            x, z = xz[:, :E], xz[:, E:]
            prev = np.zeros((K - 1, E), self.dt) if state is None else state[li][0][:, 1:].T
            xp = np.concatenate([prev, x])
            if state is not None:
                state[li][0][:] = xp[-K:].T
            conv = sum(xp[k:k + T] * L["conv_w"][:, k] for k in range(K)) + L["conv_b"]
            x = silu(conv)
            dbc = self.proj(L["x_proj"], x)
            dt_in, B, C = dbc[:, :R], dbc[:, R:R + N], dbc[:, R + N:]
            if self.arch == ARCH_FALCON:
                dt_in, B, C = rms(dt_in, self.mixer_eps), rms(B, self.mixer_eps), rms(C, self.mixer_eps)
            dt = softplus(dt_in @ L["dt_proj_w"].T + L["dt_proj_b"])
            s = np.zeros((E, N), self.dt) if state is None else state[li][1].copy()
            y = np.empty((T, E), self.dt)
            for t in range(T):
                s = np.exp(dt[t][:, None] * L["A"]) * s + (dt[t] * x[t])[:, None] * B[t][None, :]
                y[t] = s @ C[t]
            if state is not None:
                state[li][1][:] = s
            y = (y + L["D"] * x) * silu(z)
            hidden = self.proj(L["out_proj"], y)
        residual = residual + hidden
        xf = residual / np.sqrt(np.mean(residual * residual, axis=1, keepdims=True) + self.eps) * self.norm_f
        return self.proj(self.lm_head, xf) if head else xf

    def _mixer2_batch(self, L, x0, chunk, st):
        E, G, N, H, P, K = self.header["d_inner"], self.G, self.N, self.H, self.P, self.header["d_conv"]
        X = E + 2 * G * N
        T = x0.shape[0]
        zxbcdt = self.proj(L["in_proj"], x0)
        z, xbc, dt = zxbcdt[:, :E], zxbcdt[:, E:E + X], zxbcdt[:, E + X:]
        prev = np.zeros((K - 1, X), self.dt) if st is None else st[0].T
        xp = np.concatenate([prev, xbc])
        if st is not None:
            st[0][:] = xp[-(K - 1):].T
        xbc = silu(sum(xp[k:k + T] * L["conv_w"][:, k] for k in range(K)) + L["conv_b"])
        x = xbc[:, :E].reshape(T, H, P)
        B = xbc[:, E:E + G * N].reshape(T, G, N)[:, self.head_group]
        C = xbc[:, E + G * N:].reshape(T, G, N)[:, self.head_group]
        dt = self._dt2(dt, L)
        y, final = ssd_chunked(x, dt, L["A"], B, C, chunk or self.chunk_size, None if st is None else st[1])
        if st is not None:
            st[1][:] = final
        y = y + L["D"][None, :, None] * x
        u = y.reshape(T, E) * silu(z)
        return self.proj(L["out_proj"], self.gated_norm(u, L["gnorm"]))

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
    print("%s, d_model %d, %d layers, vocab %d rows" % (ARCH_NAMES[m.arch], m.header["d_model"], m.header["n_layer"],
                                                       m.header["vocab_rows"]))
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
