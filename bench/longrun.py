#!/usr/bin/env python3
"""Long runs hold steady: resident memory and decode speed over many generated tokens in one run.

    python3 bench/longrun.py BINARY MODEL [--tokens 100000] [--seqs 8] [--every 1000]
                             [--checkpoints 1000,10000,100000] [--gpu-mem]

Runs one batch job, BINARY MODEL -f (SEQS lines, each generating TOKENS/SEQS tokens) -b SEQS -t 0
--ignore-eos --progress EVERY, so that TOKENS tokens are generated in one process, SEQS sequences
stepping together. At each progress line (every EVERY tokens) it reads the process's VmRSS from
/proc/PID/status (and with --gpu-mem, its GPU memory from nvidia-smi, at the checkpoints only).
Prints, at each checkpoint (the first progress line at or past it): tokens, seconds, VmRSS, and the
decode speed over the window since the previous checkpoint; then the spread of VmRSS after the first
checkpoint and of the window speeds. Exit status 1 if the run failed."""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def vmrss_kb(pid):
    try:
        for line in open("/proc/%d/status" % pid):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


def gpu_mem_mib(pid):
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return -1
    return sum(int(f[1]) for f in (l.split(",") for l in out.splitlines()) if len(f) == 2 and int(f[0]) == pid) or -1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("binary")
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=100000)
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--every", type=int, default=1000)
    ap.add_argument("--checkpoints", default="1000,10000,100000")
    ap.add_argument("--gpu-mem", action="store_true")
    a = ap.parse_args()
    checkpoints = sorted(int(c) for c in a.checkpoints.split(","))
    per_seq = -(-a.tokens // a.seqs)
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as f:
        for k in range(a.seqs):
            f.write(json.dumps({"id": k, "prompt": "Line %d of a long run:" % k, "n": per_seq}) + "\n")
    cmd = [a.binary, a.model, "-f", f.name, "-b", str(a.seqs), "-t", "0", "--ignore-eos", "-s", "1",
           "--progress", str(a.every)]
    print("# " + " ".join(cmd) + "   (%d lines of %d tokens)" % (a.seqs, per_seq), flush=True)
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rows, pending, other = [], list(checkpoints), []
    for line in p.stderr:
        if not line.startswith("progress: "):
            other.append(line.rstrip("\n"))
            continue
        w = line.split()
        tokens, secs = int(w[1]), float(w[7])
        rss = vmrss_kb(p.pid)
        if pending and tokens >= pending[0]:
            while pending and tokens >= pending[0]:
                pending.pop(0)
            rows.append((tokens, secs, rss, gpu_mem_mib(p.pid) if a.gpu_mem else None))
    p.wait()
    for l in other:
        print("# " + l)
    if p.returncode != 0 or not rows:
        print("longrun: FAIL: exit code %d, %d checkpoints reached" % (p.returncode, len(rows)))
        return 1
    print("%12s %9s %12s %12s%s" % ("tokens", "seconds", "VmRSS MiB", "tok/s", "  GPU MiB" if a.gpu_mem else ""))
    speeds, prev = [], (0, 0.0)
    for tokens, secs, rss, gmem in rows:
        speed = (tokens - prev[0]) / (secs - prev[1])
        speeds.append(speed)
        prev = (tokens, secs)
        print("%12d %9.2f %12.1f %12.1f%s" % (tokens, secs, rss / 1024, speed, "  %8d" % gmem if a.gpu_mem else ""))
    rss_after = [r[2] for r in rows[1:]] or [rows[0][2]]
    print("VmRSS after the first checkpoint: %.1f to %.1f MiB; tok/s of the windows after the first: %.1f to %.1f"
          % (min(rss_after) / 1024, max(rss_after) / 1024, min(speeds[1:] or speeds), max(speeds[1:] or speeds)))
    os.unlink(f.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
