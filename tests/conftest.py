"""Shared pytest fixtures.

Checkpoints and model.bin files are built once per session, on demand, under one temporary folder:

    checkpoints.folder(shape, layout, seed=0, shards=1)  -> synthetic checkpoint folder (make_checkpoint.py)
    checkpoints.model_bin(shape, dtype="fp32", seed=0)    -> exported model.bin (from the HF layout)

The original layout (pytorch_model.bin) needs torch: without it those tests skip (require_torch).
shape: "tiny" (d_model 64, 2 layers) or "130m" (the mamba-130m shapes); both have the GPT-NeoX
vocabulary (50277 ids, 50280 rows) and its tokenizer. Shortcuts: tiny_model_bin, tiny_model_bin_fp16,
tiny_model_bin_bf16, model_130m_bin. golden_dir is tests/data/golden (HF reference outputs).
"""
import os
import sys

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
for p in (TESTS, REPO):
    if p not in sys.path:
        sys.path.insert(0, p)

import make_checkpoint  # noqa: E402

PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable

# The timeout of every ./run the tests start: it catches hangs, it times nothing. It is sized for the
# slowest build (sanitizers, or no AVX) on a loaded 2-core machine, where 256 greedy tokens of the
# 130m model took 171 s with the no-AVX build (120 s was once too short); TIMEOUT_SCALE=N multiplies
# it on a slower machine.
HANG_TIMEOUT = 900 * float(os.environ.get("TIMEOUT_SCALE", "1"))


def require_torch():
    """torch, or a skip with the reason when python3-torch is not installed (only the tests that write
    or read pytorch_model.bin checkpoints with torch itself need it). REQUIRE_TORCH=1 (CI, through
    make deps WITH_TORCH=1) turns the skip into a failure, so that those tests cannot go missing there."""
    try:
        import torch
    except ImportError as e:
        why = "python3-torch not installed: the torch.save checkpoint tests need it (make deps WITH_TORCH=1)"
        if os.environ.get("REQUIRE_TORCH") == "1":
            pytest.fail("REQUIRE_TORCH=1 but %s: %s" % (why, e), pytrace=False)
        pytest.skip(why)
    return torch


class Checkpoints:
    def __init__(self, root):
        self.root = root
        self._cache = {}

    def folder(self, shape="tiny", layout="hf", seed=0, shards=1):
        key = ("ckpt", shape, layout, seed, shards)
        if key not in self._cache:
            if layout == "original":  # written with torch.save
                require_torch()
            d = os.path.join(self.root, "%s_%s_s%d_x%d" % (shape, layout, seed, shards))
            make_checkpoint.write_checkpoint(d, shape, layout, seed, shards)
            self._cache[key] = d
        return self._cache[key]

    def model_bin(self, shape="tiny", dtype="fp32", seed=0):
        key = ("bin", shape, dtype, seed)
        if key not in self._cache:
            import export
            out = os.path.join(self.root, "%s_s%d_%s.bin" % (shape, seed, dtype))
            export.export_model(self.folder(shape, "hf", seed), out, dtype)
            self._cache[key] = out
        return self._cache[key]


@pytest.fixture(scope="session")
def repo_root():
    return REPO


@pytest.fixture(scope="session")
def python_exe():
    return PYTHON


@pytest.fixture(scope="session")
def neox_tokenizer_json():
    p = make_checkpoint.find_tokenizer()
    if p is None:
        pytest.skip("GPT-NeoX tokenizer.json not found")
    return p


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory, neox_tokenizer_json):
    return Checkpoints(str(tmp_path_factory.mktemp("checkpoints")))


@pytest.fixture(scope="session")
def tiny_model_bin(checkpoints):
    return checkpoints.model_bin("tiny", "fp32")


@pytest.fixture(scope="session")
def tiny_model_bin_fp16(checkpoints):
    return checkpoints.model_bin("tiny", "fp16")


@pytest.fixture(scope="session")
def tiny_model_bin_bf16(checkpoints):
    return checkpoints.model_bin("tiny", "bf16")


@pytest.fixture(scope="session")
def model_130m_bin(checkpoints):
    return checkpoints.model_bin("130m", "fp32")


@pytest.fixture(scope="session")
def golden_dir():
    return os.path.join(TESTS, "data", "golden")
