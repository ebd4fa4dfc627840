"""./run against Hugging Face transformers: golden logits and greedy tokens that
MambaForCausalLM computed (fp32, TF32 off) on the GPU machine for the seeded checkpoints that
make_checkpoint.py regenerates bit for bit here (tests/gen_hf_golden.py wrote the .npz files).

Tolerances (docs/targets.md): max |diff| <= 1e-3 and relative L2 <= 1e-5 over a 64-token prompt
and 64 decode steps; greedy tokens identical for 256 steps."""
import json
import os

import numpy as np
import pytest

from test_run import logits_of, rel_l2, run

SHAPES = ["tiny", "m2tiny", "m2codestral", "falcon-tiny", pytest.param("130m", marks=pytest.mark.slow),
          pytest.param("m2-130m", marks=pytest.mark.slow)]


def golden(golden_dir, shape):
    z = np.load(os.path.join(golden_dir, "hf_%s_seed0.npz" % shape))
    return z, json.loads(str(z["meta"]))


def check_rows(got, z, positions):
    """got[i] is the row for absolute position positions[i]; compare every stored golden value."""
    pos = list(positions)
    full = [(k, r) for k, r in enumerate(z["full_rows"]) if r in pos]
    assert full, "no full golden row falls in these positions"
    got_full = np.stack([got[pos.index(r)] for _, r in full])
    ref_full = np.stack([z["full_logits"][k] for k, _ in full])
    got_cols = got[:, z["col_ids"]]
    ref_cols = z["col_logits"][pos]
    for g, r in ((got_full, ref_full), (got_cols, ref_cols)):
        assert np.abs(g - r).max() <= 1e-3
        assert rel_l2(g, r) <= 1e-5
    return np.abs(got_full - ref_full).max(), rel_l2(got_full, ref_full)


@pytest.mark.parametrize("shape", SHAPES)
def test_prefill_logits_match_transformers(checkpoints, golden_dir, tmp_path, shape):
    z, meta = golden(golden_dir, shape)
    model = checkpoints.model_bin(shape, "fp32")
    ids = list(z["prompt"]) + list(z["decode_tokens"])
    got = logits_of(model, ids, tmp_path=tmp_path)  # every position through the prefill path
    check_rows(got, z, range(len(ids)))


@pytest.mark.parametrize("shape", SHAPES)
def test_decode_logits_match_transformers(checkpoints, golden_dir, tmp_path, shape):
    """The prompt through prefill, then 64 decode steps: the rows of positions 63..127."""
    z, meta = golden(golden_dir, shape)
    model = checkpoints.model_bin(shape, "fp32")
    n_prompt = len(z["prompt"])
    out = tmp_path / "decode.bin"
    r = run(model, "--ids", "-i", " ".join(map(str, z["prompt"])), "-t", "0", "-n", len(z["decode_tokens"]) + 1,
            "--ignore-eos", "-q", "--logits", out)
    assert r.returncode == 0, r.stderr.decode()
    tokens = [int(t) for t in r.stdout.split()]
    assert tokens[:len(z["decode_tokens"])] == list(z["decode_tokens"])
    got = np.fromfile(out, dtype=np.float32).reshape(-1, meta["vocab_rows"])
    check_rows(got, z, range(n_prompt - 1, n_prompt - 1 + len(got)))


@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_256_tokens_match_transformers(checkpoints, golden_dir, shape):
    z, meta = golden(golden_dir, shape)
    model = checkpoints.model_bin(shape, "fp32")
    r = run(model, "--ids", "-i", " ".join(map(str, z["prompt"])), "-t", "0", "-n", len(z["greedy"]), "--ignore-eos", "-q")
    assert r.returncode == 0, r.stderr.decode()
    assert [int(t) for t in r.stdout.split()] == list(z["greedy"])
