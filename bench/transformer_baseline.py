#!/usr/bin/env python3
"""Mamba against a Transformer of the same size, on one GPU: decode tok/s against context length,
and the memory each keeps per sequence (the Transformer's KV cache grows with the context; Mamba's
state does not). Writes one JSON file for bench/plot.py.

    make runcuda      # ./runcuda with --bench (falls back to ./run when there is no ./runcuda)
    python3 bench/transformer_baseline.py [--pairs 160m,2.8b] [--contexts 128,512,2048,8192,32768]
                      [--gen 64] [--batches 1] [--out bench/baseline.json] [--no-transformer] [--no-mamba]

Transformer: transformers' GPTNeoXForCausalLM with random weights in the shapes of Pythia-160m
(Pythia-2.8b), fp16, SDPA attention, on the GPU. Per context length L: a prompt of L random ids
in one forward with use_cache=True (prefill, time to first token), then --gen greedy decode steps
of one token with the KV cache (DynamicCache), timed with torch.cuda.synchronize; the KV-cache
bytes are those of the cache's tensors after the decode, and the peak GPU memory is
torch.cuda.max_memory_allocated over the point. An out-of-memory point is recorded as such.
The decode loop is transformers' eager forward per token (no CUDA graphs, no torch.compile), as
model.generate runs it by default.

Mamba: ./runcuda --bench (bench/bench_sweep.py) on a model.bin with random weights in the shapes
of mamba-130m (mamba-2.8b), fp16, made by bench/make_synth.py: the same context lengths, decode
steps and batch sizes. Random weights: speed depends only on the shapes.
Nothing is downloaded: the configurations are written out below."""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

# Pythia's configurations (EleutherAI/pythia-160m, pythia-2.8b config.json), with room for 32k positions.
PYTHIA = {
    "160m": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "2.8b": dict(hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, intermediate_size=10240),
}
MAMBA_OF = {"160m": "130m", "2.8b": "2.8b"}  # the Mamba checkpoint of about the same size


def pythia_config(name, max_positions):
    from transformers import GPTNeoXConfig
    kw = dict(vocab_size=50304, max_position_embeddings=max_positions, use_parallel_residual=True, layer_norm_eps=1e-5,
              hidden_act="gelu", tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, **PYTHIA[name])
    try:  # transformers 4.x names; 5.x converts them into rope_parameters
        c = GPTNeoXConfig(rotary_pct=0.25, rotary_emb_base=10000, **kw)
    except (TypeError, ValueError):
        c = GPTNeoXConfig(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}, **kw)
    try:
        c._attn_implementation = "sdpa"
    except Exception:  # noqa: BLE001 (the default is SDPA where it exists)
        pass
    return c


def kv_bytes(cache):
    """Bytes of the key and value tensors held by a transformers cache (4.x or 5.x layouts)."""
    def nbytes(t):
        return t.numel() * t.element_size() if hasattr(t, "element_size") else 0

    total = 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for l in layers:
            for t in (getattr(l, "keys", None), getattr(l, "values", None)):
                if t is not None:
                    total += nbytes(t)
        return total
    for name in ("key_cache", "value_cache"):
        for t in getattr(cache, name, []) or []:
            total += nbytes(t)
    if total == 0 and isinstance(cache, (tuple, list)):  # legacy tuples
        for layer in cache:
            for t in layer:
                total += nbytes(t)
    return total


