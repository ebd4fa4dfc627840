"""Quantized weights (q8_0, q4_0; model.h): the file's bytes, ./run against the numpy reference reading
the same quantized file, prefill against token by token, export.py --quantize, and bad inputs."""
import os
import struct
import subprocess

import numpy as np
import pytest

from conftest import PYTHON, REPO
from ref_numpy import RefModel, load_model_bin, quantize_acts
from test_run import PROMPT_IDS, logits_of, one_line_error, rel_l2, run

import export

QTYPES = ["q8_0", "q4_0"]
FAMILIES = ["tiny", "m2tiny", "falcon-tiny"]

# A quantized matrix multiplies its input quantized per block (model.h): an activation whose x * 127/amax
# lies within float32 rounding of a .5 tie can round one way in one computation and the other way in
# another that got x's last bits differently (the numpy reference in float64, prefill's GEMM against the
# decode step's dot products, another instruction set). Such a flip moves that product by dx * |w_q| * d
# and, through the recurrent state, the positions after it. So the logits agree to within 1e-4 at most
# positions, and overall within FLIP_L2: on these models and prompts the flips gave relative L2 up to
# 5e-4 against the reference (32 tokens) and 3e-3 between prefill and decode (600 tokens), while
# leaving the activations unquantized moves the logits by 1.4e-2 to 1.6e-2.
FLIP_L2 = 5e-3


def assert_agree_but_for_flips(got, want, what):
    assert got.shape == want.shape
    per_position = np.abs(got - want).max(axis=1)
    assert np.median(per_position) < 1e-4, (what, per_position)
    assert rel_l2(got, want) < FLIP_L2, what


def export_cli(*args):
    return subprocess.run([PYTHON, os.path.join(REPO, "export.py"), *map(str, args)], capture_output=True)


@pytest.mark.parametrize("dtype", QTYPES)
@pytest.mark.parametrize("shape", FAMILIES)
def test_matches_numpy_reference(checkpoints, tmp_path, shape, dtype):
    """Through prefill and through the decode step, against tests/ref_numpy.py (float64, the activations
    quantized in float32 as model.h says). Seen on 2026-12-02: max |diff| <= 2.5e-6 wherever no
    activation flipped (1e-4 before activations were quantized); with a flip, up to 7.1e-3, relative L2 5.2e-4."""
    model = checkpoints.model_bin(shape, dtype)
    ref = RefModel(model).forward(PROMPT_IDS)
    for flags in ([], ["--stepwise"]):
        assert_agree_but_for_flips(logits_of(model, PROMPT_IDS, *flags, tmp_path=tmp_path), ref, flags)


@pytest.mark.parametrize("dtype", QTYPES)
@pytest.mark.parametrize("shape", FAMILIES)
def test_prefill_equals_token_by_token(checkpoints, tmp_path, shape, dtype):
    model = checkpoints.model_bin(shape, dtype)
    ids = [(i * 7919) % 50000 + 5 for i in range(600)]  # two prefill chunks
    pre = logits_of(model, ids, tmp_path=tmp_path)
    step = logits_of(model, ids, "--stepwise", tmp_path=tmp_path)
    assert_agree_but_for_flips(pre, step, "prefill against decode")


ISA_BUILDS = {"run": "AVX-512 (VNNI where the machine has it)", "run-avx2": "AVX2, maddubs", "run-portable": "no AVX"}


@pytest.fixture(scope="module")
def isa_builds():
    """./run, ./run-avx2 and ./run-portable, built by make (they compile on any x86-64 machine; each runs
    the instruction set's own integer kernels for quantized matrices)."""
    r = subprocess.run(["make", "-s", *ISA_BUILDS], cwd=REPO, capture_output=True)
    if r.returncode != 0:
        pytest.skip("make %s failed: %s" % (" ".join(ISA_BUILDS), r.stderr.decode()[-300:]))
    return [os.path.join(REPO, b) for b in ISA_BUILDS]


@pytest.mark.parametrize("dtype", QTYPES)
@pytest.mark.parametrize("shape", FAMILIES)
def test_instruction_sets_agree(checkpoints, tmp_path, isa_builds, shape, dtype):
    """The AVX-512, AVX2 and portable kernels compute the same integer block sums; only the fp32 sums over
    blocks (and the flips those can cause later) differ."""
    model = checkpoints.model_bin(shape, dtype)
    first = None
    for exe in isa_builds:
        for flags in ([], ["--stepwise"]):
            got = logits_of(model, PROMPT_IDS, *flags, tmp_path=tmp_path, exe=exe)
            if first is None:
                first = got
            else:
                assert_agree_but_for_flips(got, first, (exe, flags))


