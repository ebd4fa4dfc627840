"""The sampler (sampler.c) against a numpy implementation of its documented semantics (sampler.h: the
order of operations of mamba_ssm's generation), stop strings over streamed text, and the new options
end to end: ./run's --min-p, --repeat-penalty, --repeat-last-n and --stop, and the same fields of a
batch JSONL line.

sampler.c runs alone in tests/sampler_harness.c, built here, on fixed logits: for the same seed the
harness reports its uniform draw u, and numpy must pick the same token from the same draw and keep
the same candidates."""
import json
import os
import random
import struct
import subprocess

import numpy as np
import pytest

from conftest import HANG_TIMEOUT, REPO
from test_run import one_line_error, run

HARNESS_SRC = [os.path.join(REPO, f) for f in ("tests/sampler_harness.c", "sampler.c", "util.c")]


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("harness") / "sampler_harness")
    subprocess.run(["gcc", "-O1", "-std=gnu11", "-D_GNU_SOURCE", "-I", REPO, *HARNESS_SRC, "-lm", "-o", exe], check=True)
    return exe


# ------------------------------------------------------------------------------------------------
# the numpy reference

def penalized(logits, history, penalty, last_n):
    """mamba_ssm's modify_logit_for_repetition_penalty over the tokens the window holds."""
    x = logits.astype(np.float32).copy()
    window = history[-last_n:] if last_n else history
    if penalty != 1 and len(window):
        ids = np.unique(np.array(window))
        r = np.float32(penalty)
        x[ids] = np.where(x[ids] > 0, x[ids] / r, x[ids] * r)
    return x


def ref_sample(logits, history, T, K, P, min_p, penalty, last_n, u):
    """(token, kept ids in draw order, near): near is True when the draw or the top-p cut falls within
    rounding of a boundary, where float32 exp in C and numpy may honestly disagree."""
    x = penalized(logits, history, penalty, last_n)
    if T == 0:
        return int(np.argmax(x)), [], False
    mx = x.max()
    ids = np.arange(len(x))
    if min_p > 0:
        ids = ids[(x - mx) >= np.log(np.float32(min_p))]
    prob = np.exp((x[ids] - mx) / np.float32(T)).astype(np.float64)
    order = np.arange(len(ids))  # by id
    is_sorted = False
    if 0 < K < len(ids):
        order = np.lexsort((ids, -prob))[:K]
        is_sorted = True
    near = False
    if P < 1:
        if not is_sorted:
            order = np.lexsort((ids[order], -prob[order]))
            order = order if len(order) == len(ids) else order
        p = prob[order]
        cum = np.cumsum(p)
        target = float(np.float32(P)) * p.sum()
        keep = int(np.searchsorted(cum, target)) + 1  # the first with cum >= target
        keep = min(keep, len(p))
        near |= bool(np.any(np.abs(cum - target) < 1e-5 * p.sum()))
        order = order[:keep]
    p = prob[order]
    cum = np.cumsum(p)
    r = u * p.sum()
    k = min(int(np.searchsorted(cum, r, side="right")), len(p) - 1)  # the first with r < cum
    near |= bool(np.any(np.abs(cum - r) < 1e-5 * p.sum()))
    return int(ids[order][k]), [int(i) for i in ids[order]], near


def harness_sample(harness, records, T, K, P, min_p, penalty, last_n, seed, V):
    data = b"".join(struct.pack("<i", len(h)) + struct.pack("<%di" % len(h), *h) + l.astype("<f4").tobytes() for h, l in records)
    r = subprocess.run([harness, "sample", *map(str, (T, K, P, min_p, penalty, last_n, seed, V))], input=data,
                       capture_output=True, timeout=HANG_TIMEOUT, check=True)
    out = []
    for line in r.stdout.decode().splitlines():
        f = line.split()
        out.append((int(f[0]), float(f[1]), [int(v) for v in f[2:]]))
    return out


def test_sampler_exp_within_2_ulp(harness):
    """sampler_exp (sampler.h), which the host and the GPU share so that both sum the same bits: within
    2 ulp of exp over [-104, 0] (every 97th float), and 0 below the floats and for NaN."""
    r = subprocess.run([harness, "exp"], capture_output=True, timeout=HANG_TIMEOUT, check=True)
    out = dict(line.split() for line in r.stdout.decode().splitlines())
    assert int(out["ulp"]) <= 2, out
    assert out["zero"] == "1"


