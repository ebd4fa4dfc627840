"""A Mamba-1 language model (MambaLM) and a Mamba-2 one (Mamba2LM) in plain PyTorch, with the parameter
names and shapes of Hugging Face's MambaForCausalLM / Mamba2ForCausalLM (the `-hf` checkpoint layout), so
that what they save loads there unchanged.

Runs on torch 1.13 (CPU) and torch 2.x (CUDA). No custom kernels: the selective scan is a chunked
linear scan (sequential inside chunks of `chunk` steps, then one pass to carry the state across
chunks), with its own backward (the gradient of a linear recurrence is the same recurrence run
backwards), so autograd keeps only two [batch, time, d_inner, d_state] tensors per layer.

Mamba-2 trains through the SSD ("state space duality") chunked form of mamba_ssm's ssd_minimal.py in
plain torch ops (autograd through it): within a chunk a masked matrix product, between chunks the state
carried.

Also here: a one-token recurrent step for both families (the computation of shared/docs/mamba.md, in
the order the C engine uses) and a small safetensors reader/writer in numpy.
"""
import json
import math
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# Tensors that model.bin stores in its matrix dtype ("mat"); all others are fp32 vectors.
MAT_KEYS = ("embeddings.weight", "in_proj.weight", "x_proj.weight", "dt_proj.weight", "out_proj.weight")


def is_mat(name):
    return name.endswith(MAT_KEYS)


class MambaArgs:
    arch = "mamba1"

    def __init__(self, d_model=256, n_layer=8, vocab_size=4096, d_state=16, expand=2, d_conv=4,
                 dt_rank=None, norm_eps=1e-5, bos_id=1, eos_id=2):
        self.d_model = int(d_model)
        self.n_layer = int(n_layer)
        self.vocab_size = int(vocab_size)
        self.d_state = int(d_state)
        self.expand = int(expand)
        self.d_inner = self.expand * self.d_model
        self.d_conv = int(d_conv)
        self.dt_rank = int(dt_rank) if dt_rank else math.ceil(self.d_model / 16)
        self.norm_eps = float(norm_eps)
        self.bos_id = bos_id
        self.eos_id = eos_id

    def to_hf(self):
        """config.json of transformers' MambaConfig."""
        return {
            "architectures": ["MambaForCausalLM"],
            "model_type": "mamba",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer,
            "state_size": self.d_state,
            "expand": self.expand,
            "intermediate_size": self.d_inner,
            "conv_kernel": self.d_conv,
            "time_step_rank": self.dt_rank,
            "layer_norm_epsilon": self.norm_eps,
            "use_bias": False,
            "use_conv_bias": True,
            "hidden_act": "silu",
            "residual_in_fp32": True,
            "tie_word_embeddings": True,
            "initializer_range": 0.02,
            # False, as in state-spaces' own -hf configs: the flag only describes the init, and
            # transformers 5.x applies it again inside from_pretrained, over the loaded out_proj weights
            "rescale_prenorm_residual": False,
            "time_step_scale": 1.0,
            "time_step_min": 0.001,
            "time_step_max": 0.1,
            "time_step_init_scheme": "random",
            "time_step_floor": 0.0001,
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "pad_token_id": None,
            "use_cache": True,
            "use_mambapy": False,
            "torch_dtype": "float32",
        }

    @classmethod
    def from_hf(cls, c):
        return cls(d_model=c["hidden_size"], n_layer=c["num_hidden_layers"], vocab_size=c["vocab_size"],
                   d_state=c.get("state_size", 16), expand=c.get("expand", 2), d_conv=c.get("conv_kernel", 4),
                   dt_rank=c.get("time_step_rank"), norm_eps=c.get("layer_norm_epsilon", 1e-5),
                   bos_id=c.get("bos_token_id"), eos_id=c.get("eos_token_id"))

    def __repr__(self):
        return ("MambaArgs(d_model=%d, n_layer=%d, vocab_size=%d, d_inner=%d, d_state=%d, d_conv=%d, dt_rank=%d)"
                % (self.d_model, self.n_layer, self.vocab_size, self.d_inner, self.d_state, self.d_conv, self.dt_rank))


# ----------------------------------------------------------------------------------------------
# the linear scan h_t = a_t * h_{t-1} + b_t over dim 1 (time), h_{-1} = 0

