#!/usr/bin/env python3
"""Writes the golden ids of the tokenizer test corpus with Hugging Face `tokenizers` (the oracle).
Run it where `tokenizers` is installed (the GPU machine):

    python3 tests/gen_tokenizer_golden.py TOKENIZER_JSON [TEXTS_JSONL] [OUT_JSONL]

defaults: tests/data/tokenizer/texts.jsonl -> tests/data/tokenizer/golden_ids.jsonl.
Each output line: {"id": N, "ids": [...], "decoded": DECODE} where DECODE is
decode(ids, skip_special_tokens=False) (a check: it should equal the text for valid UTF-8 text).
The first line is a header: {"tokenizers": VERSION, "tokenizer_json_sha256": ..., "n": COUNT}.
"""
import hashlib
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main(argv):
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
    with open(texts_path, encoding="utf-8") as f:
        items = [json.loads(line) for line in f if line.strip()]
    n_roundtrip_diff = 0
    tmp = out_path + ".tmp"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps({"tokenizers": tokenizers.__version__, "tokenizer_json_sha256": sha,
                            "n": len(items)}) + "\n")
        for it in items:
            ids = tok.encode(it["text"], add_special_tokens=False).ids
            dec = tok.decode(ids, skip_special_tokens=False)
            n_roundtrip_diff += dec != it["text"]
            f.write(json.dumps({"id": it["id"], "ids": ids, "decoded": dec}, ensure_ascii=False) + "\n")
    os.replace(tmp, out_path)
    print("wrote %s: %d texts (tokenizers %s); decode(encode(text)) != text for %d of them"
          % (out_path, len(items), tokenizers.__version__, n_roundtrip_diff))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
