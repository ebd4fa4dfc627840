#!/usr/bin/env python3
"""Golden reference outputs from Hugging Face transformers (MambaForCausalLM, pure-torch path, fp32).

Run on the GPU machine (torch, transformers, numpy; no network, no tokenizer needed), from the repo root:

    python3 tests/gen_hf_golden.py                     # both shapes -> tests/data/golden/hf_{tiny,130m}_seed0.npz
    python3 tests/gen_hf_golden.py --shape 130m --device cuda
    python3 tests/gen_hf_golden.py --backend numpy --out /tmp/g   # dry run with tests/ref_numpy.py instead of HF

For each shape it writes the seeded HF-layout checkpoint with tests/make_checkpoint.py into a temporary
folder, loads it with MambaForCausalLM.from_pretrained (fp32, TF32 off, the mamba_ssm/causal_conv1d
kernels bypassed), and records for a fixed 64-token prompt:
  * prefill logits of the 64 prompt positions (one forward) and the logits of 64 decode steps that feed
    the greedy tokens one at a time through the cache (rows 64..127); checked against one forward over
    all 128 tokens (if the cache API fails, the rows come from that forward: same numbers up to rounding);
  * 256 greedy tokens (argmax over ids < vocab_size: the padding rows are never picked, as in ./run),
    with the top-1 minus top-2 logit gap at every step, checked against one forward over the prompt and
    all 256 tokens;
  * full fp32 logit rows at every 8th (130m) / 16th (tiny) position, every position's logits at every
    97th vocabulary column, the top 8 per position, max |logit| per position;
  * float64 sums of a few weight tensors as loaded (so a test can tell regenerated weights differ).
npz keys: prompt, decode_tokens, greedy, greedy_gap, greedy_gap_full, full_rows, full_logits, col_ids,
col_logits, top_ids, top_logits, max_abs, meta (a JSON string).
"""
import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)
sys.path.insert(0, REPO)

import make_checkpoint as mc  # noqa: E402

PROMPT_LEN = 64
DECODE_STEPS = 64
GREEDY_STEPS = 256
FULL_ROW_EVERY = {"130m": 8, "tiny": 16}
COL_EVERY = 97
TOPK = 8
# the prompt's hash seed per shape, picked (with tests/ref_numpy.py, float64) so that no greedy step of the
# 256 has a near-tie between its top two logits: min gap 0.0129 (tiny, logits ~3.5), 0.0059 (130m, logits ~12)
PROMPT_SEED = {"tiny": 12349, "130m": 12352}


def fixed_prompt(vocab_size, shape, n=PROMPT_LEN):
    """64 fixed ids in [2, vocab_size): a counter hash, the same everywhere."""
    u = mc.uniform01(PROMPT_SEED.get(shape, 12345), "prompt", n)
    return [2 + int(x * (vocab_size - 2)) for x in u.tolist()]


def top2_gap(row, vocab_size):
    r = np.asarray(row[:vocab_size], dtype=np.float64)
    i = int(np.argmax(r))
    second = np.max(np.delete(r, i))
    return i, float(r[i] - second)


# ---------------------------------------------------------------------------------------------
# backends

class HFBackend:
    def __init__(self, folder, device):
        import torch
        import transformers
        self.torch = torch
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        try:
            torch.set_float32_matmul_precision("highest")
        except Exception:
            pass
        from transformers import MambaForCausalLM
        try:
            from transformers.models.mamba import modeling_mamba as mm
        except Exception:
            mm = None
        self.fast_calls = 0
        if mm is not None:
            # never use the mamba_ssm / causal_conv1d CUDA kernels: the pure-torch sequential path is the oracle
            for name in ("is_fast_path_available",):
                if hasattr(mm, name):
                    setattr(mm, name, False)
            mixer = getattr(mm, "MambaMixer", None)
            if mixer is not None and hasattr(mixer, "cuda_kernels_forward") and hasattr(mixer, "slow_forward"):
                backend = self
                orig_slow = mixer.slow_forward

                def no_fast(self_, *a, **k):
                    backend.fast_calls += 1
                    return orig_slow(self_, *a, **k)

                mixer.cuda_kernels_forward = no_fast
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        kw = {}
        try:
            model = MambaForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw)
        except TypeError:
            model = MambaForCausalLM.from_pretrained(folder, torch_dtype=torch.float32, **kw)
        if getattr(model.config, "use_mambapy", False):
            model.config.use_mambapy = False
            for layer in model.backbone.layers:
                if hasattr(layer.mixer, "use_mambapy"):
                    layer.mixer.use_mambapy = False
        self.model = model.float().to(self.device).eval()
        self.info = {"transformers": transformers.__version__, "torch": torch.__version__,
                     "device": torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or "cpu",
                     "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32), "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32)}

    def state_dict(self):
        out = {}
        for k, v in self.model.state_dict().items():
            k = "backbone.embedding.weight" if k == "backbone.embeddings.weight" else k
            out[k] = v.detach().to("cpu", self.torch.float64).numpy()
        return out

    def _ids(self, ids):
        return self.torch.tensor([list(ids)], dtype=self.torch.long, device=self.device)

    def forward(self, ids):
        with self.torch.no_grad():
            out = self.model(input_ids=self._ids(ids), use_cache=False)
        return out.logits[0].float().cpu().numpy()

    def prefill(self, ids):
        torch = self.torch
        with torch.no_grad():
            try:
                out = self.model(input_ids=self._ids(ids), use_cache=True)
            except (ValueError, TypeError):
                out = self.model(input_ids=self._ids(ids), use_cache=True,
                                 cache_position=torch.arange(len(ids), device=self.device))
        cache = getattr(out, "cache_params", None)
        if cache is None:
            cache = getattr(out, "past_key_values", None)
        if cache is None:
            raise RuntimeError("the model returned no cache")
        return out.logits[0].float().cpu().numpy(), cache

    def step(self, tok, pos, cache):
        torch = self.torch
        with torch.no_grad():
            out = self.model(input_ids=self._ids([tok]), cache_params=cache, use_cache=True,
                             cache_position=torch.tensor([pos], dtype=torch.long, device=self.device))
        new = getattr(out, "cache_params", None)
        return out.logits[0, -1].float().cpu().numpy(), (new if new is not None else cache)


