"""The CPU program (./run) end to end: numbers against the numpy reference, prefill against
token-by-token decoding, the command line, and every bad input of the table in README.md.

RUN=./run-san runs the same tests against the sanitizer build (make test-san)."""
import os
import struct
import subprocess

import numpy as np
import pytest

from conftest import HANG_TIMEOUT, REPO
from ref_numpy import RefModel

RUN = os.path.join(REPO, os.environ.get("RUN", "./run"))
PROMPT_IDS = [510, 12092, 1533, 13, 187, 15, 2598, 7, 40, 9, 1000, 20000, 300, 42, 50000, 3] * 2


def run(*args, stdin=None, timeout=HANG_TIMEOUT, env=None, exe=None):
    """exe (default: $RUN or ./run) with args."""
    e = dict(os.environ, OMP_NUM_THREADS="2")
    e.update(env or {})
    return subprocess.run([exe or RUN, *map(str, args)], input=stdin, capture_output=True, timeout=timeout, env=e)


def logits_of(model, ids, *flags, tmp_path, mode="--score", exe=None):
    """Every row of logits ./run (or exe) computes for ids (score mode: one row per position)."""
    out = tmp_path / ("logits%d.bin" % len(os.listdir(tmp_path)))
    r = run(model, "--ids", "-i", " ".join(map(str, ids)), mode, "--logits", out, "-q", *flags, exe=exe)
    assert r.returncode == 0, r.stderr.decode()
    vocab_rows = struct.unpack_from("<i", open(model, "rb").read(64), 40)[0]
    return np.fromfile(out, dtype=np.float32).reshape(-1, vocab_rows)


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


# ------------------------------------------------------------------------------------------------
# numbers

def assert_matches_reference(model, ids, tmp_path):
    """./run's logits for ids, through prefill and through the decode step, against the numpy
    reference (float64, its own reader of model.bin): max |diff| < 1e-4, relative L2 < 1e-5."""
    ref = RefModel(model).forward(ids)
    for flags in ([], ["--stepwise"]):
        got = logits_of(model, ids, *flags, tmp_path=tmp_path)
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() < 1e-4, flags
        assert rel_l2(got, ref) < 1e-5, flags


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_matches_numpy_reference(checkpoints, tmp_path, dtype):
    assert_matches_reference(checkpoints.model_bin("tiny", dtype), PROMPT_IDS, tmp_path)


@pytest.mark.parametrize("shape,n", [("tiny", 1100), pytest.param("130m", 64, marks=pytest.mark.slow)])
def test_prefill_equals_token_by_token(checkpoints, tmp_path, shape, n):
    model = checkpoints.model_bin(shape, "fp32")
    ids = [(i * 7919) % 50000 + 5 for i in range(n)]  # tiny: three prefill chunks
    pre = logits_of(model, ids, tmp_path=tmp_path)
    step = logits_of(model, ids, "--stepwise", tmp_path=tmp_path)
    assert np.abs(pre - step).max() < 1e-4
    # and the decode that follows starts from the same state
    args = ("--ids", "-i", " ".join(map(str, ids)), "-t", "0", "-n", "16", "--ignore-eos", "-q")
    gen_pre, gen_step = run(model, *args), run(model, *args, "--stepwise")
    assert gen_pre.returncode == 0 and gen_pre.stdout == gen_step.stdout


@pytest.mark.slow
def test_130m_matches_numpy_reference(model_130m_bin, tmp_path):
    ids = PROMPT_IDS[:12]
    ref = RefModel(model_130m_bin).forward(ids)
    got = logits_of(model_130m_bin, ids, tmp_path=tmp_path)
    assert np.abs(got - ref).max() < 1e-3
    assert rel_l2(got, ref) < 1e-5


def test_greedy_generation_matches_reference(tiny_model_bin):
    m = RefModel(tiny_model_bin)
    want = m.greedy(PROMPT_IDS[:8], 24)
    r = run(tiny_model_bin, "--ids", "-i", " ".join(map(str, PROMPT_IDS[:8])), "-t", "0", "-n", "24", "--ignore-eos", "-q")
    assert r.returncode == 0, r.stderr.decode()
    assert [int(t) for t in r.stdout.split()] == want


def test_score_mode_perplexity(tiny_model_bin, tmp_path):
    ids = PROMPT_IDS[:10]
    r = run(tiny_model_bin, "--ids", "-i", " ".join(map(str, ids)), "--score", "-q")
    assert r.returncode == 0, r.stderr.decode()
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "pos\tid\tlogprob"
    ref = RefModel(tiny_model_bin).forward(ids)
    lse = np.log(np.exp(ref - ref.max(1, keepdims=True)).sum(1)) + ref.max(1)
    want = [ref[i, ids[i + 1]] - lse[i] for i in range(len(ids) - 1)]
    got = [float(l.split("\t")[2]) for l in lines[1:-1]]
    assert np.allclose(got, want, atol=1e-4)
    ppl = float(lines[-1].split()[-1])
    assert abs(ppl - np.exp(-np.mean(want))) / ppl < 1e-4


