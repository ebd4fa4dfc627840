"""The benchmark scripts read ./run's stderr summary: they must keep parsing it when it changes
(bench/bench_cpu.py and bench/bench_threads.py run ./run and take its prefill and decode tok/s)."""
import os
import subprocess
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


def test_make_synth_embeds_a_real_tokenizer(tmp_path, tiny_model_bin, neox_tokenizer_json):
    """bench/make_synth.py --tokenizer: the synthetic model splits text as the released model does
    (the tiny checkpoint carries the same GPT-NeoX tokenizer.json); without it, a token a byte."""
    text = "the river and the mountain house"

    def ids(model):
        r = subprocess.run([RUN, model, "--tokenize", "-i", text], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stdout.split()

    synth = os.path.join(REPO, "bench", "make_synth.py")
    neox, byte = str(tmp_path / "neox.bin"), str(tmp_path / "byte.bin")
    for out, extra in ((neox, ["--tokenizer", neox_tokenizer_json]), (byte, [])):
        subprocess.run([sys.executable, synth, "--shape", "130m", "--dtype", "q4_0", *extra, out], check=True,
                       capture_output=True, timeout=300)
    assert ids(neox) == ids(tiny_model_bin)
    assert len(ids(neox)) < 10 and len(ids(byte)) == len(text)
    r = subprocess.run([sys.executable, synth, "--tokenizer", str(tmp_path / "none.json"), str(tmp_path / "x.bin")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "missing tokenizer file" in r.stderr
