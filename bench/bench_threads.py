#!/usr/bin/env python3
"""OpenMP thread settings of ./run on a shared machine: prefill and decode tok/s and the CPU seconds
burnt, for each setting, on an idle machine and with a busy loop competing for one core.

    python3 bench/bench_threads.py MODEL.bin [--repeats 3] [--prompt 128] [--decode 64] [--busy no|yes|both]

Each setting is the environment of one run; OMP_WAIT_POLICY and GOMP_SPINCOUNT are set or removed
explicitly, so ./run's own default applies only where the setting leaves both out. The runs of
all settings alternate, so that a change in the machine's other load spreads over all of them."""
import argparse
import os
import re
import statistics
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# libgomp's default is GOMP_SPINCOUNT=300000 (its documented spin count when OMP_WAIT_POLICY is not
# set); ./run's default applies when both are left out.
SETTINGS = [  # (name, threads, environment); None removes the variable
    ("2 threads, OMP_WAIT_POLICY=active", "2", {"OMP_WAIT_POLICY": "active", "GOMP_SPINCOUNT": None}),
    ("2 threads, GOMP_SPINCOUNT=10000", "2", {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "10000"}),
    ("2 threads, GOMP_SPINCOUNT=1000", "2", {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "1000"}),
    ("2 threads, OMP_WAIT_POLICY=passive", "2", {"OMP_WAIT_POLICY": "passive", "GOMP_SPINCOUNT": None}),
    ("2 threads, libgomp's default", "2", {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": "300000"}),
    ("2 threads, ./run's default", "2", {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}),
    ("1 thread", "1", {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None}),
]


def run_once(cmd, env):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    err = p.stderr.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    m = re.search(r"prompt: \d+ tokens, (?:[\d.]+ ms, )?([\d.]+) tok/s \| generated: \d+ tokens, ([\d.]+) tok/s", err)
    if status != 0 or not m:
        raise SystemExit("bench_threads: %s failed: %s" % (" ".join(cmd[:2]), err[-300:]))
    return float(m.group(1)), float(m.group(2)), ru.ru_utime + ru.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--busy", choices=["no", "yes", "both"], default="both")
    a = ap.parse_args()
    ids = " ".join(str((i * 7919) % 50000 + 5) for i in range(a.prompt))
    cmd = [os.path.join(REPO, "run"), a.model, "--ids", "-i", ids, "-n", str(a.decode), "-t", "0", "--ignore-eos"]
    print("%-36s %-5s %14s %14s %10s" % ("setting", "busy", "prefill tok/s", "decode tok/s", "CPU s"))
    for busy in {"no": (False,), "yes": (True,), "both": (False, True)}[a.busy]:
        loop = subprocess.Popen(["sh", "-c", "while :; do :; done"]) if busy else None
        try:
            res = {name: [] for name, _, _ in SETTINGS}
            for _ in range(a.repeats):
                for name, threads, extra in SETTINGS:
                    env = dict(os.environ, OMP_NUM_THREADS=threads)
                    for k, v in extra.items():
                        env.pop(k, None) if v is None else env.__setitem__(k, v)
                    res[name].append(run_once(cmd, env))
        finally:
            if loop:
                loop.kill()
                loop.wait()
        for name, _, _ in SETTINGS:
            pre, dec, cpu = (statistics.median(x) for x in zip(*res[name]))
            print("%-36s %-5s %14.1f %14.1f %10.1f" % (name, "yes" if busy else "no", pre, dec, cpu), flush=True)
    print("medians of %d runs; %d-token prompt, %d greedy tokens; load average now: %s" % (
        a.repeats, a.prompt, a.decode, " ".join("%.1f" % x for x in os.getloadavg())))


if __name__ == "__main__":
    main()
