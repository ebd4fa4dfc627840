"""Batch generation (-f), saved states (--state-in, --state-out) and the benchmark mode (--bench).

RUN=./run-san runs the same tests against the sanitizer build (make test-san)."""
import json
import os
import struct
import subprocess

import pytest

from conftest import HANG_TIMEOUT, PYTHON, REPO
from test_run import one_line_error

RUN = os.path.join(REPO, os.environ.get("RUN", "./run"))
TIMING = ("prefill_ms", "decode_ms")
FIELDS = ["id", "prompt", "completion", "prompt_tokens", "generated_tokens", "prefill_ms", "decode_ms", "stop", "seed"]


def run(*args, stdin=None, timeout=HANG_TIMEOUT, env=None, threads=1):
    """./run with one OpenMP thread (spinning threads crawl on a busy machine; the tiny model gains
    nothing from two), or threads=2 where the parallel paths are what is tested."""
    e = dict(os.environ, OMP_NUM_THREADS=str(threads))
    e.update(env or {})
    return subprocess.run([RUN, *map(str, args)], input=stdin, capture_output=True, timeout=timeout, env=e)


def jsonl(r):
    """The output objects, and the raw lines (each must be one valid JSON object)."""
    text = r.stdout.decode("utf-8")
    assert text == "" or text.endswith("\n")
    return [json.loads(l) for l in text.split("\n")[:-1]]  # not splitlines: U+2028 may be inside a string


def untimed(objs):
    return [{k: v for k, v in o.items() if k not in TIMING} for o in objs]


PROMPTS = ["Hello world", "Mamba is a", "The quick brown fox jumps over the lazy dog", "Once upon a time",
           "A", "Ünïcödé and emoji 😀", "1 2 3 4 5 6 7 8 9 10 11 12", "tabs\there", "Why?", "The end."]


# ------------------------------------------------------------------------------------------------
# batch generation

def test_batch_order_and_fields(tiny_model_bin, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("\n".join(PROMPTS[:5]) + "\n", encoding="utf-8")
    r = run(tiny_model_bin, "-f", f, "-n", "6", "-s", "3", "-b", "2")
    assert r.returncode == 0, r.stderr.decode()
    objs = jsonl(r)
    assert [o["id"] for o in objs] == list(range(5))
    for k, o in enumerate(objs):
        assert list(o) == FIELDS
        assert o["prompt"] == PROMPTS[k]
        assert o["stop"] in ("length", "end-of-text")
        assert 1 <= o["generated_tokens"] <= 6 and (o["stop"] == "end-of-text" or o["generated_tokens"] == 6)
        assert o["seed"] == 3 + k
        assert o["prefill_ms"] >= 0 and o["decode_ms"] >= 0 and isinstance(o["completion"], str)
        tok = run(tiny_model_bin, "--tokenize", "-i", PROMPTS[k])
        assert o["prompt_tokens"] == len(tok.stdout.split())
    err = r.stderr.decode()
    assert err.count("\n") == 1 and "batch: 5 prompts (0 failed)" in err and "tok/s" in err


def test_batch_matches_single_runs(tiny_model_bin, tmp_path):
    """Line k samples as ./run -i PROMPT -s SEED+k does; a JSON line's own seed and settings too."""
    f = tmp_path / "p.txt"
    f.write_text("\n".join(PROMPTS[:3]) + "\n", encoding="utf-8")
    objs = jsonl(run(tiny_model_bin, "-f", f, "-n", "12", "-s", "40", "-q"))
    for k, o in enumerate(objs):
        single = run(tiny_model_bin, "-i", PROMPTS[k], "-n", "12", "-s", 40 + k, "-q")
        assert single.stdout.decode() == o["completion"] + "\n" * (o["generated_tokens"] > 0)
    line = {"id": "x", "prompt": "Mamba is a", "n": 9, "temperature": 0.7, "top_p": 0.8, "top_k": 50, "seed": 123}
    o = jsonl(run(tiny_model_bin, "-f", "-", "-q", stdin=(json.dumps(line) + "\n").encode()))[0]
    single = run(tiny_model_bin, "-i", "Mamba is a", "-n", 9, "-t", 0.7, "-p", 0.8, "-k", 50, "-s", 123, "-q")
    assert o["id"] == "x" and o["seed"] == 123 and single.stdout.decode() == o["completion"] + "\n"


def test_batch_prompt_groups_match_single_runs(tiny_model_bin, tmp_path):
    """Prompts are prefilled together while they fit in one 512-token chunk (a group flushed when the next
    does not fit), a longer one alone in chunks; lines that end at their first token, or have n = 0, leave
    their slots to the others; all-greedy steps take the engine's argmax, mixed ones sample the rows.
    Every line must still be what ./run -i gives for it alone, whatever -b."""
    words = "the river ran past an old house where nobody had lived for years".split()
    texts = [" ".join(words[(k + i) % len(words)] for i in range(n)) for k, n in
             enumerate([3, 150, 200, 180, 5, 700, 90, 1, 260, 40])]
    lines = []
    for k, t in enumerate(texts):
        o = {"id": k, "prompt": t, "n": [6, 0, 1, 9, 4, 5, 7, 3, 8, 2][k], "seed": 50 + k}
        if k % 2:
            o["temperature"] = 0  # half the lines greedy: some steps all greedy, others mixed
        lines.append(json.dumps(o))
    f = tmp_path / "g.jsonl"
    f.write_text("\n".join(lines) + "\n")
    outs = {}
    for b in (1, 4, 16):
        r = run(tiny_model_bin, "-f", f, "-b", b, "-t", "0.9", "-q", "--ignore-eos")
        assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()
        outs[b] = untimed(jsonl(r))
    assert outs[1] == outs[4] == outs[16]
    assert max(o["prompt_tokens"] for o in outs[1]) > 512 and sum(o["prompt_tokens"] for o in outs[1]) > 1024
    for k, o in enumerate(outs[1]):
        single = run(tiny_model_bin, "-i", texts[k], "-n", o["generated_tokens"], "-s", 50 + k,
                     "-t", 0 if k % 2 else 0.9, "-q", "--ignore-eos")
        assert single.returncode == 0, single.stderr.decode()
        assert single.stdout.decode() == o["completion"] + "\n" * (o["generated_tokens"] > 0), k


def test_batch_deterministic_across_batch_sizes(tiny_model_bin, tmp_path):
    """Sequences of different lengths finish at different steps, so slots get compacted and refilled;
    the output must not change with -b."""
    lines = []
    for k, p in enumerate(PROMPTS):
        o = {"id": "p%d" % k, "prompt": p, "n": 3 + (k * 7) % 17}
        if k % 3 == 1:
            o["temperature"] = 0
        if k % 4 == 2:
            o["top_k"] = 20
        lines.append(json.dumps(o))
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join(lines) + "\n")
    outs = {}
    for b in (1, 4, 16):
        r = run(tiny_model_bin, "-f", f, "-b", b, "-s", "7", "-p", "0.95", "-q", "--ignore-eos")
        assert r.returncode == 0 and r.stderr == b"", r.stderr.decode()
        outs[b] = untimed(jsonl(r))
    assert outs[1] == outs[4] == outs[16]
    assert [o["id"] for o in outs[1]] == ["p%d" % k for k in range(len(PROMPTS))]
    assert [o["generated_tokens"] for o in outs[1]] == [3 + (k * 7) % 17 for k in range(len(PROMPTS))]