def _scan(a, b, chunk, reverse=False):
    """a, b: [B, L, ...] float. Returns h, same shape. reverse: h_t = a_t * h_{t+1} + b_t."""
    Bsz, L = a.shape[0], a.shape[1]
    rest = a.shape[2:]
    K = max(1, min(chunk, L))
    nc = (L + K - 1) // K
    Lp = nc * K
    if Lp != L:  # padding with b = 0 keeps a zero state there, whichever end the scan starts from
        pad_a = a.new_ones((Bsz, Lp - L) + rest)
        pad_b = b.new_zeros((Bsz, Lp - L) + rest)
        a = torch.cat([a, pad_a], 1)
        b = torch.cat([b, pad_b], 1)
    A = a.reshape((Bsz, nc, K) + rest)
    Bv = b.reshape((Bsz, nc, K) + rest)
    H = torch.empty_like(Bv)
    P = torch.empty_like(A)  # product of a over the chunk up to (and including) step k
    ks = list(range(K - 1, -1, -1)) if reverse else list(range(K))
    H[:, :, ks[0]] = Bv[:, :, ks[0]]
    P[:, :, ks[0]] = A[:, :, ks[0]]
    for prev, k in zip(ks[:-1], ks[1:]):
        torch.addcmul(Bv[:, :, k], A[:, :, k], H[:, :, prev], out=H[:, :, k])
        torch.mul(P[:, :, prev], A[:, :, k], out=P[:, :, k])
    cs = list(range(nc - 1, -1, -1)) if reverse else list(range(nc))
    last = ks[-1]
    state = H[:, cs[0], last]
    for c in cs[1:]:
        H[:, c].addcmul_(P[:, c], state.unsqueeze(1))
        state = H[:, c, last]
    H = H.reshape((Bsz, Lp) + rest)
    if Lp != L:
        H = H[:, :L]
    return H


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, chunk):
        h = _scan(a, b, chunk)
        ctx.chunk = chunk
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, g):
        a, h = ctx.saved_tensors
        g = g.contiguous()
        # dL/dh_t = g_t + a_{t+1} dL/dh_{t+1}: the same scan, backwards in time, with a shifted by one
        a_next = torch.zeros_like(a)
        a_next[:, :-1] = a[:, 1:]
        dh = _scan(a_next, g, ctx.chunk, reverse=True)
        grad_a = a_next  # reuse the buffer: dL/da_t = dL/dh_t * h_{t-1}, h_{-1} = 0
        grad_a[:, 0] = 0
        torch.mul(dh[:, 1:], h[:, :-1], out=grad_a[:, 1:])
        return grad_a, dh, None


def linear_scan(a, b, chunk=16):
    return _LinearScan.apply(a.contiguous(), b.contiguous(), chunk)


# ----------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        x = x.float()
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