def tiny_with_h(checkpoints, tmp_path, dtype, hv, rows):
    """The tiny Mamba-1 file edited so that the logits are lm_head rows times a chosen vector h: norm_eps
    1e-30, every layer's norm 0 (z = 0, so each layer adds exactly 0), the embedding row of token 100 all
    ones with scale 1 (RMS 1: h = norm_f exactly), norm_f = hv. rows: {lm_head (= embedding) row: (two
    blocks of 32 integers w_q, their two scales d)}. Returns the file and the token."""
    src = checkpoints.model_bin("tiny", dtype)
    offsets = {}
    h, _, _, layers = load_model_bin(src, offsets)
    assert h["tied"] == 1 and h["d_model"] == 64 and h["arch"] == 1
    data = bytearray(open(src, "rb").read())
    struct.pack_into("<f", data, 56, 1e-30)  # norm_eps: 1 + eps == 1 in float32
    for l in range(len(layers)):
        data[offsets["%d.norm" % l]:offsets["%d.norm" % l] + 64 * 4] = bytes(64 * 4)
    data[offsets["norm_f"]:offsets["norm_f"] + 256] = np.asarray(hv, np.float32).tobytes()
    quants, scales = offsets["embedding"]
    bb = 32 if dtype == "q8_0" else 16
    token = 100
    for r, (blocks, d) in {**rows, token: ([[1] * 32, [1] * 32], [1.0, 1.0])}.items():
        for b, w in enumerate(blocks):
            w = np.asarray(w)
            raw = w.astype(np.int8).view(np.uint8) if dtype == "q8_0" else (w[:16] + 8) | (w[16:] + 8) << 4
            at = quants + (r * 2 + b) * bb
            data[at:at + bb] = raw.astype(np.uint8).tobytes()
            struct.pack_into("<e", data, scales + (r * 2 + b) * 2, d[b])
    model = tmp_path / "hand.bin"
    model.write_bytes(bytes(data))
    return model, token


@pytest.mark.parametrize("dtype", QTYPES)
def test_hand_computed_activation_block(checkpoints, tmp_path, dtype):
    """h's first block has amax 127 (127/amax = 1, dx = 1) and values on .5 ties, its second block is zero
    (q = 0, dx = 0); two lm_head rows set by hand. The integer sums and scales give the logits exactly."""
    hv = np.zeros(64, np.float32)
    hv[:8] = [127, -127, 0.5, 1.5, 2.5, -0.5, -1.5, 3.25]
    hv[16:18] = [64.5, -63.5]
    q0 = [127, -127, 0, 2, 2, 0, -2, 3] + [0] * 8 + [64, -64] + [0] * 14  # by hand: ties to even
    q, dx = quantize_acts(hv)
    assert q[0].tolist() == q0 and not q[1].any() and dx.tolist() == [1.0, 0.0]
    row_a, row_b = 200, 201
    wa = [1] * 8 + [0] * 8 + [2, 1] + [0] * 14
    wb = ([-3, 2, 100, 5, -7, 9, 11, 1] if dtype == "q8_0" else [-3, 2, -8, 5, -7, 7, 6, 1]) + [0] * 8 + [-1, 3] + [0] * 14
    model, token = tiny_with_h(checkpoints, tmp_path, dtype, hv,
                               {row_a: ([wa, [5] * 32], [1.0, 1.0]), row_b: ([wb, [-8] * 32], [0.25, 2.0])})
    # row a: 127 - 127 + 0 + 2 + 2 + 0 - 2 + 3 + 2*64 - 64 = 69, times d * dx = 1; the zero block adds 0
    # row b (q8_0): -381 - 254 + 0 + 10 - 14 + 0 - 22 + 3 - 64 - 192 = -914, times 0.25
    # row b (q4_0): -381 - 254 + 0 + 10 - 14 + 0 - 12 + 3 - 64 - 192 = -904, times 0.25
    want_b = -914 * 0.25 if dtype == "q8_0" else -904 * 0.25
    assert sum(np.array(wb) * q0) * 0.25 == want_b and sum(np.array(wa) * q0) == 69
    for flags in ([], ["--stepwise"]):  # 16 tokens: prefill through the GEMM (x' = dx * q), and decode
        got = logits_of(model, [token] * 16, *flags, tmp_path=tmp_path)
        assert (got[:, row_a] == 69.0).all() and (got[:, row_b] == want_b).all(), flags


