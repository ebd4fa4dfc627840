"""Mamba-2 and Falcon-Mamba end to end on ./run: export of both layouts, the numbers against the
numpy reference (tests/ref_numpy.py, float64, its own reader of model.bin), the SSD prefill against
token-by-token decoding at every chunk boundary, saved states, batches, and the bad inputs of each
family. The golden logits of Hugging Face transformers are in test_golden.py.

Shapes (tests/make_checkpoint.py): m2tiny (Mamba-2, 8 heads of 16, 1 group), m2codestral (a
scaled-down Codestral: 16 heads of 32, 8 groups, untied head), falcon-tiny (Falcon-Mamba, untied)."""
import json
import shutil
import struct

import numpy as np
import pytest

import export
from conftest import require_torch
import make_checkpoint as mc
from test_batch import jsonl, run as run1
from test_export import expect_failure, run_export
from test_run import assert_matches_reference, logits_of, one_line_error, run

FAMILIES = ["m2tiny", "m2codestral", "falcon-tiny"]
IDS = [(i * 7919) % 50000 + 5 for i in range(70)]  # crosses the 64-token SSD chunk of run.c


def ids_arg(ids):
    return " ".join(map(str, ids))


@pytest.mark.parametrize("shape", FAMILIES)
@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_matches_numpy_reference(checkpoints, tmp_path, shape, dtype):
    assert_matches_reference(checkpoints.model_bin(shape, dtype), IDS, tmp_path)


@pytest.mark.parametrize("shape,n", [("m2tiny", 2), ("m2tiny", 63), ("m2tiny", 64), ("m2tiny", 65), ("m2tiny", 600),
                                     ("m2codestral", 130), ("falcon-tiny", 600)])
def test_prefill_equals_token_by_token(checkpoints, tmp_path, shape, n):
    """Prompts shorter than, equal to and longer than the SSD chunk, and longer than one prefill
    call (512 tokens): every row, and the decode that follows."""
    model = checkpoints.model_bin(shape, "fp32")
    ids = [(i * 7919) % 50000 + 5 for i in range(n)]
    pre = logits_of(model, ids, tmp_path=tmp_path)
    step = logits_of(model, ids, "--stepwise", tmp_path=tmp_path)
    assert np.abs(pre - step).max() < 1e-4
    args = ("--ids", "-i", ids_arg(ids), "-t", "0", "-n", "16", "--ignore-eos", "-q")
    a, b = run(model, *args), run(model, *args, "--stepwise")
    assert a.returncode == 0 and a.stdout == b.stdout


@pytest.mark.parametrize("shape", ["m2codestral", "falcon-tiny"])
def test_saved_state_resumes_exactly(checkpoints, tmp_path, shape):
    """The prompt fed in three calls through saved states gives the tokens of the whole prompt."""
    model = checkpoints.model_bin(shape, "fp32")
    a, b = tmp_path / "a.state", tmp_path / "b.state"
    assert run(model, "--ids", "-i", ids_arg(IDS[:5]), "-n", "0", "--state-out", a, "-q").returncode == 0
    assert run(model, "--ids", "-i", ids_arg(IDS[5:40]), "--state-in", a, "--state-out", b, "-n", "0", "-q").returncode == 0
    split = run(model, "--ids", "-i", ids_arg(IDS[40:]), "--state-in", b, "-t", "0", "-n", "24", "--ignore-eos", "-q")
    whole = run(model, "--ids", "-i", ids_arg(IDS), "-t", "0", "-n", "24", "--ignore-eos", "-q")
    assert split.returncode == 0 and split.stdout == whole.stdout
    # a state of another family is refused
    other = checkpoints.model_bin("m2tiny" if shape != "m2tiny" else "tiny", "fp32")
    one_line_error(run(other, "--state-in", b, "-n", "2"), 1, "another model")


def test_batch_matches_single_runs(checkpoints, tmp_path):
    """Batched decode of Mamba-2 (several slots through the decode step at once) gives each line
    what a run of its own gives."""
    model = checkpoints.model_bin("m2codestral", "fp32")
    prompts = ["Hello world", "Mamba is a", "The quick brown fox jumps over the lazy dog", "A"]
    f = tmp_path / "p.txt"
    f.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    objs = jsonl(run1(model, "-f", f, "-n", "10", "-t", "0", "-b", "3", "--ignore-eos", "-q", threads=2))
    assert len(objs) == len(prompts)
    for p, o in zip(prompts, objs):
        single = run1(model, "-i", p, "-n", "10", "-t", "0", "--ignore-eos", "-q")
        assert single.stdout.decode() == o["completion"] + "\n"