class MambaMixer(nn.Module):
    def __init__(self, args):
        super().__init__()
        self.args = args
        di, N, R = args.d_inner, args.d_state, args.dt_rank
        self.in_proj = nn.Linear(args.d_model, 2 * di, bias=False)
        self.conv1d = nn.Conv1d(di, di, kernel_size=args.d_conv, groups=di, padding=args.d_conv - 1, bias=True)
        self.x_proj = nn.Linear(di, R + 2 * N, bias=False)
        self.dt_proj = nn.Linear(R, di, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, N + 1, dtype=torch.float32)).repeat(di, 1))
        self.D = nn.Parameter(torch.ones(di))
        self.out_proj = nn.Linear(di, args.d_model, bias=False)

    def forward(self, hs, chunk=16):
        """hs: [B, L, d_model] -> [B, L, d_model]; zero initial state."""
        a = self.args
        chunk = chunk or 16
        L = hs.shape[1]
        xz = self.in_proj(hs)
        x, z = xz.chunk(2, dim=-1)
        # causal depthwise conv = conv1d(padding=d_conv-1)[..., :L], written as shifted products
        # (deterministic on CUDA, and no transposes): out_t = bias + sum_k w[k] * x_{t-(d_conv-1)+k}
        K = a.d_conv
        w = self.conv1d.weight[:, 0, :].to(x.dtype)  # [di, K]
        xp = F.pad(x, (0, 0, K - 1, 0))
        acc = xp[:, K - 1:K - 1 + L] * w[:, K - 1] + self.conv1d.bias.to(x.dtype)
        for k in range(K - 1):
            acc = acc + xp[:, k:k + L] * w[:, k]
        x = F.silu(acc)  # [B, L, di]
        dbc = self.x_proj(x)
        dt_in, Bm, Cm = torch.split(dbc, [a.dt_rank, a.d_state, a.d_state], dim=-1)
        dt = self.dt_proj(dt_in)
        dev = hs.device.type
        with torch.autocast(device_type=dev, enabled=False):
            dt = F.softplus(dt.float())  # [B, L, di]
            x = x.float()
            A = -torch.exp(self.A_log.float())  # [di, N]
            dA = torch.exp(dt.unsqueeze(-1) * A)  # [B, L, di, N]
            dBx = (dt * x).unsqueeze(-1) * Bm.float().unsqueeze(2)  # [B, L, di, N]
            h = linear_scan(dA, dBx, chunk)
            y = torch.matmul(h, Cm.float().unsqueeze(-1)).squeeze(-1)  # [B, L, di]
            y = y + x * self.D.float()
            y = y * F.silu(z.float())
        return self.out_proj(y.to(xz.dtype))

    def new_state(self, device):
        a = self.args
        return (torch.zeros(a.d_inner, a.d_conv, device=device),
                torch.zeros(a.d_inner, a.d_state, device=device))

    @torch.no_grad()
    def step(self, h, conv_state, ssm_state):
        """One token, fp32, in place on the states. h: [d_model] (normed); conv_state: [di, d_conv];
        ssm_state: [di, N]. The order of shared/docs/mamba.md."""
        a = self.args
        di = a.d_inner
        xz = self.in_proj.weight.float() @ h
        x, z = xz[:di], xz[di:]
        conv_state.copy_(torch.roll(conv_state, -1, dims=1))
        conv_state[:, -1] = x
        x = (conv_state * self.conv1d.weight.float()[:, 0, :]).sum(-1) + self.conv1d.bias.float()
        x = F.silu(x)
        dbc = self.x_proj.weight.float() @ x
        dt_in, Bm, Cm = dbc[:a.dt_rank], dbc[a.dt_rank:a.dt_rank + a.d_state], dbc[a.dt_rank + a.d_state:]
        dt = F.softplus(self.dt_proj.weight.float() @ dt_in + self.dt_proj.bias.float())
        A = -torch.exp(self.A_log.float())
        ssm_state.mul_(torch.exp(dt[:, None] * A)).add_((dt * x)[:, None] * Bm[None, :])
        y = ssm_state @ Cm + self.D.float() * x
        y = y * F.silu(z)
        return self.out_proj.weight.float() @ y


class MambaBlock(nn.Module):
    def __init__(self, args, mixer_cls):
        super().__init__()
        self.norm = RMSNorm(args.d_model, args.norm_eps)
        self.mixer = mixer_cls(args)


class MambaBackbone(nn.Module):
    def __init__(self, args, mixer_cls):
        super().__init__()
        self.embeddings = nn.Embedding(args.vocab_size, args.d_model)
        self.layers = nn.ModuleList([MambaBlock(args, mixer_cls) for _ in range(args.n_layer)])
        self.norm_f = RMSNorm(args.d_model, args.norm_eps)


