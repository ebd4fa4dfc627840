#!/usr/bin/env python3
"""Quality of the weight types on the bundled trained models (README's quality table), through ./run.

For each model (models/tiny: Mamba-1, models/tiny-mamba2: Mamba-2) and each --dtype of export.py:
perplexity of models/tiny/valid_sample.txt (./run --score), and against fp32, over every position of
that text, the top-1 agreement and the mean KL(fp32 || type) of the next-token distribution
(--score --logits FILE). Then the ablation: one tensor class at a time quantized (quantize then
dequantize, written as an fp32 file, so that only that class differs from fp32), for q8_0, q4_0 and,
for the choice of the 4-bit type, q4_1 (per block scale and minimum, 0..15, not a file type).

    python3 bench/quant_quality.py [--models tiny,tiny-mamba2] [--no-ablation]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)
import export  # noqa: E402
import make_checkpoint  # noqa: E402

TEXT = os.path.join(REPO, "models", "tiny", "valid_sample.txt")
CLASSES = {  # tensor class -> suffix of the checkpoint's tensor names
    "embedding": "embeddings.weight", "in_proj": "in_proj.weight", "out_proj": "out_proj.weight",
    "x_proj": "x_proj.weight",
}


def q4_1(x):
    """Per block of 32: scale = (max - min) / 15 and the minimum (both fp16), q in 0..15, rounded half to even."""
    rows, cols = x.shape
    b = x.reshape(rows, cols // 32, 32)
    lo = b.min(axis=-1).astype(np.float16).astype(np.float32)[..., None]
    d = ((b.max(axis=-1)[..., None] - lo) / 15).astype(np.float16).astype(np.float32)
    q = np.clip(np.rint(np.divide(b - lo, d, out=np.zeros_like(b), where=d != 0)), 0, 15)
    return (q * d + lo).reshape(rows, cols)


def fake_quant(x, kind):
    if kind == "q4_1":
        return q4_1(x)
    dt = export.DTYPES[kind]
    return export.dequantize(*export.quantize(x, dt), dt)


def run_score(model, logits=None):
    cmd = [os.path.join(REPO, "run"), model, "-i", "-", "--score", "-q"] + (["--logits", logits] if logits else [])
    with open(TEXT, "rb") as f:
        out = subprocess.run(cmd, stdin=f, capture_output=True, check=True).stdout.decode()
    last = out.strip().splitlines()[-1]
    return float(last.split("perplexity")[1])


def load_logits(path, rows_len, vocab):
    a = np.fromfile(path, dtype="<f4").reshape(-1, rows_len)[:, :vocab].astype(np.float64)
    a -= a.max(axis=1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=1, keepdims=True))  # log-probabilities


def compare(ref_lp, lp):
    """(top-1 agreement, mean KL(ref || this)) over the positions."""
    agree = float((ref_lp.argmax(1) == lp.argmax(1)).mean())
    kl = float((np.exp(ref_lp) * (ref_lp - lp)).sum(axis=1).mean())
    return agree, kl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,tiny-mamba2")
    ap.add_argument("--types", default="fp32,fp16,bf16,q8_0,q4_0", help="fp32 first: the others are compared with it")
    ap.add_argument("--no-ablation", action="store_true")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="quant-quality-")
    results = {}
    for name in a.models.split(","):
        folder = os.path.join(REPO, "models", name, "hf")
        tok = os.path.join(REPO, "models", name, "tokenizer.model")
        res = results[name] = {"types": {}, "ablation": {}}
        ref_lp = None
        print("%s (%s)" % (name, folder))
        print("  %-6s %10s %10s %9s %10s %12s" % ("type", "file MB", "ppl", "vs fp32", "top-1", "mean KL"))
        for dt in a.types.split(","):
            path = os.path.join(tmp, "%s_%s.bin" % (name, dt))
            spec, _ = export.export_model(folder, path, dt, tok)
            lg = os.path.join(tmp, "logits.f32")
            ppl = run_score(path, lg)
            lp = load_logits(lg, spec["vocab_rows"], spec["vocab_size"])
            os.unlink(lg)
            if ref_lp is None:
                ref_lp, ref_ppl = lp, ppl
            agree, kl = compare(ref_lp, lp)
            res["types"][dt] = dict(ppl=ppl, top1=agree, kl=kl, bytes=os.path.getsize(path))
            print("  %-6s %10.2f %10.3f %+8.2f%% %9.2f%% %12.2e" % (dt, os.path.getsize(path) / 1e6, ppl,
                                                                    100 * (ppl / ref_ppl - 1), 100 * agree, kl))
        if a.no_ablation:
            continue
        # ablation: a checkpoint folder with one class quantized and dequantized, exported as fp32
        tensors = export.load_tensors(folder)
        cfg = json.load(open(os.path.join(folder, "config.json")))
        print("  ablation: perplexity with one class quantized (fp32 %.3f)" % ref_ppl)
        print("  %-10s %12s %12s %12s" % ("class", "q8_0", "q4_0", "q4_1"))
        for cls, suffix in CLASSES.items():
            names = [n for n in tensors if n.endswith(suffix)]
            if not names:
                continue
            row = {}
            for kind in ("q8_0", "q4_0", "q4_1"):
                d = os.path.join(tmp, "ablation")
                os.makedirs(d, exist_ok=True)
                items = []
                for n, t in tensors.items():
                    x = export.raw_to_f32(t.load(), t.kind)
                    if n in names:
                        x = fake_quant(x.reshape(x.shape[0], -1), kind).reshape(x.shape)
                    items.append((n, np.ascontiguousarray(x, dtype=np.float32)))
                make_checkpoint.write_safetensors(os.path.join(d, "model.safetensors"), items)
                json.dump(cfg, open(os.path.join(d, "config.json"), "w"))
                path = os.path.join(tmp, "ablation.bin")
                export.export_model(d, path, "fp32", tok)
                row[kind] = run_score(path)
            res["ablation"][cls] = row
            print("  %-10s %s" % (cls, " ".join("%6.3f %+5.1f%%" % (row[k], 100 * (row[k] / ref_ppl - 1))
                                                  for k in ("q8_0", "q4_0", "q4_1"))))
    if a.json:
        json.dump(results, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