SETTINGS = [  # T, K, P, min_p, penalty, last_n
    (1.0, 0, 1.0, 0.0, 1.0, 0),
    (0.7, 0, 1.0, 0.05, 1.0, 0),
    (1.5, 0, 0.9, 0.1, 1.0, 0),
    (0.8, 50, 0.8, 0.02, 1.0, 0),
    (1.0, 0, 1.0, 0.0, 1.5, 0),
    (0.9, 20, 0.95, 0.0, 2.0, 8),
    (0.0, 0, 1.0, 0.0, 3.0, 0),
    (1.2, 0, 0.7, 0.01, 0.5, 16),
    (2.0, 0, 1.0, 0.3, 1.3, 0),
]


@pytest.mark.parametrize("T,K,P,min_p,penalty,last_n", SETTINGS)
def test_sampler_matches_numpy(harness, T, K, P, min_p, penalty, last_n):
    V, rng = 1000, np.random.default_rng(17)
    records = []
    for _ in range(40):
        logits = (rng.standard_normal(V) * 3).astype(np.float32)
        history = [int(v) for v in rng.integers(0, V, 40)]
        history += [int(np.argmax(logits))] * 3  # the top token repeated: the penalty matters
        records.append((history, logits))
    got = harness_sample(harness, records, T, K, P, min_p, penalty, last_n, 99, V)
    assert len(got) == len(records)
    compared = 0
    for (history, logits), (tok, u, kept) in zip(records, got):
        want, want_kept, near = ref_sample(logits, history, T, K, P, min_p, penalty, last_n, u)
        if T == 0:
            assert u == -1 and tok == want
            compared += 1
            continue
        assert 0 <= u < 1
        if near:
            continue
        assert sorted(kept) == sorted(want_kept)
        assert kept == want_kept  # the same draw order
        assert tok == want
        compared += 1
    assert compared >= 35


@pytest.mark.parametrize("T,K,P,min_p,penalty,last_n", SETTINGS)
def test_sampler_draw_then_pick_is_sample(harness, T, K, P, min_p, penalty, last_n):
    """What the engines run for engine_step_sample (sampler_draw, sampler_penalize, sampler_pick: on the
    GPU in cuda/sample.cuh) picks sampler_sample's token, penalty and window included; the histories
    repeat ids, and with last_n some leave the window, so the penalty's list loses ids as well."""
    V, rng = 1000, np.random.default_rng(23)
    records = []
    for _ in range(40):
        logits = (rng.standard_normal(V) * 3).astype(np.float32)
        history = [int(v) for v in rng.integers(0, 30, 60)] + [int(np.argmax(logits))] * 3
        records.append((history, logits))
    data = b"".join(struct.pack("<i", len(h)) + struct.pack("<%di" % len(h), *h) + l.astype("<f4").tobytes() for h, l in records)
    r = subprocess.run([harness, "drawpick", *map(str, (T, K, P, min_p, penalty, last_n, 5, V))], input=data,
                       capture_output=True, timeout=HANG_TIMEOUT, check=True)
    pairs = [tuple(map(int, line.split())) for line in r.stdout.decode().splitlines()]
    assert len(pairs) == len(records)
    assert all(a == b for a, b in pairs), pairs


@pytest.mark.parametrize("T,K,P", [(1.0, 0, 0.9), (1.0, 40, 1.0), (0.8, 2000, 0.5), (1.3, 0, 0.3)])
def test_sampler_ties_over_a_full_vocabulary(harness, T, K, P):
    """A GPT-NeoX-sized vocabulary with logits on 65 levels, so thousands of candidates tie: the
    kept candidates in the same draw order as numpy's sort (probability, then lower id first), over
    tens of thousands of them (sampler.c sorts them by radix, on the probability's bits)."""
    V, rng = 50280, np.random.default_rng(5)
    records = [([], (np.round(rng.uniform(-4, 4, V) * 8) / 8).astype(np.float32)) for _ in range(6)]
    got = harness_sample(harness, records, T, K, P, 0.0, 1.0, 0, 7, V)
    assert len(got) == len(records)
    for (history, logits), (tok, u, kept) in zip(records, got):
        want, want_kept, near = ref_sample(logits, history, T, K, P, 0.0, 1.0, 0, u)
        n = min(len(kept), len(want_kept))
        assert n >= min(K or V, 100) and kept[:n] == want_kept[:n]
        if not near:  # (with tens of thousands kept, the top-p cut is usually within rounding of one)
            assert len(kept) == len(want_kept) and tok == want