def bench_transformer(name, contexts, gen, batches, device="cuda", warmup_steps=8):
    import torch
    from transformers import GPTNeoXForCausalLM
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda and hasattr(torch.backends.cuda, "enable_cudnn_sdp"):
        # PyTorch 2.11 picks cuDNN attention for this model, and cuDNN builds a new graph for every new
        # KV length: 3.7 ms of CPU per layer per decode step (measured on an H200, 160m: 82.7 ms a
        # step against 6.7 ms once the lengths repeat). Flash or memory-efficient attention instead.
        torch.backends.cuda.enable_cudnn_sdp(False)
    dtype = torch.float16 if cuda else torch.float32
    esize = torch.finfo(dtype).bits // 8
    config = pythia_config(name, max(contexts) + gen + 16)
    torch.manual_seed(0)
    try:
        with dev:  # random init right on the GPU (torch >= 2.0)
            model = GPTNeoXForCausalLM(config)
    except (AttributeError, TypeError):
        model = GPTNeoXForCausalLM(config)
    model = model.to(device=dev, dtype=dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    where = torch.cuda.get_device_name() if cuda else device
    print("transformer: pythia-%s shapes, %.0fM parameters, %s, %s" % (name, n_params / 1e6, str(dtype)[6:], where), flush=True)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def forward(ids, past=None):
        kw = dict(input_ids=ids, use_cache=True)
        if past is not None:
            kw["past_key_values"] = past
        try:
            return model(**kw, logits_to_keep=1)
        except TypeError:
            return model(**kw)

    results = []
    with torch.inference_mode():
        ids = torch.randint(0, 50000, (1, 64), device=dev)  # warm-up: kernels, allocator, cuBLAS handles
        out = forward(ids)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(warmup_steps):
            out = forward(nxt, out.past_key_values)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        del out
        for L in contexts:
            for B in batches:
                rec = {"context": L, "batch": B, "gen_tokens": gen}
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                try:
                    ids = torch.randint(0, 50000, (B, L), device=dev)
                    sync()
                    t0 = time.perf_counter()
                    out = forward(ids)
                    nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                    sync()
                    t1 = time.perf_counter()
                    past = out.past_key_values
                    del out
                    for _ in range(gen):
                        out = forward(nxt, past)
                        past = out.past_key_values
                        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
                    sync()
                    t2 = time.perf_counter()
                    kv = kv_bytes(past)
                    rec.update(prefill_ms=(t1 - t0) * 1e3, prefill_tok_s=B * L / (t1 - t0), ttft_ms=(t1 - t0) * 1e3,
                               decode_ms=(t2 - t1) * 1e3, ms_per_step=(t2 - t1) * 1e3 / gen,
                               decode_tok_s=B * gen / (t2 - t1), decode_tok_s_per_seq=gen / (t2 - t1),
                               kv_cache_bytes=kv, kv_cache_bytes_per_seq=kv // B,
                               kv_cache_bytes_formula=2 * config.num_hidden_layers * B * (L + gen) * config.hidden_size * esize,
                               peak_gpu_bytes=torch.cuda.max_memory_allocated() if cuda else None)
                    del past, out
                except torch.cuda.OutOfMemoryError:
                    rec.update(oom=True,
                               kv_cache_bytes_formula=2 * config.num_hidden_layers * B * (L + gen) * config.hidden_size * esize)
                    out = past = None
                    torch.cuda.empty_cache()
                print("  pythia-%s context %6d batch %3d: %s" % (name, L, B, "out of memory" if rec.get("oom") else
                      "prefill %.0f tok/s, decode %.1f tok/s (%.1f ms/step), KV cache %.1f MB" % (
                          rec["prefill_tok_s"], rec["decode_tok_s"], rec["ms_per_step"], rec["kv_cache_bytes"] / 1e6)), flush=True)
                results.append(rec)
    model = None  # frees the GPU memory before the next size
    if cuda:
        torch.cuda.empty_cache()
    return {"model": "pythia-%s" % name, "arch": "GPTNeoXForCausalLM", "dtype": "fp16" if cuda else "fp32", "parameters": n_params,
            "attention": "SDPA (cuDNN backend off)" if cuda else "SDPA",
            "config": {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                       "intermediate_size", "vocab_size")},
            "results": results}


def bench_mamba(shape, contexts, gen, batches, run, dtype, cache):
    import bench_sweep
    model = bench_sweep.synth_model(shape, dtype, cache)
    doc = bench_sweep.sweep(run, model, ",".join(map(str, contexts)), str(gen), ",".join(map(str, batches)), isolate=False)
    for r in doc["results"]:
        print("  mamba-%s context %6d batch %3d: prefill %.0f tok/s, decode %.1f tok/s (%.2f ms/step), state %.2f MB" % (
            shape, r["prompt_tokens"], r["batch"], r["prefill_tok_s"], r["decode_tok_s"], r["ms_per_step"], r["state_bytes"] / 1e6), flush=True)
    return {"model": "mamba-%s" % shape, "dtype": dtype, "run": os.path.basename(run), "bench": doc}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="160m", help="Pythia sizes (160m, 2.8b), each with the Mamba of its size")
    ap.add_argument("--contexts", default="128,512,2048,8192,32768")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--batches", default="1")
    ap.add_argument("--out", default=os.path.join(HERE, "baseline.json"))
    ap.add_argument("--run", default=None, help="the Mamba program (default ./runcuda if built, else ./run)")
    ap.add_argument("--mamba-dtype", default="fp16")
    ap.add_argument("--cache", default="/tmp/mamba-bench")
    ap.add_argument("--no-transformer", action="store_true")
    ap.add_argument("--no-mamba", action="store_true")
    ap.add_argument("--device", default="cuda", help="the Transformer's device (cpu: a smoke test of this script)")
    a = ap.parse_args()
    contexts = [int(x) for x in a.contexts.split(",")]
    batches = [int(x) for x in a.batches.split(",")]
    pairs = a.pairs.split(",")
    for p in pairs:
        if p not in PYTHIA:
            sys.exit("unknown size %s (known: %s)" % (p, ", ".join(PYTHIA)))
    run = a.run or next((p for p in (os.path.join(REPO, "runcuda"), os.path.join(REPO, "run")) if os.access(p, os.X_OK)), None)

    doc = {"host": platform.node(), "contexts": contexts, "gen_tokens": a.gen, "batches": batches, "transformer": [], "mamba": []}
    try:
        import torch
        doc["torch"] = torch.__version__
        if torch.cuda.is_available():
            doc["device"] = torch.cuda.get_device_name()
        import transformers
        doc["transformers"] = transformers.__version__
    except ImportError as e:
        if not a.no_transformer:
            sys.exit("transformer_baseline: %s (use --no-transformer for the Mamba side only)" % e)
    try:
        doc["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass

    def save():
        with open(a.out, "w") as f:
            json.dump(doc, f, indent=1)

    for p in pairs:
        if not a.no_mamba:
            if run is None:
                sys.exit("transformer_baseline: no ./runcuda or ./run: build one (make runcuda, or make)")
            doc["mamba"].append(bench_mamba(MAMBA_OF[p], contexts, a.gen, batches, run, a.mamba_dtype, a.cache))
            save()
        if not a.no_transformer:
            doc["transformer"].append(bench_transformer(p, contexts, a.gen, batches, a.device))
            save()
    save()
    print("wrote %s" % a.out)


if __name__ == "__main__":
    main()
