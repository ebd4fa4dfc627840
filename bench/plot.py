#!/usr/bin/env python3
"""One PNG from bench/transformer_baseline.py's JSON: decode tok/s against context length for the
Transformer (KV cache) and Mamba, and beside it the memory each keeps per sequence: the KV cache,
which grows with the context, against Mamba's constant state.

    python3 bench/plot.py [bench/baseline.json ...] [-o bench/mamba_vs_transformer.png] [--batch 1]

Several JSON files (say one per --pairs size) are drawn together. Each Transformer setup (its
"setup" field: eager, or compiled with a static cache and CUDA graphs) is a line of its own, in
the color of its model size; files without the field hold the eager setup.

Needs matplotlib (Debian: apt-get install python3-matplotlib)."""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


# Line styles: Mamba solid, each Transformer setup its own dashes; one color per model size.
STYLES = {"mamba": ("-", "o"), "eager": ("--", "s"), "compiled": ("-.", "^")}


def series(doc, batch):
    """(label, color index, style key, [(context, decode tok/s or None, bytes per sequence or None, why None)])."""
    out = []
    sizes = []  # the Transformer models in order of first appearance: the i-th goes with the i-th Mamba
    for t in doc.get("transformer", []):
        if t["model"] not in sizes:
            sizes.append(t["model"])
        setup = t.get("setup", "eager")  # files written before the compiled setup existed hold eager runs
        pts = []
        for r in t["results"]:
            if r["batch"] != batch:
                continue
            per_seq = r.get("kv_cache_bytes_per_seq")
            if per_seq is None and "kv_cache_bytes_formula" in r:
                per_seq = r["kv_cache_bytes_formula"] // r["batch"]
            why = "out of memory" if r.get("oom") else "failed" if r.get("error") else None
            pts.append((r["context"], None if why else r["decode_tok_s_per_seq"], per_seq, why))
        label = t.get("label", "transformers eager")
        out.append(("%s (%s, %s, KV cache)" % (t["model"].replace("pythia", "Pythia"), label, t["dtype"]),
                    sizes.index(t["model"]), setup if setup in STYLES else "eager", pts))
    for i, m in enumerate(doc.get("mamba", [])):
        b = m["bench"]
        pts = [(r["prompt_tokens"], r["decode_tok_s_per_seq"], r["state_bytes"], None) for r in b["results"] if r["batch"] == batch]
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

    # The legends go below the axes, one line a row (the labels of the setups are too long for two
    # columns): the figure grows with the number of lines.
    lines = sum(1 for _, _, _, pts in ss if pts)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5 + 0.2 * lines))
    for label, ci, kind, pts in ss:
        if not pts:
            continue
        linestyle, marker = STYLES[kind]
        style = dict(color=COLORS[ci % len(COLORS)], linestyle=linestyle, marker=marker)
        ok = [(c, v) for c, v, _, _ in pts if v is not None]
        notes = ["%s at %s" % (why, ", ".join(str(c) for c, _, _, w in pts if w == why))
                 for why in ("out of memory", "failed") if any(w == why for _, _, _, w in pts)]
        if ok:
            ax1.plot([c for c, _ in ok], [v for _, v in ok], label=label + "".join(" (%s)" % n for n in notes), **style)
        mem = [(c, b) for c, _, b, _ in pts if b is not None]
        if mem:
            ax2.plot([c for c, _ in mem], [b / 2**20 for _, b in mem], label=label, **style)
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
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1)
    dev = doc.get("device") or (doc["mamba"][0]["bench"]["engine"] if doc.get("mamba") else "")
    fig.suptitle("Mamba vs Transformer, %s, %d decode steps after each context (random weights in the real shapes)"
                 % (dev, doc.get("gen_tokens", 0)), fontsize=10)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print("wrote %s" % a.out)


if __name__ == "__main__":
    main()