@pytest.mark.parametrize("last_n", [0, 1, 7, 50])
def test_sampler_penalty_window_of_repeats(harness, last_n):
    """The penalty's list of ids (sampler.c keeps the distinct ids of the window, each added when its
    count leaves 0 and swapped out when it returns there): long histories over 20 ids, so ids leave
    and come back many times; greedy with penalty 3 must pick numpy's argmax of the penalized row,
    whose 20 largest logits are those 20 ids."""
    V, rng = 200, np.random.default_rng(3)
    records = []
    for _ in range(30):
        logits = (rng.standard_normal(V) * 0.1).astype(np.float32)
        logits[:20] += np.float32(5) + rng.uniform(0, 1, 20).astype(np.float32)
        records.append(([int(v) for v in rng.integers(0, 20, int(rng.integers(1, 300)))], logits))
    got = harness_sample(harness, records, 0, 0, 1, 0, 3.0, last_n, 1, V)
    assert [g[0] for g in got] == [ref_sample(l, h, 0, 0, 1, 0, 3.0, last_n, 0)[0] for h, l in records]


def test_sampler_penalty_changes_the_pick(harness):
    """Guards the reference itself: the penalty on the top token of a peaked row moves greedy off it,
    and a window that no longer holds that token leaves it alone."""
    V = 50
    logits = np.zeros(V, np.float32)
    logits[7], logits[3] = 5.0, 3.0
    got = harness_sample(harness, [([7], logits), ([7, 1, 2], logits)], 0, 0, 1, 0, 2.0, 2, 1, V)
    assert got[0][0] == 3 and got[1][0] == 7
    assert ref_sample(logits, [7], 0, 0, 1, 0, 2.0, 2, 0)[0] == 3
    assert ref_sample(logits, [7, 1, 2], 0, 0, 1, 0, 2.0, 2, 0)[0] == 7


# ------------------------------------------------------------------------------------------------
# stop strings over streamed text

def harness_stop(harness, stops, chunks):
    data = b"".join(struct.pack("<I", len(c)) + c for c in chunks)
    r = subprocess.run([harness, "stop", *stops], input=data, capture_output=True, timeout=HANG_TIMEOUT, check=True)
    out, b = [], r.stdout
    while b:
        n = struct.unpack_from("<I", b)[0]
        out.append((b[4:4 + n], b[4 + n]))
        b = b[5 + n:]
    return out


def ref_stop(stops, chunks):
    """What each chunk releases: everything but the longest tail that starts a stop string; at a
    stop string, the text before its earliest occurrence."""
    text, released, out = b"", 0, []
    for c in chunks:
        text += c
        hits = [text.find(s) for s in stops if text.find(s) >= 0]
        if hits:
            out.append((text[released:min(hits)], 1))
            return out
        hold = max([t for s in stops for t in range(1, len(s)) if text.endswith(s[:t])] or [0])
        out.append((text[released:len(text) - hold], 0))
        released = len(text) - hold
    out.append((text[released:], 2))
    return out


def test_stop_strings_streaming(harness):
    cases = [
        ([b"ab"], [b"xa", b"b", b"c"]),                           # across a token boundary
        ([b"ab"], [b"xa", b"c", b"ab"]),                          # held 'a' released when 'c' comes
        ([b"abc", b"bcd"], [b"a", b"b", b"cd"]),                  # the earliest match wins
        (["é".encode()], [b"caf", "é".encode()[:1], "é".encode()[1:], b"!"]),  # inside a 2-byte character
        (["😀x".encode()], [b"a", "😀".encode()[:2], "😀".encode()[2:], b"x"]),   # inside a 4-byte one
        ([b"\n\n"], [b"line\n", b"\n", b"more"]),
        ([b"zz"], [b"no stop here", b" at all"]),                  # flush at the end
        ([b"aaa"], [b"aa", b"aa"]),
    ]
    rng = random.Random(5)
    alphabet = [b"a", b"b", b"c", "é".encode(), "😀".encode(), b"\n"]
    for _ in range(300):  # random texts in random byte-level chunks, stop strings taken from them
        text = b"".join(rng.choice(alphabet) for _ in range(rng.randint(1, 25)))
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 8)))) if len(text) > 1 else []
        chunks = [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]
        stops = []
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(text))
            stops.append(text[i:i + rng.randint(1, 5)] if rng.random() < 0.7 else b"ca" + text[i:i + 2])
        stops = [s for s in stops if s]
        cases.append((stops, chunks))
    for stops, chunks in cases:
        assert harness_stop(harness, stops, chunks) == ref_stop(stops, chunks), (stops, chunks)


# ------------------------------------------------------------------------------------------------
# end to end: ./run and batch lines

PROMPT = [510, 12092, 1533, 13, 187, 15, 2598, 7]