class MambaLM(nn.Module):
    """state_dict keys: backbone.embeddings.weight, backbone.layers.{i}.norm.weight,
    backbone.layers.{i}.mixer.{in_proj.weight, conv1d.weight, conv1d.bias, x_proj.weight,
    dt_proj.weight, dt_proj.bias, A_log, D, out_proj.weight}, backbone.norm_f.weight.
    The LM head is the embedding (tied), so there is no lm_head.weight."""

    mixer_cls = MambaMixer

    def __init__(self, args, dropout=0.0):
        super().__init__()
        self.args = args
        self.backbone = MambaBackbone(args, self.mixer_cls)
        self.dropout = dropout

    def init_weights(self, seed):
        """The initialization of mamba_ssm's MambaLMHeadModel (the released checkpoints' recipe)."""
        g = torch.Generator().manual_seed(seed)
        a = self.args
        with torch.no_grad():
            self.backbone.embeddings.weight.normal_(0.0, 0.02, generator=g)
            for blk in self.backbone.layers:
                m = blk.mixer
                for lin in (m.in_proj, m.x_proj, m.out_proj):
                    bound = 1.0 / math.sqrt(lin.weight.shape[1])  # nn.Linear's default (kaiming_uniform, a=sqrt(5))
                    lin.weight.uniform_(-bound, bound, generator=g)
                m.out_proj.weight.div_(math.sqrt(a.n_layer))  # rescale_prenorm_residual
                bound = 1.0 / math.sqrt(a.d_conv)  # Conv1d default: fan_in = 1 * d_conv
                m.conv1d.weight.uniform_(-bound, bound, generator=g)
                m.conv1d.bias.uniform_(-bound, bound, generator=g)
                std = a.dt_rank ** -0.5
                m.dt_proj.weight.uniform_(-std, std, generator=g)
                u = torch.rand(a.d_inner, generator=g)
                dt = torch.exp(u * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
                m.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
                m.A_log.copy_(torch.log(torch.arange(1, a.d_state + 1, dtype=torch.float32)).repeat(a.d_inner, 1))
                m.D.fill_(1.0)
                blk.norm.weight.fill_(1.0)
            self.backbone.norm_f.weight.fill_(1.0)

    def forward(self, ids, chunk=None):
        """ids [B, L] -> logits [B, L, vocab] (zero initial state). chunk: the mixer's chunk length
        (Mamba-1: the scan's, default 16; Mamba-2: the SSD's, default args.chunk_size)."""
        bb = self.backbone
        residual = bb.embeddings(ids).float()
        for blk in bb.layers:
            h = blk.mixer(blk.norm(residual), chunk=chunk)
            if self.training and self.dropout > 0:
                h = F.dropout(h, self.dropout, True)
            residual = residual + h.float()
        h = bb.norm_f(residual)
        return F.linear(h, bb.embeddings.weight)

    def new_state(self):
        """([conv state of each layer], [ssm state of each layer]), zeros; shapes from the mixer."""
        dev = self.backbone.embeddings.weight.device
        conv, ssm = [], []
        for blk in self.backbone.layers:
            c, s = blk.mixer.new_state(dev)
            conv.append(c)
            ssm.append(s)
        return conv, ssm

    @torch.no_grad()
    def step(self, token, state):
        """One token through the recurrent form, fp32. state from new_state(), updated in place.
        Returns the logits [vocab]."""
        conv, ssm = state
        bb = self.backbone
        emb = bb.embeddings.weight.float()
        residual = emb[token].clone()
        for i, blk in enumerate(bb.layers):
            residual = residual + blk.mixer.step(blk.norm(residual), conv[i], ssm[i])
        return emb @ bb.norm_f(residual)

    def param_groups(self, weight_decay):
        decay, no_decay = [], []
        for n, p in self.named_parameters():
            (decay if is_mat(n) else no_decay).append(p)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------------------------
# Mamba-2 (mamba_ssm's Mamba2 with d_ssm = d_inner, no D per channel, rmsnorm with norm_before_gate
# False; transformers' Mamba2ForCausalLM layout)

class Mamba2Args:
    arch = "mamba2"

    def __init__(self, d_model=256, n_layer=8, vocab_size=4096, d_state=64, expand=2, headdim=64, ngroups=1,
                 d_conv=4, chunk_size=64, norm_eps=1e-5, bos_id=1, eos_id=2):
        self.d_model = int(d_model)
        self.n_layer = int(n_layer)
        self.vocab_size = int(vocab_size)
        self.d_state = int(d_state)
        self.expand = int(expand)
        self.d_inner = self.expand * self.d_model
        self.headdim = int(headdim)
        if self.d_inner % self.headdim:
            raise ValueError("d_inner %d is not a multiple of headdim %d" % (self.d_inner, self.headdim))
        self.nheads = self.d_inner // self.headdim
        self.ngroups = int(ngroups)
        if self.nheads % self.ngroups:
            raise ValueError("%d heads do not divide into %d groups" % (self.nheads, self.ngroups))
        self.d_conv = int(d_conv)
        self.chunk_size = int(chunk_size)
        self.norm_eps = float(norm_eps)
        self.bos_id = bos_id
        self.eos_id = eos_id

    @property
    def conv_dim(self):
        return self.d_inner + 2 * self.ngroups * self.d_state

    def to_hf(self):
        """config.json of transformers' Mamba2Config."""
        return {
            "architectures": ["Mamba2ForCausalLM"],
            "model_type": "mamba2",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "num_hidden_layers": self.n_layer,
            "num_heads": self.nheads,
            "head_dim": self.headdim,
            "n_groups": self.ngroups,
            "state_size": self.d_state,
            "expand": self.expand,
            "conv_kernel": self.d_conv,
            "chunk_size": self.chunk_size,
            "layer_norm_epsilon": self.norm_eps,
            "time_step_limit": [0.0, float("inf")],  # json.dump writes Infinity, which json and transformers read
            "time_step_min": 0.001,
            "time_step_max": 0.1,
            "time_step_floor": 0.0001,
            "rms_norm": True,
            "norm_before_gate": False,
            "residual_in_fp32": True,
            "use_bias": False,
            "use_conv_bias": True,
            "hidden_act": "silu",
            "tie_word_embeddings": True,
            "initializer_range": 0.02,
            "rescale_prenorm_residual": False,  # see MambaArgs.to_hf
            "bos_token_id": self.bos_id,
            "eos_token_id": self.eos_id,
            "pad_token_id": None,
            "use_cache": True,
            "torch_dtype": "float32",
        }

    @classmethod
    def from_hf(cls, c):
        if float(c.get("time_step_limit", [0.0, float("inf")])[0]) > 0 or \
                float(c.get("time_step_limit", [0.0, float("inf")])[1]) != float("inf"):
            raise ValueError("time_step_limit other than (0, inf) is not implemented here")
        d_model, expand = c["hidden_size"], c.get("expand", 2)
        if c.get("num_heads") and c["num_heads"] * c.get("head_dim", 64) != expand * d_model:
            raise ValueError("num_heads x head_dim != expand x hidden_size")
        return cls(d_model=d_model, n_layer=c["num_hidden_layers"], vocab_size=c["vocab_size"],
                   d_state=c.get("state_size", 128), expand=expand, headdim=c.get("head_dim", 64),
                   ngroups=c.get("n_groups", 1), d_conv=c.get("conv_kernel", 4), chunk_size=c.get("chunk_size", 256),
                   norm_eps=c.get("layer_norm_epsilon", 1e-5), bos_id=c.get("bos_token_id"),
                   eos_id=c.get("eos_token_id"))

    def __repr__(self):
        return ("Mamba2Args(d_model=%d, n_layer=%d, vocab_size=%d, d_inner=%d, nheads=%d, headdim=%d, ngroups=%d, "
                "d_state=%d, d_conv=%d, chunk_size=%d)" % (self.d_model, self.n_layer, self.vocab_size, self.d_inner,
                                                           self.nheads, self.headdim, self.ngroups, self.d_state,
                                                           self.d_conv, self.chunk_size))


def segsum(x):
    """[..., T] -> [..., T, T]: out[..., i, j] = x[j+1] + ... + x[i] for i >= j, -inf above the diagonal.
    The stable form of ssd_minimal.py (a cumsum of masked copies, not a difference of cumsums)."""
    T = x.shape[-1]
    x = x.unsqueeze(-1).expand(*x.shape, T)  # [..., i, j] = x[i]
    below = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=-1)
    x = x.masked_fill(~below, 0.0)
    s = torch.cumsum(x, dim=-2)
    incl = torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device), diagonal=0)
    return s.masked_fill(~incl, float("-inf"))