@pytest.mark.parametrize("dtype", QTYPES)
def test_activation_block_too_small_to_scale(checkpoints, tmp_path, dtype):
    """A block whose amax is so small that 127/amax overflows float32 (2e-38: 127/amax = 6.4e39) counts as
    amax == 0 (model.h): every q 0, so it adds exactly nothing, where an infinite 127/amax would make q and
    its sum garbage."""
    hv = np.zeros(64, np.float32)
    hv[0] = 1
    hv[32:64] = np.float32(2e-38) * np.where(np.arange(32) % 3 == 0, -1, 1)
    q, dx = quantize_acts(hv)
    assert q[0, 0] == 127 and not q[0, 1:].any() and not q[1].any()
    row = 200
    model, token = tiny_with_h(checkpoints, tmp_path, dtype, hv, {row: ([[1] + [0] * 31, [7] * 32], [1.0, 1.0])})
    want = np.float32(127) * (np.float32(1) / np.float32(127))
    for flags in ([], ["--stepwise"]):
        got = logits_of(model, [token] * 16, *flags, tmp_path=tmp_path)[:, row]
        assert (got == want).all(), (flags, got[0], want)


@pytest.mark.parametrize("dtype", QTYPES)
def test_activation_ties_of_the_float32_product(checkpoints, tmp_path, dtype):
    """amax 100: 127/amax is inexact, and six values x of the block make the float32 product x * (127/amax)
    exactly k + 0.5 while the exact product is not: model.h rounds the float32 product (to even), which
    for each of them gives the other integer than rounding the exact product (as a fused multiply-add
    would)."""
    inv = np.float32(127) / np.float32(100)
    ties = []
    for k in range(126):
        x0 = np.float32((k + 0.5) / float(inv))
        for x in (np.nextafter(x0, np.float32(-1)), x0, np.nextafter(x0, np.float32(200))):
            p = x * inv  # float32
            if p == k + 0.5 and np.rint(p) != np.rint(float(x) * float(inv)) and len(ties) < 6:
                ties.append(x)
    assert len(ties) == 6
    hv = np.zeros(64, np.float32)
    hv[0], hv[1:7] = 100, ties
    q, dx = quantize_acts(hv)
    row = 200
    model, token = tiny_with_h(checkpoints, tmp_path, dtype, hv, {row: ([[0] + [1] * 6 + [0] * 25, [1] * 32], [1.0, 1.0])})
    want = np.float32(q[0, 1:7].sum()) * dx[0]  # d = 1: (d * dx) * isum, one float32 product
    for flags in ([], ["--stepwise"]):  # prefill's GEMM sums the rounded dx * q: within rounding
        got = logits_of(model, [token] * 16, *flags, tmp_path=tmp_path)[:, row]
        assert (np.abs(got - want) <= 1e-6 * abs(want)).all(), (flags, got[0], want)


# ------------------------------------------------------------------------------------------------
# the quantizer and the file's bytes

def test_q8_0_hand_computed_block():
    # max |x| = 127: the scale is exactly 1, and the halves round to even
    x = np.zeros((1, 32), np.float32)
    x[0, :8] = [127, -127, 0.5, 1.5, 2.5, -0.5, -1.5, 3.25]
    quants, scales = export.quantize(x, export.DT_Q8_0)
    assert scales.tolist() == [[1.0]]
    assert quants[0, :8].view(np.int8).tolist() == [127, -127, 0, 2, 2, 0, -2, 3]
    assert not quants[0, 8:].any()


def test_q4_0_hand_computed_block():
    # the value of largest magnitude (-8) maps to q = -8 (nibble 0): scale 1; byte j = element j | element j+16 << 4
    x = np.zeros((1, 32), np.float32)
    x[0, 0], x[0, 1], x[0, 2], x[0, 16], x[0, 17], x[0, 18] = -8, 2.5, 7.6, 3, -0.5, 1.5
    quants, scales = export.quantize(x, export.DT_Q4_0)
    assert scales.tolist() == [[1.0]]
    # elements: -8 -> 0, 2.5 -> 2 -> 10, 7.6 -> 8 clamped to 7 -> 15, 3 -> 11, -0.5 -> 0 -> 8, 1.5 -> 2 -> 10; zeros -> 8
    assert quants[0, :3].tolist() == [0 | 11 << 4, 10 | 8 << 4, 15 | 10 << 4]
    assert quants[0, 3:].tolist() == [8 | 8 << 4] * 13