class NumpyBackend:
    """A dry run with tests/ref_numpy.py on an exported model.bin (float64)."""

    def __init__(self, folder, device):
        import export
        import ref_numpy
        self.folder = folder
        path = os.path.join(folder, "model.bin")
        tok = mc.find_tokenizer()
        export.export_model(folder, path, "fp32", tokenizer=tok)
        self.m = ref_numpy.RefModel(path)
        self.info = {"backend": "numpy", "numpy": np.__version__}

    def state_dict(self):
        return dict(mc.weights(self.shape, self.seed))

    def forward(self, ids):
        return self.m.forward(ids)

    def prefill(self, ids):
        st = self.m.new_state()
        return self.m.forward(ids, st), st

    def step(self, tok, pos, st):
        return self.m.step(tok, st), st


# ---------------------------------------------------------------------------------------------

def golden(shape, seed, backend_name, device, out_dir, workdir):
    s = mc.dims(shape)
    V, vocab = s["vocab_rows"], s["vocab_size"]
    folder = os.path.join(workdir, "%s_hf_seed%d" % (shape, seed))
    mc.write_checkpoint(folder, shape, "hf", seed, tokenizer="")
    t0 = time.time()
    if backend_name == "hf":
        be = HFBackend(folder, device)
    else:
        be = NumpyBackend(folder, device)
        be.shape, be.seed = shape, seed
    meta = {"shape": shape, "seed": seed, "vocab_rows": V, "vocab_size": vocab, "backend": backend_name}
    meta.update(be.info)
    sd = be.state_dict()
    meta["checksums"] = mc.checksums(sd)
    gen = mc.checksums(dict(mc.weights(shape, seed)))
    meta["checksums_match_generator"] = all(abs(gen[k][0] - meta["checksums"][k][0]) <= 1e-9 * max(1, abs(gen[k][0]))
                                            for k in gen)
    if not meta["checksums_match_generator"]:
        print("WARNING: the loaded weights differ from make_checkpoint's", file=sys.stderr)
    del sd

    prompt = fixed_prompt(vocab, shape)
    # 1. prefill + cached decode, greedy
    notes = []
    greedy, gaps, step_rows = [], [], []
    cache_ok = True
    try:
        pre, cache = be.prefill(prompt)
        last = pre[-1]
        for i in range(GREEDY_STEPS):
            tok, gap = top2_gap(last, vocab)
            greedy.append(tok)
            gaps.append(gap)
            last, cache = be.step(tok, PROMPT_LEN + i, cache)
            if i < DECODE_STEPS:
                step_rows.append(last)
        # step_rows[j] = logits after feeding greedy[j] = row PROMPT_LEN + j
    except Exception as e:  # the cache API of this transformers version did not work as expected
        cache_ok = False
        notes.append("cached decode failed: %s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""))
        print("NOTE:", notes[-1], "- falling back to full forwards", file=sys.stderr)
    # 2. one forward over prompt + the first 64 tokens: the reference rows
    if not cache_ok:
        greedy, gaps = [], []
        seq = list(prompt)
        for i in range(GREEDY_STEPS):
            row = be.forward(seq)[-1]
            tok, gap = top2_gap(row, vocab)
            greedy.append(tok)
            gaps.append(gap)
            seq.append(tok)
    seq128 = prompt + greedy[:DECODE_STEPS]
    full128 = be.forward(seq128)
    rows = np.array(full128, dtype=np.float32)
    if cache_ok:
        pre = np.asarray(pre, dtype=np.float32)
        steps = np.asarray(step_rows[:DECODE_STEPS], dtype=np.float32)
        d_pre = float(np.abs(pre - rows[:PROMPT_LEN]).max())
        # step j's logits are row PROMPT_LEN + j (after feeding greedy[j])
        d_dec = float(np.abs(steps - rows[PROMPT_LEN:PROMPT_LEN + len(steps)]).max())
        meta["prefill_vs_full_maxdiff"] = d_pre
        meta["decode_vs_full_maxdiff"] = d_dec
        if d_pre <= 1e-3 and d_dec <= 1e-3:
            rows[:PROMPT_LEN] = pre
            rows[PROMPT_LEN:PROMPT_LEN + len(steps)] = steps
            meta["rows_from"] = "prefill (rows 0-63) and cached decode steps (rows 64-127)"
        else:
            notes.append("cached path differs from the full forward (prefill %.3g, decode %.3g): rows from the full forward"
                         % (d_pre, d_dec))
            meta["rows_from"] = "one forward over 128 tokens"
    else:
        meta["rows_from"] = "one forward over 128 tokens"
    # 3. the greedy tokens checked against one forward over everything
    full = be.forward(prompt + greedy)
    full_gap, mism = [], []
    for i in range(GREEDY_STEPS):
        tok, gap = top2_gap(full[PROMPT_LEN - 1 + i], vocab)
        full_gap.append(gap)
        if tok != greedy[i]:
            mism.append(i)
    meta["greedy_mismatch_vs_full_forward"] = mism
    meta["greedy_min_gap"] = float(min(gaps))
    meta["greedy_min_gap_step"] = int(np.argmin(gaps))
    meta["notes"] = notes
    meta["seconds"] = round(time.time() - t0, 1)
    meta["prompt_len"], meta["decode_steps"], meta["greedy_steps"] = PROMPT_LEN, DECODE_STEPS, GREEDY_STEPS

    n = len(seq128)
    every = FULL_ROW_EVERY.get(shape, 8)
    full_rows = np.arange(every - 1, n, every, dtype=np.int32)  # 7, 15, ... 127: includes the last prefill row 63
    col_ids = np.arange(0, V, COL_EVERY, dtype=np.int32)
    top_ids = np.argsort(-rows[:, :vocab], axis=1, kind="stable")[:, :TOPK].astype(np.int32)
    top_logits = np.take_along_axis(rows, top_ids, axis=1)
    max_abs = np.abs(rows).max(axis=1)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "hf_%s_seed%d.npz" % (shape, seed))
    np.savez_compressed(path, prompt=np.array(prompt, np.int32), decode_tokens=np.array(greedy[:DECODE_STEPS], np.int32),
                        greedy=np.array(greedy, np.int32), greedy_gap=np.array(gaps, np.float32),
                        greedy_gap_full=np.array(full_gap, np.float32), full_rows=full_rows,
                        full_logits=rows[full_rows], col_ids=col_ids, col_logits=rows[:, col_ids],
                        top_ids=top_ids, top_logits=top_logits, max_abs=max_abs.astype(np.float32),
                        meta=np.array(json.dumps(meta, sort_keys=True)))
    print("== %s (seed %d): %s, %.1f s" % (shape, seed, meta.get("device", backend_name), meta["seconds"]))
    print("max |logit| per position (0..%d):" % (n - 1))
    for i in range(0, n, 16):
        print("  %3d: %s" % (i, " ".join("%.2f" % x for x in max_abs[i:i + 16])))
    print("greedy[:32]:", greedy[:32])
    print("min top1-top2 gap over %d greedy steps: %.3g at step %d; steps with gap < 1e-3: %s"
          % (GREEDY_STEPS, meta["greedy_min_gap"], meta["greedy_min_gap_step"],
             [i for i, g in enumerate(gaps) if g < 1e-3]))
    for k in ("prefill_vs_full_maxdiff", "decode_vs_full_maxdiff", "rows_from", "greedy_mismatch_vs_full_forward",
              "checksums_match_generator", "notes"):
        if k in meta:
            print("%s: %s" % (k, meta[k]))
    if getattr(be, "fast_calls", 0):
        print("WARNING: the CUDA-kernel path was requested %d times (redirected to the slow path)" % be.fast_calls)
    print("wrote", path, "(%d bytes)" % os.path.getsize(path))
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description="HF transformers golden logits for the synthetic Mamba checkpoints")
    ap.add_argument("--shape", choices=["tiny", "130m", "all"], default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="cuda, cpu or auto")
    ap.add_argument("--backend", choices=["hf", "numpy"], default="hf")
    ap.add_argument("--out", default=os.path.join(TESTS, "data", "golden"))
    a = ap.parse_args(argv)
    shapes = ["tiny", "130m"] if a.shape == "all" else [a.shape]
    with tempfile.TemporaryDirectory(prefix="mamba_golden_") as work:
        for shape in shapes:
            golden(shape, a.seed, a.backend, a.device, a.out, work)


if __name__ == "__main__":
    main()