def ssd_chunked(x, dt, A, B, C, chunk, initial_state=None):
    """The SSD ("state space duality") form of the Mamba-2 scan, as mamba_ssm/modules/ssd_minimal.py, with
    heads in groups (head h reads group h // (H/G)); D and the gate are not included. Pure torch, autograd.
    x [b, L, H, P], dt [b, L, H] (after softplus), A [H], B and C [b, L, G, N]; initial_state [b, H, P, N].
    Returns y [b, L, H, P] and the final state [b, H, P, N]."""
    b, L, H, P = x.shape
    G, N = B.shape[2], B.shape[3]
    R = H // G
    Q = max(1, int(chunk))
    pad = (-L) % Q
    X = x * dt.unsqueeze(-1)
    a = dt * A  # [b, L, H]
    if pad:  # zeros: no decay, no input; the padded positions are dropped at the end
        X = F.pad(X, (0, 0, 0, 0, 0, pad))
        a = F.pad(a, (0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, 0, 0, pad))
    c = (L + pad) // Q
    X = X.reshape(b, c, Q, G, R, P)
    B = B.reshape(b, c, Q, G, N)
    C = C.reshape(b, c, Q, G, N)
    a = a.reshape(b, c, Q, G, R).permute(0, 3, 4, 1, 2)  # [b, G, R, c, Q]
    a_cs = torch.cumsum(a, dim=-1)
    # 1. within each chunk: y_l = sum_{s<=l} (C_l . B_s) exp(a_{s+1} + ... + a_l) dt_s x_s
    Lmat = torch.exp(segsum(a))  # [b, G, R, c, l, s]
    CB = torch.einsum("bclgn,bcsgn->bgcls", C, B)  # [b, G, c, l, s]
    W = CB.unsqueeze(2) * Lmat  # [b, G, R, c, l, s]
    y_diag = torch.einsum("bgrcls,bcsgrp->bclgrp", W, X)
    # 2. each chunk's final state, from a zero state at its start
    decay_states = torch.exp(a_cs[..., -1:] - a_cs)  # [b, G, R, c, Q]
    Xd = X * decay_states.permute(0, 3, 4, 1, 2).unsqueeze(-1)  # [b, c, Q, G, R, P]
    states = torch.einsum("bcsgn,bcsgrp->bcgrpn", B, Xd)  # [b, c, G, R, P, N]
    # 3. the states carried from chunk to chunk: a loop over the chunks (ssd_minimal.py's one matrix
    # product with exp(segsum) over chunk pairs is the same sum, but quadratic in the number of chunks)
    if initial_state is None:
        s = states.new_zeros((b, G, R, P, N))
    else:
        s = initial_state.reshape(b, G, R, P, N).to(states.dtype)
    chunk_decay = torch.exp(a_cs[..., -1])[..., None, None]  # [b, G, R, c, 1, 1]
    carried = []
    for k in range(c):
        carried.append(s)  # the state entering chunk k
        s = s * chunk_decay[:, :, :, k] + states[:, k]
    states, final = torch.stack(carried, dim=1), s  # [b, c, G, R, P, N]
    # 4. the carried-in state's contribution at each position
    state_decay_out = torch.exp(a_cs).permute(0, 3, 4, 1, 2).unsqueeze(-1)  # [b, c, Q, G, R, 1]
    y_off = torch.einsum("bclgn,bcgrpn->bclgrp", C, states) * state_decay_out
    y = (y_diag + y_off).reshape(b, c * Q, H, P)[:, :L]
    return y, final.reshape(b, H, P, N)