def test_padded_vocab_rows_never_sampled(checkpoints, tmp_path):
    """Rows 50277..50279 exist in the logits; make them the largest and check they are skipped."""
    src = checkpoints.model_bin("tiny", "fp32")
    data = bytearray(open(src, "rb").read())
    d_model, vocab_rows, vocab_size = (struct.unpack_from("<i", data, o)[0] for o in (16, 40, 44))
    w_off = struct.unpack_from("<Q", data, 80)[0]
    emb = np.frombuffer(data, dtype=np.float32, count=vocab_rows * d_model, offset=w_off).reshape(vocab_rows, d_model).copy()
    emb[vocab_size:] = emb[:vocab_size].mean(0) * 0 + 5.0  # huge logits for any hidden state with positive mean
    emb[vocab_size:, ::2] = -5.0
    data[w_off:w_off + emb.nbytes] = emb.tobytes()
    p = tmp_path / "padded.bin"
    p.write_bytes(bytes(data))
    for t in ("0", "1.0"):
        r = run(p, "--ids", "-i", "1 2 3", "-t", t, "-p", "1", "-n", "64", "--ignore-eos", "-q", "-s", "7")
        assert r.returncode == 0, r.stderr.decode()
        assert all(int(x) < vocab_size for x in r.stdout.split())


# ------------------------------------------------------------------------------------------------
# the command line

def test_generates_text_and_summary(tiny_model_bin):
    r = run(tiny_model_bin, "-i", "Mamba is a", "-n", "12", "-s", "3", "-t", "0.7", "-p", "0.9")
    assert r.returncode == 0, r.stderr.decode()
    assert len(r.stdout) > 0
    err = r.stderr.decode()
    assert "prompt: 4 tokens" in err and "generated: 12 tokens" in err and "tok/s" in err


def test_seed_makes_sampling_deterministic(tiny_model_bin):
    a = run(tiny_model_bin, "-i", "Hello", "-n", "20", "-s", "11", "-q")
    b = run(tiny_model_bin, "-i", "Hello", "-n", "20", "-s", "11", "-q")
    c = run(tiny_model_bin, "-i", "Hello", "-n", "20", "-s", "12", "-q")
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout != c.stdout


def test_top_k_1_is_greedy(tiny_model_bin):
    a = run(tiny_model_bin, "-i", "Hello", "-n", "20", "-k", "1", "-q", "--ignore-eos")
    b = run(tiny_model_bin, "-i", "Hello", "-n", "20", "-t", "0", "-q", "--ignore-eos")
    assert a.returncode == 0 and a.stdout == b.stdout


def test_tiny_top_p_is_greedy(tiny_model_bin):
    """A nucleus of almost no mass holds only the most likely token."""
    a = run(tiny_model_bin, "-i", "Hello", "-n", "20", "-p", "1e-6", "-s", "5", "-q", "--ignore-eos")
    b = run(tiny_model_bin, "-i", "Hello", "-n", "20", "-t", "0", "-q", "--ignore-eos")
    assert a.returncode == 0 and a.stdout == b.stdout


def test_help():
    r = run("-h")
    assert r.returncode == 0 and b"Usage" in r.stdout and b"-t <float>" in r.stdout


def test_no_prompt_starts_from_bos(tiny_model_bin):
    r = run(tiny_model_bin, "-n", "5", "-q", "--ids", "-t", "0", "--ignore-eos")
    m = RefModel(tiny_model_bin)
    assert r.returncode == 0 and [int(t) for t in r.stdout.split()] == m.greedy([0], 5)


def test_long_text_100k_tokens(tiny_model_bin):
    """No fixed buffer anywhere: 100k tokens through the tokenizer and the prefill path."""
    text = ("The quick brown fox jumps over the lazy dog. " * 10000).encode()  # 100,001 tokens: the last space is one
    r = run(tiny_model_bin, "-i", "-", "-n", "2", stdin=text)
    assert r.returncode == 0, r.stderr.decode()[-500:]
    assert "prompt: 100001 tokens" in r.stderr.decode()


def test_tokenize_mode(tiny_model_bin):
    r = run(tiny_model_bin, "--tokenize", stdin=b"Hello world\n<|endoftext|>\n")
    assert r.returncode == 0 and r.stdout == b"12092 1533\n0\n"


# ------------------------------------------------------------------------------------------------
# bad input: a one-line error and a non-zero exit, never a crash or a hang

