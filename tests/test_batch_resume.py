"""Batch jobs that lose nothing: -o (each line written as it finishes), --resume after a kill (SIGKILL
or SIGTERM, at seeded random points) and --shard K/N, also run through GNU parallel."""
import json
import os
import random
import shutil
import signal
import subprocess
import time

import pytest

from conftest import HANG_TIMEOUT
from test_batch import RUN, TIMING, run
from test_run import one_line_error


def lines_of(path):
    """The untimed output objects of a file, as a sorted list of canonical JSON texts; every line whole."""
    data = open(path, "rb").read()
    assert data == b"" or data.endswith(b"\n")
    objs = [json.loads(l) for l in data.decode().split("\n")[:-1]]
    return sorted(json.dumps({k: v for k, v in o.items() if k not in TIMING}, sort_keys=True) for o in objs)


def prompts_file(tmp_path, n, jsonl=True):
    """n prompts: JSONL with string ids (every 7th line an error object: no prompt), or text."""
    f = tmp_path / ("in.jsonl" if jsonl else "in.txt")
    rows = []
    for k in range(n):
        if not jsonl:
            rows.append("prompt number %d says" % k)
        elif k % 7 == 3:
            rows.append(json.dumps({"id": "q%d" % k, "n": 2}))
        else:
            rows.append(json.dumps({"id": "q%d" % k, "prompt": "Line %d: the" % k, "tag": [k]}))
    f.write_text("\n".join(rows) + "\n")
    return f


ARGS = ["-n", "6", "-s", "11", "-b", "4", "-q"]


