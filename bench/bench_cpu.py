#!/usr/bin/env python3
"""make bench: prefill and decode speed of ./run on a mamba-130m-shaped model it makes itself
(random weights in the real shapes: speed does not depend on the values), fp32, fp16, q8_0 and q4_0, and on a
mamba2-130m-shaped one (fp32), with peak resident memory, next to the floors of docs/targets.md
measured on this machine in the same run: decode floor = memory read bandwidth / bytes per token
(the weights; for Mamba-2 also its 19 MB state, read and written every step).

    python3 bench/bench_cpu.py [--threads 2] [--repeats 3] [--prompt 512] [--decode 128]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)


def run_once(cmd, env):
    """(prefill tok/s, decode tok/s, peak resident KB) of one ./run, its own rusage alone."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = p.stderr.read().decode()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        sys.exit("bench: %s failed: %s" % (" ".join(cmd[:3]), err[-300:]))
    m = re.search(r"prompt: (\d+) tokens, (?:[\d.]+ ms, )?([\d.]+) tok/s \| generated: (\d+) tokens, ([\d.]+) tok/s", err)
    if not m:
        sys.exit("bench: no summary line in the stderr of %s: %s" % (" ".join(cmd[:3]), err[-300:]))
    return float(m.group(2)), float(m.group(4)), usage.ru_maxrss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "mamba-bench"))
    a = ap.parse_args()

    import export
    import make_checkpoint
    os.makedirs(a.cache, exist_ok=True)
    folder = os.path.join(a.cache, "130m_hf")
    if not os.path.exists(os.path.join(folder, "model.safetensors")):
        make_checkpoint.write_checkpoint(folder, "130m", "hf", 0, 1)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    bw = float(subprocess.run([os.path.join(REPO, "bench", "bandwidth")], capture_output=True, env=env, check=True).stdout)
    ids = " ".join(str((i * 7919) % 50000 + 5) for i in range(a.prompt))
    print("machine: %d threads, memory read bandwidth %.1f GB/s (measured now)" % (a.threads, bw))
    print("%-12s %9s %14s %14s %12s %14s %9s" % ("model", "weights", "prefill tok/s", "decode tok/s", "decode floor", "of the floor", "peak RSS"))
    m2_path = os.path.join(a.cache, "m2-130m_fp32.bin")
    if not os.path.exists(m2_path):
        subprocess.run([sys.executable, os.path.join(HERE, "make_synth.py"), "--shape", "m2-130m", "--dtype", "fp32", m2_path],
                       check=True, stdout=subprocess.DEVNULL)
    m2_state = 24 * ((1536 + 2 * 128) * 3 + 1536 * 128) * 4  # bytes: n_layer * (conv + SSM state), fp32
    decode = {}
    for name, dtype in (("130m", "fp32"), ("130m", "fp16"), ("130m", "q8_0"), ("130m", "q4_0"), ("m2-130m", "fp32")):
        path = os.path.join(a.cache, "%s_%s.bin" % (name, dtype))
        if not os.path.exists(path):
            export.export_model(folder, path, dtype)
        weights = os.path.getsize(path)
        # bytes per decode step: all the weights (the embedding row aside, the tied lm_head reads it
        # whole), and Mamba-2's state, read and written
        moved = weights + (2 * m2_state if name == "m2-130m" else 0)
        floor = bw * 1e9 / moved
        pre, dec, rss = [], [], 0
        for _ in range(a.repeats):
            p, _, r1 = run_once([os.path.join(REPO, "run"), path, "--ids", "-i", ids, "-n", "1", "-t", "0"], env)
            _, d, r2 = run_once([os.path.join(REPO, "run"), path, "--ids", "-i", "510 1533", "-n", str(a.decode), "-t", "0", "--ignore-eos"], env)
            pre.append(p)
            dec.append(d)
            rss = max(rss, r1, r2)
        p, d = statistics.median(pre), statistics.median(dec)
        decode[name + " " + dtype] = d
        print("%-12s %7.0f MB %14.1f %14.1f %12.1f %13.0f%% %6.0f MB" % (
            name + " " + dtype, weights / 1e6, p, d, floor, 100 * d / floor, rss / 1024))
    print("decode against fp16: q8_0 %.2fx, q4_0 %.2fx" % (decode["130m q8_0"] / decode["130m fp16"], decode["130m q4_0"] / decode["130m fp16"]))
    print("targets (docs/targets.md, 2 threads): decode >= 90% of the floor (fp32), >= 85% (fp16, m2-130m); prefill >= 800 tok/s (fp32)")
    print("  (issue 12) q8_0 decode >= 1.8x fp16, q4_0 >= 3x fp16, each >= 85% of its floor")
    print("prefill: %d-token prompt, decode: %d greedy tokens, medians of %d runs" % (a.prompt, a.decode, a.repeats))


if __name__ == "__main__":
    main()