def one_line_error(r, code, *words):
    err = r.stderr.decode()
    assert r.returncode == code, (r.returncode, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    return err


@pytest.mark.parametrize("args,words", [
    (["-x"], ["unknown option '-x'"]),
    (["--frobnicate"], ["unknown option"]),
    (["-t"], ["-t needs a value"]),
    (["-t", "abc"], ["-t expects a number"]),
    (["-t", "-1"], ["-t = -1 is out of range"]),
    (["-t", "nan"], ["-t expects a number"]),
    (["-p", "2"], ["-p = 2 is out of range"]),
    (["-p", "0"], ["-p = 0 must be above 0"]),
    (["-n", "-5"], ["-n = -5 is out of range"]),
    (["-n", "1e12"], ["-n = 1e12 is out of range"]),
    (["-n", "2.5"], ["-n expects an integer"]),
    (["-k", "x"], ["-k expects a number"]),
    (["-s", "-3"], ["-s = -3 is out of range"]),
    (["-i", ""], ["prompt (-i) is empty"]),
    (["extra.bin"], ["unexpected argument"]),
    (["--ids", "-i", "1 2 99999999"], ["not a token id"]),
    (["--ids", "-i", "1 x"], ["not a token id"]),
])
def test_bad_flags(tiny_model_bin, args, words):
    one_line_error(run(tiny_model_bin, *args), 2, *words)


def test_no_arguments():
    """./run alone: how to call it and where a model comes from, nothing more."""
    r = run()
    err = r.stderr.decode()
    assert r.returncode == 2 and r.stdout == b"" and err.startswith("Usage: run model.bin"), err
    assert err.count("\n") == 2 and "make run" in err and "export.py" in err, err


def test_no_model_given():
    r = run("-i", "hello")
    assert r.returncode == 2 and r.stderr.decode().splitlines()[-1] == "error: no model file given"


def test_threads_flag(tiny_model_bin):
    """--threads overrides OMP_NUM_THREADS (which run() sets to 2)."""
    for n, name in ((1, "[CPU, 1 thread]"), (3, "[CPU, 3 threads]")):
        r = run(tiny_model_bin, "-i", "Hello", "-n", "2", "--threads", n)
        assert r.returncode == 0 and name in r.stderr.decode(), r.stderr.decode()
    for v in ("0", "abc", "99999", "1.5", ""):
        one_line_error(run(tiny_model_bin, "--threads", v), 2, "--threads")
    one_line_error(run(tiny_model_bin, "--threads"), 2, "--threads needs a value")


def test_missing_model_file(tmp_path):
    one_line_error(run(tmp_path / "nope.bin"), 1, "cannot open model file")


def test_directory_as_model(tmp_path):
    one_line_error(run(tmp_path), 1, "not a regular file")


def test_invalid_utf8_prompt(tiny_model_bin):
    r = subprocess.run([RUN, tiny_model_bin, "-i", b"abc\xff\xfe"], capture_output=True, timeout=HANG_TIMEOUT)
    one_line_error(r, 1, "UTF-8")


def corrupt(src, tmp_path, name, edit):
    data = bytearray(open(src, "rb").read())
    out = edit(data)
    data = data if out is None else out
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


def put(fmt, off, value):
    def edit(d):
        struct.pack_into(fmt, d, off, value)
    return edit


@pytest.mark.parametrize("name,edit,words", [
    ("magic", lambda d: d.__setitem__(slice(0, 8), b"GGUF\0\0\0\0"), ["bad magic"]),
    ("version", put("<I", 8, 7), ["format version 7"]),
    ("d_model0", put("<i", 16, 0), ["d_model = 0 is out of range"]),
    ("n_layer_neg", put("<i", 20, -3), ["n_layer = -3"]),
    ("d_inner_huge", put("<i", 24, 1 << 30), ["d_inner"]),
    ("d_state_big", put("<i", 28, 17), ["does not match"]),
    ("vocab_size_gt_rows", put("<i", 44, 60000), ["vocab_size"]),
    ("dtype", put("<i", 48, 9), ["dtype = 9"]),
    ("eps", put("<f", 56, -1.0), ["norm_eps"]),
    ("tok_off", put("<Q", 64, 1 << 40), ["tokenizer section"]),
    ("w_off", put("<Q", 80, 4097), ["weights section"]),
    ("file_bytes", put("<Q", 96, 12345), ["truncated or damaged"]),
])
def test_corrupt_header(tiny_model_bin, tmp_path, name, edit, words):
    one_line_error(run(corrupt(tiny_model_bin, tmp_path, name + ".bin", edit), "-n", "2"), 1, *words)


@pytest.mark.parametrize("frac", [0.0, 0.0001, 0.01, 0.05, 0.3, 0.7, 0.999])
def test_truncated_file(tiny_model_bin, tmp_path, frac):
    size = os.path.getsize(tiny_model_bin)
    p = corrupt(tiny_model_bin, tmp_path, "trunc.bin", lambda d: d[:int(size * frac)])
    err = one_line_error(run(p, "-n", "2"), 1)
    assert "truncated" in err or "not a model.bin" in err or "header" in err


def test_corrupt_tokenizer_section(tiny_model_bin, tmp_path):
    # the first u32 after the tokenizer magic is its version
    p = corrupt(tiny_model_bin, tmp_path, "tok.bin", put("<I", 256 + 4, 99))
    one_line_error(run(p, "-n", "2"), 1, "tokenizer")


def test_foreign_file(tmp_path):
    p = tmp_path / "foreign.bin"
    p.write_bytes(os.urandom(100000))
    one_line_error(run(p), 1, "not a model.bin")