@pytest.mark.parametrize("dtype", QTYPES)
def test_round_trip_within_a_step(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((64, 256)) * np.exp(rng.uniform(-6, 3, (64, 1)))).astype(np.float32)
    x[3, 32:64] = 0  # an all-zero block: scale 0, quants 0
    dt = export.DTYPES[dtype]
    quants, scales = export.quantize(x, dt)
    back = export.dequantize(quants, scales, dt)
    step = np.repeat(np.abs(scales.astype(np.float32)), 32, axis=1)
    # q8_0: within half a step; q4_0: also, but the positive end clamps at 7 (a full step)
    assert (np.abs(back - x) <= step * (0.5 if dtype == "q8_0" else 1.0) * (1 + 1e-6)).all()
    assert (back[3, 32:64] == 0).all() and scales[3, 1] == 0


@pytest.mark.parametrize("dtype", QTYPES)
def test_file_layout_of_the_embedding(checkpoints, dtype):
    """The embedding is the first tensor: its quants at weights_offset, its scales after them at the next multiple
    of 64; block b of row r at (r * nb + b) * block bytes, its scale at (r * nb + b) * 2 (model.h)."""
    model = checkpoints.model_bin("tiny", dtype)
    data = open(model, "rb").read()
    D, V, dt = struct.unpack_from("<i", data, 16)[0], struct.unpack_from("<i", data, 40)[0], struct.unpack_from("<i", data, 48)[0]
    assert dt == export.DTYPES[dtype]
    w_off = struct.unpack_from("<Q", data, 80)[0]
    src = export.load_tensors(checkpoints.folder("tiny", "hf"))["backbone.embeddings.weight"]
    emb = export.raw_to_f32(src.load(), src.kind)
    nb, bb = D // 32, 32 if dtype == "q8_0" else 16
    s_off = w_off + (V * nb * bb + 63) // 64 * 64
    for r, b in [(0, 0), (7, 1), (V - 1, nb - 1)]:
        x = emb[r, 32 * b:32 * b + 32].astype(np.float32)
        if dtype == "q8_0":
            d = np.float16(np.abs(x).max() / 127)
            q = np.clip(np.rint(x / np.float32(d)), -127, 127).astype(np.int8).view(np.uint8)
        else:
            d = np.float16(x[np.abs(x).argmax()] / -8)
            u = (np.clip(np.rint(x / np.float32(d)), -8, 7) + 8).astype(np.uint8)
            q = u[:16] | (u[16:] << 4)
        blk = r * nb + b
        assert data[s_off + 2 * blk:s_off + 2 * blk + 2] == d.tobytes()
        assert data[w_off + blk * bb:w_off + (blk + 1) * bb] == q.tobytes()


@pytest.mark.parametrize("dtype", QTYPES)
def test_quantize_equals_direct_export(checkpoints, tmp_path, dtype):
    """--quantize from an fp32 model.bin writes the same bytes as exporting the checkpoint with --dtype."""
    out = tmp_path / "q.bin"
    r = export_cli("--quantize", checkpoints.model_bin("falcon-tiny", "fp32"), out, "--dtype", dtype)
    assert r.returncode == 0, r.stderr.decode()
    assert open(out, "rb").read() == open(checkpoints.model_bin("falcon-tiny", dtype), "rb").read()


def test_quantize_bundled_fp16_equals_direct_export(tmp_path):
    """The bundled model.bin is fp16, and its checkpoint's weights are fp16 values: quantizing either gives the same file."""
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    tiny = os.path.join(REPO, "models", "tiny")
    assert export_cli("--quantize", os.path.join(tiny, "model.bin"), a, "--dtype", "q4_0").returncode == 0
    r = export_cli(os.path.join(tiny, "hf"), b, "--dtype", "q4_0", "--tokenizer", os.path.join(tiny, "tokenizer.model"))
    assert r.returncode == 0, r.stderr.decode()
    assert open(a, "rb").read() == open(b, "rb").read()


def test_file_sizes(checkpoints):
    sizes = {dt: os.path.getsize(checkpoints.model_bin("130m", dt)) for dt in ["fp16"] + QTYPES}
    assert 0.52 < sizes["q8_0"] / sizes["fp16"] < 0.56  # 8.5 bits a weight against 16, dt_proj at 16
    assert 0.28 < sizes["q4_0"] / sizes["fp16"] < 0.32  # 4.5 bits