def kill_midway(model, inp, out, sig, after, extra=()):
    """Starts -o OUT, waits for `after` lines in OUT, sends sig; returns the exit code and stderr."""
    p = subprocess.Popen([RUN, model, "-f", inp, "-o", out, *ARGS, *extra], stderr=subprocess.PIPE,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    deadline = time.time() + HANG_TIMEOUT
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(out) and open(out, "rb").read().count(b"\n") >= after:
            break
        time.sleep(0.005)
    assert p.poll() is None, "the run ended before the kill: make the input longer"
    p.send_signal(sig)
    err = p.communicate(timeout=HANG_TIMEOUT)[1].decode()
    return p.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_and_resumed_equals_uninterrupted(tiny_model_bin, tmp_path, sig):
    inp = prompts_file(tmp_path, 250)
    full = tmp_path / "full.jsonl"
    r = run(tiny_model_bin, "-f", inp, "-o", full, *ARGS)
    assert r.returncode == 3 and r.stdout == b"", r.stderr  # the error objects make it 3
    want = lines_of(full)
    assert len(want) == 250
    rng = random.Random(int(sig))
    for attempt in range(2):  # killed twice, at seeded random points, then resumed to the end
        out = tmp_path / ("out%d.jsonl" % attempt)
        code, err = kill_midway(tiny_model_bin, inp, out, sig, rng.randrange(5, 120))
        if sig == signal.SIGKILL:
            assert code == -signal.SIGKILL
        else:
            assert code == 128 + sig and err.startswith("error: stopped by signal %d" % sig) and err.count("\n") == 1, err
        partial = lines_of(out)  # whole lines only: a kill between writes never splits one
        assert 0 < len(partial) < 250 and set(partial) <= set(want)
        r = run(tiny_model_bin, "-f", inp, "-o", out, "--resume", *ARGS)
        assert r.returncode == 3, r.stderr
        assert lines_of(out) == want


def test_resume_cuts_a_partial_last_line(tiny_model_bin, tmp_path):
    inp = prompts_file(tmp_path, 12, jsonl=False)
    full, out = tmp_path / "full.jsonl", tmp_path / "out.jsonl"
    assert run(tiny_model_bin, "-f", inp, "-o", full, *ARGS).returncode == 0
    data = full.read_bytes()
    cut = data.index(b"\n", len(data) // 2) + 1
    out.write_bytes(data[:cut] + data[cut:cut + 40])  # whole lines, then 40 bytes of the next
    r = run(tiny_model_bin, "-f", inp, "-o", out, "--resume", *ARGS[:-1])
    assert r.returncode == 0 and "already in the output" in r.stderr.decode()
    assert lines_of(out) == lines_of(full)
    # resuming a finished job runs nothing and changes nothing
    before = out.read_bytes()
    assert run(tiny_model_bin, "-f", inp, "-o", out, "--resume", *ARGS).returncode == 0
    assert out.read_bytes() == before
    # --resume of a file that does not exist yet is a plain run
    fresh = tmp_path / "fresh.jsonl"
    assert run(tiny_model_bin, "-f", inp, "-o", fresh, "--resume", *ARGS).returncode == 0
    assert lines_of(fresh) == lines_of(full)


def test_resume_refuses_repeated_ids(tiny_model_bin, tmp_path):
    inp = tmp_path / "dup.jsonl"
    inp.write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n{"id": "a", "prompt": "z"}\n')
    out = tmp_path / "out.jsonl"
    one_line_error(run(tiny_model_bin, "-f", inp, "-o", out, "--resume", "-n", "2", "-q"), 1,
                   "--resume: line 3 repeats the id \"a\"", "unique")
    r = run(tiny_model_bin, "-f", inp, "-o", out, "-n", "2", "-q")  # without --resume repeats are fine
    assert r.returncode == 0 and len(lines_of(out)) == 3
    one_line_error(run(tiny_model_bin, "-f", inp, "-o", out, "--resume", "-n", "2", "-q"), 1,
                   "repeats the id \"a\"", "cannot resume")
    out.write_text("not json\n")
    one_line_error(run(tiny_model_bin, "-f", inp, "-o", out, "--resume", "-q"), 1, "line 1 is not a line of batch output")


def test_shards_merged_equal_one_run(tiny_model_bin, tmp_path):
    inp = prompts_file(tmp_path, 30, jsonl=False)
    full = run(tiny_model_bin, "-f", inp, *ARGS)
    assert full.returncode == 0
    want = sorted(json.dumps({k: v for k, v in json.loads(l).items() if k not in TIMING}, sort_keys=True)
                  for l in full.stdout.decode().splitlines())
    got = []
    for k in range(4):
        r = run(tiny_model_bin, "-f", inp, "--shard", "%d/4" % k, *ARGS)  # stdout: in input order
        assert r.returncode == 0
        objs = [json.loads(l) for l in r.stdout.decode().splitlines()]
        assert [o["id"] for o in objs] == list(range(k, 30, 4))
        assert [o["seed"] for o in objs] == [11 + i for i in range(k, 30, 4)]  # by line index
        got += [json.dumps({a: v for a, v in o.items() if a not in TIMING}, sort_keys=True) for o in objs]
    assert sorted(got) == want
    # a shard killed and resumed gives the same lines as the shard run whole
    big = prompts_file(tmp_path, 400)
    whole, out = tmp_path / "whole.jsonl", tmp_path / "s.jsonl"
    assert run(tiny_model_bin, "-f", big, "--shard", "1/3", "-o", whole, *ARGS).returncode == 3
    kill_midway(tiny_model_bin, big, out, signal.SIGKILL, 30, ["--shard", "1/3"])
    assert run(tiny_model_bin, "-f", big, "--shard", "1/3", "-o", out, "--resume", *ARGS).returncode == 3
    assert lines_of(out) == lines_of(whole) and len(lines_of(whole)) == len(range(1, 400, 3))


@pytest.mark.skipif(shutil.which("parallel") is None, reason="GNU parallel not installed (apt-get install parallel)")
def test_gnu_parallel_recipe(tiny_model_bin, tmp_path):
    """README's recipe: N shards through GNU parallel, merged by sorting on id."""
    inp = prompts_file(tmp_path, 25)
    full = tmp_path / "full.jsonl"
    assert run(tiny_model_bin, "-f", inp, "-o", full, *ARGS).returncode == 3
    cmd = ('parallel --will-cite --jobs 3 %s %s -f %s %s --shard {}/3 -o %s/out.{}.jsonl ::: $(seq 0 2)'
           % (RUN, tiny_model_bin, inp, " ".join(ARGS), tmp_path))
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=HANG_TIMEOUT,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 3, r.stderr  # parallel exits with the number of failed jobs: all three have error lines
    merged = tmp_path / "merged.jsonl"
    with open(merged, "wb") as m:
        for k in range(3):
            m.write((tmp_path / ("out.%d.jsonl" % k)).read_bytes())
    assert lines_of(merged) == lines_of(full)


@pytest.mark.parametrize("args,code,words", [
    (["-o", "x.jsonl"], 2, ["-o and --shard go with -f"]),
    (["--shard", "0/2"], 2, ["-o and --shard go with -f"]),
    (["-f", "x", "--resume"], 2, ["--resume goes with -o"]),
    (["-f", "x", "--shard", "2/2"], 2, ["K must be in [0, N)"]),
    (["-f", "x", "--shard", "0/0"], 2, ["K must be in [0, N)"]),
    (["-f", "x", "--shard", "-1/3"], 2, ["K must be in [0, N)"]),
    (["-f", "x", "--shard", "1"], 2, ["--shard expects K/N"]),
    (["-f", "x", "--shard", "1/x"], 2, ["--shard expects K/N"]),
    (["-f", "x", "--shard", "1/2/3"], 2, ["--shard expects K/N"]),
    (["-f", "x", "-o"], 2, ["-o needs a value"]),
])
def test_resume_shard_usage_errors(tiny_model_bin, args, code, words):
    one_line_error(run(tiny_model_bin, *args), code, *words)
