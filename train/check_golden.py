#!/usr/bin/env python3
"""Recomputes golden.json from an HF-layout folder on this machine (CPU, fp32, train/mamba.py) and
compares: token ids of the prompts and of valid_sample.txt (this machine's SentencePiece), the greedy
continuations, and the perplexity.

    /usr/bin/python3 train/check_golden.py models/tiny/hf models/tiny/golden.json
    /usr/bin/python3 train/check_golden.py models/tiny-mamba2/hf models/tiny-mamba2/golden.json

Exit code 0 when everything matches (perplexity within 1e-4 relative).
"""
import argparse
import hashlib
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from mamba import load_hf_folder  # noqa: E402
from train import greedy, nll_full  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("golden")
    p.add_argument("--tokenizer", default=os.path.join(ROOT, "models", "tiny", "tokenizer.model"))
    p.add_argument("--chunk", type=int, default=None,
                   help="chunk of the full-sequence forward (default: 16 for Mamba-1, the config's chunk_size for Mamba-2)")
    a = p.parse_args()
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=a.tokenizer)
    with open(a.golden) as f:
        g = json.load(f)
    model, args = load_hf_folder(a.folder, "cpu")
    model.eval()
    ok = True
    for e in g["greedy"]:
        pid = sp.encode(e["prompt"])
        if pid != e["prompt_ids"]:
            print("prompt %r: ids differ: %s vs golden %s" % (e["prompt"], pid, e["prompt_ids"]))
            ok = False
        ids, margins, _, _ = greedy(model, e["prompt_ids"], e["n_new"], sp.eos_id())
        same = ids == e["ids"]
        text_same = sp.decode(e["prompt_ids"] + e["ids"]) == e["text"]
        print("greedy %r: ids %s, text %s (min margin %.4f)" % (
            e["prompt"], "same" if same else "DIFFERENT", "same" if text_same else "DIFFERENT", min(margins)))
        ok = ok and same and text_same
    pp = g["perplexity"]
    path = os.path.join(ROOT, pp["file"])
    with open(path, "rb") as f:
        raw = f.read()
    if hashlib.sha256(raw).hexdigest() != pp["file_sha256"]:
        print("%s differs from the file golden.json was made from" % pp["file"])
        ok = False
    ids = sp.encode(raw.decode("utf-8"))
    if len(ids) != pp["n_tokens"]:
        print("valid sample: %d tokens here vs %d in golden" % (len(ids), pp["n_tokens"]))
        ok = False
    nll = nll_full(model, ids, a.chunk)
    rel = abs(float(nll.mean()) - pp["mean_nll"]) / pp["mean_nll"]
    print("perplexity: %d tokens, mean NLL %.6f (golden %.6f, rel. diff %.2e), ppl %.4f (golden %.4f)" % (
        len(ids), float(nll.mean()), pp["mean_nll"], rel, float(torch.exp(nll.mean())), pp["ppl"]))
    ok = ok and rel < 1e-4
    print("RESULT: %s" % ("match" if ok else "MISMATCH"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
