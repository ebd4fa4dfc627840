"""Batch mode on several engines at once (./runcuda --gpus): ./run refuses --gpus, and batch.c's
worker pool, run with several CPU engines by tests/batch_engines.c, gives exactly one engine's output
(which is ./run's batch mode): stdout in input order, -o's set of lines, --shard, and a SIGTERM then
--resume."""
import json
import os
import signal
import subprocess
import time

import pytest

from conftest import HANG_TIMEOUT, REPO
from test_batch import RUN, jsonl, run, untimed
from test_batch_resume import lines_of, prompts_file
from test_run import one_line_error

HARNESS = os.path.join(REPO, "build", "batch_engines")
ARGS = ["-n", "6", "-s", "11", "-b", "3"]


@pytest.fixture(scope="module")
def harness():
    r = subprocess.run(["make", "-s", "build/batch_engines"], cwd=REPO, capture_output=True, timeout=HANG_TIMEOUT)
    assert r.returncode == 0, r.stderr.decode()
    return HARNESS


def engines(harness, model, n, *args, env=None):
    e = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run([harness, model, str(n), *map(str, args)], capture_output=True, timeout=HANG_TIMEOUT, env=e)


# The reference is the harness with one engine: the same build as the several engines it is compared
# with. ./run itself (RUN) may be another build (make test-san's -O1 ./run-san), whose logits can
# differ in the last bit and so sample another token now and then (1 line of 150 once).
def one_engine(harness, model, *args):
    return engines(harness, model, 1, *args)


@pytest.mark.parametrize("args", [["--gpus", "0"], ["--gpus", "all"], ["--gpus", "x"], ["--gpus", ""]])
def test_run_refuses_gpus(tiny_model_bin, tmp_path, args):
    f = prompts_file(tmp_path, 3)
    for extra in ([], ["-f", f], ["-i", "Hello"]):
        one_line_error(run(tiny_model_bin, *extra, *args), 2, "--gpus", "./runcuda")


def test_run_gpus_needs_a_value(tiny_model_bin):
    one_line_error(run(tiny_model_bin, "--gpus"), 2, "--gpus")


@pytest.mark.parametrize("n_engines", [2, 3])
def test_engines_stdout_equals_one_engine(harness, tiny_model_bin, tmp_path, n_engines):
    """The same lines in input order, error objects included, whatever engine ran each line."""
    f = prompts_file(tmp_path, 40)
    one = one_engine(harness, tiny_model_bin, "-f", f, *ARGS, "-q")
    many = engines(harness, tiny_model_bin, n_engines, "-f", f, *ARGS, "-q")
    if os.path.basename(RUN) == "run":  # the same build as the harness: one engine is ./run's batch mode
        assert untimed(jsonl(one)) == untimed(jsonl(run(tiny_model_bin, "-f", f, *ARGS, "-q")))
    assert one.returncode == many.returncode == 3, many.stderr.decode()  # every 7th line is an error object
    assert many.stderr == b"" and untimed(jsonl(many)) == untimed(jsonl(one))
    assert [o["id"] for o in jsonl(many)] == ["q%d" % k for k in range(40)]


def test_engines_summary(harness, tiny_model_bin, tmp_path):
    """A total line, then one line an engine; the engines' lines and tokens add up to the totals."""
    f = prompts_file(tmp_path, 20, jsonl=False)
    r = engines(harness, tiny_model_bin, 3, "-f", f, *ARGS)
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 4 and lines[0].startswith("[3 engines] batch: 20 prompts (0 failed)"), lines
    per = [l.split("] engine %d: " % k)[1] for k, l in enumerate(lines[1:])]
    assert sum(int(p.split(" prompt")[0]) for p in per) == 20
    gen = [int(p.split("generated: ")[1].split(" ")[0]) for p in per]
    assert sum(gen) == 20 * 6 and "generated: 120 tokens" in lines[0]


def test_engines_output_file_and_shard(harness, tiny_model_bin, tmp_path):
    f = prompts_file(tmp_path, 30)
    one, many = tmp_path / "one.jsonl", tmp_path / "many.jsonl"
    assert one_engine(harness, tiny_model_bin, "-f", f, *ARGS, "-q", "-o", one).returncode == 3
    assert engines(harness, tiny_model_bin, 3, "-f", f, *ARGS, "-q", "-o", many).returncode == 3
    assert lines_of(many) == lines_of(one) and len(lines_of(one)) == 30
    for k in range(3):
        a = one_engine(harness, tiny_model_bin, "-f", f, *ARGS, "-q", "--shard", "%d/3" % k)
        b = engines(harness, tiny_model_bin, 2, "-f", f, *ARGS, "-q", "--shard", "%d/3" % k)
        assert untimed(jsonl(a)) == untimed(jsonl(b)) and len(jsonl(b)) == 10


def test_engines_sigterm_then_resume(harness, tiny_model_bin, tmp_path):
    """SIGTERM stops every engine (exit 143, whole lines only); --resume on 3 engines completes the
    file to exactly the lines of an uninterrupted one-engine run."""
    f = prompts_file(tmp_path, 150)
    full, out = tmp_path / "full.jsonl", tmp_path / "out.jsonl"
    assert one_engine(harness, tiny_model_bin, "-f", f, *ARGS, "-q", "-o", full).returncode == 3
    p = subprocess.Popen([harness, tiny_model_bin, "3", "-f", f, *ARGS, "-o", out], stderr=subprocess.PIPE,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + HANG_TIMEOUT
    while time.time() < deadline and p.poll() is None and (not out.exists() or out.read_bytes().count(b"\n") < 5):
        time.sleep(0.002)
    assert p.poll() is None, "the run ended before the kill: make the input longer"
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=HANG_TIMEOUT)[1].decode()
    assert p.returncode == 143 and "error: stopped by signal 15" in err, err
    written = lines_of(out)  # whole lines only
    assert 5 <= len(written) < 150 and set(written) <= set(lines_of(full))
    r = engines(harness, tiny_model_bin, 3, "-f", f, *ARGS, "-q", "-o", out, "--resume")
    assert r.returncode == 3 and lines_of(out) == lines_of(full)


def test_progress(tiny_model_bin, tmp_path):
    """--progress N: a line each time the generated tokens pass a multiple of N, even with -q."""
    f = prompts_file(tmp_path, 3, jsonl=False)
    r = run(tiny_model_bin, "-f", f, "-n", "500", "--ignore-eos", "-s", "1", "-b", "3", "-q", "--progress", "300")
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stderr.decode().splitlines()
    assert [int(l.split()[1]) for l in lines] == [300, 600, 900, 1200, 1500], lines
    assert all(l.startswith("progress: ") and l.endswith("tok/s since the last") for l in lines)
    one_line_error(run(tiny_model_bin, "-f", f, "--progress", "0"), 2, "--progress")
    one_line_error(run(tiny_model_bin, "-i", "Hi", "--progress", "10"), 2, "--progress goes with -f")