def gen_ids(model, *flags, logits=None):
    args = ["--ids", "-i", " ".join(map(str, PROMPT)), "-q", "--ignore-eos", *flags]
    if logits:
        args += ["--logits", logits]
    r = run(model, *args)
    assert r.returncode == 0, r.stderr.decode()
    return [int(t) for t in r.stdout.split()]


def vocab_of(model):
    rows, size = struct.unpack_from("<ii", open(model, "rb").read(64), 40)
    return rows, size


@pytest.mark.parametrize("penalty,last_n", [(2.5, 0), (2.5, 4), (0.3, 0), (0.3, 6)])
def test_repeat_penalty_end_to_end(tiny_model_bin, tmp_path, penalty, last_n):
    """Greedy with the penalty picks, at every step, the argmax of the row penalized over the prompt
    and the tokens generated so far (the last last_n of them)."""
    rows, size = vocab_of(tiny_model_bin)
    f = tmp_path / "l.bin"
    got = gen_ids(tiny_model_bin, "-t", "0", "-n", "24", "--repeat-penalty", penalty, "--repeat-last-n", last_n, logits=f)
    logits = np.fromfile(f, dtype=np.float32).reshape(-1, rows)[:, :size]
    assert len(logits) == len(got) == 24
    for i, t in enumerate(got):
        assert t == int(np.argmax(penalized(logits[i], PROMPT + got[:i], penalty, last_n))), i
    if penalty < 1:  # the random model's greedy text never repeats; a penalty below 1 makes it
        assert got != gen_ids(tiny_model_bin, "-t", "0", "-n", "24")


@pytest.mark.parametrize("flags", [("-t", "0", "--repeat-penalty", "1.5"),
                                   ("-t", "0.8", "-k", "40", "--repeat-penalty", "1.3", "--repeat-last-n", "8"),
                                   ("-t", "1", "-p", "0.9", "--min-p", "0.02", "--repeat-penalty", "0.7")])
def test_repeat_penalty_engine_picks_as_host(tiny_model_bin, tmp_path, flags):
    """With --logits every row comes back and the sampler picks on the host; without it the engine
    picks from the sampler's draw (engine_step_sample, the penalty's ids handed over): the same tokens
    for the same seed."""
    host = gen_ids(tiny_model_bin, "-n", "32", "-s", "11", *flags, logits=tmp_path / "l.bin")
    assert gen_ids(tiny_model_bin, "-n", "32", "-s", "11", *flags) == host


def test_min_p_end_to_end(tiny_model_bin, tmp_path):
    rows, size = vocab_of(tiny_model_bin)
    f = tmp_path / "l.bin"
    got = gen_ids(tiny_model_bin, "-t", "1.5", "-p", "1", "--min-p", "0.3", "-s", "3", "-n", "40", logits=f)
    logits = np.fromfile(f, dtype=np.float32).reshape(-1, rows)[:, :size]
    for i, t in enumerate(got):
        assert logits[i, t] - logits[i].max() >= np.log(np.float32(0.3)), i
    # min-p 1 keeps only the most likely token; plain sampling at that temperature does not
    assert gen_ids(tiny_model_bin, "-t", "1.5", "--min-p", "1", "-s", "3", "-n", "20") == gen_ids(tiny_model_bin, "-t", "0", "-n", "20")
    assert gen_ids(tiny_model_bin, "-t", "1.5", "-s", "3", "-n", "20") != gen_ids(tiny_model_bin, "-t", "0", "-n", "20")


def gen_text(model, *flags):
    r = run(model, "-i", "The old", "-q", "--ignore-eos", "-n", "60", *flags)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.endswith(b"\n")
    return r.stdout[:-1].decode("utf-8")


def test_stop_end_to_end(tiny_model_bin):
    text = gen_text(tiny_model_bin, "-s", "7")
    assert len(text) > 30
    stop = text[20:26]
    assert gen_text(tiny_model_bin, "-s", "7", "--stop", stop) == text[:text.find(stop)]
    r = run(tiny_model_bin, "-i", "The old", "--ignore-eos", "-n", "60", "-s", "7", "--stop", "zzzzz", "--stop", text[25:28], "--stop", stop)
    assert r.stdout[:-1].decode() == text[:min(text.find(stop), text.find(text[25:28]))]
    assert b"stop: stop-string" in r.stderr
    assert gen_text(tiny_model_bin, "-s", "7", "--stop", "\x01never") == text
    # a stop string that starts with a character of several bytes (the model's byte tokens split them)
    for seed in range(1, 40):
        text = gen_text(tiny_model_bin, "-s", seed)
        wide = [i for i, ch in enumerate(text) if ord(ch) > 0x7F and i > 0]
        if wide:
            i = wide[0]
            assert gen_text(tiny_model_bin, "-s", seed, "--stop", text[i:i + 2]) == text[:text.find(text[i:i + 2])]
            break
    else:
        pytest.fail("no generated text with a non-ASCII character")


