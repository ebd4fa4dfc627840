"""Writes and reads the TOKENIZER SECTION of model.bin (format: the comment block in model.h).

Used by tests/test_tokenizer.py to build tokenizer files (until/unless export.py is used) and to
make corrupt variants of them. CLI: tokenizer_pack.py tokenizer.json|spm.model OUT.bin
"""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from export import bytes_to_unicode  # noqa: E402  (the GPT-2 byte -> code point table, written once)

MAGIC = b"TOKN"
VERSION = 1
KIND_BPE, KIND_SPM = 1, 2
F_NFC, F_PREFIX_SPACE = 1, 2
A_SPECIAL, A_NORMALIZED, A_LSTRIP, A_RSTRIP, A_SINGLE_WORD = 1, 2, 4, 8, 16




def bpe_from_json(path):
    """Returns a dict describing a byte-level BPE tokenizer.json in section terms."""
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    model = d["model"]
    assert model["type"] == "BPE", model["type"]
    u2b = {c: b for b, c in bytes_to_unicode().items()}
    added = d.get("added_tokens") or []
    vocab = {}
    for tok, i in model["vocab"].items():
        vocab[i] = bytes(u2b[c] for c in tok)
    for a in added:  # decoding uses the added token's own content (HF: added vocabulary first)
        vocab[a["id"]] = a["content"].encode("utf-8")
    n_vocab = max(vocab) + 1
    merges = []
    for m in model["merges"]:
        a, b = m.split(" ") if isinstance(m, str) else m
        merges.append((model["vocab"][a], model["vocab"][b], model["vocab"][a + b]))
    norm = d.get("normalizer")
    flags = 0
    if norm is not None:
        assert norm["type"] == "NFC", norm
        flags |= F_NFC
    pre = d.get("pre_tokenizer") or {}
    if pre.get("add_prefix_space"):
        flags |= F_PREFIX_SPACE
    atoks = []
    for a in added:
        fl = (A_SPECIAL * a.get("special", False) | A_NORMALIZED * a.get("normalized", False) |
              A_LSTRIP * a.get("lstrip", False) | A_RSTRIP * a.get("rstrip", False) |
              A_SINGLE_WORD * a.get("single_word", False))
        atoks.append((a["id"], fl))
    eos = next((a["id"] for a in added if a["content"] == "<|endoftext|>"), -1)
    return dict(kind=KIND_BPE, bos=eos, eos=eos, pad=-1, flags=flags,
                vocab=[vocab.get(i, b"") for i in range(n_vocab)], merges=merges, added=atoks)


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


def spm_section(model_path):
    import sentencepiece as spm
    with open(model_path, "rb") as f:
        proto = f.read()
    sp = spm.SentencePieceProcessor(model_proto=proto)
    return dict(kind=KIND_SPM, bos=sp.bos_id(), eos=sp.eos_id(), pad=sp.pad_id(), proto=proto)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    t = bpe_from_json(src) if src.endswith(".json") else spm_section(src)
    with open(dst, "wb") as f:
        f.write(pack(t))


if __name__ == "__main__":
    main()