# ------------------------------------------------------------------------------------------------
# bad inputs

@pytest.mark.parametrize("frac", [0.3, 0.7, 0.999])
def test_truncated_quantized_file(checkpoints, tmp_path, frac):
    src = checkpoints.model_bin("tiny", "q4_0")
    p = tmp_path / "trunc.bin"
    p.write_bytes(open(src, "rb").read()[:int(os.path.getsize(src) * frac)])
    one_line_error(run(p, "-n", "2"), 1, "truncated")


@pytest.mark.parametrize("dtype", QTYPES)
@pytest.mark.parametrize("bits", [0x7c00, 0xfe00])  # +inf, NaN
def test_corrupt_scale(checkpoints, tmp_path, dtype, bits):
    """A non-finite scale (export.py never writes one) is refused at load, with where it is."""
    data = bytearray(open(checkpoints.model_bin("tiny", dtype), "rb").read())
    D, V = struct.unpack_from("<i", data, 16)[0], struct.unpack_from("<i", data, 40)[0]
    s_off = (V * D // (1 if dtype == "q8_0" else 2) + 63) // 64 * 64  # the embedding's scales, in the weights
    struct.pack_into("<H", data, struct.unpack_from("<Q", data, 80)[0] + s_off + 2 * 7, bits)
    p = tmp_path / "scale.bin"
    p.write_bytes(bytes(data))
    one_line_error(run(p, "-n", "2"), 1, "scale at byte %d of the weights is infinite or NaN" % (s_off + 14))


@pytest.mark.parametrize("dtype,words", [(5, ["dtype = 5 is out of range"]), (-1, ["dtype = -1"])])
def test_unknown_dtype(checkpoints, tmp_path, dtype, words):
    data = bytearray(open(checkpoints.model_bin("tiny", "q8_0"), "rb").read())
    struct.pack_into("<i", data, 48, dtype)
    p = tmp_path / "dt.bin"
    p.write_bytes(bytes(data))
    one_line_error(run(p, "-n", "2"), 1, *words)


def test_quantized_file_whose_rows_are_not_whole_blocks(checkpoints, tmp_path):
    data = bytearray(open(checkpoints.model_bin("tiny", "q8_0"), "rb").read())
    struct.pack_into("<i", data, 16, 48)  # d_model 48
    p = tmp_path / "d48.bin"
    p.write_bytes(bytes(data))
    one_line_error(run(p, "-n", "2"), 1, "q8_0 needs d_model (48)")


@pytest.mark.parametrize("args,words", [
    (["--dtype", "nonsense"], ["invalid choice: 'nonsense'"]),
    (["--quantize", "--dtype", "q8_0"], ["expected IN.bin OUT.bin"]),
])
def test_bad_export_arguments(tmp_path, args, words):
    r = export_cli(*args, *(["x", str(tmp_path / "o.bin")] if "--quantize" not in args else []))
    err = r.stderr.decode()
    assert r.returncode == 1 and err.count("\n") == 1, err
    for w in words:
        assert w in err, err


def test_quantize_refuses_a_quantized_or_foreign_file(checkpoints, tmp_path):
    r = export_cli("--quantize", checkpoints.model_bin("tiny", "q8_0"), tmp_path / "o.bin", "--dtype", "q4_0")
    assert r.returncode == 1 and "q8_0 already" in r.stderr.decode()
    foreign = tmp_path / "foreign.bin"
    foreign.write_bytes(os.urandom(5000))
    r = export_cli("--quantize", foreign, tmp_path / "o.bin", "--dtype", "q4_0")
    assert r.returncode == 1 and "not a model.bin" in r.stderr.decode()
    assert not os.path.exists(tmp_path / "o.bin")


def test_runcuda_takes_quantized(checkpoints):
    """./runcuda runs q8_0 and q4_0 files (tests/gpu_check.sh compares it with ./run on a GPU machine);
    without a GPU its only complaint is the missing device, not the file's type."""
    runcuda = os.path.join(REPO, "runcuda")
    if not os.path.exists(runcuda):
        pytest.skip("./runcuda not built (make runcuda)")
    for dtype in QTYPES:
        r = subprocess.run([runcuda, checkpoints.model_bin("tiny", dtype), "-n", "2", "-q"], capture_output=True,
                           timeout=120)
        if r.returncode != 0:
            one_line_error(r, 1, "no CUDA device")
