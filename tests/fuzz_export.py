"""export.py's readers of untrusted files against mutated inputs (Atheris is not packaged; this is a
plain mutator with a fixed seed): small valid safetensors files and torch.save zips (pickled here
without torch, through stand-in torch modules) are mutated byte-wise and structurally, and every
failure of read_safetensors / read_torch_zip (and of loading the tensors they return) must be an
ExportError with a one-line message, never another exception."""
import io
import json
import pickle
import random
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

import export

N_MUTATIONS = 2000  # per format; about 12 s in all on a loaded 2-core machine


def safetensors_bytes():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.arange(4, dtype=np.float16)
    data = a.tobytes() + b.tobytes()
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "F16", "shape": [4], "data_offsets": [24, 32]},
              "__metadata__": {"format": "pt"}}
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def torch_zip_bytes():
    """A torch.save-style zip of two float tensors, its data.pkl written with stand-ins for the
    torch globals it names (pickle records them by module and name only)."""
    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")

    class FloatStorage:
        pass
    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"

    def _rebuild_tensor_v2(*args):
        pass
    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    torch_mod.FloatStorage, torch_mod._utils, utils_mod._rebuild_tensor_v2 = FloatStorage, utils_mod, _rebuild_tensor_v2

    class Storage:
        def __init__(self, key, numel):
            self.key, self.numel = key, numel

    class Tensor:
        def __init__(self, storage, size):
            self.storage, self.size = storage, size

        def __reduce__(self):
            stride = tuple(int(np.prod(self.size[i + 1:])) for i in range(len(self.size)))
            return (_rebuild_tensor_v2, (self.storage, 0, self.size, stride, False, {}))

    class P(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", FloatStorage, obj.key, "cpu", obj.numel) if isinstance(obj, Storage) else None

    import collections
    sd = collections.OrderedDict([("w", Tensor(Storage("0", 6), (2, 3))), ("v", Tensor(Storage("1", 4), (4,)))])
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch_mod, utils_mod
    try:
        buf = io.BytesIO()
        P(buf, protocol=2).dump(sd)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/data/0", np.arange(6, dtype=np.float32).tobytes())
        z.writestr("archive/data/1", np.arange(4, dtype=np.float32).tobytes())
    return out.getvalue()


INTERESTING = [b"0", b"-1", b"255", b"4294967296", b"1e309", b"null", b"[]", b"{}", b'"x"', b"\x00", b"\xff" * 8,
               b"F64", b"BOOL", b"\x80\x02", b"X", b"]", b"}"]


def mutate(rng, data):
    d = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(6)
        i = rng.randrange(len(d) + 1) if d else 0
        if op == 0 and d:  # flip bits of a byte
            d[min(i, len(d) - 1)] ^= 1 << rng.randrange(8)
        elif op == 1:  # a random byte in
            d[i:i] = bytes([rng.randrange(256)])
        elif op == 2 and d:  # a run out
            del d[i:i + rng.randint(1, 16)]
        elif op == 3:  # an interesting token over a run
            d[i:i + rng.randint(0, 4)] = rng.choice(INTERESTING)
        elif op == 4 and d:  # a digit replaced by another number (shapes, offsets, lengths)
            digits = [k for k, c in enumerate(d) if 48 <= c <= 57]
            if digits:
                k = rng.choice(digits)
                d[k:k + 1] = str(rng.choice([0, 1, 7, 2**31, 2**63, 10**30])).encode()
        elif op == 5:  # cut off
            del d[i:]
    return bytes(d)


def check(reader, path, data):
    path.write_bytes(data)
    try:
        for t in reader(str(path)).values():
            t.load()
    except export.ExportError as e:
        msg = str(e)
        assert msg and "\n" not in msg, repr(msg)
    # anything else propagates: the test fails with the input named below


def test_export_zip_regressions(tmp_path):
    """Inputs the mutator found: a central directory entry whose version needed to extract is past
    what zipfile reads (NotImplementedError), and a local header that is not one (BadZipFile)."""
    seed = torch_zip_bytes()
    d = bytearray(seed)
    k = d.index(b"PK\x01\x02")
    d[k + 6:k + 8] = struct.pack("<H", 99)
    e = bytearray(seed)
    k = e.index(b"PK\x03\x04", e.index(b"archive/data/0") - 40)
    e[k:k + 4] = b"XK\x03\x04"
    path = tmp_path / "in.bin"
    for data in (d, e):
        path.write_bytes(bytes(data))
        with pytest.raises(export.ExportError, match="corrupt zip"):
            for t in export.read_torch_zip(str(path)).values():
                t.load()


@pytest.mark.parametrize("fmt", ["safetensors", "torch_zip"])
def test_fuzz_export_readers(tmp_path, fmt):
    reader, seed = (export.read_safetensors, safetensors_bytes()) if fmt == "safetensors" else (export.read_torch_zip, torch_zip_bytes())
    path = tmp_path / "in.bin"
    check(reader, path, seed)  # the seed itself reads
    assert len(reader(str(path))) == 2
    rng = random.Random(15)
    for k in range(N_MUTATIONS):
        data = mutate(rng, seed)
        try:
            check(reader, path, data)
        except Exception:
            (tmp_path / "failing_input").write_bytes(data)
            print("mutation %d failed; input kept as %s" % (k, tmp_path / "failing_input"))
            raise
