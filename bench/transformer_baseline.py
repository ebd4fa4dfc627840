#!/usr/bin/env python3
"""Mamba against a Transformer of the same size, on one GPU: decode tok/s against context length,
and the memory each keeps per sequence (the Transformer's KV cache grows with the context; Mamba's
state does not). Writes one JSON file for bench/plot.py.

    make runcuda      # ./runcuda with --bench (falls back to ./run when there is no ./runcuda)
    python3 bench/transformer_baseline.py [--pairs 160m,2.8b] [--contexts 128,512,2048,8192,32768]
                      [--gen 64] [--batches 1] [--setups eager,compiled]
                      [--compiled-contexts 512,2048,8192,32768] [--out bench/baseline.json]
                      [--no-transformer] [--no-mamba]

Transformer: transformers' GPTNeoXForCausalLM with random weights in the shapes of Pythia-160m
(Pythia-2.8b), fp16, SDPA attention (flash or memory-efficient: the cuDNN backend is turned off),
on the GPU, in two setups (--setups), each one entry of the JSON's "transformer" list:

  eager: per context length L (--contexts), a prompt of L random ids in one forward with
    use_cache=True (prefill, time to first token), then --gen greedy decode steps of one token
    with the KV cache (DynamicCache), timed with torch.cuda.synchronize. This is transformers'
    eager forward per token (no CUDA graphs, no torch.compile), as model.generate runs it by default.
  compiled: the fastest decoding transformers documents ("LLM inference optimization": a static
    KV cache and torch.compile(mode="reduce-overhead"), which replays CUDA graphs). Per context
    length L (--compiled-contexts): a StaticCache of L + warm-up + --gen slots, the prefill through
    the uncompiled forward (transformers compiles only the decode step: its static cache is made for
    that, and a prefill of a new length would mean a new graph), then a decode step of one token
    (forward + argmax) compiled with fullgraph=True and dynamic=False, its attention through cuDNN's
    SDPA kernel by default (--compiled-sdpa; see COMPILED_SDPA): a few warm-up steps compile it
    and capture its CUDA graph (their time is compile_s, apart from the decode figures), then --gen
    steps are timed. Each (L, batch) is a new shape, so each point compiles anew; a point that fails
    is recorded with its error and the sweep goes on. Not run with --device cpu.

For both: the KV-cache bytes are those of the cache's tensors after the decode, and the peak GPU
memory is torch.cuda.max_memory_allocated over the point. An out-of-memory point is recorded as such.

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
import traceback

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


SETUP_LABELS = {
    "eager": "transformers eager, DynamicCache",
    "compiled": "transformers StaticCache + torch.compile, CUDA graphs",
}
# The SDPA backends the compiled decode step may use (--compiled-sdpa). A static cache's attention spans
# all its slots, the unwritten ones masked, and flash attention takes no mask: "efficient" is then the
# memory-efficient kernel, which splits the work of a one-token query only by batch and head (12 blocks
# for Pythia-160m) and runs through every slot in each: 1.9 ms a layer at 32k on an H200. cuDNN's
# rebuilding for every new KV length (why it is off for the eager setup) does not happen here, where the
# shapes are fixed and captured once. Measured on an H200 (torch 2.11, transformers 5.17, Pythia-160m,
# batch 1, ms a decode step at contexts 512 / 8192 / 32768): cudnn 0.52 / 0.61 / 0.82, math 0.65 /
# 1.5 / 4.3, efficient 0.86 / 6.1 / 23.0 (transformers' docs use math for their static-cache loop).
COMPILED_SDPA = {"cudnn": ("CUDNN_ATTENTION",), "efficient": ("FLASH_ATTENTION", "EFFICIENT_ATTENTION"), "math": ("MATH",)}
# Decode steps run before the compiled setup's timing: the first call traces and compiles, the second
# records the CUDA graph (cudagraph trees warm a new graph up once before recording it), the rest replay.
COMPILE_WARMUP_STEPS = 4


def report(name, setup, rec):
    if rec.get("oom"):
        what = "out of memory"
    elif rec.get("error"):
        what = "failed: " + rec["error"].splitlines()[0][:200]
    else:
        what = "prefill %.0f tok/s, decode %.1f tok/s (%.2f ms/step), KV cache %.1f MB" % (
            rec["prefill_tok_s"], rec["decode_tok_s"], rec["ms_per_step"], rec["kv_cache_bytes"] / 1e6)
        if "compile_s" in rec:
            what += ", compile+capture %.1f s" % rec["compile_s"]
    print("  pythia-%s %-8s context %6d batch %3d: %s" % (name, setup, rec["context"], rec["batch"], what), flush=True)


def is_oom(torch, e):
    # Inductor can wrap an allocation failure in its own exception type, hence the message test too.
    return isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower()


def bench_transformer(name, contexts, gen, batches, device="cuda", setups=("eager", "compiled"), compiled_contexts=(),
                      compiled_sdpa="cudnn"):
    """Yields one entry of the JSON's "transformer" list per setup (the model is built once for all)."""
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
    longest = max([0] + list(contexts) + (list(compiled_contexts) if "compiled" in setups else []))
    config = pythia_config(name, longest + gen + COMPILE_WARMUP_STEPS + 16)
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

    def entry(setup, results, **extra):
        e = {"model": "pythia-%s" % name, "setup": setup, "label": SETUP_LABELS[setup], "arch": "GPTNeoXForCausalLM",
             "dtype": "fp16" if cuda else "fp32", "parameters": n_params,
             "attention": "SDPA (cuDNN backend off)" if cuda else "SDPA",
             "config": {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                                        "intermediate_size", "vocab_size")}}
        e.update(extra)
        e["results"] = results
        return e

    with torch.inference_mode():  # warm-up: kernels, allocator, cuBLAS handles
        ids = torch.randint(0, 50000, (1, 64), device=dev)
        out = model(input_ids=ids, use_cache=True)
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(8):
            out = model(input_ids=nxt, past_key_values=out.past_key_values, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        del out, nxt, ids

    if "eager" in setups:
        yield entry("eager", eager_points(torch, model, config, name, contexts, gen, batches, dev, esize))
    if "compiled" in setups:
        if not cuda:
            why = "torch.compile(mode='reduce-overhead') captures CUDA graphs: not run on %s" % device
            print("  pythia-%s compiled: skipped (%s)" % (name, why), flush=True)
            yield entry("compiled", [], skipped=why)
        else:
            results = compiled_points(torch, model, config, name, compiled_contexts, gen, batches, dev, dtype, esize,
                                      compiled_sdpa)
            yield entry("compiled", results, label="%s, %s attention" % (SETUP_LABELS["compiled"], compiled_sdpa),
                        prefill="uncompiled forward into the StaticCache",
                        attention="SDPA, decode step: %s (prefill: cuDNN backend off)" % compiled_sdpa, compile={"mode": "reduce-overhead", "fullgraph": all(r.get("fullgraph", True) for r in results),
                                 "dynamic": False, "warmup_steps": COMPILE_WARMUP_STEPS, "torch": torch.__version__})
    model = None  # frees the GPU memory before the next size
    if cuda:
        torch.cuda.empty_cache()


def eager_points(torch, model, config, name, contexts, gen, batches, dev, esize):
    """transformers' eager decode loop with a DynamicCache, one record per (context, batch)."""
    cuda = dev.type == "cuda"

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
                report(name, "eager", rec)
                results.append(rec)
    return results


def dynamo_count(group, key):
    """One of torch._dynamo's event counters (None where this torch has no such counter)."""
    try:
        from torch._dynamo.utils import counters
        return int(counters[group][key])
    except Exception:  # noqa: BLE001 (internal API: a missing counter only loses a sanity check)
        return None


def count_delta(before, after):
    return None if before is None or after is None else after - before


def raise_recompile_limits(torch):
    """Dynamo keeps 8 compiled versions per function by default, then silently runs it eagerly. Each
    point is a new shape and the script resets dynamo between points, so the limit should never be
    reached; raise it anyway, and have dynamo fail loudly (recorded as the point's error) if it is."""
    import torch._dynamo
    cfg = torch._dynamo.config
    for names, value in ((("recompile_limit", "cache_size_limit"), 64),  # renamed in torch 2.6
                         (("accumulated_recompile_limit", "accumulated_cache_size_limit"), 1024)):
        name = next((n for n in names if hasattr(cfg, n)), None)
        if name is not None:
            setattr(cfg, name, max(getattr(cfg, name), value))
    name = next((n for n in ("fail_on_recompile_limit_hit", "fail_on_cache_limit_hit") if hasattr(cfg, n)), None)
    if name is not None:
        setattr(cfg, name, True)


def reset_compiled(torch):
    """Drops every compiled graph and captured CUDA graph (and the memory pools they hold)."""
    torch._dynamo.reset()
    try:  # torch._dynamo.reset() may not free cudagraph trees in every version
        from torch._inductor.cudagraph_trees import reset_cudagraph_trees
        reset_cudagraph_trees()
    except Exception:  # noqa: BLE001
        pass


def static_cache(config, max_cache_len, batch, dev, dtype):
    from transformers import StaticCache
    try:
        # transformers >= 4.56 and 5.x: StaticCache(config, max_cache_len); the layers allocate their
        # tensors at the first update (the prefill), from the keys' batch, heads, dtype and device.
        return StaticCache(config=config, max_cache_len=max_cache_len)
    except TypeError:
        # Older 4.x: everything up front.
        return StaticCache(config=config, max_batch_size=batch, max_cache_len=max_cache_len, device=dev, dtype=dtype)


def compiled_points(torch, model, config, name, contexts, gen, batches, dev, dtype, esize, sdpa="cudnn"):
    """Static KV cache + torch.compile(mode="reduce-overhead"), one record per (context, batch)."""
    import inspect
    import torch._inductor.config
    from torch.nn.attention import SDPBackend, sdpa_kernel
    raise_recompile_limits(torch)
    # Inductor's on-disk graph cache does not tell graphs traced under different SDPA backends apart
    # (seen with torch 2.11: a graph compiled for one backend came back for another): compile afresh.
    torch._inductor.config.fx_graph_cache = False
    try:
        import torch._functorch.config
        torch._functorch.config.enable_autograd_cache = False
    except (ImportError, AttributeError):
        pass
    backends = [getattr(SDPBackend, b) for b in COMPILED_SDPA[sdpa]]
    # transformers 5.x (from early 2026) dropped the cache_position argument: a StaticCache counts the
    # tokens written in a tensor of its own. Earlier versions need the positions passed in. Pass them
    # only where forward names the argument (in 5.x it would fall into **kwargs, unused).
    params = inspect.signature(model.forward).parameters
    pass_positions = "cache_position" in params
    keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    mark_step = getattr(getattr(torch, "compiler", None), "cudagraph_mark_step_begin", None)
    W = COMPILE_WARMUP_STEPS

    def decode_step(tok, cache, position):
        kw = dict(input_ids=tok, past_key_values=cache, use_cache=True)
        if pass_positions:
            kw["cache_position"] = position
        logits = model(**kw).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    def point(L, B, fullgraph):
        rec = {"context": L, "batch": B, "gen_tokens": gen, "fullgraph": fullgraph}
        # The warm-up steps take cache slots too (a 5.x StaticCache advances its own position on every
        # step, and writing past its end is a device-side assert that would end the whole run). The
        # attention of a static cache spans all its slots, so L + 4 + gen costs the same as L + gen.
        n = L + W + gen
        rec["max_cache_len"] = n
        rec["kv_cache_bytes_formula"] = 2 * config.num_hidden_layers * B * n * config.hidden_size * esize
        reset_compiled(torch)  # a fresh compile per point; frees the last point's graphs
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        step = torch.compile(decode_step, mode="reduce-overhead", fullgraph=fullgraph, dynamic=False)
        cache = static_cache(config, n, B, dev, dtype)
        ids = torch.randint(0, 50000, (B, L), device=dev)
        kw = dict(input_ids=ids, past_key_values=cache, use_cache=True, **keep_last)
        if pass_positions:
            kw["cache_position"] = torch.arange(L, device=dev)
        position = torch.tensor([L], device=dev)

        def one_step(tok):
            if mark_step is not None:  # a new iteration: the last replay's outputs may be overwritten
                mark_step()
            # The output lives in the CUDA graph's memory pool and the next replay overwrites it: clone.
            tok = step(tok, cache, position).clone()
            if pass_positions:
                position.add_(1)
            return tok

        torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = model(**kw)  # prefill, uncompiled
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        del out, ids
        graphs0, skips0 = dynamo_count("stats", "unique_graphs"), dynamo_count("inductor", "cudagraph_skips")
        with sdpa_kernel(backends):  # the backend is chosen when the step is traced, at its first call
            for _ in range(W):
                nxt = one_step(nxt)
            torch.cuda.synchronize()
            t2 = time.perf_counter()
            graphs1 = dynamo_count("stats", "unique_graphs")
            for _ in range(gen):
                nxt = one_step(nxt)
            torch.cuda.synchronize()
            t3 = time.perf_counter()
        graphs2, skips2 = dynamo_count("stats", "unique_graphs"), dynamo_count("inductor", "cudagraph_skips")
        try:  # slots written: L + W + gen if every step wrote where it should
            filled = int(cache.get_seq_length())
        except Exception:  # noqa: BLE001
            filled = None
        kv = kv_bytes(cache)
        rec.update(prefill_ms=(t1 - t0) * 1e3, prefill_tok_s=B * L / (t1 - t0), ttft_ms=(t1 - t0) * 1e3,
                   compile_s=t2 - t1, decode_ms=(t3 - t2) * 1e3, ms_per_step=(t3 - t2) * 1e3 / gen,
                   decode_tok_s=B * gen / (t3 - t2), decode_tok_s_per_seq=gen / (t3 - t2),
                   kv_cache_bytes=kv, kv_cache_bytes_per_seq=kv // B, peak_gpu_bytes=torch.cuda.max_memory_allocated(),
                   graphs_compiled=count_delta(graphs0, graphs1), graphs_compiled_while_timed=count_delta(graphs1, graphs2),
                   cudagraph_skips=count_delta(skips0, skips2), cache_slots_written=filled)
        # Either would make the timed steps something other than CUDA-graph replays of one graph.
        if rec["graphs_compiled_while_timed"]:
            print("  warning: %d graph(s) compiled during the timed steps" % rec["graphs_compiled_while_timed"], flush=True)
        if rec["cudagraph_skips"]:
            print("  warning: inductor skipped CUDA graphs (%d); run with TORCH_LOGS=perf_hints to see why"
                  % rec["cudagraph_skips"], flush=True)
        if filled is not None and filled != n:
            print("  warning: the static cache holds %d tokens, not %d" % (filled, n), flush=True)
        return rec

    results = []
    fullgraph = True
    with torch.no_grad():  # as model.generate runs
        for L in contexts:
            for B in batches:
                while True:
                    try:
                        rec = point(L, B, fullgraph)
                    except Exception as e:  # noqa: BLE001 (recorded; the sweep goes on)
                        err = "%s: %s" % (type(e).__name__, e)
                        if fullgraph and isinstance(e, getattr(torch._dynamo.exc, "Unsupported", ())):
                            # A graph break (fullgraph=True refuses them): once more, and for the rest of
                            # the sweep, with the model split into several graphs.
                            print("  pythia-%s compiled context %6d batch %3d: fullgraph failed (%s); again without"
                                  % (name, L, B, err.splitlines()[0][:200]), flush=True)
                            fullgraph = False
                            continue
                        traceback.print_exc()
                        n = L + W + gen
                        rec = {"context": L, "batch": B, "gen_tokens": gen, "fullgraph": fullgraph, "max_cache_len": n,
                               "kv_cache_bytes_formula": 2 * config.num_hidden_layers * B * n * config.hidden_size * esize,
                               "error": err[:2000]}
                        if is_oom(torch, e):
                            rec["oom"] = True
                    break
                reset_compiled(torch)
                torch.cuda.empty_cache()
                report(name, "compiled", rec)
                results.append(rec)
    return results


def bench_mamba(shape, contexts, gen, batches, run, dtype, cache):
    import bench_sweep
    model = bench_sweep.synth_model(shape, dtype, cache)
    doc = bench_sweep.sweep(run, model, ",".join(map(str, contexts)), str(gen), ",".join(map(str, batches)), isolate=False)
    for r in doc["results"]:
        print("  mamba-%s context %6d batch %3d: prefill %.0f tok/s, decode %.1f tok/s (%.2f ms/step), state %.2f MB" % (
            shape, r["prompt_tokens"], r["batch"], r["prefill_tok_s"], r["decode_tok_s"], r["ms_per_step"], r["state_bytes"] / 1e6), flush=True)
    return {"model": "mamba-%s" % shape, "dtype": dtype, "run": os.path.basename(run), "bench": doc}


def int_list(text):
    return [int(x) for x in text.split(",") if x.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", default="160m", help="Pythia sizes (160m, 2.8b), each with the Mamba of its size")
    ap.add_argument("--contexts", default="128,512,2048,8192,32768", help="context lengths of Mamba and the eager setup")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--batches", default="1")
    ap.add_argument("--setups", default="eager,compiled",
                    help="the Transformer's setups: eager (transformers' decode loop, DynamicCache) and compiled "
                         "(StaticCache + torch.compile(mode='reduce-overhead'), CUDA graphs; skipped with --device cpu)")
    ap.add_argument("--compiled-contexts", default="512,2048,8192,32768",
                    help="context lengths of the compiled setup (each one compiles anew: fewer points, less time)")
    ap.add_argument("--compiled-sdpa", default="cudnn", choices=sorted(COMPILED_SDPA),
                    help="the SDPA backend of the compiled decode step (efficient: flash or memory-efficient, as the "
                         "eager setup; slow with a static cache's mask at long contexts, see COMPILED_SDPA)")
    ap.add_argument("--out", default=os.path.join(HERE, "baseline.json"))
    ap.add_argument("--run", default=None, help="the Mamba program (default ./runcuda if built, else ./run)")
    ap.add_argument("--mamba-dtype", default="fp16")
    ap.add_argument("--cache", default="/tmp/mamba-bench")
    ap.add_argument("--no-transformer", action="store_true")
    ap.add_argument("--no-mamba", action="store_true")
    ap.add_argument("--device", default="cuda", help="the Transformer's device (cpu: a smoke test of this script, eager setup only)")
    a = ap.parse_args()
    contexts = int_list(a.contexts)
    compiled_contexts = int_list(a.compiled_contexts)
    batches = int_list(a.batches)
    pairs = a.pairs.split(",")
    for p in pairs:
        if p not in PYTHIA:
            sys.exit("unknown size %s (known: %s)" % (p, ", ".join(PYTHIA)))
    setups = [x for x in a.setups.split(",") if x]
    for x in setups:
        if x not in SETUP_LABELS:
            sys.exit("unknown setup %s (known: %s)" % (x, ", ".join(SETUP_LABELS)))
    run = a.run or next((p for p in (os.path.join(REPO, "runcuda"), os.path.join(REPO, "run")) if os.access(p, os.X_OK)), None)

    doc = {"host": platform.node(), "contexts": contexts, "gen_tokens": a.gen, "batches": batches, "setups": setups,
           "compiled_contexts": compiled_contexts, "compiled_sdpa": a.compiled_sdpa, "transformer": [], "mamba": []}
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
            for entry in bench_transformer(p, contexts, a.gen, batches, a.device, setups, compiled_contexts, a.compiled_sdpa):
                doc["transformer"].append(entry)
                save()
    save()
    print("wrote %s" % a.out)


if __name__ == "__main__":
    main()
