"""The benchmark scripts read ./run's stderr summary: they must keep parsing it when it changes
(bench/bench_cpu.py and bench/bench_threads.py run ./run and take its prefill and decode tok/s)."""
import os
import sys

from conftest import REPO
from test_batch import RUN

sys.path.insert(0, os.path.join(REPO, "bench"))
import bench_cpu  # noqa: E402
import bench_threads  # noqa: E402


def test_bench_scripts_parse_the_summary(tiny_model_bin):
    cmd = [RUN, tiny_model_bin, "-i", "Hello there", "-n", "5", "--ignore-eos"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    prefill, decode, rss = bench_cpu.run_once(cmd, env)
    assert prefill > 0 and decode > 0 and rss > 0
    assert all(v > 0 for v in bench_threads.run_once(cmd, env)[:2])