@pytest.mark.parametrize("shape", ["m2tiny", "m2codestral"])
def test_mamba2_layouts_identical(checkpoints, tmp_path, shape):
    """The original layout (mamba_ssm, pytorch_model.bin) and the Hugging Face one give one file."""
    require_torch()
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    export.export_model(checkpoints.folder(shape, "original"), str(a), "fp16")
    export.export_model(checkpoints.folder(shape, "hf"), str(b), "fp16")
    assert open(a, "rb").read() == open(b, "rb").read()


def test_header_fields(checkpoints):
    data = open(checkpoints.model_bin("m2codestral", "fp32"), "rb").read(256)
    version, arch = struct.unpack_from("<I", data, 8)[0], struct.unpack_from("<I", data, 60)[0]
    assert (version, arch) == (2, 2)
    d_model, n_layer, d_inner, d_state, d_conv, dt_rank = struct.unpack_from("<6i", data, 16)
    heads, head_dim, groups, chunk = struct.unpack_from("<4i", data, 104)
    dt_min, dt_max, mixer_eps = struct.unpack_from("<3f", data, 120)
    assert (d_model, n_layer, d_inner, d_state, d_conv, dt_rank) == (256, 4, 512, 32, 4, 0)
    assert (heads, head_dim, groups, chunk, dt_min, dt_max, mixer_eps) == (16, 32, 8, 256, 0.0, float("inf"), 0.0)
    assert struct.unpack_from("<i", data, 52)[0] == 0  # untied
    data = open(checkpoints.model_bin("falcon-tiny", "fp32"), "rb").read(256)
    assert struct.unpack_from("<I", data, 60)[0] == 3
    assert abs(struct.unpack_from("<f", data, 128)[0] - 1e-6) < 1e-12


def test_version_1_file_still_loads(checkpoints, tmp_path):
    """A Mamba-1 file written before the architecture field (version 1, zeros at 60 and 104..)."""
    data = bytearray(open(checkpoints.model_bin("tiny", "fp32"), "rb").read())
    assert data[104:256] == bytes(152)
    data[8:12] = struct.pack("<I", 1)
    data[60:64] = bytes(4)
    v1 = tmp_path / "v1.bin"
    v1.write_bytes(bytes(data))
    a = logits_of(v1, IDS[:20], tmp_path=tmp_path)
    b = logits_of(checkpoints.model_bin("tiny", "fp32"), IDS[:20], tmp_path=tmp_path)
    assert np.array_equal(a, b)


def _patched(src, tmp_path, name, edits):
    data = bytearray(open(src, "rb").read())
    for off, fmt, value in edits:
        struct.pack_into(fmt, data, off, value)
    p = tmp_path / name
    p.write_bytes(bytes(data))
    return p


@pytest.mark.parametrize("edits,words", [
    ([(60, "<I", 9)], ["unknown architecture 9"]),
    ([(8, "<I", 3)], ["format version 3", "reads versions 1 and 2", "newer"]),
    ([(104, "<i", 15)], ["n_heads 15 x head_dim 16 is not d_inner 128"]),
    ([(112, "<i", 3)], ["is not a multiple of n_groups 3"]),
    ([(112, "<i", 0)], ["n_groups = 0 is out of range"]),
    ([(120, "<f", 1.0), (124, "<f", 0.5)], ["dt_min 1, dt_max 0.5"]),
    ([(36, "<i", 4)], ["dt_rank = 4 is out of range"]),
])
def test_bad_mamba2_header(checkpoints, tmp_path, edits, words):
    p = _patched(checkpoints.model_bin("m2tiny", "fp32"), tmp_path, "bad.bin", edits)
    one_line_error(run(p, "-i", "x", "-n", "1"), 1, *words)


def test_bad_falcon_header(checkpoints, tmp_path):
    p = _patched(checkpoints.model_bin("falcon-tiny", "fp32"), tmp_path, "bad.bin", [(128, "<f", 0.0)])
    one_line_error(run(p, "-i", "x", "-n", "1"), 1, "mixer_eps")


def _copy(folder, dst):
    shutil.copytree(folder, dst)
    return dst


def _edit_config(d, **kw):
    cfg = json.load(open(d / "config.json"))
    for k, v in kw.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    json.dump(cfg, open(d / "config.json", "w"))


@pytest.mark.parametrize("edit,words", [
    (dict(num_heads=None), ["missing 'num_heads'"]),
    (dict(num_heads=7), ["num_heads 7 x head_dim 16 is not the inner width 128"]),
    (dict(n_groups=3), ["do not divide into n_groups 3"]),
    (dict(time_step_limit=[0.5, 0.1]), ["time_step_limit"]),
    (dict(rms_norm=False), ["rms_norm false"]),
    (dict(use_bias=True), ["use_bias"]),
    (dict(state_size=8), ["mixer.in_proj.weight has shape"]),
])
def test_bad_mamba2_hf_config(checkpoints, tmp_path, python_exe, edit, words):
    d = _copy(checkpoints.folder("m2tiny", "hf"), tmp_path / "c")
    _edit_config(d, **edit)
    expect_failure(python_exe, d, tmp_path / "o.bin", contains=words)


