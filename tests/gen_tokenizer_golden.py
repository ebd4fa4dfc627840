#!/usr/bin/env python3
"""Writes the golden ids of the tokenizer test corpus with Hugging Face `tokenizers` (the oracle).
Run it where `tokenizers` is installed (the GPU machine):

    python3 tests/gen_tokenizer_golden.py TOKENIZER_JSON [TEXTS_JSONL[,MORE.jsonl...]] [OUT_JSONL] [--ids-only]

defaults: tests/data/tokenizer/texts.jsonl -> tests/data/tokenizer/golden_ids.jsonl; several text
files (comma-separated) are read in order; --ids-only leaves out "decoded" (a smaller file).
For Falcon's pre-tokenizer sequence (tokenizer.json = GPT-NeoX's with Falcon's pre_tokenizer,
tests/test_tokenizer.py: falcon_tokenizer_json):
    python3 tests/gen_tokenizer_golden.py FALCON_JSON tests/data/tokenizer/texts.jsonl,tests/data/tokenizer/texts_falcon.jsonl tests/data/tokenizer/golden_ids_falcon.jsonl --ids-only
Each output line: {"id": N, "ids": [...], "decoded": DECODE} where DECODE is
decode(ids, skip_special_tokens=False) (a check: it should equal the text for valid UTF-8 text).
The first line is a header: {"tokenizers": VERSION, "tokenizer_json_sha256": ..., "n": COUNT,
"probes": [...]}: for a few tricky strings, what the oracle's normalizer, pre-tokenizer and model do
(to tell, without another run on that machine, where a mismatch comes from).
"""
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# whitespace runs ending in a non-space before a word or a contraction, Unicode spaces, NFC/NFKC
PROBES = ["a\n\nb", "a\t\tb", " \tb", "x  's", "x\n\n'll", "a \u00a0b", "a\u00a0\u00a0b", "a\u3000\u3000b",
          "x\u0085y", "\u2028a", "e\u0301", "\ufb01", "\u212b", "a    b", "a" + " " * 25 + "b",
          "<|endoftext|>", " <|endoftext|>", "\u180e", "\u200b a", "I'M don'T", "\r\n\r\nx"]


def main(argv):
    ids_only = "--ids-only" in argv
    argv = [a for a in argv if a != "--ids-only"]
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__)
        return 2
    tok_path = argv[1]
    texts_path = argv[2] if len(argv) > 2 else os.path.join(HERE, "data", "tokenizer", "texts.jsonl")
    out_path = argv[3] if len(argv) > 3 else os.path.join(HERE, "data", "tokenizer", "golden_ids.jsonl")
    import tokenizers  # noqa: imported late so that --help works without it
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(tok_path)
    with open(tok_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    items = []
    for tp in texts_path.split(","):
        with open(tp, encoding="utf-8") as f:
            items += [json.loads(line) for line in f if line.strip()]
    probes = []
    for p in PROBES:
        d = {"text": p, "ids": tok.encode(p, add_special_tokens=False).ids,
             "tokens": tok.encode(p, add_special_tokens=False).tokens}
        try:
            d["normalized"] = tok.normalizer.normalize_str(p) if tok.normalizer else p
            d["pre_tokenized"] = [w for w, _ in tok.pre_tokenizer.pre_tokenize_str(d["normalized"])]
        except Exception as e:  # noqa: BLE001 (diagnostics only)
            d["error"] = repr(e)
        probes.append(d)
    n_roundtrip_diff = 0
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps({"tokenizers": tokenizers.__version__, "tokenizer_json_sha256": sha,
                            "n": len(items), "probes": probes}, ensure_ascii=False) + "\n")
        for it in items:
            ids = tok.encode(it["text"], add_special_tokens=False).ids
            dec = tok.decode(ids, skip_special_tokens=False)
            n_roundtrip_diff += dec != it["text"]
            line = {"id": it["id"], "ids": ids} if ids_only else {"id": it["id"], "ids": ids, "decoded": dec}
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
    os.replace(tmp, out_path)
    print("wrote %s: %d texts (tokenizers %s); decode(encode(text)) != text for %d of them"
          % (out_path, len(items), tokenizers.__version__, n_roundtrip_diff))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
