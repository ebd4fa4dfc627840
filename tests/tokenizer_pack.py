"""Reads a TOKENIZER SECTION of model.bin into a dict and packs a dict back (format: the comment
block in model.h), so that tests/test_tokenizer.py can make corrupt variants of the sections that
export.py writes."""
import struct

MAGIC = b"TOKN"
VERSION = 1
KIND_BPE, KIND_SPM = 1, 2


def pack(t):
    out = [MAGIC, struct.pack("<IIiii", VERSION, t["kind"], t["bos"], t["eos"], t["pad"])]
    if t["kind"] == KIND_BPE:
        out.append(struct.pack("<II", t["flags"], len(t["vocab"])))
        for v in t["vocab"]:
            out.append(struct.pack("<I", len(v)))
            out.append(v)
        out.append(struct.pack("<I", len(t["merges"])))
        out.append(b"".join(struct.pack("<III", *m) for m in t["merges"]))
        out.append(struct.pack("<I", len(t["added"])))
        out.append(b"".join(struct.pack("<II", *a) for a in t["added"]))
    else:
        out.append(struct.pack("<I", len(t["proto"])))
        out.append(t["proto"])
    return b"".join(out)


def unpack(buf):
    """Inverse of pack (no validation beyond what parsing needs)."""
    assert buf[:4] == MAGIC
    _, kind, bos, eos, pad = struct.unpack_from("<IIiii", buf, 4)
    t = dict(kind=kind, bos=bos, eos=eos, pad=pad)
    p = 24
    if kind == KIND_SPM:
        (n,) = struct.unpack_from("<I", buf, p)
        t["proto"] = buf[p + 4:p + 4 + n]
        return t
    t["flags"], n = struct.unpack_from("<II", buf, p)
    p += 8
    vocab = []
    for _ in range(n):
        (ln,) = struct.unpack_from("<I", buf, p)
        vocab.append(buf[p + 4:p + 4 + ln])
        p += 4 + ln
    (nm,) = struct.unpack_from("<I", buf, p)
    p += 4
    t["merges_offset"] = p
    t["merges"] = [struct.unpack_from("<III", buf, p + 12 * i) for i in range(nm)]
    p += 12 * nm
    (na,) = struct.unpack_from("<I", buf, p)
    p += 4
    t["added_offset"] = p
    t["added"] = [struct.unpack_from("<II", buf, p + 8 * i) for i in range(na)]
    t["vocab"] = vocab
    return t