ENGINE_ROWS_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "engine.h"
/* Decode steps of S sequences together, in two slot orders, against each sequence alone in slot 0:
 * every row of logits must be bit-identical. */
int main(int argc, char **argv) {
    enum { S = 6, STEPS = 4 };
    Model m; char err[256];
    if (model_open(&m, argv[1], err, sizeof err)) { puts(err); return 1; }
    Engine *e = engine_new(&m, 0, S, err, sizeof err);
    int V = m.config.vocab_rows;
    size_t F = engine_state_floats(e);
    float *st = malloc(S * F * sizeof(float)), *together = malloc((size_t)S * STEPS * V * sizeof(float));
    int tok[STEPS][S];
    for (int s = 0; s < S; s++) {
        int ids[40];
        for (int i = 0; i < 5 + 7 * s; i++) ids[i] = (i * 131 + s * 977) % 50000 + 3;
        engine_reset(e, s);
        engine_prefill(e, s, ids, 5 + 7 * s, 0);
        engine_get_state(e, s, st + s * F);
        for (int t = 0; t < STEPS; t++) tok[t][s] = (t * 4099 + s * 71) % 50000 + 1;
    }
    for (int t = 0; t < STEPS; t++) {
        const float *l = engine_step(e, tok[t], S);
        for (int s = 0; s < S; s++) memcpy(together + ((size_t)s * STEPS + t) * V, l + (size_t)s * V, V * sizeof(float));
    }
    int bad = 0, perm[S] = {3, 5, 0, 4, 1, 2};  /* sequence perm[i] in slot i */
    for (int i = 0; i < S; i++) engine_set_state(e, i, st + perm[i] * F);
    for (int t = 0; t < STEPS; t++) {
        int tk[S];
        for (int i = 0; i < S; i++) tk[i] = tok[t][perm[i]];
        const float *l = engine_step(e, tk, S);
        for (int i = 0; i < S; i++) bad += memcmp(l + (size_t)i * V, together + ((size_t)perm[i] * STEPS + t) * V, V * sizeof(float)) != 0;
    }
    for (int s = 0; s < S; s++) {
        engine_set_state(e, 0, st + s * F);
        for (int t = 0; t < STEPS; t++) {
            const float *l = engine_step(e, &tok[t][s], 1);
            bad += memcmp(l, together + ((size_t)s * STEPS + t) * V, V * sizeof(float)) != 0;
        }
    }
    printf("mismatched rows: %d\n", bad);
    engine_free(e);
    model_close(&m);
    return bad != 0;
}
"""


def test_engine_rows_independent_of_batch(tiny_model_bin, tmp_path):
    """run.c's decode step gives each sequence the same bits alone, or with others in any slot order."""
    src = tmp_path / "rows.c"
    src.write_text(ENGINE_ROWS_C)
    exe = tmp_path / "rows"
    cc = subprocess.run(["gcc", "-O2", "-march=native", "-std=gnu11", "-fopenmp", "-D_GNU_SOURCE", "-I", REPO, "-o", exe, src,
                         os.path.join(REPO, "run.c"), os.path.join(REPO, "model.c"), os.path.join(REPO, "sampler.c"),
                         os.path.join(REPO, "util.c"), "-lm"], capture_output=True)
    assert cc.returncode == 0, cc.stderr.decode()
    r = subprocess.run([exe, tiny_model_bin], capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert r.returncode == 0 and r.stdout == b"mismatched rows: 0\n", r.stdout.decode()


ENGINE_BAD_CALL_C = r"""
#include <stdlib.h>
#include <string.h>
#include "engine.h"
/* One call outside what engine.h allows, named by argv[2], on an engine of 2 slots. */
int main(int argc, char **argv) {
    Model m; char err[256];
    if (argc < 3 || model_open(&m, argv[1], err, sizeof err)) return 2;
    Engine *e = engine_new(&m, 0, 2, err, sizeof err);
    int V = m.config.vocab_rows, chunk = engine_prefill_chunk(e), *ids = calloc(chunk + 1, sizeof(int));
    int seqs[3] = {0, 1, 0}, lens[3] = {chunk, 1, 1};
    const char *c = argv[2];
    if (!strcmp(c, "prefill_long")) engine_prefill(e, 0, ids, chunk + 1, 0);
    else if (!strcmp(c, "prefill_empty")) engine_prefill(e, 0, ids, 0, 0);
    else if (!strcmp(c, "prefill_slot")) engine_prefill(e, 2, ids, 1, 0);
    else if (!strcmp(c, "prefill_token")) { ids[3] = V; engine_prefill(e, 0, ids, 5, 0); }
    else if (!strcmp(c, "many_count")) engine_prefill_many(e, seqs, ids, lens, 3);
    else if (!strcmp(c, "many_long")) engine_prefill_many(e, seqs, ids, lens, 2);
    else if (!strcmp(c, "step_nseq")) engine_step(e, ids, 3);
    else if (!strcmp(c, "step_token")) { ids[1] = -1; engine_step(e, ids, 2); }
    else if (!strcmp(c, "copy_slot")) engine_copy_state(e, 0, -1);
    else if (!strncmp(c, "sample_pen", 10)) {
        int bad = m.config.vocab_size, picked;
        SampleDraw d = {.temperature = 1, .top_p = 1, .min_gap = -1e30f, .penalty = 1.5f, .n_pen = 1, .pen = &bad};
        if (!strcmp(c, "sample_pen_count")) d.n_pen = -1;
        engine_step_sample(e, ids, 1, &d, &picked);
    }
    else return 2;
    return 0; /* the call was taken */
}
"""


@pytest.mark.parametrize("call,message", [
    ("prefill_long", "engine_prefill: 513 tokens (1..512)"), ("prefill_empty", "engine_prefill: 0 tokens (1..512)"),
    ("prefill_slot", "engine_prefill: slot 2 out of range (0..1)"), ("prefill_token", "token id 50280 out of range (0..50279)"),
    ("many_count", "engine_prefill_many: 3 prompts (1..2)"),
    ("many_long", "engine_prefill_many: prompts of more than 512 tokens in all"),
    ("step_nseq", "engine_step: 3 sequences (1..2)"), ("step_token", "token id -1 out of range (0..50279)"),
    ("copy_slot", "engine_copy_state: slot -1 out of range (0..1)"),
    ("sample_pen_id", "engine_step_sample: penalized id 50277 outside 0..50276"),
    ("sample_pen_count", "engine_step_sample: row 0 has -1 penalized ids (0..50277)")])
def test_engine_refuses_calls_out_of_range(tiny_model_bin, tmp_path_factory, call, message):
    """run.c, as run.cu does: a slot, count or token id (or a draw's penalized id) outside engine.h's
    ranges is a one-line error and exit status 1, not a read or write out of bounds."""
    d = tmp_path_factory.getbasetemp() / "bad_call"
    exe = d / "bad_call"
    if not exe.exists():
        d.mkdir(exist_ok=True)
        (d / "bad_call.c").write_text(ENGINE_BAD_CALL_C)
        cc = subprocess.run(["gcc", "-O2", "-march=native", "-std=gnu11", "-fopenmp", "-D_GNU_SOURCE", "-I", REPO, "-o", exe,
                             d / "bad_call.c"] + [os.path.join(REPO, f) for f in ("run.c", "model.c", "sampler.c", "util.c")]
                            + ["-lm"], capture_output=True)
        assert cc.returncode == 0, cc.stderr.decode()
    r = subprocess.run([exe, tiny_model_bin, call], capture_output=True, timeout=HANG_TIMEOUT)
    assert r.returncode == 1, (r.returncode, r.stderr.decode())
    assert r.stderr.decode() == "error: %s\n" % message


def test_batch_bad_lines(tiny_model_bin, tmp_path):
    good = json.dumps({"id": 1, "prompt": "Hello"})
    lines = [
        good.encode(),
        b'{"id": 2, "prompt": "Hel',                         # truncated JSON
        b'{"id": 3, "prompt": "bad \xff byte"}',             # invalid UTF-8
        b'{"id": 4, "prompt": ""}',                          # empty prompt
        b'{"id": 5, "prompt": "x", "completion": "y"}',      # a name of the output (other keys are copied)
        b'{"id": 6, "prompt": "x", "n": -1}',                # out of range
        b'{"id": 7, "prompt": "x", "top_p": 0}',             # out of range (0, 1]
        b'{"id": 8, "prompt": "x", "n": 2.5}',               # not an integer
        b'{"id": 9, "prompt": ["x"]}',                       # nested
        b'{"id": 10, "prompt": "x", "prompt": "y"}',         # duplicate key
        b'{"id": 11, "prompt": "x"} trailing',               # text after the object
        b'{"id": 12, "prompt": "\\ud800"}',                  # lone surrogate
        b'{"id": 13, "prompt": "raw\ttab"}',                 # raw control character
        b'{"id": 14}',                                       # no prompt
        b'{"id": 15, "prompt": "' + b"a" * (1 << 20) + b'"}',  # longer than 1 MiB
        b'',                                                 # empty line
        b'not json',
        b'{"id": 18, "prompt": 5}',                          # wrong type
        b'{"id": 19, "prompt": "x", "seed": 01}',            # leading zero: not JSON
        b'{"id": true, "prompt": "x"}',                      # id must be a string or a number
        b'{"id": 21, "prompt"\x19: "x"}',                   # a control byte outside strings (fuzz_jsonl)
        b'{"id": 22, "prompt": "World", "n": 3}',
    ]
    r = run(tiny_model_bin, "-f", "-", "-n", "4", "-s", "1", stdin=b"\n".join(lines) + b"\n")
    assert r.returncode == 3, r.stderr.decode()
    objs = jsonl(r)
    assert len(objs) == len(lines)
    ok = {0, len(lines) - 1}
    for k, o in enumerate(objs):
        assert list(o)[:len(FIELDS)] == FIELDS
        if k in ok:
            assert o["stop"] in ("length", "end-of-text") and "error" not in o and o["generated_tokens"] >= 1
        else:
            assert o["stop"] == "error" and o["error"] and o["completion"] == "" and o["generated_tokens"] == 0, o
    assert [o["id"] for o in objs[:14]] == list(range(1, 15))  # the id when it was read, else the line index
    assert objs[15]["id"] == 15 and objs[16]["id"] == 16
    errors = [o.get("error", "") for o in objs]
    assert "invalid UTF-8 at byte offset %d (byte 0xff)" % lines[2].index(b"\xff") in errors[2]
    assert errors[3] == "empty prompt"
    assert "\"completion\" is a field of the output" in errors[4]
    assert "duplicate key" in errors[9]
    assert "surrogate" in errors[11]
    assert "longer than" in errors[14]
    assert "control character outside a string" in errors[20] and objs[20]["id"] == 21
    assert objs[4]["prompt"] is None and objs[3]["prompt"] == ""
    err = r.stderr.decode()
    assert err.count("warning: line ") == len(lines) - 2 and "(%d failed)" % (len(lines) - 2) in err
    q = run(tiny_model_bin, "-f", "-", "-n", "4", "-s", "1", "-q", stdin=b"\n".join(lines) + b"\n")
    assert q.returncode == 3 and q.stderr == b"" and untimed(jsonl(q)) == untimed(objs)


def test_batch_copies_unused_fields(tiny_model_bin):
    """A line's own metadata, nested or not, comes back in its output object exactly as written
    (numbers included: cJSON's printer would turn 12345678901234567890 into 1.2345678901234567e+19)."""
    lines = [b'{"id": 5, "prompt": "a", "meta": {"source": [1, 2]}, "n": 2}',
             b'{"prompt": "b", "big": 12345678901234567890, "x": 1.50, "s": "\\u00e9\xe2\x80\xa8", "l": [], "t": true, "z": null, "n": 2}',
             b'{"prompt": "", "tag": "kept on errors too"}',
             b'{"prompt": "c", "meta": 1, "meta": 2}']
    r = run(tiny_model_bin, "-f", "-", "-q", "-s", "1", stdin=b"\n".join(lines) + b"\n")
    assert r.returncode == 3, r.stderr.decode()
    objs = jsonl(r)
    assert objs[0]["meta"] == {"source": [1, 2]} and objs[0]["id"] == 5 and objs[0]["stop"] == "length"
    assert list(objs[0])[:len(FIELDS)] == FIELDS and list(objs[0])[len(FIELDS):] == ["meta"]
    out = r.stdout.split(b"\n")
    assert out[0].endswith(b',"meta":{"source": [1, 2]}}')
    assert out[1].endswith(b',"big":12345678901234567890,"x":1.50,"s":"\\u00e9\xe2\x80\xa8","l":[],"t":true,"z":null}')
    assert objs[2]["error"] == "empty prompt" and objs[2]["tag"] == "kept on errors too"
    assert "duplicate key \"meta\"" in objs[3]["error"]


def test_batch_text_lines_and_formats(tiny_model_bin, tmp_path):
    """Text input: one prompt a line, CRLF endings, an empty line is an error object; --text and --jsonl
    override the detection from the first line."""
    r = run(tiny_model_bin, "-f", "-", "-n", "2", "-t", "0", "-q", stdin=b"Hello\r\n\nWorld\n")
    assert r.returncode == 3
    objs = jsonl(r)
    assert [o["prompt"] for o in objs] == ["Hello", "", "World"] and objs[1]["stop"] == "error"
    r = run(tiny_model_bin, "-f", "-", "-n", "2", "-t", "0", "-q", "--text", stdin=b'{"prompt": "x"}\n')
    assert r.returncode == 0 and jsonl(r)[0]["prompt"] == '{"prompt": "x"}'
    r = run(tiny_model_bin, "-f", "-", "-n", "2", "-t", "0", "-q", "--jsonl", stdin=b'Hello\n')
    assert r.returncode == 3 and "bad JSON" in jsonl(r)[0]["error"]
    r = run(tiny_model_bin, "-f", "-", "-q", stdin=b"")
    assert r.returncode == 0 and r.stdout == b""
    r = run(tiny_model_bin, "-f", "-", "-n", "1", "-q", stdin=b'\n  \n{"prompt": "x", "id": "a"}\n')  # detected past blank lines
    objs = jsonl(r)
    assert r.returncode == 3 and [o["id"] for o in objs] == [0, 1, "a"] and objs[2]["stop"] == "length"
    assert objs[0]["error"] == "empty prompt" and objs[1]["error"] == "blank line (only white space)"


def test_batch_json_escapes(tiny_model_bin):
    text = 'quote " backslash \\ newline \n tab \t slash / é 😀 \u2028 ctl \u0001'
    line = '{"id": "i\\u00e9\\ud83d\\ude00", "prompt": %s, "n": 1, "temperature": 0}\n' % json.dumps(text)
    r = run(tiny_model_bin, "-f", "-", "-q", stdin=line.encode())
    assert r.returncode == 0, r.stdout
    o = jsonl(r)[0]
    assert o["prompt"] == text and o["id"] == "i\u00e9\U0001F600"
    tok = run(tiny_model_bin, "--tokenize", "-i", "-", stdin=text.encode())
    assert o["prompt_tokens"] == len(tok.stdout.split())
    r = run(tiny_model_bin, "-f", "-", "-q", stdin=b'{"id": -1.5e3, "prompt": "x", "n": 0}\n')
    assert r.returncode == 0 and b'"id":-1.5e3,' in r.stdout and jsonl(r)[0]["generated_tokens"] == 0


def test_batch_stdin_equals_file(tiny_model_bin, tmp_path):
    data = ("\n".join(PROMPTS[:4]) + "\n").encode()
    f = tmp_path / "p.txt"
    f.write_bytes(data)
    a = run(tiny_model_bin, "-f", f, "-n", "5", "-s", "9", "-q")
    b = run(tiny_model_bin, "-f", "-", "-n", "5", "-s", "9", "-q", stdin=data)
    assert a.returncode == b.returncode == 0 and untimed(jsonl(a)) == untimed(jsonl(b))


@pytest.mark.parametrize("args,code,words", [
    (["-f", "/nonexistent/prompts.txt"], 1, ["cannot open prompts file"]),
    (["-f", "x", "-i", "hello"], 2, ["-f does not go with -i"]),
    (["-f", "x", "--score"], 2, ["does not go with --score"]),
    (["-f", "x", "--stepwise"], 2, ["--stepwise"]),
    (["-f", "x", "--state-out", "s"], 2, ["--state-out"]),
    (["-f", "x", "-b", "0"], 2, ["-b = 0 is out of range"]),
    (["-f", "x", "-b", "two"], 2, ["-b expects an integer"]),
    (["-f"], 2, ["-f needs a value"]),
    (["-b", "4"], 2, ["-b goes with -f"]),
    (["--jsonl"], 2, ["--jsonl and --text go with -f"]),
    (["--bench", "--bench-prompt", "1,x"], 2, ["--bench-prompt expects a comma-separated list"]),
    (["--bench", "--bench-batch", "0"], 2, ["out of range"]),
    (["--bench-gen", "4"], 2, ["go with --bench"]),
    (["--bench", "-f", "x"], 2, ["-f and --bench"]),
    (["--state-in", "s", "--score", "-i", "x"], 2, ["--state-in and --state-out go with generation"]),
    (["--state-in"], 2, ["--state-in needs a value"]),
])
def test_batch_usage_errors(tiny_model_bin, args, code, words):
    one_line_error(run(tiny_model_bin, *args), code, *words)


# ------------------------------------------------------------------------------------------------
# saved states

IDS = [510, 12092, 1533, 13, 187, 15, 2598, 7, 40, 9, 1000, 20000]


@pytest.mark.parametrize("sampling", [["-t", "0"], ["-t", "1.0", "-p", "0.9", "-s", "9"], ["-t", "0.8", "-k", "40", "-s", "3"]])
def test_state_round_trip(tiny_model_bin, tmp_path, sampling):
    """The prompt with --state-out, then --state-in with no -i, gives exactly the uninterrupted run."""
    st = tmp_path / "s.state"
    full = run(tiny_model_bin, "-i", "Mamba is a", "-n", "40", "--ignore-eos", "-q", *sampling, threads=2)
    saved = run(tiny_model_bin, "-i", "Mamba is a", "-n", "0", "--state-out", st, "-q")
    cont = run(tiny_model_bin, "--state-in", st, "-n", "40", "--ignore-eos", "-q", *sampling)
    assert full.returncode == saved.returncode == cont.returncode == 0, cont.stderr.decode()
    assert saved.stdout == b"" and full.stdout == cont.stdout and len(full.stdout) > 40
    # --state-out while generating saves the same state (the one after the prompt)
    st2 = tmp_path / "s2.state"
    again = run(tiny_model_bin, "-i", "Mamba is a", "-n", "40", "--ignore-eos", "-q", "--state-out", st2, *sampling)
    assert again.stdout == full.stdout and st.read_bytes() == st2.read_bytes()


def test_state_continuation_with_more_text(tiny_model_bin, tmp_path):
    """-i after --state-in continues the text: split anywhere, the same tokens as the whole prompt."""
    whole = run(tiny_model_bin, "--ids", "-i", " ".join(map(str, IDS)), "-t", "0", "-n", "16", "--ignore-eos", "-q")
    a, b = tmp_path / "a.state", tmp_path / "b.state"
    r1 = run(tiny_model_bin, "--ids", "-i", " ".join(map(str, IDS[:5])), "-n", "0", "--state-out", a, "-q")
    r2 = run(tiny_model_bin, "--ids", "-i", " ".join(map(str, IDS[5:9])), "--state-in", a, "--state-out", b, "-n", "0", "-q")
    r3 = run(tiny_model_bin, "--ids", "-i", " ".join(map(str, IDS[9:])), "--state-in", b, "-t", "0", "-n", "16", "--ignore-eos")
    assert r1.returncode == r2.returncode == r3.returncode == 0, r3.stderr.decode()
    assert r3.stdout == whole.stdout
    assert "prompt: 3 tokens" in r3.stderr.decode()
    h = b.read_bytes()[:128]
    assert h[:8] == b"MAMBASTA" and struct.unpack_from("<II", h, 8) == (2, 128)
    assert struct.unpack_from("<Q", h, 72)[0] == 9  # tokens consumed
    d_model, n_layer, d_inner, d_state, d_conv = struct.unpack_from("<5i", h, 32)
    state_floats, _, vocab = struct.unpack_from("<QQQ", h, 64)
    assert state_floats == n_layer * d_inner * (d_conv - 1 + d_state)
    assert len(b.read_bytes()) == 128 + 4 * (state_floats + vocab)
    # and from the state, without -i: the next tokens of the run that consumed the 9 ids
    r4 = run(tiny_model_bin, "--ids", "--state-in", b, "-t", "0", "-n", "5", "--ignore-eos", "-q")
    r5 = run(tiny_model_bin, "--ids", "-i", " ".join(map(str, IDS[:9])), "-t", "0", "-n", "5", "--ignore-eos", "-q")
    assert r4.stdout == r5.stdout


def test_state_refused(checkpoints, tiny_model_bin, tmp_path):
    st = tmp_path / "s.state"
    assert run(tiny_model_bin, "-i", "Hello", "-n", "0", "--state-out", st).returncode == 0
    data = st.read_bytes()
    other_weights = checkpoints.model_bin("tiny", "fp32", seed=1)
    one_line_error(run(other_weights, "--state-in", st, "-n", "2"), 1, "saved with another model")
    one_line_error(run(checkpoints.model_bin("tiny", "fp16"), "--state-in", st, "-n", "2"), 1, "another model", "fp32")
    cases = {
        "truncated": (data[:-4], "truncated"),
        "short_header": (data[:60], "truncated"),
        "longer": (data + b"\0" * 8, "corrupt: longer than the %d bytes its header says" % len(data)),
        "odd_length": (data[:-1], "truncated (%d bytes, expected %d)" % (len(data) - 1, len(data))),
        "flipped": (data[:1000] + bytes([data[1000] ^ 1]) + data[1001:], "corrupt"),
        "magic": (b"X" + data[1:], "not a state file"),
        "version": (data[:8] + struct.pack("<I", 3) + data[12:], "has version 3; this program reads version 2"),
        # format 1 (a hand-written hash): a cache of an older program's run, made again rather than read
        "version_1": (data[:8] + struct.pack("<I", 1) + data[12:], "saved by an older version of this program"),
        "header_size": (data[:12] + struct.pack("<I", 64) + data[16:], "version 2"),
        # the checksum covers the header too: a changed token count is caught
        "tokens": (data[:72] + struct.pack("<Q", 7) + data[80:], "checksum"),
        "state_floats": (data[:64] + struct.pack("<Q", 12) + data[72:], "corrupt (12 state floats"),
        "dims": (data[:32] + struct.pack("<i", 65) + data[36:], "for another model (d_model 65"),
        "fingerprint": (data[:16] + bytes([data[16] ^ 1]) + data[17:], "saved with another model"),
        "empty": (b"", "not a state file"),
    }
    for name, (blob, word) in cases.items():
        p = tmp_path / name
        p.write_bytes(blob)
        one_line_error(run(tiny_model_bin, "--state-in", p, "-n", "2"), 1, word, str(p))
    one_line_error(run(tiny_model_bin, "--state-in", tmp_path / "missing", "-n", "2"), 1, "cannot open state file")
    one_line_error(run(tiny_model_bin, "-i", "x", "-n", "0", "--state-out", tmp_path / "no" / "dir"), 1, "cannot write state file")


# ------------------------------------------------------------------------------------------------
# --bench

BENCH_KEYS = {"prompt_tokens", "gen_tokens", "batch", "prefill_ms", "prefill_tok_s", "ttft_ms", "decode_ms", "ms_per_step",
              "decode_tok_s", "decode_tok_s_per_seq", "state_bytes", "state_bytes_total", "peak_rss_bytes"}


def check_bench(doc, prompts, gens, batches):
    m = doc["model"]
    assert doc["engine"].startswith("CPU") and doc["decode"] == "greedy"
    state_bytes = 4 * m["n_layer"] * m["d_inner"] * (m["d_conv"] - 1 + m["d_state"])
    assert doc["state_bytes_per_seq"] == state_bytes
    res = doc["results"]
    assert [(r["prompt_tokens"], r["batch"], r["gen_tokens"]) for r in res] == [(p, b, g) for p in prompts for b in batches for g in gens]
    for r in res:
        assert set(r) == BENCH_KEYS
        assert all(r[k] > 0 for k in BENCH_KEYS)
        assert r["state_bytes"] == state_bytes and r["state_bytes_total"] == r["batch"] * state_bytes
        assert r["ttft_ms"] >= r["prefill_ms"]
        assert abs(r["decode_tok_s"] - r["batch"] * r["decode_tok_s_per_seq"]) <= 0.02 * r["decode_tok_s"]


def test_bench_json(tiny_model_bin):
    r = run(tiny_model_bin, "--bench", "--bench-prompt", "4,600", "--bench-gen", "2,3", "--bench-batch", "1,3", threads=2)
    assert r.returncode == 0, r.stderr.decode()
    check_bench(json.loads(r.stdout), [4, 600], [2, 3], [1, 3])
    assert r.stderr.decode().count("\n") == 8
    q = run(tiny_model_bin, "--bench", "--bench-prompt", "4", "--bench-gen", "2", "--bench-batch", "2", "-q")
    assert q.returncode == 0 and q.stderr == b""
    check_bench(json.loads(q.stdout), [4], [2], [2])


def test_bench_sweep_script(tiny_model_bin, tmp_path):
    out = tmp_path / "sweep"
    r = subprocess.run([PYTHON, os.path.join(REPO, "bench", "bench_sweep.py"), "--run", RUN, "--model", tiny_model_bin,
                        "--prompts", "4,40", "--gens", "2", "--batches", "1,2", "--isolate", "--out", out],
                       capture_output=True, timeout=HANG_TIMEOUT, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert r.returncode == 0, r.stderr.decode()
    doc = json.loads((tmp_path / "sweep.json").read_text())
    check_bench(doc, [4, 40], [2], [1, 2])
    csv = (tmp_path / "sweep.csv").read_text().splitlines()
    assert csv[0].split(",")[:3] == ["prompt_tokens", "gen_tokens", "batch"] and len(csv) == 5


def plot_doc():
    """A small document of transformer_baseline.py's shape: an eager entry without the "setup" field (as files written
    before the compiled setup), a compiled one with a failed point, and a skipped one without results."""
    return {"device": "test", "gen_tokens": 4, "contexts": [128, 1024], "transformer": [{"model": "pythia-160m", "dtype": "fp16", "results": [
        {"context": L, "batch": 1, "gen_tokens": 4, "decode_tok_s": 90.0, "decode_tok_s_per_seq": 90.0, "kv_cache_bytes": 36864 * L,
         "kv_cache_bytes_per_seq": 36864 * L, "kv_cache_bytes_formula": 36864 * L} for L in (128, 1024)] +
        [{"context": 65536, "batch": 1, "gen_tokens": 4, "oom": True, "kv_cache_bytes_formula": 36864 * 65536}]},
        {"model": "pythia-160m", "setup": "compiled", "label": "transformers StaticCache + torch.compile, CUDA graphs", "dtype": "fp16",
         "results": [{"context": 1024, "batch": 1, "gen_tokens": 4, "decode_tok_s": 400.0, "decode_tok_s_per_seq": 400.0, "compile_s": 30.0,
                      "kv_cache_bytes": 36864 * 1032, "kv_cache_bytes_per_seq": 36864 * 1032, "kv_cache_bytes_formula": 36864 * 1032},
                     {"context": 8192, "batch": 1, "gen_tokens": 4, "error": "BackendCompilerFailed: ...",
                      "kv_cache_bytes_formula": 36864 * 8200}]},
        {"model": "pythia-160m", "setup": "compiled", "dtype": "fp32", "skipped": "not run on cpu", "results": []}],
        "mamba": [{"model": "mamba-130m", "dtype": "fp16", "run": "runcuda", "bench": {"engine": "GPU", "model": {"dtype": "fp16"}, "results": [
            {"prompt_tokens": L, "batch": 1, "decode_tok_s_per_seq": 500.0, "state_bytes": 2801664} for L in (128, 1024)]}}]}


def test_plot_series():
    """plot.py's lines: one per Transformer setup, styled by setup, colored by model size (no matplotlib needed)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_plot", os.path.join(REPO, "bench", "plot.py"))
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    ss = plot.series(plot_doc(), 1)
    assert [(color, style) for _, color, style, _ in ss] == [(0, "eager"), (0, "compiled"), (0, "compiled"), (0, "mamba")]
    assert "transformers eager" in ss[0][0] and "torch.compile" in ss[1][0]
    assert ss[0][3][-1] == (65536, None, 36864 * 65536, "out of memory")
    assert ss[1][3] == [(1024, 400.0, 36864 * 1032, None), (8192, None, 36864 * 8200, "failed")]
    assert ss[2][3] == []


def test_plot_script(tmp_path):
    """bench/plot.py writes its PNG from plot_doc() (skipped without matplotlib)."""
    pytest.importorskip("matplotlib")
    src = tmp_path / "baseline.json"
    src.write_text(json.dumps(plot_doc()))
    out = tmp_path / "plot.png"
    r = subprocess.run([PYTHON, os.path.join(REPO, "bench", "plot.py"), src, "-o", out], capture_output=True, timeout=HANG_TIMEOUT)
    assert r.returncode == 0, r.stderr.decode()
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