class Mamba2Mixer(nn.Module):
    """mamba_ssm's Mamba2 layer (ngroups groups of heads share B and C), transformers' parameter names:
    in_proj [2*E + 2*G*N + H, d_model] (z, x, B, C, dt), conv1d over x|B|C [E + 2*G*N, 1, d_conv] + bias,
    dt_bias [H], A_log [H], D [H], norm.weight [E] (gated RMSNorm, one RMS per group of E/G channels),
    out_proj [d_model, E]."""

    def __init__(self, args):
        super().__init__()
        self.args = args
        E, H, X = args.d_inner, args.nheads, args.conv_dim
        self.in_proj = nn.Linear(args.d_model, 2 * E + 2 * args.ngroups * args.d_state + H, bias=False)
        self.conv1d = nn.Conv1d(X, X, kernel_size=args.d_conv, groups=X, padding=args.d_conv - 1, bias=True)
        self.dt_bias = nn.Parameter(torch.zeros(H))
        self.A_log = nn.Parameter(torch.zeros(H))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = RMSNorm(E, args.norm_eps)  # the weight of the gated norm (its forward is not used)
        self.out_proj = nn.Linear(E, args.d_model, bias=False)

    def gated_norm(self, y, z):
        """rmsnorm(y * silu(z)) * weight, one RMS per group of E/G consecutive channels (norm_before_gate False)."""
        a = self.args
        u = y * F.silu(z)
        shp = u.shape
        u = u.reshape(shp[:-1] + (a.ngroups, shp[-1] // a.ngroups))
        u = u * torch.rsqrt(u.pow(2).mean(-1, keepdim=True) + a.norm_eps)
        return u.reshape(shp) * self.norm.weight.float()

    def forward(self, hs, chunk=None):
        """hs: [B, L, d_model] -> [B, L, d_model]; zero initial state. chunk: SSD chunk (default chunk_size)."""
        a = self.args
        chunk = chunk or a.chunk_size
        Bsz, L = hs.shape[0], hs.shape[1]
        E, H, P, G, N, X = a.d_inner, a.nheads, a.headdim, a.ngroups, a.d_state, a.conv_dim
        zxbcdt = self.in_proj(hs)
        z, xbc, dt = torch.split(zxbcdt, [E, X, H], dim=-1)
        # causal depthwise conv over x|B|C as shifted products (see MambaMixer.forward)
        K = a.d_conv
        w = self.conv1d.weight[:, 0, :].to(xbc.dtype)  # [X, K]
        xp = F.pad(xbc, (0, 0, K - 1, 0))
        acc = xp[:, K - 1:K - 1 + L] * w[:, K - 1] + self.conv1d.bias.to(xbc.dtype)
        for k in range(K - 1):
            acc = acc + xp[:, k:k + L] * w[:, k]
        xbc = F.silu(acc)
        x, Bm, Cm = torch.split(xbc, [E, G * N, G * N], dim=-1)
        dev = hs.device.type
        with torch.autocast(device_type=dev, enabled=False):
            dt = F.softplus(dt.float() + self.dt_bias.float())  # [B, L, H]; dt_limit (0, inf): no clamp
            A = -torch.exp(self.A_log.float())  # [H]
            xh = x.float().reshape(Bsz, L, H, P)
            y, _ = ssd_chunked(xh, dt, A, Bm.float().reshape(Bsz, L, G, N), Cm.float().reshape(Bsz, L, G, N), chunk)
            y = y + xh * self.D.float()[:, None]
            y = self.gated_norm(y.reshape(Bsz, L, E), z.float())
        return self.out_proj(y.to(zxbcdt.dtype))

    def new_state(self, device):
        a = self.args
        return (torch.zeros(a.conv_dim, a.d_conv, device=device),
                torch.zeros(a.nheads, a.headdim, a.d_state, device=device))

    @torch.no_grad()
    def step(self, h, conv_state, ssm_state):
        """One token, fp32, in place on the states. h: [d_model] (normed); conv_state: [X, d_conv] (the
        window, current input last); ssm_state: [H, P, N]. The math of shared/docs/mamba.md."""
        a = self.args
        E, H, P, G, N, X = a.d_inner, a.nheads, a.headdim, a.ngroups, a.d_state, a.conv_dim
        zxbcdt = self.in_proj.weight.float() @ h
        z, xbc, dt = zxbcdt[:E], zxbcdt[E:E + X], zxbcdt[E + X:]
        conv_state.copy_(torch.roll(conv_state, -1, dims=1))
        conv_state[:, -1] = xbc
        xbc = F.silu((conv_state * self.conv1d.weight.float()[:, 0, :]).sum(-1) + self.conv1d.bias.float())
        x = xbc[:E].reshape(H, P)
        head_group = torch.arange(H, device=h.device) // (H // G)
        Bh = xbc[E:E + G * N].reshape(G, N)[head_group]  # [H, N]
        Ch = xbc[E + G * N:].reshape(G, N)[head_group]
        dt = F.softplus(dt + self.dt_bias.float())  # [H]
        A = -torch.exp(self.A_log.float())
        ssm_state.mul_(torch.exp(dt * A)[:, None, None]).add_((dt[:, None] * x)[:, :, None] * Bh[:, None, :])
        y = torch.einsum("hpn,hn->hp", ssm_state, Ch) + self.D.float()[:, None] * x
        y = self.gated_norm(y.reshape(E), z)
        return self.out_proj.weight.float() @ y


class Mamba2LM(MambaLM):
    """state_dict keys: backbone.embeddings.weight, backbone.layers.{i}.norm.weight,
    backbone.layers.{i}.mixer.{in_proj.weight, conv1d.weight, conv1d.bias, dt_bias, A_log, D, norm.weight,
    out_proj.weight}, backbone.norm_f.weight; tied LM head."""

    mixer_cls = Mamba2Mixer

    def init_weights(self, seed):
        """The initialization of mamba_ssm's MambaLMHeadModel with Mamba2 layers."""
        g = torch.Generator().manual_seed(seed)
        a = self.args
        with torch.no_grad():
            self.backbone.embeddings.weight.normal_(0.0, 0.02, generator=g)
            for blk in self.backbone.layers:
                m = blk.mixer
                for lin in (m.in_proj, m.out_proj):
                    bound = 1.0 / math.sqrt(lin.weight.shape[1])  # kaiming_uniform, a=sqrt(5)
                    lin.weight.uniform_(-bound, bound, generator=g)
                m.out_proj.weight.div_(math.sqrt(a.n_layer))  # rescale_prenorm_residual
                bound = 1.0 / math.sqrt(a.d_conv)  # Conv1d default (conv_init None)
                m.conv1d.weight.uniform_(-bound, bound, generator=g)
                m.conv1d.bias.uniform_(-bound, bound, generator=g)
                u = torch.rand(a.nheads, generator=g)
                dt = torch.exp(u * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
                m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
                m.A_log.copy_(torch.log(torch.empty(a.nheads).uniform_(1.0, 16.0, generator=g)))
                m.D.fill_(1.0)
                m.norm.weight.fill_(1.0)
                blk.norm.weight.fill_(1.0)
            self.backbone.norm_f.weight.fill_(1.0)


def fp16_rounded_state(model):
    """The weights model.bin holds with --dtype fp16: matrices rounded to fp16, vectors fp32."""
    out = {}
    for k, v in model.state_dict().items():
        v = v.detach().float().cpu()
        out[k] = v.half().float() if is_mat(k) else v.clone()
    return out


# ----------------------------------------------------------------------------------------------
# safetensors in numpy

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


def save_safetensors(path, tensors, metadata=None):
    """tensors: dict name -> numpy array. Written as the safetensors library does: wider dtypes first,
    then by name, so every tensor's data is aligned to its element size."""
    header = {}
    blobs = []
    off = 0
    for name in sorted(tensors, key=lambda k: (-np.asarray(tensors[k]).dtype.itemsize, k)):
        arr = np.ascontiguousarray(tensors[name])
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        raw = arr.tobytes()
        header[name] = {"dtype": _ST_NAMES[np.dtype(arr.dtype.newbyteorder("="))],
                        "shape": list(arr.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = dict(metadata or {"format": "pt"})
    hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for raw in blobs:
            f.write(raw)


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n].decode("utf-8"))
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        dt = np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<")
        out[name] = np.frombuffer(data[base + s:base + e], dtype=dt).reshape(info["shape"]).copy()
    return out


def save_hf_folder(folder, model, args):
    """config.json + model.safetensors: matrices fp16 (the values model.bin --dtype fp16 holds),
    vectors fp32. Returns the fp16-rounded state dict (fp32 tensors)."""
    import os
    os.makedirs(folder, exist_ok=True)
    state = fp16_rounded_state(model)
    arrays = {k: (v.half().numpy() if is_mat(k) else v.numpy()) for k, v in state.items()}
    save_safetensors(os.path.join(folder, "model.safetensors"), arrays)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(args.to_hf(), f, indent=2)
        f.write("\n")
    return state


def load_hf_folder(folder, device="cpu"):
    """Our MambaLM or Mamba2LM (fp32) from an HF-layout folder (config.json + model.safetensors);
    model_type "mamba2" gives a Mamba2LM."""
    import os
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    if cfg.get("model_type") == "mamba2":
        args, model_cls = Mamba2Args.from_hf(cfg), Mamba2LM
    else:
        args, model_cls = MambaArgs.from_hf(cfg), MambaLM
    arrays = load_safetensors(os.path.join(folder, "model.safetensors"))
    state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.items()
             if k != "lm_head.weight"}
    if "backbone.embedding.weight" in state:
        state["backbone.embeddings.weight"] = state.pop("backbone.embedding.weight")
    model = model_cls(args)
    model.load_state_dict(state, strict=True)
    return model.to(device), args
