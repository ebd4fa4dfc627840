#!/usr/bin/env python3
"""One PNG from bench/transformer_baseline.py's JSON: decode tok/s against context length for the
Transformer (KV cache) and Mamba, and beside it the memory each keeps per sequence: the KV cache,
which grows with the context, against Mamba's constant state.

    python3 bench/plot.py [bench/baseline.json ...] [-o bench/mamba_vs_transformer.png] [--batch 1]

Several JSON files (say one per --pairs size) are drawn together.

Needs matplotlib (Debian: apt-get install python3-matplotlib)."""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def series(doc, batch):
    """(label, color index, kind, [(context, decode tok/s or None if OOM, bytes per sequence)])."""
    out = []
    for i, t in enumerate(doc.get("transformer", [])):
        pts = []
        for r in t["results"]:
            if r["batch"] != batch:
                continue
            per_seq = r.get("kv_cache_bytes_per_seq", r["kv_cache_bytes_formula"] // r["batch"])
            pts.append((r["context"], None if r.get("oom") else r["decode_tok_s_per_seq"], per_seq))
        out.append(("%s (transformers eager, %s, KV cache)" % (t["model"].replace("pythia", "Pythia"), t["dtype"]), i, "transformer", pts))
    for i, m in enumerate(doc.get("mamba", [])):
        b = m["bench"]
        pts = [(r["prompt_tokens"], r["decode_tok_s_per_seq"], r["state_bytes"]) for r in b["results"] if r["batch"] == batch]
        out.append(("%s (%s, %s, state)" % (m["model"].replace("mamba", "Mamba"), m.get("run", "run"), b["model"]["dtype"]), i, "mamba", pts))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="*", default=[os.path.join(HERE, "baseline.json")])
    ap.add_argument("-o", "--out", default=os.path.join(HERE, "mamba_vs_transformer.png"))
    ap.add_argument("--batch", type=int, default=1, help="the batch size to plot (per-sequence numbers)")
    a = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot.py needs matplotlib (Debian: apt-get install python3-matplotlib)")
    doc = None
    for path in a.json:
        with open(path) as f:
            d = json.load(f)
        if doc is None:
            doc = d
        else:
            doc["transformer"] = doc.get("transformer", []) + d.get("transformer", [])
            doc["mamba"] = doc.get("mamba", []) + d.get("mamba", [])
    ss = series(doc, a.batch)
    if not any(pts for _, _, _, pts in ss):
        sys.exit("plot.py: no results with batch %d in %s" % (a.batch, " ".join(a.json)))

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 6))
    for label, ci, kind, pts in ss:
        if not pts:
            continue
        style = dict(color=COLORS[ci % len(COLORS)], linestyle="-" if kind == "mamba" else "--",
                     marker="o" if kind == "mamba" else "s")
        ok = [(c, v) for c, v, _ in pts if v is not None]
        oom = [c for c, v, _ in pts if v is None]
        if ok:
            ax1.plot([c for c, _ in ok], [v for _, v in ok], label=label + (" (out of memory at %s)" % ", ".join(map(str, oom)) if oom else ""), **style)
        ax2.plot([c for c, _, _ in pts], [b / 2**20 for _, _, b in pts], label=label, **style)
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length (tokens)")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_yscale("log")
    ax1.set_ylabel("decode tokens/s per sequence (batch %d)" % a.batch)
    ax1.set_title("Decode speed against context length")
    ax2.set_yscale("log")
    ax2.set_ylabel("MiB per sequence")
    ax2.set_title("Memory per sequence: KV cache vs Mamba state")
    for ax in (ax1, ax2):  # below the axes: the lines span the whole width
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    dev = doc.get("device") or (doc["mamba"][0]["bench"]["engine"] if doc.get("mamba") else "")
    fig.suptitle("Mamba vs Transformer, %s, %d decode steps after each context (random weights in the real shapes)"
                 % (dev, doc.get("gen_tokens", 0)), fontsize=10)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print("wrote %s" % a.out)


if __name__ == "__main__":
    main()
