"""The bundled model (models/tiny): a Mamba-1 trained by train/train.py on the Brown corpus, with a
SentencePiece tokenizer, exported by export.py. Its greedy continuations and its perplexity on
held-out text must equal what PyTorch computed on the GPU machine (models/tiny/golden.json)."""
import json
import os

import pytest

from conftest import REPO
from test_run import run

TINY = os.path.join(REPO, "models", "tiny")
MODEL = os.path.join(TINY, "model.bin")
GOLDEN = json.load(open(os.path.join(TINY, "golden.json")))


def test_size_limit():
    assert os.path.getsize(MODEL) <= 12 * 1000 * 1000


@pytest.mark.parametrize("case", GOLDEN["greedy"], ids=lambda c: c["prompt"])
def test_greedy_continuations_match_pytorch(case):
    r = run(MODEL, "-i", case["prompt"], "--tokenize")
    assert [int(t) for t in r.stdout.split()] == case["prompt_ids"]
    n = str(case["n_new"])
    r = run(MODEL, "--ids", "-i", " ".join(map(str, case["prompt_ids"])), "-t", "0", "-n", n, "--ignore-eos", "-q")
    assert r.returncode == 0, r.stderr.decode()
    assert [int(t) for t in r.stdout.split()] == case["ids"]
    r = run(MODEL, "-i", case["prompt"], "-t", "0", "-n", n, "--ignore-eos", "-q")
    assert r.stdout.decode() == case["completion"] + "\n"


def test_perplexity_matches_pytorch():
    p = GOLDEN["perplexity"]
    with open(os.path.join(REPO, p["file"]), "rb") as f:
        text = f.read()
    r = run(MODEL, "-i", "-", "--score", "-q", stdin=text)
    assert r.returncode == 0, r.stderr.decode()
    last = r.stdout.decode().splitlines()[-1].split()
    assert int(last[2]) == p["n_tokens"] and int(last[4]) == p["n_scored"]
    ppl = float(last[-1])
    assert abs(ppl - p["ppl"]) / p["ppl"] < 0.005


def test_samples_read_as_text():
    r = run(MODEL, "-i", "The", "-n", "60", "-s", "1", "-t", "0.8", "-p", "0.95")
    assert r.returncode == 0, r.stderr.decode()
    words = r.stdout.decode().split()
    assert len(words) >= 20 and sum(w.strip('.,"!?;:').isalpha() for w in words) >= 0.7 * len(words)


def test_export_reproduces_the_bundled_file(tmp_path):
    """The committed model.bin is what export.py makes of the committed HF-layout folder."""
    import export
    out = tmp_path / "model.bin"
    export.export_model(os.path.join(TINY, "hf"), str(out), "fp16", os.path.join(TINY, "tokenizer.model"))
    assert out.read_bytes() == open(MODEL, "rb").read()
