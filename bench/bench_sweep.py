#!/usr/bin/env python3
"""Sweep of ./run --bench (or ./runcuda --bench): prefill tok/s, time to first token, decode tok/s,
peak memory and state bytes over prompt lengths x batch sizes x generation lengths; writes
OUT.json (./run --bench's document, results merged) and OUT.csv (one row per point).

    python3 bench/bench_sweep.py [--run ./run] [--model M.bin | --shape 130m --dtype fp32]
                                 [--prompts 128,512,2048,8192] [--gens 32] [--batches 1,4,16]
                                 [--full] [--isolate] [--threads N] [--out bench/sweep]

Without --model, a model.bin with random weights in the shape of a released checkpoint is made
with bench/make_synth.py (speed does not depend on the values) and cached in --cache.
--full sweeps prompts of 128 to 32768 tokens. --isolate runs one process per point, so that each
point's peak_rss_bytes is its own (otherwise it is the process's peak so far). The defaults run in
about half a minute on 2 cores with a 130m fp32 model."""
import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FULL_PROMPTS = "128,512,2048,8192,32768"


def synth_model(shape, dtype, cache):
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, "synth_%s_%s.bin" % (shape, dtype))
    if not os.path.exists(path):
        subprocess.run([sys.executable, os.path.join(HERE, "make_synth.py"), "--shape", shape, "--dtype", dtype, path],
                       check=True, stdout=subprocess.DEVNULL)
    return path


def run_bench(run, model, prompts, gens, batches, env, quiet=True):
    cmd = [run, model, "--bench", "--bench-prompt", prompts, "--bench-gen", gens, "--bench-batch", batches]
    if quiet:
        cmd.append("-q")
    r = subprocess.run(cmd, stdout=subprocess.PIPE, env=env)
    if r.returncode != 0:
        hint = " (a build from before --bench? rebuild it: make, or make runcuda)" if r.returncode == 2 else ""
        sys.exit("bench_sweep: %s exited with %d%s" % (" ".join(cmd), r.returncode, hint))
    return json.loads(r.stdout)


def sweep(run, model, prompts, gens, batches, isolate=False, threads=None, quiet=True):
    """./run --bench's JSON document for the whole sweep (one process, or one per point)."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if not isolate:
        return run_bench(run, model, prompts, gens, batches, env, quiet)
    doc = None
    for p in prompts.split(","):
        for b in batches.split(","):
            for g in gens.split(","):
                d = run_bench(run, model, p, g, b, env, quiet)
                if doc is None:
                    doc = d
                else:
                    doc["results"] += d["results"]
    doc["isolated"] = True
    return doc


def write(doc, out):
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    keys = list(doc["results"][0]) if doc["results"] else []
    with open(out + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys + ["engine", "dtype"])
        for r in doc["results"]:
            w.writerow([r[k] for k in keys] + [doc["engine"], doc["model"]["dtype"]])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default=os.path.join(REPO, "run"))
    ap.add_argument("--model")
    ap.add_argument("--shape", default="130m")
    ap.add_argument("--dtype", default="fp32")
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "mamba-bench"))
    ap.add_argument("--prompts", default="128,512,2048,8192")
    ap.add_argument("--gens", default="32")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--full", action="store_true", help="prompts of 128 to 32768 tokens")
    ap.add_argument("--isolate", action="store_true", help="one process per point")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", default=os.path.join(HERE, "sweep"), help="writes OUT.json and OUT.csv")
    ap.add_argument("-v", "--verbose", action="store_true", help="show ./run's progress lines")
    a = ap.parse_args()
    model = a.model or synth_model(a.shape, a.dtype, a.cache)
    doc = sweep(a.run, model, FULL_PROMPTS if a.full else a.prompts, a.gens, a.batches, a.isolate, a.threads, not a.verbose)
    write(doc, a.out)
    print("%s | %s %s, state %d bytes per sequence" % (doc["engine"], os.path.basename(model), doc["model"]["dtype"], doc["state_bytes_per_seq"]))
    print("%8s %5s %5s %12s %9s %12s %14s %10s" % ("prompt", "gen", "batch", "prefill t/s", "TTFT ms", "decode t/s", "per seq t/s", "peak MB"))
    for r in doc["results"]:
        print("%8d %5d %5d %12.1f %9.1f %12.1f %14.1f %10.0f" % (r["prompt_tokens"], r["gen_tokens"], r["batch"], r["prefill_tok_s"],
              r["ttft_ms"], r["decode_tok_s"], r["decode_tok_s_per_seq"], r["peak_rss_bytes"] / 2**20))
    print("wrote %s.json and %s.csv" % (a.out, a.out))


if __name__ == "__main__":
    main()
