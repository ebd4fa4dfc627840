#!/usr/bin/env python3
"""export.py: converts a Mamba checkpoint (Mamba-1, Mamba-2 or Falcon-Mamba) into model.bin (format:
the comment in model.h).

    python3 export.py CHECKPOINT_DIR_OR_REPO_ID OUT.bin [--dtype fp32|fp16|bf16|q8_0|q4_0] [--tokenizer PATH]
    python3 export.py --quantize IN.bin OUT.bin --dtype q8_0|q4_0   (from an fp32/fp16/bf16 model.bin)
    python3 export.py --tokenizer-only PATH OUT.bin

Reads either checkpoint layout:
  original (state-spaces/mamba-*, state-spaces/mamba2-*): config.json (d_model, n_layer, ssm_cfg with
      "layer": "Mamba1" or "Mamba2", ...) + pytorch_model.bin
  Hugging Face (state-spaces/mamba-*-hf, mistralai/Mamba-Codestral-7B-v0.1, tiiuae/falcon-mamba-7b):
      config.json (model_type "mamba", "mamba2" or "falcon_mamba") + model.safetensors,
      sharded model-0000N-of-0000M.safetensors + model.safetensors.index.json, or pytorch_model.bin
The tokenizer comes from the folder's tokenizer.json (byte-level BPE) or tokenizer.model
(SentencePiece), or from --tokenizer PATH.

Only numpy is needed. pytorch_model.bin is read with a restricted unpickler that knows only the
tensor-rebuild calls and storage types (no torch import, no arbitrary code). Tensors are streamed
one at a time (memory-mapped where possible), so exporting an 11 GB checkpoint does not hold two
copies of it. Every failure is one line on stderr and exit code 1.
"""
import argparse
import collections
import io
import json
import math
import os
import pickle
import struct
import sys
import zipfile
import zlib

import numpy as np

MAGIC = b"MAMBABIN"
VERSION = 2
HEADER_BYTES = 256
ALIGN = 64
PAGE = 4096
DTYPES = {"fp32": 0, "fp16": 1, "bf16": 2, "q8_0": 3, "q4_0": 4}
DTYPE_BYTES = {0: 4, 1: 2, 2: 2}
DT_Q8_0, DT_Q4_0 = 3, 4
QBLOCK = 32  # values per block of a quantized row (one fp16 scale each)
ARCHS = {"mamba1": 1, "mamba2": 2, "falcon_mamba": 3}
ARCH_NAMES = {"mamba1": "Mamba-1", "mamba2": "Mamba-2", "falcon_mamba": "Falcon-Mamba"}
TOK_MAGIC = b"TOKN"
TOK_VERSION = 1
CHUNK_BYTES = 64 << 20  # convert and write big tensors in pieces of about this many source bytes


class ExportError(Exception):
    """A failure with a one-line message for the user."""


def align(n, a):
    return (n + a - 1) // a * a


# ---------------------------------------------------------------------------------------------
# Lazy tensors: shape + source dtype + a loader; loading gives a numpy array (bf16 as uint16 bits)

# kind -> numpy dtype of the raw data
RAW_DTYPES = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
FLOAT_KINDS = ("F32", "F16", "BF16", "F64")


class LazyTensor:
    def __init__(self, name, shape, kind, loader, source):
        self.name, self.shape, self.kind, self._loader, self.source = name, tuple(shape), kind, loader, source

    def load(self):
        """The raw array (may be a read-only memory map); bf16 comes as uint16 bits."""
        a = self._loader()
        if a.shape != self.shape:
            a = a.reshape(self.shape)
        return a