def batch(model, lines, *flags):
    r = subprocess.run([os.path.join(REPO, os.environ.get("RUN", "./run")), model, "-f", "-", "-q", *map(str, flags)],
                       input="\n".join(json.dumps(l) if not isinstance(l, str) else l for l in lines).encode() + b"\n",
                       capture_output=True, timeout=HANG_TIMEOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return r, [json.loads(l) for l in r.stdout.decode().split("\n")[:-1]]


def test_batch_sampler_fields(tiny_model_bin):
    text = gen_text(tiny_model_bin, "-s", "7")
    stop = text[20:26]
    lines = [
        {"prompt": "The old", "temperature": 0, "repeat_penalty": 2.5, "repeat_last_n": 4, "n": 30},
        {"prompt": "The old", "min_p": 0.2, "seed": 5, "n": 30},
        {"prompt": "The old", "seed": 7, "n": 60, "stop": stop},
        {"prompt": "The old", "seed": 7, "n": 60, "stop": ["zzzz", stop]},
        {"prompt": "The old", "seed": 7, "n": 60, "stop": []},
    ]
    r, objs = batch(tiny_model_bin, lines, "--ignore-eos", "-b", "3")
    assert r.returncode == 0, r.stderr.decode()
    c = [o["completion"] for o in objs]
    assert c[0] == gen_text(tiny_model_bin, "-t", "0", "--repeat-penalty", "2.5", "--repeat-last-n", "4", "-n", "30")
    assert c[1] == gen_text(tiny_model_bin, "--min-p", "0.2", "-s", "5", "-n", "30")
    assert c[2] == c[3] == text[:text.find(stop)]
    assert objs[2]["stop"] == objs[3]["stop"] == "stop-string"
    assert c[4] == text and objs[4]["stop"] == "length"
    # the command line's --stop is every line's default; a line's own "stop" replaces it
    r, objs = batch(tiny_model_bin, lines[2:3] + [{"prompt": "The old", "seed": 7, "n": 60}], "--ignore-eos", "--stop", "zzzz")
    assert objs[0]["completion"] == text[:text.find(stop)] and objs[1]["completion"] == text


@pytest.mark.parametrize("line,words", [
    ({"prompt": "a", "stop": [1]}, "\"stop\" must be a string or a list of strings"),
    ({"prompt": "a", "stop": ""}, "must not be empty"),
    ({"prompt": "a", "stop": 3}, "\"stop\" must be a string or a list"),
    ({"prompt": "a", "min_p": 2}, "\"min_p\""),
    ({"prompt": "a", "repeat_penalty": 0}, "\"repeat_penalty\""),
    ({"prompt": "a", "repeat_last_n": 1.5}, "\"repeat_last_n\" must be an integer"),
    ({"prompt": "a", "top_k": ["1"]}, "\"top_k\" must be a number"),
])
def test_batch_bad_sampler_fields(tiny_model_bin, line, words):
    r, objs = batch(tiny_model_bin, [line, {"prompt": "b", "n": 2}])
    assert r.returncode == 3
    assert objs[0]["stop"] == "error" and words in objs[0]["error"], objs[0]
    assert objs[1]["stop"] == "length"


@pytest.mark.parametrize("args,words", [
    (["--repeat-penalty", "0"], ["--repeat-penalty", "above 0"]),
    (["--min-p", "1.5"], ["--min-p", "out of range"]),
    (["--repeat-last-n", "-1"], ["--repeat-last-n"]),
    (["--stop", ""], ["--stop"]),
    (["--stop", "x", "--ids", "-i", "1 2"], ["--stop", "--ids"]),
    (["--stop", "x", "--score", "-i", "a b"], ["--stop", "--score"]),
    (["--stop"], ["--stop needs a value"]),
])
def test_sampler_usage_errors(tiny_model_bin, args, words):
    one_line_error(run(tiny_model_bin, *args), 2, *words)


def test_help_lists_the_sampler_flags():
    out = run("-h").stdout.decode()
    for flag in ("--min-p", "--repeat-penalty", "--repeat-last-n", "--stop", "min_p", "repeat_penalty", "Order"):
        assert flag in out, flag
