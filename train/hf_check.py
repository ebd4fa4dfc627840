#!/usr/bin/env python3
"""Loads an HF-layout folder with transformers' MambaForCausalLM (Mamba2ForCausalLM when the config's
model_type is "mamba2") and with train/mamba.py, and compares their logits on the first N tokens of a
text (CPU, fp32). Proves the layout and the math.

    python3 train/hf_check.py models/tiny/hf models/tiny/valid_sample.txt [--tokens 1024]
    python3 train/hf_check.py models/tiny-mamba2/hf models/tiny/valid_sample.txt

For Mamba-2, transformers' torch path (what runs without mamba_ssm) normalizes the gated RMSNorm over
the whole d_inner width; that is mamba_ssm's group-wise norm only when n_groups = 1, so a folder with
n_groups > 1 is refused here (exit code 3) rather than compared against the wrong oracle.

Exit code 0: same logits (max |difference| < 1e-3); 1: they differ; 2: transformers not importable.
"""
import argparse
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from mamba import load_hf_folder  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("text")
    p.add_argument("--tokenizer", default=os.path.join(os.path.dirname(HERE), "models", "tiny", "tokenizer.model"))
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--chunk", type=int, default=None, help="our forward's chunk (default: the model's)")
    a = p.parse_args()
    torch.set_num_threads(max(1, min(8, os.cpu_count() or 1)))
    with open(os.path.join(a.folder, "config.json")) as f:
        cfg = json.load(f)
    m2 = cfg.get("model_type") == "mamba2"
    if m2 and int(cfg.get("n_groups", 1)) != 1:
        print("n_groups %s: transformers' torch path normalizes over the whole width, not per group; "
              "not a valid oracle here" % cfg.get("n_groups"))
        sys.exit(3)
    try:
        import transformers
        if m2:
            from transformers import Mamba2ForCausalLM as HFModel
        else:
            from transformers import MambaForCausalLM as HFModel
    except Exception as e:  # noqa: BLE001
        print("transformers not importable: %r" % (e,))
        sys.exit(2)
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=a.tokenizer)
    with open(a.text, encoding="utf-8") as f:
        ids = sp.encode(f.read())[: a.tokens]
    x = torch.tensor(ids, dtype=torch.long)[None]

    t0 = time.time()
    try:
        hf, info = HFModel.from_pretrained(a.folder, dtype=torch.float32, output_loading_info=True)
    except TypeError:
        hf, info = HFModel.from_pretrained(a.folder, torch_dtype=torch.float32, output_loading_info=True)
    hf.eval()
    print("transformers %s: %s loaded %s in %.1f s; loading info %s" % (
        transformers.__version__, HFModel.__name__, a.folder, time.time() - t0,
        json.dumps({k: sorted(map(str, v)) for k, v in info.items()})))
    tied = hf.lm_head.weight.data_ptr() == hf.backbone.embeddings.weight.data_ptr() or torch.equal(
        hf.lm_head.weight, hf.backbone.embeddings.weight)
    print("lm_head tied to backbone.embeddings: %s" % tied)

    ours, _ = load_hf_folder(a.folder, "cpu")
    ours.eval()
    hs = hf.state_dict()
    worst = 0.0
    for k, v in ours.state_dict().items():
        if k not in hs:
            print("missing in transformers' model: %s" % k)
            worst = float("inf")
            continue
        diff = float((hs[k].float() - v).abs().max())
        if diff > 0:
            print("parameter %s differs after from_pretrained: max |difference| %g" % (k, diff))
        worst = max(worst, diff)
    print("parameters: max |difference| %g" % worst)
    if worst > 0:
        # from_pretrained re-initialized or converted something: load the file's tensors as they are,
        # so the logits below compare the architecture, not the loader.
        missing, unexpected = hf.load_state_dict({k: v.float() for k, v in ours.state_dict().items()}, strict=False)
        print("loaded the state dict directly: missing %s, unexpected %s" % (sorted(missing), sorted(unexpected)))
        hs = hf.state_dict()
        worst = max(float((hs[k].float() - v).abs().max()) for k, v in ours.state_dict().items())
        print("parameters after a direct load: max |difference| %g" % worst)

    t0 = time.time()
    with torch.no_grad():
        lh = hf(x, use_cache=False).logits[0].float()
    t_hf = time.time() - t0
    with torch.no_grad():
        lo = ours(x, chunk=a.chunk)[0]
    d = float((lh - lo).abs().max())
    nll_h = float(F.cross_entropy(lh[:-1].double(), x[0, 1:]))
    nll_o = float(F.cross_entropy(lo[:-1].double(), x[0, 1:]))
    print("%d tokens: logits max |difference| %.3g (max |logit| %.3g); mean NLL transformers %.6f, ours %.6f "
          "(transformers forward %.1f s)" % (len(ids), d, float(lo.abs().max()), nll_h, nll_o, t_hf))
    ok = d < 1e-3 and worst == 0.0 and tied
    print("RESULT: %s" % ("same" if ok else "DIFFERENT"))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