@pytest.mark.parametrize("ssm,words", [
    ({"d_ssm": 64}, ["d_ssm = 64 is not supported"]),
    ({"D_has_hdim": True}, ["D_has_hdim = True is not supported"]),
    ({"norm_before_gate": True}, ["norm_before_gate = True"]),
    ({"headdim": 48}, ["headdim 48 does not divide"]),
    ({"dt_limit": [0.0]}, ["dt_limit"]),
])
def test_bad_mamba2_original_config(checkpoints, tmp_path, python_exe, ssm, words):
    require_torch()
    d = _copy(checkpoints.folder("m2tiny", "original"), tmp_path / "c")
    cfg = json.load(open(d / "config.json"))
    cfg["ssm_cfg"].update(ssm)
    json.dump(cfg, open(d / "config.json", "w"))
    expect_failure(python_exe, d, tmp_path / "o.bin", contains=words)


def test_mamba2_weights_of_the_wrong_shape_or_family(checkpoints, tmp_path, python_exe):
    # D per channel (mamba_ssm's D_has_hdim) in an HF folder
    d = _copy(checkpoints.folder("m2tiny", "hf"), tmp_path / "a")
    tensors = {k: np.array(t.load()) for k, t in export.read_safetensors(str(d / "model.safetensors")).items()}  # copies: the file is rewritten
    tensors["backbone.layers.1.mixer.D"] = np.ones(128, np.float32)
    mc.write_safetensors(str(d / "model.safetensors"), list(tensors.items()))
    expect_failure(python_exe, d, tmp_path / "o.bin", contains=("D_has_hdim",))
    # Mamba-1 weights under a Mamba-2 config
    d = _copy(checkpoints.folder("tiny", "hf"), tmp_path / "b")
    _edit_config(d, model_type="mamba2", num_heads=8, head_dim=16, n_groups=1)
    expect_failure(python_exe, d, tmp_path / "o.bin", contains=("Mamba-1 tensor",))
    # a missing Mamba-2 tensor
    d = _copy(checkpoints.folder("m2tiny", "hf"), tmp_path / "c")
    del tensors["backbone.layers.0.mixer.dt_bias"]
    tensors["backbone.layers.1.mixer.D"] = np.ones(8, np.float32)
    mc.write_safetensors(str(d / "model.safetensors"), list(tensors.items()))
    expect_failure(python_exe, d, tmp_path / "o.bin", contains=("missing tensor backbone.layers.0.mixer.dt_bias",))


def test_falcon_tokenizer_pre_tokenizer(checkpoints, tmp_path, python_exe):
    """Falcon-Mamba's tokenizer.json splits with a Sequence of pre-tokenizers (Punctuation,
    ByteLevel, Digits, digit triples): export.py writes it (its encoding is tested in
    test_tokenizer.py against Hugging Face tokenizers), and names any variant the C tokenizer does
    not implement instead of writing a tokenizer that encodes differently."""
    d = _copy(checkpoints.folder("falcon-tiny", "hf"), tmp_path / "f")
    tok = json.load(open(d / "tokenizer.json"))
    punct = {"type": "Punctuation", "behavior": "Contiguous"}
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    digits = {"type": "Digits", "individual_digits": False}
    triples = {"type": "Split", "pattern": {"Regex": "[0-9][0-9][0-9]"}, "behavior": "Isolated", "invert": False}

    def export_with(pres):
        tok["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": pres}
        json.dump(tok, open(d / "tokenizer.json", "w"))
        return run_export(python_exe, d, tmp_path / "o.bin")

    rc, _, err = export_with([punct, byte_level, digits, triples])
    assert rc == 0, err
    refused = [
        ([dict(punct, behavior="Isolated"), byte_level, digits, triples], "Punctuation with behavior 'Isolated'"),
        ([punct, byte_level, dict(digits, individual_digits=True), triples], "Digits with individual_digits"),
        ([punct, byte_level, digits, dict(triples, pattern={"Regex": "[0-9]{1,3}"})], "only the isolated digit triples"),
        ([punct, dict(byte_level, add_prefix_space=True), digits, triples], "add_prefix_space in a sequence"),
        ([punct, byte_level, triples, digits], "Sequence[Punctuation, ByteLevel, Split, Digits]"),
        ([{"type": "Metaspace"}, byte_level], "Sequence[Metaspace, ByteLevel]"),
    ]
    for pres, words in refused:
        rc, _, err = export_with(pres)
        assert rc == 1 and words in err and "unsupported pre_tokenizer" in err and len(err.strip().splitlines()) == 1, err
