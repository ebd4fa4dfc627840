"""The bundled models: models/tiny (a Mamba-1) and models/tiny-mamba2 (a Mamba-2), trained by
train/train.py on the Brown corpus, with a SentencePiece tokenizer, exported by export.py. Their
greedy continuations and their perplexity on held-out text must equal what PyTorch computed on the
GPU machine (models/*/golden.json)."""
import json
import os

import pytest

from conftest import REPO
from test_run import run

MODELS = ["tiny", "tiny-mamba2"]


def folder(name):
    return os.path.join(REPO, "models", name)


def model(name):
    return os.path.join(folder(name), "model.bin")


def golden(name):
    return json.load(open(os.path.join(folder(name), "golden.json")))


@pytest.mark.parametrize("name", MODELS)
def test_size_limit(name):
    assert os.path.getsize(model(name)) <= 12 * 1000 * 1000


@pytest.mark.parametrize("name,case", [(n, c) for n in MODELS for c in golden(n)["greedy"]],
                         ids=lambda v: v if isinstance(v, str) else v["prompt"])
def test_greedy_continuations_match_pytorch(name, case):
    m = model(name)
    r = run(m, "-i", case["prompt"], "--tokenize")
    assert [int(t) for t in r.stdout.split()] == case["prompt_ids"]
    n = str(case["n_new"])
    r = run(m, "--ids", "-i", " ".join(map(str, case["prompt_ids"])), "-t", "0", "-n", n, "--ignore-eos", "-q")
    assert r.returncode == 0, r.stderr.decode()
    assert [int(t) for t in r.stdout.split()] == case["ids"]
    r = run(m, "-i", case["prompt"], "-t", "0", "-n", n, "--ignore-eos", "-q")
    assert r.stdout.decode() == case["completion"] + "\n"


@pytest.mark.parametrize("name", MODELS)
def test_perplexity_matches_pytorch(name):
    p = golden(name)["perplexity"]
    with open(os.path.join(REPO, p["file"]), "rb") as f:
        text = f.read()
    r = run(model(name), "-i", "-", "--score", "-q", stdin=text)
    assert r.returncode == 0, r.stderr.decode()
    last = r.stdout.decode().splitlines()[-1].split()
    assert int(last[2]) == p["n_tokens"] and int(last[4]) == p["n_scored"]
    ppl = float(last[-1])
    assert abs(ppl - p["ppl"]) / p["ppl"] < 0.005


@pytest.mark.parametrize("name", MODELS)
def test_samples_read_as_text(name):
    r = run(model(name), "-i", "The", "-n", "60", "-s", "1", "-t", "0.8", "-p", "0.95")
    assert r.returncode == 0, r.stderr.decode()
    words = r.stdout.decode().split()
    assert len(words) >= 20 and sum(w.strip('.,"!?;:').isalpha() for w in words) >= 0.7 * len(words)


@pytest.mark.parametrize("name", MODELS)
def test_export_reproduces_the_bundled_file(name, tmp_path):
    """The committed model.bin is what export.py makes of the committed HF-layout folder."""
    import export
    out = tmp_path / "model.bin"
    export.export_model(os.path.join(folder(name), "hf"), str(out), "fp16", os.path.join(folder(name), "tokenizer.model"))
    assert out.read_bytes() == open(model(name), "rb").read()