def raw_to_f32(a, kind):
    if kind == "F32":
        return np.asarray(a, dtype=np.float32)
    if kind == "BF16":
        return (np.asarray(a, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)
    if kind in ("F16", "F64"):
        return np.asarray(a).astype(np.float32)
    raise ExportError("unsupported tensor dtype %s" % kind)


def f32_to_bf16_bits(a):
    """fp32 -> bf16 bits, round to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    r = (u >> np.uint32(16)) & np.uint32(1)
    r += np.uint32(0x7FFF)
    r += u
    out = (r >> np.uint32(16)).astype(np.uint16)
    nan = np.isnan(a)
    if nan.any():
        out[nan] = ((u[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return out



def quantize(x, dtype):
    """x [rows, cols] fp32, cols a multiple of QBLOCK -> (quants [rows, bytes a row] uint8, scales [rows, cols/QBLOCK]
    fp16), as model.h describes. The scale is rounded to fp16 first and the values divided by that rounded scale,
    so that scale * q is what the engines compute; q is rounded half to even (np.rint)."""
    rows, cols = x.shape
    b = np.asarray(x, dtype=np.float32).reshape(rows, cols // QBLOCK, QBLOCK)
    if dtype == DT_Q8_0:  # q in [-127, 127], scale = max |x| / 127
        m = np.abs(b).max(axis=-1)
        d = (m.astype(np.float64) / 127).astype(np.float16)
    else:  # q4_0: q in [-8, 7]; the value of largest magnitude maps to -8 exactly, scale = it / -8
        m = np.take_along_axis(b, np.abs(b).argmax(axis=-1)[..., None], axis=-1)[..., 0]
        d = (m.astype(np.float64) / -8).astype(np.float16)
    if not np.isfinite(d).all():
        raise ExportError("a block's scale is beyond the fp16 range (max |x| = %g)" % float(np.abs(b).max()))
    df = d.astype(np.float32)[..., None]
    q = np.rint(np.divide(b, df, out=np.zeros_like(b), where=df != 0))
    if dtype == DT_Q8_0:
        quants = np.clip(q, -127, 127).astype(np.int8).view(np.uint8)
    else:  # byte j of a block: element j in the low nibble, element j + 16 in the high one
        u = (np.clip(q, -8, 7) + 8).astype(np.uint8)
        quants = u[..., :QBLOCK // 2] | (u[..., QBLOCK // 2:] << 4)
    return quants.reshape(rows, -1), d.astype("<f2")


def dequantize(quants, scales, dtype):
    """The inverse of quantize: [rows, cols] fp32 from its quants and scales."""
    rows, nb = scales.shape
    q = quants.reshape(rows, nb, -1)
    if dtype == DT_Q8_0:
        v = q.view(np.int8).astype(np.float32)
    else:
        v = np.concatenate([(q & 15).astype(np.float32), (q >> 4).astype(np.float32)], axis=-1) - 8
    return (v * scales.astype(np.float32)[..., None]).reshape(rows, -1)


def is_quantized(name):
    """Whether a quantized file quantizes this "mat" (model.h): the embedding and lm_head, in_proj, out_proj and
    Mamba-1's x_proj (measured harmless: README). dt_proj stays fp16: its rows (dt_rank long) are not whole blocks
    and it is 1-2% of the bytes."""
    return not name.endswith("dt_proj.weight")


def tensor_bytes(kind, shape, dtype, name):
    """Bytes of one tensor in the file; a quantized one: the quants, padding to 64, then the scales."""
    n = int(np.prod(shape, dtype=np.int64))
    if kind == "vec":
        return 4 * n
    if dtype < DT_Q8_0:
        return n * DTYPE_BYTES[dtype]
    if not is_quantized(name):
        return n * 2
    rows, cols = shape
    return align(rows * cols // (2 if dtype == DT_Q4_0 else 1), ALIGN) + rows * (cols // QBLOCK) * 2

# ---------------------------------------------------------------------------------------------
# safetensors

def read_safetensors(path):
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ExportError("%s: not a safetensors file (shorter than 8 bytes)" % path)
            (n,) = struct.unpack("<Q", head)
            if n > size - 8 or n > (100 << 20):
                raise ExportError("%s: corrupt safetensors header length %d (file is %d bytes)" % (path, n, size))
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as e:
        raise ExportError("%s: %s" % (path, e.strerror or e))
    except (UnicodeDecodeError, ValueError):
        raise ExportError("%s: corrupt safetensors header (not JSON)" % path)
    if not isinstance(header, dict):
        raise ExportError("%s: corrupt safetensors header" % path)
    start = 8 + n
    avail = size - start
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            kind = info["dtype"]
            shape = [int(d) for d in info["shape"]]
            begin, end = (int(x) for x in info["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ExportError("%s: corrupt safetensors entry for %s" % (path, name))
        if kind not in RAW_DTYPES:
            raise ExportError("%s: tensor %s has unsupported dtype %s" % (path, name, kind))
        if any(d < 0 for d in shape):
            raise ExportError("%s: tensor %s has a negative dimension %s" % (path, name, shape))
        nbytes = int(np.prod(shape, dtype=np.int64)) * RAW_DTYPES[kind].itemsize
        if not (0 <= begin <= end <= avail) or end - begin != nbytes:
            raise ExportError("%s: tensor %s has bad data_offsets [%d, %d] (shape %s %s needs %d bytes, %d available)"
                              % (path, name, begin, end, shape, kind, nbytes, avail))

        def loader(path=path, off=start + begin, kind=kind, shape=tuple(shape), nbytes=nbytes):
            if nbytes == 0:
                return np.zeros(shape, RAW_DTYPES[kind])
            return np.memmap(path, dtype=RAW_DTYPES[kind], mode="r", offset=off, shape=shape)

        tensors[name] = LazyTensor(name, shape, kind, loader, path)
    return tensors


# ---------------------------------------------------------------------------------------------
# pytorch_model.bin (zip) with a restricted unpickler

STORAGE_KINDS = {
    "FloatStorage": "F32", "HalfStorage": "F16", "BFloat16Storage": "BF16", "DoubleStorage": "F64",
    "LongStorage": "I64", "IntStorage": "I32", "ShortStorage": "I16", "CharStorage": "I8",
    "ByteStorage": "U8", "BoolStorage": "BOOL",
}


class _StorageType:
    def __init__(self, kind):
        self.kind = kind


class _Storage:
    def __init__(self, reader, key, kind, numel):
        self.reader, self.key, self.kind, self.numel = reader, key, kind, numel


class _TensorRef:
    def __init__(self, storage, offset, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not isinstance(storage, _Storage):
        raise ExportError("corrupt checkpoint: a tensor without a storage")
    try:
        size = tuple(int(s) for s in size)
        stride = tuple(int(s) for s in stride)
        storage_offset = int(storage_offset)
    except (TypeError, ValueError):
        raise ExportError("corrupt checkpoint: bad tensor size/stride")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *rest):
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f, path, reader):
        super().__init__(f)
        self.path, self.reader, self.storages = path, reader, {}

    def find_class(self, module, name):
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch._utils" and name in ("_rebuild_parameter", "_rebuild_parameter_with_state"):
            return _rebuild_parameter
        if module == "torch" and name in STORAGE_KINDS:
            return _StorageType(STORAGE_KINDS[name])
        raise ExportError("%s: refusing to unpickle %s.%s: only tensor data is allowed "
                          "(the file may be malicious)" % (self.path, module, name))

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] not in ("storage", b"storage") \
                or not isinstance(pid[1], _StorageType):
            raise ExportError("%s: unsupported persistent id in the pickle" % self.path)
        key = pid[2].decode() if isinstance(pid[2], bytes) else str(pid[2])
        numel = int(pid[4])
        if key not in self.storages:
            self.storages[key] = _Storage(self.reader, key, pid[1].kind, numel)
        return self.storages[key]


class _ZipReader:
    def __init__(self, path, zf, prefix):
        self.path, self.zf, self.prefix = path, zf, prefix

    def storage_array(self, st):
        name = "%s/data/%s" % (self.prefix, st.key)
        dt = RAW_DTYPES[st.kind]
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise ExportError("%s: missing zip entry %s" % (self.path, name))
        need = st.numel * dt.itemsize
        if info.file_size < need:
            raise ExportError("%s: zip entry %s holds %d bytes, its storage needs %d"
                              % (self.path, name, info.file_size, need))
        if need == 0:
            return np.zeros(0, dt)
        if info.compress_type == zipfile.ZIP_STORED:
            with open(self.path, "rb") as f:
                f.seek(info.header_offset)
                lh = f.read(30)
            if len(lh) == 30 and lh[:4] == b"PK\x03\x04":
                nlen, xlen = struct.unpack("<HH", lh[26:30])
                off = info.header_offset + 30 + nlen + xlen
                if off + need <= os.path.getsize(self.path):
                    return np.memmap(self.path, dtype=dt, mode="r", offset=off, shape=(st.numel,))
        try:  # a compressed or misplaced entry: zipfile checks its header, sizes and CRC
            data = self.zf.read(name)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError) as e:
            raise ExportError("%s: corrupt zip entry %s: %s" % (self.path, name, str(e).splitlines()[0] if str(e) else type(e).__name__))
        if len(data) < need:
            raise ExportError("%s: zip entry %s holds %d bytes, its storage needs %d" % (self.path, name, len(data), need))
        return np.frombuffer(data, dtype=dt, count=st.numel)


def read_torch_zip(path):
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ExportError("%s: %s" % (path, e.strerror or e))
    if magic != b"PK\x03\x04":
        if magic[:1] == b"\x80":
            raise ExportError("%s: legacy (pre-zip) torch.save format is not supported; re-save it with "
                              "torch >= 1.6 or convert it to safetensors" % path)
        raise ExportError("%s: not a PyTorch zip checkpoint" % path)
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, NotImplementedError, ValueError, EOFError) as e:  # NotImplementedError: a version past zipfile's
        raise ExportError("%s: corrupt zip: %s" % (path, str(e).splitlines()[0] if str(e) else type(e).__name__))
    pkls = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
    if len(pkls) != 1:
        raise ExportError("%s: no data.pkl in the zip: not a torch.save checkpoint" % path)
    prefix = pkls[0][: -len("/data.pkl")] if "/" in pkls[0] else ""
    reader = _ZipReader(path, zf, prefix)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(zf.read(pkls[0])), path, reader).load()
    except ExportError:
        raise
    except Exception as e:  # any malformed pickle
        raise ExportError("%s: cannot read data.pkl: %s" % (path, str(e).splitlines()[0] if str(e) else type(e).__name__))
    if isinstance(obj, dict):
        for k in ("state_dict", "model"):
            if k in obj and isinstance(obj[k], dict) and not any(isinstance(v, _TensorRef) for v in obj.values()):
                obj = obj[k]
    if not isinstance(obj, dict):
        raise ExportError("%s: the pickle is not a state dict" % path)
    tensors = {}
    for name, t in obj.items():
        if not isinstance(t, _TensorRef):
            continue
        st = t.storage
        if len(t.size) != len(t.stride) or any(s < 0 for s in t.size) or any(s < 0 for s in t.stride) or t.offset < 0:
            raise ExportError("%s: tensor %s has a bad size/stride" % (path, name))
        if all(s > 0 for s in t.size):
            last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
            if last >= st.numel:
                raise ExportError("%s: tensor %s reaches past its storage (%d >= %d elements)" % (path, name, last, st.numel))

        def loader(t=t, st=st):
            base = st.reader.storage_array(st)
            if any(s == 0 for s in t.size):
                return np.zeros(t.size, base.dtype)
            item = base.dtype.itemsize
            v = np.lib.stride_tricks.as_strided(base[t.offset:], shape=t.size, strides=tuple(s * item for s in t.stride))
            contiguous = list(t.stride) == [int(np.prod(t.size[i + 1:], dtype=np.int64)) for i in range(len(t.size))]
            return v if contiguous else np.ascontiguousarray(v)

        tensors[str(name)] = LazyTensor(str(name), t.size, st.kind, loader, path)
    return tensors


# ---------------------------------------------------------------------------------------------
# configs

def _read_json(path, what):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ExportError("%s: missing %s" % (path, what))
    except OSError as e:
        raise ExportError("%s: %s" % (path, e.strerror or e))
    except ValueError as e:
        raise ExportError("%s: not valid JSON (%s)" % (path, e))


def _int(cfg, key, default=None, where="config.json"):
    v = cfg.get(key, default)
    if v is None:
        raise ExportError("%s: missing %r" % (where, key))
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or v <= 0:
        raise ExportError("%s: %r must be a positive integer, not %r" % (where, key, v))
    return int(v)


def _float(cfg, key, default, where):
    v = cfg.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise ExportError("%s: %r must be a number, not %r" % (where, key, v))
    return float(v)


def _dt_limit(v, where, key):
    """mamba_ssm's dt_limit / transformers' time_step_limit: (min, max) clamping dt after the softplus."""
    if not isinstance(v, (list, tuple)) or len(v) != 2 or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v) \
            or not (0 <= v[0] <= v[1]):
        raise ExportError("%s: %r must be [min, max] with 0 <= min <= max, not %r" % (where, key, v))
    return float(v[0]), float(v[1])


def _mamba2_dims(spec, d_model, d_inner, n_heads, head_dim, n_groups, path):
    if n_heads * head_dim != d_inner:
        raise ExportError("%s: num_heads %d x head_dim %d is not the inner width %d (d_ssm < d_inner, mamba_ssm's "
                          "gated MLP part, is not supported)" % (path, n_heads, head_dim, d_inner))
    if n_heads % n_groups != 0:
        raise ExportError("%s: the %d heads do not divide into n_groups %d" % (path, n_heads, n_groups))
    spec.update(n_heads=n_heads, head_dim=head_dim, n_groups=n_groups)


def parse_config(folder):
    """The checkpoint's architecture and shapes: spec["arch"] is mamba1, mamba2 or falcon_mamba."""
    path = os.path.join(folder, "config.json")
    if not os.path.exists(path):
        raise ExportError("%s: missing config.json (not a Mamba checkpoint folder)" % folder)
    cfg = _read_json(path, "config.json")
    if not isinstance(cfg, dict):
        raise ExportError("%s: not a JSON object" % path)
    # the header fields of the other families stay 0 (model.h)
    spec = dict(n_heads=0, head_dim=0, n_groups=0, chunk_size=0, dt_min=0.0, dt_max=0.0, mixer_eps=0.0)
    dt_rank = "auto"
    if "model_type" in cfg:
        mt = cfg["model_type"]
        arch = {"mamba": "mamba1", "mamba2": "mamba2", "falcon_mamba": "falcon_mamba"}.get(mt)
        if arch is None:
            raise ExportError("%s: unsupported architecture model_type %r (this program runs \"mamba\", \"mamba2\" "
                              "and \"falcon_mamba\")" % (path, mt))
        spec["layout"] = "hf"
        d_model = _int(cfg, "hidden_size", where=path)
        n_layer = _int(cfg, "num_hidden_layers", cfg.get("n_layer"), where=path)
        d_state = _int(cfg, "state_size", 128 if arch == "mamba2" else 16, where=path)
        expand = _int(cfg, "expand", 2, where=path)
        d_conv = _int(cfg, "conv_kernel", 4, where=path)
        vocab_rows = _int(cfg, "vocab_size", where=path)
        vocab_size = vocab_rows
        eps = _float(cfg, "layer_norm_epsilon", 1e-5, path)
        if cfg.get("use_bias", False):
            raise ExportError("%s: use_bias true (biases in in_proj/out_proj) is not supported" % path)
        conv_bias = bool(cfg.get("use_conv_bias", True))
        tie = bool(cfg.get("tie_word_embeddings", arch != "mamba2"))
        act = cfg.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise ExportError("%s: unsupported hidden_act %r (only silu)" % (path, act))
        if arch == "mamba2":
            d_inner = int(expand * d_model)
            _mamba2_dims(spec, d_model, d_inner, _int(cfg, "num_heads", where=path), _int(cfg, "head_dim", 64, where=path),
                         _int(cfg, "n_groups", 1, where=path), path)
            spec["chunk_size"] = _int(cfg, "chunk_size", 256, where=path)
            spec["dt_min"], spec["dt_max"] = _dt_limit(cfg.get("time_step_limit", [0.0, math.inf]), path, "time_step_limit")
            if not cfg.get("rms_norm", True):
                raise ExportError("%s: rms_norm false (the gated norm without normalisation) is not supported" % path)
        else:
            d_inner = _int(cfg, "intermediate_size", expand * d_model, where=path)
            dt_rank = cfg.get("time_step_rank", "auto")
            if arch == "falcon_mamba":
                spec["mixer_eps"] = _float(cfg, "mixer_rms_eps", 1e-6, path)
                if not (0 < spec["mixer_eps"] < 1):
                    raise ExportError("%s: bad mixer_rms_eps %r" % (path, spec["mixer_eps"]))
    elif "d_model" in cfg:
        spec["layout"] = "original"
        ssm = cfg.get("ssm_cfg") or {}
        if not isinstance(ssm, dict):
            raise ExportError("%s: ssm_cfg must be an object" % path)
        layer = ssm.get("layer", "Mamba1")
        arch = {"Mamba1": "mamba1", "Mamba2": "mamba2"}.get(layer)
        if arch is None:
            raise ExportError("%s: unsupported architecture ssm_cfg.layer %r (this program runs Mamba1 and Mamba2)" % (path, layer))
        if cfg.get("attn_layer_idx"):
            raise ExportError("%s: hybrid models with attention layers (attn_layer_idx) are not supported" % path)
        if cfg.get("d_intermediate", 0):
            raise ExportError("%s: models with MLP blocks (d_intermediate > 0) are not supported" % path)
        if not cfg.get("rms_norm", True):
            raise ExportError("%s: rms_norm false (LayerNorm) is not supported" % path)
        if ssm.get("bias", False):
            raise ExportError("%s: ssm_cfg.bias true (biases in in_proj/out_proj) is not supported" % path)
        where = path + " ssm_cfg"
        d_model = _int(cfg, "d_model", where=path)
        n_layer = _int(cfg, "n_layer", where=path)
        d_state = _int(ssm, "d_state", 128 if arch == "mamba2" else 16, where=where)
        d_conv = _int(ssm, "d_conv", 4, where=where)
        expand = _int(ssm, "expand", 2, where=where)
        d_inner = expand * d_model
        vocab_size = _int(cfg, "vocab_size", where=path)
        mult = _int(cfg, "pad_vocab_size_multiple", 16 if arch == "mamba2" else 8, where=path)
        vocab_rows = align(vocab_size, mult)
        eps = _float(cfg, "norm_epsilon", 1e-5, path)
        conv_bias = bool(ssm.get("conv_bias", True))
        tie = bool(cfg.get("tie_embeddings", True))
        if arch == "mamba2":
            # mamba_ssm's Mamba2 options that change the math: implemented (ngroups, dt_limit) or refused by name
            for key, ok in (("d_ssm", lambda v: v is None or v == d_inner), ("D_has_hdim", lambda v: not v),
                            ("norm_before_gate", lambda v: not v), ("rmsnorm", lambda v: v is None or v)):
                if key in ssm and not ok(ssm[key]):
                    raise ExportError("%s: %s = %r is not supported (this program runs Mamba2 with d_ssm = d_inner, "
                                      "D_has_hdim false, norm_before_gate false, rmsnorm true)" % (where, key, ssm[key]))
            if ssm.get("activation", "silu") not in ("silu", "swish"):
                raise ExportError("%s: unsupported activation %r (only silu)" % (where, ssm.get("activation")))
            # mamba_ssm builds the gated norm with eps 1e-5 whatever norm_epsilon says: one eps in model.bin
            if eps != 1e-5:
                raise ExportError("%s: norm_epsilon %g differs from the gated norm's fixed 1e-5; not supported" % (path, eps))
            headdim = _int(ssm, "headdim", 64, where=where)
            if d_inner % headdim != 0:
                raise ExportError("%s: headdim %d does not divide the inner width %d" % (where, headdim, d_inner))
            _mamba2_dims(spec, d_model, d_inner, d_inner // headdim, headdim, _int(ssm, "ngroups", 1, where=where), path)
            spec["chunk_size"] = _int(ssm, "chunk_size", 256, where=where)
            spec["dt_min"], spec["dt_max"] = _dt_limit(ssm.get("dt_limit", [0.0, math.inf]), where, "dt_limit")
        else:
            dt_rank = ssm.get("dt_rank", "auto")
    else:
        raise ExportError("%s: unknown architecture (neither model_type nor d_model in config.json)" % path)
    if arch == "mamba2":
        dt_rank = 0
    elif dt_rank == "auto":
        dt_rank = math.ceil(d_model / 16)
    elif isinstance(dt_rank, bool) or not isinstance(dt_rank, int) or dt_rank <= 0:
        raise ExportError("%s: bad dt_rank/time_step_rank %r" % (path, dt_rank))
    if not (eps > 0 and math.isfinite(eps)):
        raise ExportError("%s: bad norm epsilon %r" % (path, eps))
    spec.update(arch=arch, d_model=d_model, n_layer=n_layer, d_inner=d_inner, d_state=d_state, d_conv=d_conv,
                dt_rank=int(dt_rank), vocab_rows=vocab_rows, vocab_size=vocab_size, norm_eps=eps,
                conv_bias=conv_bias, tie=tie)
    return spec


# ---------------------------------------------------------------------------------------------
# loading the weights of a folder

def load_tensors(folder):
    st = os.path.join(folder, "model.safetensors")
    idx = os.path.join(folder, "model.safetensors.index.json")
    pt = os.path.join(folder, "pytorch_model.bin")
    if os.path.exists(st):
        return read_safetensors(st)
    if os.path.exists(idx):
        index = _read_json(idx, "model.safetensors.index.json")
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wm, dict) or not wm:
            raise ExportError("%s: no weight_map" % idx)
        tensors = {}
        for shard in sorted(set(wm.values())):
            if not isinstance(shard, str) or os.path.basename(shard) != shard:
                raise ExportError("%s: bad shard name %r" % (idx, shard))
            p = os.path.join(folder, shard)
            if not os.path.exists(p):
                raise ExportError("%s: missing shard %s (named in model.safetensors.index.json)" % (p, shard))
            for name, t in read_safetensors(p).items():
                if name in tensors:
                    raise ExportError("%s: tensor %s appears in two shards" % (folder, name))
                tensors[name] = t
        missing = [n for n in wm if n not in tensors]
        if missing:
            raise ExportError("%s: tensor %s is listed in the index but in no shard" % (folder, missing[0]))
        return tensors
    if os.path.exists(pt):
        return read_torch_zip(pt)
    raise ExportError("%s: missing weights (no model.safetensors, model.safetensors.index.json or pytorch_model.bin)" % folder)


def canonical_names(tensors):
    """Maps the checkpoint's names onto backbone.embedding.weight, backbone.layers.N..., lm_head.weight."""
    out = {}
    has_backbone = any(n.startswith("backbone.") for n in tensors)
    for name, t in tensors.items():
        n = name
        if not has_backbone and (n.startswith("layers.") or n.startswith("embedding") or n.startswith("norm_f.")):
            n = "backbone." + n
        if n == "backbone.embeddings.weight":
            n = "backbone.embedding.weight"
        if n in out:
            raise ExportError("%s: both %s and another name for it are present" % (t.source, name))
        out[n] = t
    for n in out:
        for bad in (".mixer.in_proj.bias", ".mixer.out_proj.bias"):
            if n.endswith(bad):
                raise ExportError("unsupported: %s (use_bias) is not supported" % n)
    return out


def weight_plan(spec):
    """[(canonical name, 'mat'|'vec', shape in the file, accepted source shapes)] in file order (model.h)."""
    D, E, N, K, R, V = spec["d_model"], spec["d_inner"], spec["d_state"], spec["d_conv"], spec["dt_rank"], spec["vocab_rows"]
    plan = [("backbone.embedding.weight", "mat", (V, D), [(V, D)])]
    for l in range(spec["n_layer"]):
        p = "backbone.layers.%d." % l
        if spec["arch"] == "mamba2":
            H, GN = spec["n_heads"], spec["n_groups"] * N
            X = E + 2 * GN
            plan += [
                (p + "norm.weight", "vec", (D,), [(D,)]),
                (p + "mixer.in_proj.weight", "mat", (2 * E + 2 * GN + H, D), [(2 * E + 2 * GN + H, D)]),
                (p + "mixer.conv1d.weight", "vec", (X, K), [(X, 1, K), (X, K)]),
                (p + "mixer.conv1d.bias", "vec", (X,), [(X,)]),
                (p + "mixer.dt_bias", "vec", (H,), [(H,)]),
                (p + "mixer.A_log", "vec", (H,), [(H,)]),
                (p + "mixer.D", "vec", (H,), [(H,)]),
                (p + "mixer.norm.weight", "vec", (E,), [(E,)]),
                (p + "mixer.out_proj.weight", "mat", (D, E), [(D, E)]),
            ]
            continue
        plan += [
            (p + "norm.weight", "vec", (D,), [(D,)]),
            (p + "mixer.in_proj.weight", "mat", (2 * E, D), [(2 * E, D)]),
            (p + "mixer.conv1d.weight", "vec", (E, K), [(E, 1, K), (E, K)]),
            (p + "mixer.conv1d.bias", "vec", (E,), [(E,)]),
            (p + "mixer.x_proj.weight", "mat", (R + 2 * N, E), [(R + 2 * N, E)]),
            (p + "mixer.dt_proj.weight", "mat", (E, R), [(E, R)]),
            (p + "mixer.dt_proj.bias", "vec", (E,), [(E,)]),
            (p + "mixer.A_log", "vec", (E, N), [(E, N)]),
            (p + "mixer.D", "vec", (E,), [(E,)]),
            (p + "mixer.out_proj.weight", "mat", (D, E), [(D, E)]),
        ]
    plan.append(("backbone.norm_f.weight", "vec", (D,), [(D,)]))
    return plan


def check_family(spec, tensors, folder):
    """Weights of another family than the config's: a one-line error naming a tensor that shows it."""
    m2 = spec["arch"] == "mamba2"
    for n in tensors:
        if not m2 and (n.endswith(".mixer.dt_bias") or n.endswith(".mixer.norm.weight")):
            raise ExportError("%s: the config says %s but %s is a Mamba-2 tensor" % (folder, ARCH_NAMES[spec["arch"]], n))
        if m2 and (n.endswith(".mixer.x_proj.weight") or n.endswith(".mixer.dt_proj.weight")):
            raise ExportError("%s: the config says Mamba-2 but %s is a Mamba-1 tensor" % (folder, n))
        if m2 and n.endswith(".mixer.D") and tensors[n].shape not in [(spec["n_heads"],)]:
            raise ExportError("%s: %s has shape %s: D per channel (D_has_hdim) is not supported, expected [%d]"
                              % (folder, n, _shape_str(tensors[n].shape), spec["n_heads"]))


def _shape_str(s):
    return "[" + ", ".join(str(d) for d in s) + "]"


def check_tensor(t, accepted, name):
    if t.kind not in FLOAT_KINDS:
        raise ExportError("tensor %s has dtype %s, expected a float type" % (name, t.kind))
    if t.shape not in [tuple(a) for a in accepted]:
        raise ExportError("tensor %s has shape %s, expected %s" % (name, _shape_str(t.shape), _shape_str(accepted[0])))


def tensors_equal(a, b):
    """Chunked comparison of two lazy tensors' values (as fp32)."""
    if a.shape != b.shape:
        return False
    x, y = a.load(), b.load()
    rows = max(1, CHUNK_BYTES // max(1, 4 * int(np.prod(a.shape[1:], dtype=np.int64))))
    for i in range(0, a.shape[0], rows):
        if not np.array_equal(raw_to_f32(x[i:i + rows], a.kind), raw_to_f32(y[i:i + rows], b.kind)):
            return False
    return True


# ---------------------------------------------------------------------------------------------
# tokenizer section

def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _token_content(v):
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def _special_ids(tok_dir, lookup):
    """bos, eos, pad from tokenizer_config.json / special_tokens_map.json next to the tokenizer."""
    names = {}
    for fn in ("special_tokens_map.json", "tokenizer_config.json"):  # the latter wins
        p = os.path.join(tok_dir, fn) if tok_dir else None
        if p and os.path.exists(p):
            try:
                with open(p, "r", encoding="utf-8") as f:
                    d = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(d, dict):
                for k in ("bos_token", "eos_token", "pad_token"):
                    c = _token_content(d.get(k))
                    if c is not None:
                        names[k] = c
    ids = {}
    for k in ("bos_token", "eos_token", "pad_token"):
        c = names.get(k)
        ids[k] = lookup(c) if c is not None else None
    return ids


def _pre_tokenizer_flags(path, pre):
    """The tokenizer section's pre-tokenizer flags (model.h) for what the C tokenizer implements:
    ByteLevel with the GPT-2 regex (GPT-2, GPT-NeoX), alone or in Falcon's sequence
    [Punctuation (contiguous), ByteLevel, Digits (contiguous), Split "[0-9][0-9][0-9]" (isolated)];
    anything else is refused by name."""
    pres = pre.get("pretokenizers", []) if isinstance(pre, dict) and pre.get("type") == "Sequence" \
        else ([pre] if pre else [])
    names = [p.get("type") if isinstance(p, dict) else repr(p) for p in pres]
    shown = "Sequence[%s]" % ", ".join(map(str, names)) if len(pres) != 1 else str(names[0])

    def refuse(why):
        raise ExportError("%s: unsupported pre_tokenizer %s: %s (the C tokenizer implements ByteLevel with the "
                          "GPT-2 regex, alone or in Falcon's sequence Punctuation, ByteLevel, Digits, Split of "
                          "digit triples)" % (path, shown, why))

    if not all(isinstance(p, dict) for p in pres):
        refuse("a piece is not an object")
    kinds = [p.get("type") for p in pres]
    if kinds not in (["ByteLevel"], ["Punctuation", "ByteLevel", "Digits"],
                     ["Punctuation", "ByteLevel", "Digits", "Split"]):
        refuse("not one of those sequences")
    flags = 0
    for p in pres:
        ty = p["type"]
        if ty == "ByteLevel":
            if not p.get("use_regex", True):
                refuse("ByteLevel without its regex")
            if p.get("add_prefix_space", False):
                if len(pres) > 1:
                    refuse("add_prefix_space in a sequence")
                flags |= 2
        elif ty == "Punctuation":
            if p.get("behavior", "Isolated") != "Contiguous":
                refuse("Punctuation with behavior %r" % p.get("behavior"))
            flags |= 4
        elif ty == "Digits":
            if p.get("individual_digits", False):
                refuse("Digits with individual_digits")
            flags |= 8
        else:  # Split
            pat = p.get("pattern")
            if pat != {"Regex": "[0-9][0-9][0-9]"} or p.get("behavior") != "Isolated" \
                    or p.get("invert", False):
                refuse("Split %r (only the isolated digit triples)" % (pat,))
            flags |= 16
    return flags


def build_bpe_section(path):
    t = _read_json(path, "tokenizer.json")
    if not isinstance(t, dict) or not isinstance(t.get("model"), dict):
        raise ExportError("%s: not a Hugging Face tokenizer.json" % path)
    model = t["model"]
    if model.get("type", "BPE") != "BPE":
        raise ExportError("%s: unsupported tokenizer model type %r (only byte-level BPE)" % (path, model.get("type")))
    vocab = model.get("vocab")
    merges = model.get("merges")
    if not isinstance(vocab, dict) or not isinstance(merges, list):
        raise ExportError("%s: BPE model without vocab/merges" % path)
    # normalizer
    flags = 0
    norm = t.get("normalizer")
    norms = norm.get("normalizers", []) if isinstance(norm, dict) and norm.get("type") == "Sequence" else ([norm] if norm else [])
    for n in norms:
        ty = n.get("type") if isinstance(n, dict) else None
        if ty == "NFC":
            flags |= 1
        else:
            raise ExportError("%s: unsupported normalizer %r (only NFC)" % (path, ty))
    flags |= _pre_tokenizer_flags(path, t.get("pre_tokenizer"))
    dec = {c: b for b, c in bytes_to_unicode().items()}

    def unmap(s):
        try:
            return bytes(dec[c] for c in s)
        except KeyError:
            return s.encode("utf-8")

    added = t.get("added_tokens") or []
    ids = [v for v in vocab.values()] + [a.get("id") for a in added if isinstance(a, dict)]
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise ExportError("%s: bad token id" % path)
    n_vocab = max(ids) + 1 if ids else 0
    entries = [b""] * n_vocab
    for s, i in vocab.items():
        entries[i] = unmap(s)
    added_out = []
    content_id = {}
    for a in added:
        c, i = a.get("content"), a.get("id")
        if not isinstance(c, str) or not c:
            raise ExportError("%s: added token %r without content" % (path, i))
        if c not in vocab or not entries[i]:
            entries[i] = c.encode("utf-8")
        fl = (1 if a.get("special") else 0) | (2 if a.get("normalized") else 0) | (4 if a.get("lstrip") else 0) \
            | (8 if a.get("rstrip") else 0) | (16 if a.get("single_word") else 0)
        added_out.append((i, fl))
        content_id.setdefault(c, i)
    triples = np.empty((len(merges), 3), dtype="<u4")
    for r, m in enumerate(merges):
        if isinstance(m, str):
            parts = m.split(" ")
        elif isinstance(m, (list, tuple)):
            parts = list(m)
        else:
            parts = None
        if not parts or len(parts) != 2:
            raise ExportError("%s: bad merge %d: %r" % (path, r, m))
        a, b = parts
        for s in (a, b, a + b):
            if s not in vocab:
                raise ExportError("%s: merge %d (%r) uses %r, which is not in the vocab" % (path, r, m, s))
        triples[r] = (vocab[a], vocab[b], vocab[a + b])

    def lookup(c):
        if c in content_id:
            return content_id[c]
        return vocab.get(c)

    sp = _special_ids(os.path.dirname(os.path.abspath(path)), lookup)
    eot = lookup("<|endoftext|>")
    bos = sp["bos_token"] if sp["bos_token"] is not None else eot
    eos = sp["eos_token"] if sp["eos_token"] is not None else eot
    pad = sp["pad_token"]
    bos, eos, pad = (-1 if x is None else x for x in (bos, eos, pad))
    out = bytearray(TOK_MAGIC + struct.pack("<IIiiiII", TOK_VERSION, 1, bos, eos, pad, flags, n_vocab))
    for e in entries:
        out += struct.pack("<I", len(e)) + e
    out += struct.pack("<I", len(merges)) + triples.tobytes()
    out += struct.pack("<I", len(added_out))
    for i, fl in added_out:
        out += struct.pack("<II", i, fl)
    return bytes(out), n_vocab


def _varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return result, pos


def _proto_fields(buf):
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, pos = _varint(buf, pos)
        elif wt == 1:
            v, pos = buf[pos:pos + 8], pos + 8
        elif wt == 2:
            n, pos = _varint(buf, pos)
            v, pos = buf[pos:pos + n], pos + n
        elif wt == 5:
            v, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError("unsupported wire type %d" % wt)
        if pos > len(buf):
            raise ValueError("truncated field")
        yield field, wt, v


def build_spm_section(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ExportError("%s: %s" % (path, e.strerror or e))
    ids = {"unk": 0, "bos": 1, "eos": 2, "pad": -1}
    n_pieces = 0
    try:
        for field, wt, v in _proto_fields(data):
            if field == 1 and wt == 2:
                n_pieces += 1
            elif field == 2 and wt == 2:  # TrainerSpec
                for f2, wt2, v2 in _proto_fields(v):
                    names = {40: "unk", 41: "bos", 42: "eos", 43: "pad"}
                    if f2 in names and wt2 == 0:
                        x = v2 & 0xFFFFFFFF
                        ids[names[f2]] = x - (1 << 32) if x >= 1 << 31 else x
    except ValueError as e:
        raise ExportError("%s: not a SentencePiece model (%s)" % (path, e))
    if n_pieces == 0:
        raise ExportError("%s: not a SentencePiece model (no pieces)" % path)
    fix = lambda i: i if 0 <= i < n_pieces else -1  # noqa: E731
    sec = TOK_MAGIC + struct.pack("<IIiiiI", TOK_VERSION, 2, fix(ids["bos"]), fix(ids["eos"]), fix(ids["pad"]), len(data)) + data
    return sec, n_pieces


def build_tokenizer(path):
    """A tokenizer section from a tokenizer.json, a SentencePiece .model, or a folder holding one."""
    if os.path.isdir(path):
        for fn in ("tokenizer.json", "tokenizer.model"):
            if os.path.exists(os.path.join(path, fn)):
                return build_tokenizer(os.path.join(path, fn))
        raise ExportError("%s: no tokenizer.json or tokenizer.model in the folder; pass --tokenizer PATH" % path)
    if not os.path.exists(path):
        raise ExportError("%s: missing tokenizer file" % path)
    try:
        with open(path, "rb") as f:
            first = f.read(64).lstrip()
    except OSError as e:
        raise ExportError("%s: %s" % (path, e.strerror or e))
    if first[:1] == b"{":
        return build_bpe_section(path)
    return build_spm_section(path)


# ---------------------------------------------------------------------------------------------
# the chat template
ROLES = ("system", "user", "assistant")


def _escape_chat(s, where):
    if "\r" in s or "{}" in s:
        raise ExportError("its %s holds %s, which chat mode's format cannot" % (where, "a carriage return" if "\r" in s else "'{}'"))
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")


def convert_chat_template(tpl, eos_token=""):
    """tokenizer_config.json's Jinja chat_template in chat mode's format (chat.c: one line per role,
    ROLE: PREFIX{}SUFFIX), found by rendering conversations of marker messages with jinja2 as
    transformers does (sandboxed, trim_blocks, lstrip_blocks) and cutting the text at the markers.
    Templates whose text for a message depends on more than its role (its position, the other
    messages) cannot be expressed that way: ExportError says why. bos_token renders as nothing:
    generation prepends nothing, as everywhere in this program."""
    try:
        import jinja2.sandbox
    except ImportError:
        raise ExportError("python3-jinja2 is not installed, so it cannot be converted")

    def fail(*a):
        raise ExportError(" ".join(a))

    try:
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        template = env.from_string(tpl)
    except Exception as e:
        raise ExportError("it is not a Jinja template jinja2 can read (%s)" % str(e).splitlines()[0])

    def raise_exception(msg):
        raise ValueError(msg)

    def render(msgs, gen):
        try:
            return template.render(messages=[{"role": r, "content": t} for r, t in msgs], add_generation_prompt=gen,
                                   bos_token="", eos_token=eos_token, raise_exception=raise_exception)
        except Exception as e:
            raise ExportError("rendering it failed (%s: %s)" % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""))

    def cut(text, marks):
        parts = []
        for m in marks:
            if text.count(m) != 1:
                fail("it does not render each message's text once, as given")
            a, text = text.split(m)
            parts.append(a)
        return parts + [text]

    U1, A1, U2, A2, U3, S = ("\x01%s\x01" % k for k in ("U1", "A1", "U2", "A2", "U3", "S"))
    q0, x1 = cut(render([("user", U1)], False), [U1])
    q0g, x1g = cut(render([("user", U1)], True), [U1])
    if q0g != q0 or not x1g.startswith(x1):
        fail("its generation prompt is not text added after the last message")
    pre = {"user": q0, "assistant": x1g[len(x1):]}
    suf = {"user": x1}
    conv = render([("user", U1), ("assistant", A1), ("user", U2)], True)
    p = cut(conv, [U1, A1, U2])
    if p[0] != q0 or p[1] != x1 + pre["assistant"] or p[3] != x1 + pre["assistant"] or not p[2].endswith(q0):
        fail("the text around a user message depends on its place in the conversation")
    suf["assistant"] = p[2][:len(p[2]) - len(q0)]
    try:
        sp = cut(render([("system", S), ("user", U1)], True), [S, U1])
        if sp[1].endswith(q0) and sp[2] == x1 + pre["assistant"]:
            pre["system"], suf["system"] = sp[0], sp[1][:len(sp[1]) - len(q0)]
    except ExportError:
        pass  # a template without a system role: chat mode then refuses --system
    # the format's rendering of a longer conversation must be the template's, character for character
    msgs = [("user", U1), ("assistant", A1), ("user", U2), ("assistant", A2), ("user", U3)]
    if "system" in pre:
        msgs = [("system", S)] + msgs
    ours = "".join(pre[r] + t + suf[r] for r, t in msgs) + pre["assistant"]
    if ours != render(msgs, True):
        fail("the text around a message depends on more than its role (its place, or the other messages)")
    return "".join("%s: %s{}%s\n" % (r, _escape_chat(pre[r], r + " prefix"), _escape_chat(suf[r], r + " suffix"))
                   for r in ROLES if r in pre).encode("utf-8")


def build_chat_section(tok_dir, folder):
    """The chat template section (model.h) from tokenizer_config.json's chat_template, or b"" when
    there is none or it cannot be converted (then a one-line warning says why)."""
    for d in (tok_dir, folder):
        p = os.path.join(d, "tokenizer_config.json") if d else None
        if p and os.path.exists(p):
            break
    else:
        return b""
    try:
        with open(p, "r", encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError):
        return b""
    tpl = d.get("chat_template") if isinstance(d, dict) else None
    if isinstance(tpl, list):  # named templates: the default one
        tpl = next((t.get("template") for t in tpl if isinstance(t, dict) and t.get("name") == "default"), None)
    if not isinstance(tpl, str) or not tpl:
        return b""
    try:
        return convert_chat_template(tpl, _token_content(d.get("eos_token")) or "")
    except ExportError as e:
        print("export.py: warning: %s: the chat_template is not stored (chat mode will need --chat-template): %s" % (p, e),
              file=sys.stderr)
        return b""



# ---------------------------------------------------------------------------------------------
# writing model.bin

def pack_header(spec, dtype, tied, tok_bytes, weights_offset, weights_bytes, chat_bytes=0):
    h = MAGIC + struct.pack("<II", VERSION, HEADER_BYTES)
    h += struct.pack("<10i", spec["d_model"], spec["n_layer"], spec["d_inner"], spec["d_state"], spec["d_conv"],
                     spec["dt_rank"], spec["vocab_rows"], spec["vocab_size"], dtype, tied)
    h += struct.pack("<fI", spec["norm_eps"], ARCHS[spec["arch"]])
    h += struct.pack("<5Q", HEADER_BYTES, tok_bytes, weights_offset, weights_bytes, weights_offset + weights_bytes)
    h += struct.pack("<4i3f", spec["n_heads"], spec["head_dim"], spec["n_groups"], spec["chunk_size"],
                     spec["dt_min"], spec["dt_max"], spec["mixer_eps"])
    assert len(h) == 132
    chat_offset = HEADER_BYTES + tok_bytes if chat_bytes else 0
    h += b"\0" * 4 + struct.pack("<2Q", chat_offset, chat_bytes)
    return h + b"\0" * (HEADER_BYTES - len(h))


def write_tensor(f, t, kind, dtype, file_shape, name):
    """Streams one tensor into f in pieces, converted to the file's type; returns bytes written."""
    a = t.load()
    a = a.reshape(file_shape) if a.shape != file_shape else a
    out_dt = 0 if kind == "vec" else dtype
    if out_dt >= DT_Q8_0 and not is_quantized(name):
        out_dt = 1
    scales = []
    rows = file_shape[0] if file_shape else 1
    row_elems = int(np.prod(file_shape[1:], dtype=np.int64)) if len(file_shape) > 1 else 1
    step = max(1, CHUNK_BYTES // max(1, 4 * row_elems))
    written = 0
    for i in range(0, rows, step):
        x = raw_to_f32(a[i:i + step], t.kind)
        if out_dt == 0:
            b = np.ascontiguousarray(x, dtype="<f4")
        elif out_dt == 1:
            with np.errstate(over="ignore"):
                b = x.astype("<f2")
            if not np.isfinite(b).all() and np.isfinite(x).all():
                raise ExportError("tensor %s has values beyond the fp16 range (max |x| = %g); use --dtype bf16 or fp32"
                                  % (name, float(np.abs(raw_to_f32(a, t.kind)).max())))
        elif out_dt == 2:
            b = f32_to_bf16_bits(x)
        else:
            try:
                b, sc = quantize(x, out_dt)
            except ExportError as e:
                raise ExportError("tensor %s: %s" % (name, e))
            scales.append(sc)
        b.tofile(f)
        written += b.nbytes
    if scales:
        f.write(b"\0" * (align(written, ALIGN) - written))
        written = align(written, ALIGN)
        for sc in scales:
            sc.tofile(f)
            written += sc.nbytes
    return written


def export_model(folder, out_path, dtype_name="fp32", tokenizer=None):
    if dtype_name not in DTYPES:
        raise ExportError("unknown --dtype %r (%s)" % (dtype_name, ", ".join(DTYPES)))
    dtype = DTYPES[dtype_name]
    spec = parse_config(folder)
    if dtype >= DT_Q8_0 and (spec["d_model"] % QBLOCK or spec["d_inner"] % QBLOCK):
        raise ExportError("--dtype %s needs d_model (%d) and d_inner (%d) to be multiples of %d; use fp16"
                          % (dtype_name, spec["d_model"], spec["d_inner"], QBLOCK))
    tensors = canonical_names(load_tensors(folder))
    # tokenizer
    tok_path = tokenizer
    if tok_path is None:
        for fn in ("tokenizer.json", "tokenizer.model"):
            if os.path.exists(os.path.join(folder, fn)):
                tok_path = os.path.join(folder, fn)
                break
        else:
            raise ExportError("%s: no tokenizer.json or tokenizer.model in the checkpoint folder; pass --tokenizer PATH" % folder)
    tok, tok_n_vocab = build_tokenizer(tok_path)
    chat = build_chat_section(os.path.dirname(tok_path) if os.path.isfile(tok_path) else tok_path, folder)
    if tok_n_vocab > spec["vocab_rows"]:
        print("export.py: warning: the tokenizer has %d ids but the model only %d rows" % (tok_n_vocab, spec["vocab_rows"]),
              file=sys.stderr)
    spec["vocab_size"] = min(spec["vocab_size"], spec["vocab_rows"], tok_n_vocab)
    if spec["vocab_size"] > spec["vocab_rows"]:
        raise ExportError("vocab_size %d exceeds the embedding rows %d" % (spec["vocab_size"], spec["vocab_rows"]))
    check_family(spec, tensors, folder)
    plan = weight_plan(spec)
    # conv bias may legitimately be absent (use_conv_bias false): written as zeros
    for name, kind, shape, accepted in plan:
        if name not in tensors:
            if name.endswith("conv1d.bias") and not spec["conv_bias"]:
                tensors[name] = LazyTensor(name, shape, "F32", lambda shape=shape: np.zeros(shape, np.float32), "zeros")
                continue
            raise ExportError("%s: missing tensor %s" % (folder, name))
        check_tensor(tensors[name], accepted, name)
    emb = tensors["backbone.embedding.weight"]
    lm = tensors.get("lm_head.weight")
    tied = 1
    if lm is not None:
        check_tensor(lm, [(spec["vocab_rows"], spec["d_model"])], "lm_head.weight")
        if not spec["tie"] and not tensors_equal(lm, emb):
            tied = 0
    elif not spec["tie"]:
        raise ExportError("%s: missing tensor lm_head.weight (the config says the embeddings are not tied)" % folder)
    if tied == 0:
        plan.append(("lm_head.weight", "mat", (spec["vocab_rows"], spec["d_model"]), None))
    write_model(out_path, spec, dtype, tied, tok, chat, plan, tensors)
    return spec, tied


def write_model(out_path, spec, dtype, tied, tok, chat, plan, tensors):
    """Writes model.bin (through a temporary file): the header, the tokenizer section tok, the chat template
    section chat (b"" for none), then the plan's tensors."""
    off = 0
    offsets = []
    for name, kind, shape, _ in plan:
        off = align(off, ALIGN)
        offsets.append(off)
        off += tensor_bytes(kind, shape, dtype, name)
    weights_bytes = align(off, ALIGN)
    weights_offset = align(HEADER_BYTES + len(tok) + len(chat), PAGE)
    tmp = out_path + ".tmp%d" % os.getpid()
    try:
        with open(tmp, "wb") as f:
            f.write(pack_header(spec, dtype, tied, len(tok), weights_offset, weights_bytes, len(chat)))
            f.write(tok)
            f.write(chat)
            f.write(b"\0" * (weights_offset - HEADER_BYTES - len(tok) - len(chat)))
            for (name, kind, shape, _), o in zip(plan, offsets):
                pos = f.tell() - weights_offset
                f.write(b"\0" * (o - pos))
                write_tensor(f, tensors[name], kind, dtype, shape, name)
            f.write(b"\0" * (weights_offset + weights_bytes - f.tell()))
            assert f.tell() == weights_offset + weights_bytes
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


HEADER_FMT = "<8sII10ifIQQQQQ4i3f"  # model.h's header up to mixer_eps


def quantize_model(in_path, out_path, dtype_name):
    """Rewrites an fp32/fp16/bf16 model.bin with its matrices in dtype_name (usually q8_0 or q4_0): the header's
    dtype, the sizes and offsets change, the tokenizer section and the vectors are copied."""
    if dtype_name not in DTYPES:
        raise ExportError("unknown --dtype %r (%s)" % (dtype_name, ", ".join(DTYPES)))
    buf = np.memmap(in_path, dtype=np.uint8, mode="r")
    if len(buf) < HEADER_BYTES or bytes(buf[:8]) != MAGIC:
        raise ExportError("%s: not a model.bin" % in_path)
    (_, version, _, D, n_layer, E, N, K, R, V, vocab_size, src_dt, tied, eps, arch, _, tok_bytes, w_off, w_bytes,
     file_bytes, H, P, G, chunk, dt_min, dt_max, mixer_eps) = struct.unpack_from(HEADER_FMT, bytes(buf[:HEADER_BYTES]))
    if version not in (1, VERSION) or file_bytes != len(buf):
        raise ExportError("%s: format version %d, %d bytes (header: %d): re-export it from the checkpoint"
                          % (in_path, version, len(buf), file_bytes))
    if src_dt not in (0, 1, 2):
        raise ExportError("%s: its matrices are %s already: quantize from an fp32, fp16 or bf16 file"
                          % (in_path, {3: "q8_0", 4: "q4_0"}.get(src_dt, "of unknown dtype %d" % src_dt)))
    arch_name = {0: "mamba1", 1: "mamba1", 2: "mamba2", 3: "falcon_mamba"}.get(arch)
    if arch_name is None:
        raise ExportError("%s: unknown architecture %d" % (in_path, arch))
    spec = dict(arch=arch_name, d_model=D, n_layer=n_layer, d_inner=E, d_state=N, d_conv=K, dt_rank=R, vocab_rows=V,
                vocab_size=vocab_size, norm_eps=eps, n_heads=H, head_dim=P, n_groups=G, chunk_size=chunk,
                dt_min=dt_min, dt_max=dt_max, mixer_eps=mixer_eps)
    dtype = DTYPES[dtype_name]
    if dtype >= DT_Q8_0 and (D % QBLOCK or E % QBLOCK):
        raise ExportError("--dtype %s needs d_model (%d) and d_inner (%d) to be multiples of %d; use fp16"
                          % (dtype_name, D, E, QBLOCK))
    plan = weight_plan(spec)
    if not tied:
        plan.append(("lm_head.weight", "mat", (V, D), None))
    kind = {0: "F32", 1: "F16", 2: "BF16"}[src_dt]
    tensors, off = {}, 0
    for name, k, shape, _ in plan:
        off = align(off, ALIGN)
        n = int(np.prod(shape, dtype=np.int64))
        es, tk = (4, "F32") if k == "vec" else (DTYPE_BYTES[src_dt], kind)
        if w_off + off + n * es > len(buf):
            raise ExportError("%s: truncated (tensor %s lies past the end)" % (in_path, name))
        raw = buf[w_off + off:w_off + off + n * es].view(RAW_DTYPES[tk]).reshape(shape)
        tensors[name] = LazyTensor(name, shape, tk, lambda raw=raw: raw, in_path)
        off += n * es
    if align(off, ALIGN) != w_bytes:
        raise ExportError("%s: the weights section is %d bytes, its shapes need %d: damaged" % (in_path, w_bytes, align(off, ALIGN)))
    tok = bytes(buf[HEADER_BYTES:HEADER_BYTES + tok_bytes])
    chat_off, chat_bytes = struct.unpack_from("<2Q", bytes(buf[136:152]))
    if chat_bytes and (chat_off != HEADER_BYTES + tok_bytes or chat_off + chat_bytes > w_off):
        raise ExportError("%s: the chat template section [%d, +%d) is not where model.h puts it" % (in_path, chat_off, chat_bytes))
    chat = bytes(buf[chat_off:chat_off + chat_bytes]) if chat_bytes else b""
    write_model(out_path, spec, dtype, tied, tok, chat, plan, tensors)
    return spec, tied


def resolve_checkpoint(arg):
    if os.path.isdir(arg):
        return arg
    if os.path.exists(arg):
        raise ExportError("%s: not a folder (pass the checkpoint folder, not a file)" % arg)
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ExportError("%s: the folder does not exist (and huggingface_hub is not installed to download it)" % arg)
    try:
        return snapshot_download(arg, allow_patterns=["*.json", "*.safetensors", "*.bin", "*.model"])
    except Exception as e:
        raise ExportError("%s: the folder does not exist and downloading it failed: %s" % (arg, str(e).splitlines()[0] if str(e) else type(e).__name__))


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 1, like every other failure
        print("export.py: error: %s (usage: export.py CHECKPOINT_DIR_OR_REPO_ID OUT.bin [--dtype fp32|fp16|bf16|q8_0|q4_0] "
              "[--tokenizer PATH] | export.py --quantize IN.bin OUT.bin --dtype q8_0|q4_0 | export.py --tokenizer-only PATH OUT.bin)" % message, file=sys.stderr)
        sys.exit(1)


def main(argv=None):
    ap = _Parser(description="Export a Mamba checkpoint to model.bin (see model.h).")
    ap.add_argument("--tokenizer-only", metavar="PATH", help="write only a tokenizer section (for ./run -z)")
    ap.add_argument("--quantize", action="store_true",
                    help="IN.bin OUT.bin: rewrite an fp32/fp16/bf16 model.bin in --dtype (no checkpoint needed)")
    ap.add_argument("--dtype", default="fp32", choices=sorted(DTYPES), help="type of the weight matrices")
    ap.add_argument("--tokenizer", metavar="PATH", help="tokenizer.json or SentencePiece .model to embed")
    ap.add_argument("paths", nargs="*", metavar="CHECKPOINT OUT.bin")
    args = ap.parse_args(argv)
    try:
        if args.tokenizer_only is not None:
            if len(args.paths) != 1:
                ap.error("--tokenizer-only PATH takes one output file")
            sec, n = build_tokenizer(args.tokenizer_only)
            with open(args.paths[0], "wb") as f:
                f.write(sec)
            print("wrote %s: tokenizer section, %d ids, %d bytes" % (args.paths[0], n, len(sec)))
            return 0
        if len(args.paths) != 2:
            ap.error("expected %s OUT.bin" % ("IN.bin" if args.quantize else "CHECKPOINT_DIR_OR_REPO_ID"))
        if args.quantize:
            spec, tied = quantize_model(args.paths[0], args.paths[1], args.dtype)
            spec["layout"] = "model.bin"
        else:
            folder = resolve_checkpoint(args.paths[0])
            spec, tied = export_model(folder, args.paths[1], args.dtype, args.tokenizer)
        shape = ("%d heads of %d, %d groups, d_state %d" % (spec["n_heads"], spec["head_dim"], spec["n_groups"], spec["d_state"])
                 if spec["arch"] == "mamba2" else "dt_rank %d, d_state %d" % (spec["dt_rank"], spec["d_state"]))
        print("wrote %s: %s, %s layout, d_model %d, n_layer %d, d_inner %d, %s, vocab %d/%d rows, %s, %s, %d bytes"
              % (args.paths[1], ARCH_NAMES[spec["arch"]], spec["layout"], spec["d_model"], spec["n_layer"], spec["d_inner"], shape,
                 spec["vocab_size"], spec["vocab_rows"], args.dtype, "tied" if tied else "untied lm_head",
                 os.path.getsize(args.paths[1])))
        return 0
    except ExportError as e:
        print("export.py: error: %s" % e, file=sys.stderr)
        return 1
    except MemoryError:
        print("export.py: error: out of memory", file=sys.stderr)
        return 1
    except OSError as e:
        print("export.py: error: %s%s" % (e.filename + ": " if getattr(e, "filename", None) else "", e.strerror or e),
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("export.py: interrupted", file=sys.stderr)
        return 1
    except Exception as e:  # a bug or an unforeseen file: still one line
        msg = str(e).splitlines()[0] if str(e) else ""
        print("export.py: error: %s%s" % (type(e).__name__, ": " + msg if msg else ""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
