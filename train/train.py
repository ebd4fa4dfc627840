#!/usr/bin/env python3
"""Trains the tiny Mamba-1 model of models/tiny (or, with --arch mamba2, the tiny Mamba-2 model of
models/tiny-mamba2) on the Brown corpus, saves it in the Hugging Face layout, and writes golden
outputs for the C engine's tests.

    python3 train/train.py                      # the real run (CUDA; see train/run_on_gpu.sh)
    python3 train/train.py --arch mamba2        # the Mamba-2 run (same data, tokenizer, recipe)
    python3 train/train.py --smoke              # a tiny config, 3 steps, CPU: checks the whole path

Writes (under --out-dir, default models/tiny, or models/tiny-mamba2 with --arch mamba2):
  hf/config.json, hf/model.safetensors   MambaConfig (Mamba2Config) + weights, HF key names, tied
                                         lm_head (absent); matrices fp16 (exactly what model.bin
                                         --dtype fp16 holds), vectors (norms, conv, dt bias, A_log,
                                         D) fp32
  train_log.txt                          everything printed
  golden.json                            greedy continuations and the perplexity of
                                         valid_sample.txt, computed in fp32 on those weights
  tokenizer.model                        (--arch mamba2 only) a copy of models/tiny/tokenizer.model

Data: train/data/brown_{train,valid}.txt.gz (train/prepare_data.py), documents separated by an empty
line. Each document is encoded whole with the SentencePiece model (no BOS), followed by EOS (</s>);
the documents are concatenated into one token stream. Batches are windows of --seq-len tokens: each
epoch cuts the stream at a random offset into consecutive windows and shuffles them.
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from mamba import MambaArgs, MambaLM, Mamba2Args, Mamba2LM, save_hf_folder, load_hf_folder, is_mat  # noqa: E402

PROMPTS = ["The jury said", "She looked at him and", "In the morning"]
# --arch mamba2 defaults: the step count and the training-time cap (see run_on_gpu.sh for the timing)
M2_STEPS = 1200
M2_TIME_LIMIT = 180.0
POST_TRAIN_S = 90.0  # seconds --time-limit leaves before --deadline
T0 = time.time()
LOG = None


def log(msg=""):
    line = "[%6.1fs] %s" % (time.time() - T0, msg)
    print(line, flush=True)
    if LOG is not None:
        LOG.write(line + "\n")
        LOG.flush()


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=["mamba1", "mamba2"], default="mamba1",
                   help="mamba1: models/tiny; mamba2: models/tiny-mamba2 (d_state 64, 8 heads of 64, 1 group)")
    p.add_argument("--out-dir", default=None, help="default models/tiny (mamba1), models/tiny-mamba2 (mamba2)")
    p.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "tiny", "tokenizer.model"))
    p.add_argument("--train-data", default=os.path.join(HERE, "data", "brown_train.txt.gz"))
    p.add_argument("--valid-data", default=os.path.join(HERE, "data", "brown_valid.txt.gz"))
    p.add_argument("--valid-sample", default=os.path.join(ROOT, "models", "tiny", "valid_sample.txt"))
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--n-layer", type=int, default=8)
    p.add_argument("--d-state", type=int, default=None, help="default 16 (mamba1), 64 (mamba2)")
    p.add_argument("--headdim", type=int, default=64, help="mamba2: channels per head")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-steps", type=int, default=None, help="default 1800 (mamba1), %d (mamba2)" % M2_STEPS)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.1, help="on each block's output (training only)")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--chunk", type=int, default=None,
                   help="mamba1: scan chunk length (default 16); mamba2: SSD chunk length (default 64)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--patience", type=int, default=5,
                   help="stop when the validation loss has not improved for this many evaluations")
    p.add_argument("--time-limit", type=float, default=None,
                   help="seconds of training loop at most (safety net; the step count is fixed); default 400 "
                        "(mamba1), %g (mamba2); never more than --deadline minus %g" % (M2_TIME_LIMIT, POST_TRAIN_S))
    p.add_argument("--deadline", type=float, default=540.0,
                   help="seconds after start by which everything must be done; late checks are skipped")
    p.add_argument("--device", default=None)
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="bf16 autocast: auto = on CUDA only (on: also on CPU, to test that path)")
    p.add_argument("--golden-tokens", type=int, default=40)
    p.add_argument("--hf-check-tokens", type=int, default=1024)
    p.add_argument("--no-hf-check", action="store_true")
    p.add_argument("--valid-limit", type=int, default=0, help="use only this many validation tokens (tests)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, 3 steps, CPU, writes to /tmp/mamba_smoke unless --out-dir is given")
    a = p.parse_args()
    m2 = a.arch == "mamba2"
    if a.out_dir is None:
        a.out_dir = os.path.join(ROOT, "models", "tiny-mamba2" if m2 else "tiny")
    if a.d_state is None:
        a.d_state = 64 if m2 else 16
    if a.max_steps is None:
        a.max_steps = M2_STEPS if m2 else 1800
    if a.chunk is None:
        a.chunk = 64 if m2 else 16
    if a.time_limit is None:
        a.time_limit = M2_TIME_LIMIT if m2 else 400.0
    # leave time for the evaluation, the golden outputs and the transformers check (not binding with
    # the defaults of either arch)
    a.time_limit = max(10.0, min(a.time_limit, a.deadline - POST_TRAIN_S))
    if a.smoke:
        if "--out-dir" not in sys.argv:
            a.out_dir = "/tmp/mamba_smoke"
        a.d_model, a.n_layer, a.seq_len, a.batch_size = 64, 2, 64, 4
        if "--max-steps" not in sys.argv:
            a.max_steps = 3
        a.warmup, a.log_every, a.eval_every = 1, 1, 2
        a.device = a.device or "cpu"
        a.hf_check_tokens = 128
    return a


# ----------------------------------------------------------------------------------------------
# data

def read_docs(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        text = f.read()
    return [d for d in text.split("\n\n") if d.strip()]


def encode_docs(sp, docs, eos):
    out = []
    for d in docs:
        out.extend(sp.encode(d))
        out.append(eos)
    return np.array(out, dtype=np.int64)


class Batches:
    """Each epoch: cut the stream at a random offset into consecutive windows, shuffle them."""

    def __init__(self, stream, seq_len, batch, seed, device):
        self.stream = torch.from_numpy(stream).to(device)
        self.n = len(stream)
        self.L = seq_len
        self.B = batch
        self.rng = np.random.RandomState(seed)
        self.queue = np.zeros(0, dtype=np.int64)
        self.epoch = 0
        self.ar = torch.arange(seq_len + 1, device=device)
        self.device = device

    def _refill(self):
        off = self.rng.randint(0, self.L)
        m = (self.n - 1 - off) // self.L
        starts = off + self.L * np.arange(m, dtype=np.int64)
        self.rng.shuffle(starts)
        self.queue = np.concatenate([self.queue, starts])
        self.epoch += 1

    def next(self):
        while len(self.queue) < self.B:
            self._refill()
        s, self.queue = self.queue[:self.B], self.queue[self.B:]
        idx = torch.from_numpy(s).to(self.device)[:, None] + self.ar[None, :]
        w = self.stream[idx]
        return w[:, :-1], w[:, 1:]


@torch.no_grad()
def evaluate(model, stream, seq_len, batch, device, chunk, amp):
    """Mean NLL over the validation stream cut into consecutive windows (zero state per window)."""
    model.eval()
    L = seq_len
    m = (len(stream) - 1) // L
    s = torch.from_numpy(stream).to(device)
    tot, cnt = 0.0, 0
    for i in range(0, m, batch):
        starts = torch.arange(i, min(m, i + batch), device=device) * L
        idx = starts[:, None] + torch.arange(L + 1, device=device)[None, :]
        w = s[idx]
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(w[:, :-1], chunk=chunk)
        nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1), reduction="sum")
        tot += nll.item()
        cnt += w[:, 1:].numel()
    model.train()
    return tot / cnt


def lr_at(step, a):
    if step < a.warmup:
        return a.lr * (step + 1) / a.warmup
    p = min(1.0, (step - a.warmup) / max(1, a.max_steps - a.warmup))
    return a.min_lr + 0.5 * (a.lr - a.min_lr) * (1 + math.cos(math.pi * p))


# ----------------------------------------------------------------------------------------------
# generation and golden outputs (CPU, fp32, recurrent form = what the C engine computes)

class threads:
    """torch CPU threads for a block: 1 for the token-by-token loops (tiny ops; more threads only spin),
    a few for the long full-sequence passes."""

    def __init__(self, n):
        self.n = max(1, n)

    def __enter__(self):
        self.old = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.old)


def greedy(model, prompt_ids, n_new, eos):
    with threads(1):
        return _greedy(model, prompt_ids, n_new, eos)


def _greedy(model, prompt_ids, n_new, eos):
    state = model.new_state()
    logits = None
    for t in prompt_ids:
        logits = model.step(t, state)
    first_top = torch.topk(logits, 5)
    ids, margins = [], []
    for _ in range(n_new):
        top2 = torch.topk(logits, 2)
        nxt = int(torch.argmax(logits))
        margins.append(float(top2.values[0] - top2.values[1]))
        if nxt == eos:
            return ids, margins, True, first_top
        ids.append(nxt)
        logits = model.step(nxt, state)
    return ids, margins, False, first_top


def sample(model, prompt_ids, n_new, eos, temperature, top_p, gen):
    with threads(1):
        return _sample(model, prompt_ids, n_new, eos, temperature, top_p, gen)


def _sample(model, prompt_ids, n_new, eos, temperature, top_p, gen):
    state = model.new_state()
    logits = None
    for t in prompt_ids:
        logits = model.step(t, state)
    ids = []
    for _ in range(n_new):
        probs = torch.softmax(logits / temperature, -1)
        sp_, si = torch.sort(probs, descending=True)
        keep = torch.cumsum(sp_, 0) - sp_ < top_p
        sp_ = sp_ * keep
        nxt = int(si[torch.multinomial(sp_ / sp_.sum(), 1, generator=gen)])
        if nxt == eos:
            break
        ids.append(nxt)
        logits = model.step(nxt, state)
    return ids


def nll_full(model, ids, chunk):
    """One sequence, zero initial state, every token but the first scored."""
    x = torch.tensor(ids, dtype=torch.long)[None]
    with torch.no_grad(), threads(min(8, os.cpu_count() or 1)):
        logits = model(x, chunk=chunk)[0]
    nll = F.cross_entropy(logits[:-1].double(), x[0, 1:], reduction="none")
    return nll


def nll_steps(model, ids):
    with threads(1):
        return _nll_steps(model, ids)


def _nll_steps(model, ids):
    state = model.new_state()
    out = []
    logits = model.step(ids[0], state)
    for t in ids[1:]:
        out.append(float(-torch.log_softmax(logits.double(), -1)[t]))
        logits = model.step(t, state)
    return out


def golden_outputs(model, sp, a, eos):
    mats = ("embedding, in_proj, out_proj" if a.arch == "mamba2"
            else "embedding, in_proj, x_proj, dt_proj.weight, out_proj")
    res = {
        "format": 1,
        "about": ("Reference outputs of the trained model, computed by train/train.py with torch in fp32 on CPU, "
                  "from the weights of hf/model.safetensors: the matrices (%s) rounded to fp16, exactly as "
                  "model.bin --dtype fp16 stores them; vectors fp32. Token ids are SentencePiece encode(text) of "
                  "models/tiny/tokenizer.model: no BOS or EOS added." % mats),
        "greedy": [],
    }
    for p in PROMPTS:
        pid = sp.encode(p)
        ids, margins, hit_eos, first_top = greedy(model, pid, a.golden_tokens, eos)
        # the same continuation from the parallel (full-sequence) form, as a cross-check
        x = torch.tensor(pid + ids, dtype=torch.long)[None]
        with torch.no_grad(), threads(1):
            full = model(x, chunk=a.chunk)[0]
        agree = [int(torch.argmax(full[len(pid) - 1 + i])) == ids[i] for i in range(len(ids))]
        full_text = sp.decode(pid + ids)
        ptext = sp.decode(pid)
        res["greedy"].append({
            "prompt": p,
            "prompt_ids": pid,
            "n_new": a.golden_tokens,
            "ids": ids,
            "stopped_at_eos": hit_eos,
            "text": full_text,
            "completion": full_text[len(ptext):] if full_text.startswith(ptext) else sp.decode(ids),
            "min_top2_margin": min(margins) if margins else None,
            "first_step_top5": [[int(i), round(float(v), 5)] for v, i in zip(first_top.values, first_top.indices)],
            "parallel_form_agrees": all(agree),
        })
        log("golden greedy %r -> %r (min top-2 logit margin %.4f, parallel form agrees: %s)"
            % (p, res["greedy"][-1]["completion"], min(margins) if margins else float("nan"), all(agree)))
    with open(a.valid_sample, "rb") as f:
        raw = f.read()
    text = raw.decode("utf-8")
    ids = sp.encode(text)
    nll = nll_full(model, ids, a.chunk)
    n_chk = min(len(ids), 1000)
    step_nll = nll_steps(model, ids[:n_chk])
    full_part = float(nll[:n_chk - 1].sum())
    res["perplexity"] = {
        "file": "models/tiny/valid_sample.txt",
        "file_bytes": len(raw),
        "file_sha256": hashlib.sha256(raw).hexdigest(),
        "method": ("the whole file's bytes (final newline included) encoded as one sequence, no BOS; "
                   "run from a zero state with the state carried through all tokens; token 0 is not "
                   "scored, each token t >= 1 is scored by -log softmax(logits after tokens 0..t-1)[t]; "
                   "mean_nll = nll_sum / n_scored, ppl = exp(mean_nll)"),
        "n_tokens": len(ids),
        "n_scored": len(ids) - 1,
        "nll_sum": float(nll.sum()),
        "mean_nll": float(nll.mean()),
        "ppl": float(torch.exp(nll.mean())),
        "check_first_1000_tokens": {"nll_sum_parallel_form": full_part, "nll_sum_recurrent_form": float(sum(step_nll))},
    }
    log("golden perplexity of valid_sample.txt: %d tokens, mean NLL %.5f, ppl %.4f (first %d tokens: parallel "
        "%.5f vs recurrent %.5f)" % (len(ids), res["perplexity"]["mean_nll"], res["perplexity"]["ppl"], n_chk,
                                     full_part, sum(step_nll)))
    return res


def copy_out(files):
    out = os.environ.get("OUT")
    if not out:
        return
    os.makedirs(out, exist_ok=True)
    for f in files:
        if os.path.exists(f):
            shutil.copy2(f, os.path.join(out, os.path.basename(f)))


# ----------------------------------------------------------------------------------------------

def main():
    global LOG
    a = parse()
    os.makedirs(a.out_dir, exist_ok=True)
    log_path = os.path.join(a.out_dir, "train_log.txt")
    LOG = open(log_path, "w")
    hf_dir = os.path.join(a.out_dir, "hf")
    golden_path = os.path.join(a.out_dir, "golden.json")
    tok_file = a.tokenizer
    if a.arch == "mamba2":  # the folder carries its own copy of the tokenizer
        tok_file = os.path.join(a.out_dir, "tokenizer.model")
        if os.path.abspath(tok_file) != os.path.abspath(a.tokenizer):
            shutil.copy2(a.tokenizer, tok_file)
    out_files = [os.path.join(hf_dir, "model.safetensors"), os.path.join(hf_dir, "config.json"),
                 tok_file, log_path, golden_path]

    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp = device.type == "cuda" if a.amp == "auto" else a.amp == "on"
    torch.manual_seed(a.seed)
    np.random.seed(a.seed)
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
    except TypeError:
        pass
    try:  # the scan writes every element of its torch.empty buffers; no need to pre-fill them with NaN
        import importlib
        importlib.import_module("torch.utils.deterministic").fill_uninitialized_memory = False
    except (ImportError, AttributeError):
        pass
    if device.type == "cuda":
        # matrices run in bf16 under autocast; the fp32 ones (the SSM's C contraction, the final fp32
        # evaluation) stay true fp32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    log("args: %s" % json.dumps(vars(a), sort_keys=True))
    log("torch %s, numpy %s, python %s, device %s%s" % (
        torch.__version__, np.__version__, sys.version.split()[0], device,
        (" (" + torch.cuda.get_device_name(0) + ")") if device.type == "cuda" else ""))

    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=a.tokenizer)
    eos = sp.eos_id()
    train_docs, valid_docs = read_docs(a.train_data), read_docs(a.valid_data)
    train_ids = encode_docs(sp, train_docs, eos)
    valid_ids = encode_docs(sp, valid_docs, eos)
    if a.valid_limit:
        valid_ids = valid_ids[:a.valid_limit]
    log("tokenizer %s: %d pieces, bos %d, eos %d; sentencepiece %s" % (
        os.path.basename(a.tokenizer), sp.get_piece_size(), sp.bos_id(), eos, spm.__version__))
    log("data: train %d documents, %d tokens; valid %d documents, %d tokens" % (
        len(train_docs), len(train_ids), len(valid_docs), len(valid_ids)))

    if a.arch == "mamba2":
        args = Mamba2Args(d_model=a.d_model, n_layer=a.n_layer, vocab_size=sp.get_piece_size(), d_state=a.d_state,
                          headdim=a.headdim, ngroups=1, chunk_size=a.chunk, bos_id=sp.bos_id(), eos_id=eos)
        model = Mamba2LM(args, dropout=a.dropout)
    else:
        args = MambaArgs(d_model=a.d_model, n_layer=a.n_layer, vocab_size=sp.get_piece_size(), d_state=a.d_state,
                         bos_id=sp.bos_id(), eos_id=eos)
        model = MambaLM(args, dropout=a.dropout)
    model.init_weights(a.seed)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    n_mat = sum(p.numel() for n, p in model.named_parameters() if is_mat(n))
    log("model: %s; %d parameters (%d in matrices, %d in vectors); model.bin fp16 weights ~ %.2f MB" % (
        args, n_params, n_mat, n_params - n_mat, (2 * n_mat + 4 * (n_params - n_mat)) / 1e6))

    groups = model.param_groups(a.weight_decay)
    kw = {}
    if device.type == "cuda":
        kw["fused"] = True
    try:
        opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, **kw)
    except (TypeError, RuntimeError):
        opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8)

    batches = Batches(train_ids, a.seq_len, a.batch_size, a.seed, device)
    tok_per_step = a.seq_len * a.batch_size
    log("training: %d steps of %d x %d = %d tokens (%.1f epochs), lr %g -> %g (warmup %d, cosine), wd %g, "
        "dropout %g" % (a.max_steps, a.batch_size, a.seq_len, tok_per_step,
                        a.max_steps * tok_per_step / len(train_ids), a.lr, a.min_lr, a.warmup,
                        a.weight_decay, a.dropout))

    best = (float("inf"), -1, None)
    t_train = time.time()
    t_mark, step_mark = t_train, 0
    loss_acc = torch.zeros((), device=device)
    n_acc = 0
    step = 0
    budget_checked = False
    t_eval, n_eval = 0.0, 0
    stop_reason = "max steps"
    model.train()
    while step < a.max_steps:
        lr = lr_at(step, a)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batches.next()
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x, chunk=a.chunk)
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss_acc += loss.detach()
        n_acc += 1
        step += 1
        if step % a.log_every == 0 or step == a.max_steps:
            l = (loss_acc / n_acc).item()
            now = time.time()
            tps = (step - step_mark) * tok_per_step / max(1e-9, now - t_mark)
            log("step %5d  loss %.4f  lr %.2e  gnorm %.3f  epoch %d  %.0f tok/s  train time %.1fs" % (
                step, l, lr, float(gnorm), batches.epoch, tps, now - t_train))
            loss_acc.zero_()
            n_acc = 0
            t_mark, step_mark = now, step
        if step % a.eval_every == 0 or step == a.max_steps:
            t_e = time.time()
            vl = evaluate(model, valid_ids, a.seq_len, a.batch_size, device, a.chunk, amp)
            t_eval += time.time() - t_e
            n_eval += 1
            mark = ""
            if vl < best[0]:
                best = (vl, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
                mark = " (best)"
            log("step %5d  valid loss %.4f  ppl %.2f%s" % (step, vl, math.exp(vl), mark))
            if a.patience and step - best[1] >= a.patience * a.eval_every and step < a.max_steps:
                stop_reason = "no improvement in %d evaluations" % a.patience
                break
            if not budget_checked:
                # safety net, once, after the first evaluation: if the fixed step count cannot finish
                # within the time limit, shrink it now so that the schedule still anneals (logged; with
                # the default settings on an H100 this is not expected to fire)
                budget_checked = True
                elapsed = time.time() - t_train
                per_step = (elapsed - t_eval) / step
                per_eval = t_eval / n_eval
                left = a.max_steps - step
                projected = elapsed + left * per_step + (left // a.eval_every + 1) * per_eval
                if projected > 0.97 * a.time_limit:
                    r = (0.95 * a.time_limit - elapsed - per_eval) / (per_step + per_eval / a.eval_every)
                    new = min(a.max_steps, step + max(1, int(r)))
                    log("WARNING: %.3f s/step + %.1f s/evaluation project %.0f s for %d steps > time limit "
                        "%.0f s: max_steps -> %d" % (per_step, per_eval, projected, a.max_steps, a.time_limit, new))
                    a.max_steps = new
                else:
                    log("time check: %.3f s/step + %.1f s/evaluation, %d steps projected to take %.0f s "
                        "(limit %.0f s)" % (per_step, per_eval, a.max_steps, projected, a.time_limit))
        if time.time() - t_train > a.time_limit and step < a.max_steps:
            stop_reason = "time limit"
            log("WARNING: time limit %.0f s reached at step %d of %d" % (a.time_limit, step, a.max_steps))
            vl = evaluate(model, valid_ids, a.seq_len, a.batch_size, device, a.chunk, amp)
            if vl < best[0]:
                best = (vl, step, {k: v.detach().clone() for k, v in model.state_dict().items()})
            log("step %5d  valid loss %.4f  ppl %.2f" % (step, vl, math.exp(vl)))
            break
    train_s = time.time() - t_train
    log("training done (%s): %d steps, %d tokens, %.1f s, %.0f tok/s on average" % (
        stop_reason, step, step * tok_per_step, train_s, step * tok_per_step / max(1e-9, train_s)))
    if best[2] is not None and best[1] != step:
        log("keeping the checkpoint of step %d (valid loss %.4f) over the last one" % (best[1], best[0]))
        model.load_state_dict(best[2])
    model.eval()

    # save: matrices rounded to fp16; evaluate those exact weights
    rounded = save_hf_folder(hf_dir, model, args)
    model.load_state_dict({k: v.to(device) for k, v in rounded.items()})
    vl = evaluate(model, valid_ids, a.seq_len, a.batch_size, device, a.chunk, amp)
    vl32 = evaluate(model, valid_ids, a.seq_len, a.batch_size, device, a.chunk, False)
    log("final (fp16-rounded matrices) valid loss %.4f, ppl %.2f (bf16 autocast); %.4f, ppl %.2f (fp32), "
        "windows of %d tokens" % (vl, math.exp(vl), vl32, math.exp(vl32), a.seq_len))
    log("saved %s (%d bytes), %s" % (os.path.join(hf_dir, "model.safetensors"),
                                     os.path.getsize(os.path.join(hf_dir, "model.safetensors")),
                                     os.path.join(hf_dir, "config.json")))
    copy_out(out_files)

    # golden outputs and samples: CPU, fp32, reloaded from the saved folder (proves the round trip)
    cpu_model, _ = load_hf_folder(hf_dir, "cpu")
    cpu_model.eval()
    diff = max(float((cpu_model.state_dict()[k] - v).abs().max()) for k, v in rounded.items())
    log("reloaded %s: max |difference| from the saved weights %g" % (hf_dir, diff))
    golden = golden_outputs(cpu_model, sp, a, eos)
    golden["model"] = {"config": args.to_hf(), "parameters": n_params, "train_steps": step,
                       "kept_step": best[1] if best[2] is not None else step,
                       "valid_loss_windows": vl32, "valid_ppl_windows": math.exp(vl32),
                       "windows": a.seq_len}
    with open(golden_path, "w") as f:
        json.dump(golden, f, indent=1)
        f.write("\n")
    log("wrote %s" % golden_path)
    copy_out(out_files)

    gen = torch.Generator().manual_seed(a.seed)
    log("samples (greedy, 60 tokens):")
    for p in PROMPTS:
        ids, _, _, _ = greedy(cpu_model, sp.encode(p), 60, eos)
        log("  %s" % json.dumps(sp.decode(sp.encode(p) + ids)))
    log("samples (temperature 0.8, top-p 0.95, 100 tokens):")
    for p in PROMPTS:
        ids = sample(cpu_model, sp.encode(p), 100, eos, 0.8, 0.95, gen)
        log("  %s" % json.dumps(sp.decode(sp.encode(p) + ids)))
    copy_out(out_files)

    # the same folder through transformers' MambaForCausalLM / Mamba2ForCausalLM (subprocess, time-boxed)
    left = a.deadline - (time.time() - T0)
    if a.no_hf_check:
        log("transformers check skipped (--no-hf-check)")
    elif left < 40:
        log("transformers check skipped: only %.0f s left before the deadline" % left)
    else:
        cmd = [sys.executable, os.path.join(HERE, "hf_check.py"), hf_dir, a.valid_sample,
               "--tokenizer", a.tokenizer, "--tokens", str(a.hf_check_tokens), "--chunk", str(a.chunk)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
        try:
            r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=left - 15, env=env)
            for line in r.stdout.decode("utf-8", "replace").splitlines():
                log("  hf_check: " + line)
            log("transformers check exit code %d" % r.returncode)
        except subprocess.TimeoutExpired:
            log("transformers check timed out after %.0f s" % (left - 15))
    log("total %.1f s" % (time.time() - T0))
    LOG.close()
    LOG = None
    copy_out(out_files)


if __name__ == "__main__":
    main()
