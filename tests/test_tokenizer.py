"""Tests of the tokenizer (tokenizer.c, sentencepiece_shim.cc), driven through the command line:

    ./run MODEL.bin [-z TOKFILE] --tokenize      ids of each stdin line (or of -i TEXT)
    ./run MODEL.bin [-z TOKFILE] --detokenize    text of each stdin line of ids, NUL-terminated

RUN (environment) names the binary (default ./run; `make test-san` sets ./run-san).
The two places to change if the interface changes: tokenizer_file() (makes a tokenizer file from a
tokenizer.json / SentencePiece .model) and run_cli() (runs the binary).

    /usr/bin/python3 -m pytest -q tests/test_tokenizer.py        (-s prints the measured MB/s)

Golden ids (Hugging Face `tokenizers`): tests/data/tokenizer/golden_ids.jsonl, written by
tests/gen_tokenizer_golden.py on a machine that has `tokenizers`; the test skips while it is absent.
"""
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
import unicodedata
from concurrent.futures import ThreadPoolExecutor

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DATA = os.path.join(HERE, "data", "tokenizer")
sys.path.insert(0, HERE)
import tokenizer_pack  # noqa: E402
from conftest import HANG_TIMEOUT  # noqa: E402

PY = sys.executable or "/usr/bin/python3"
RUN = os.environ.get("RUN", os.path.join(ROOT, "run"))
if not os.path.isabs(RUN):
    RUN = os.path.join(ROOT, RUN)

NEOX_CANDIDATES = [
    os.path.join(ROOT, "shared", "tokenizers", "gpt-neox-20b", "tokenizer.json"),
    os.path.join(ROOT, "..", "shared", "tokenizers", "gpt-neox-20b", "tokenizer.json"),
    "/work/shared/tokenizers/gpt-neox-20b/tokenizer.json",
    os.path.join(HERE, "data", "tokenizer.json"),
]
NEOX_JSON = next((p for p in NEOX_CANDIDATES if os.path.exists(p)), None)


def sanitizer_clean(stderr):
    s = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    return "AddressSanitizer" not in s and "runtime error:" not in s and "LeakSanitizer" not in s


# ---------------------------------------------------------------------------------------------
# the interface: a tokenizer file, and running the binary

def tokenizer_file(src, out):
    """Writes a tokenizer file (a tokenizer section alone) for src (tokenizer.json or .model)."""
    r = subprocess.run([PY, os.path.join(ROOT, "export.py"), "--tokenizer-only", src, out], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    return out


def run_cli(model, tok, args, stdin=b"", timeout=HANG_TIMEOUT):
    """Runs RUN MODEL [-z TOK] ARGS; returns the CompletedProcess (stdout/stderr as bytes)."""
    cmd = [RUN, model] + (["-z", tok] if tok else []) + list(args)
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)


def _b(t):
    return t.encode("utf-8") if isinstance(t, str) else t


def _parse_ids(line):
    return [int(x) for x in line.split()]


def encode_many(model, tok, texts):
    """Ids of each text (all must encode). Texts without a newline go through stdin, one a line;
    the others one -i each (the line interface cannot carry a newline)."""
    texts = [_b(t) for t in texts]
    out = [None] * len(texts)
    lines = [i for i, t in enumerate(texts) if b"\n" not in t]
    if lines:
        r = run_cli(model, tok, ["--tokenize"], b"".join(texts[i] + b"\n" for i in lines))
        assert r.returncode == 0 and sanitizer_clean(r.stderr), r.stderr.decode("utf-8", "replace")
        got = r.stdout.decode().split("\n")
        assert len(got) == len(lines) + 1 and got[-1] == "", "expected one output line per input line"
        for i, g in zip(lines, got):
            out[i] = _parse_ids(g)

    def one(i):
        r = run_cli(model, tok, ["-i", texts[i], "--tokenize"])
        assert r.returncode == 0 and sanitizer_clean(r.stderr), (texts[i], r.stderr.decode("utf-8", "replace"))
        return i, _parse_ids(r.stdout.decode())

    rest = [i for i, t in enumerate(texts) if b"\n" in t]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as ex:
        for i, ids in ex.map(one, rest):
            out[i] = ids
    return out


_DETOK = {}


def have_detokenize():
    if "ok" not in _DETOK:
        r = subprocess.run([RUN, "--help"], capture_output=True)
        _DETOK["ok"] = b"--detokenize" in r.stdout + r.stderr
    return _DETOK["ok"]


def decode_many(model, tok, id_lists):
    """Text (bytes) of each list of ids, through the streaming decoder of --detokenize."""
    if not have_detokenize():
        pytest.skip("%s has no --detokenize mode (needed for the decode tests)" % RUN)
    inp = "".join(" ".join(map(str, ids)) + "\n" for ids in id_lists).encode()
    r = run_cli(model, tok, ["--detokenize"], inp)
    assert r.returncode == 0 and sanitizer_clean(r.stderr), r.stderr.decode("utf-8", "replace")
    parts = r.stdout.split(b"\0")
    assert len(parts) == len(id_lists) + 1 and parts[-1] == b""
    return parts[:-1]


# ---------------------------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="session")
def run_bin():
    if not os.path.exists(RUN):
        pytest.skip("%s not built (make run)" % RUN)
    return RUN


@pytest.fixture(scope="session")
def neox_json():
    if not NEOX_JSON:
        pytest.skip("GPT-NeoX tokenizer.json not found")
    return NEOX_JSON


@pytest.fixture(scope="session")
def model_bin(request, tmp_path_factory, run_bin, neox_json):
    """A tiny model.bin (random weights) whose own tokenizer is GPT-NeoX's and whose vocabulary
    (50277) takes every tokenizer used here; the tests pass their tokenizer with -z. The shared
    tiny_model_bin of conftest.py when there is one, else one made here."""
    try:
        return request.getfixturevalue("tiny_model_bin")
    except pytest.FixtureLookupError:
        pass
    d = tmp_path_factory.mktemp("tok_model")
    ck = str(d / "ck")
    r = subprocess.run([PY, os.path.join(HERE, "make_checkpoint.py"), "--shape", "tiny", "--layout", "hf", ck,
                        "--tokenizer", neox_json], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot make a test checkpoint: " + r.stderr.decode()[-300:])
    out = str(d / "model.bin")
    r = subprocess.run([PY, os.path.join(ROOT, "export.py"), ck, out], capture_output=True)
    assert r.returncode == 0, r.stderr.decode()
    return out


@pytest.fixture(scope="session")
def neox_tok(tmp_path_factory, neox_json):
    return tokenizer_file(neox_json, str(tmp_path_factory.mktemp("tok_neox") / "neox.tok"))


@pytest.fixture(scope="session")
def neox_section(neox_tok):
    with open(neox_tok, "rb") as f:
        return f.read()


@pytest.fixture(scope="session")
def neox_vocab(neox_section):
    return tokenizer_pack.unpack(neox_section)["vocab"]


@pytest.fixture(scope="session")
def corpus():
    with open(os.path.join(DATA, "texts.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="session")
def corpus_ids(model_bin, neox_tok, corpus):
    return encode_many(model_bin, neox_tok, [c["text"] for c in corpus])


# ---------------------------------------------------------------------------------------------
# GPT-NeoX byte-level BPE

def test_corpus_is_valid(corpus):
    assert len(corpus) >= 2000
    cats = {c["cat"] for c in corpus}
    for cat in ("prose", "code", "numbers", "whitespace", "scripts", "emoji", "specials", "contractions",
                "uspaces", "longword", "compat"):
        assert cat in cats
    for c in corpus:
        assert "\0" not in c["text"]
        c["text"].encode("utf-8")
    assert os.path.getsize(os.path.join(DATA, "texts.jsonl")) < 1_500_000


def test_known_ids(model_bin, neox_tok):
    cases = [
        ("Hello world", [12092, 1533]),
        ("<|endoftext|>", [0]),
        ("<|unk|>", [1]),
        ("", []),
    ]
    # runs of 2..24 spaces are added tokens 50254 (24 spaces) .. 50276 (2 spaces), split out of the
    # text before the pre-tokenizer: "a" + k spaces + "b" gives a, the run, b (no " b")
    a, b = 66, 67
    for k in range(2, 25):
        cases.append((" " * k, [50254 + 24 - k]))
        cases.append(("a" + " " * k + "b", [a, 50254 + 24 - k, b]))
    cases.append(("a" + " " * 49 + "b", [a, 50254, 50254, 270]))  # 270 = " b"
    cases.append(("<|endoftext|><|endoftext|>", [0, 0]))
    got = encode_many(model_bin, neox_tok, [c[0] for c in cases])
    for (text, want), g in zip(cases, got):
        assert g == want, (text, g, want)


def test_golden_ids(corpus, corpus_ids):
    path = os.path.join(DATA, "golden_ids.jsonl")
    if not os.path.exists(path):
        pytest.skip("tests/data/tokenizer/golden_ids.jsonl is absent: run tests/gen_tokenizer_golden.py "
                    "TOKENIZER_JSON where Hugging Face `tokenizers` is installed")
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    header, golden = lines[0], lines[1:]
    assert header.get("n") == len(corpus) == len(golden), "golden_ids.jsonl is stale: regenerate it"
    bad = []
    for c, g, ids in zip(corpus, golden, corpus_ids):
        assert g["id"] == c["id"]
        if ids != g["ids"]:
            bad.append((c["id"], c["cat"], c["text"][:60], ids[:12], g["ids"][:12]))
    assert not bad, "%d of %d texts differ from HF tokenizers %s; first ones:\n%s" % (
        len(bad), len(corpus), header.get("tokenizers"), "\n".join(map(repr, bad[:10])))


# ---------------------------------------------------------------------------------------------
# Falcon's pre-tokenizer sequence (Falcon-Mamba's tokenizer.json), on GPT-NeoX's vocabulary: the
# real Falcon vocabulary is not here, and the sequence is what differs

FALCON_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Punctuation", "behavior": "Contiguous"},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    {"type": "Digits", "individual_digits": False},
    {"type": "Split", "pattern": {"Regex": "[0-9][0-9][0-9]"}, "behavior": "Isolated", "invert": False}]}


def falcon_tokenizer_json(neox_json, out):
    """GPT-NeoX's tokenizer.json with Falcon's pre_tokenizer (tests/gen_tokenizer_golden.py takes it
    on the GPU machine to write tests/data/tokenizer/golden_ids_falcon.jsonl)."""
    with open(neox_json, encoding="utf-8") as f:
        t = json.load(f)
    t["pre_tokenizer"] = FALCON_PRE
    with open(out, "w", encoding="utf-8") as f:
        json.dump(t, f, ensure_ascii=False)
    return out


@pytest.fixture(scope="session")
def falcon_tok(tmp_path_factory, neox_json):
    d = tmp_path_factory.mktemp("tok_falcon")
    return tokenizer_file(falcon_tokenizer_json(neox_json, str(d / "tokenizer.json")), str(d / "falcon.tok"))


@pytest.fixture(scope="session")
def falcon_corpus(corpus):
    with open(os.path.join(DATA, "texts_falcon.jsonl"), encoding="utf-8") as f:
        return corpus + [json.loads(line) for line in f if line.strip()]


def test_falcon_pieces(model_bin, neox_tok, falcon_tok):
    """Falcon's sequence, by hand: punctuation runs split off before the GPT-2 regex, then digit runs
    split from the rest and cut into isolated triples. Each expected piece is one word of the plain
    GPT-2 regex, so its ids are the GPT-NeoX tokenizer's ids of that piece alone."""
    cases = [
        ("1234567", ["123", "456", "7"]),
        ("a ...b", ["a", " ", "...", "b"]),
        ("abc 123456 def", ["abc", " ", "123", "456", " def"]),
        ("price: 12,345.67", ["price", ":", " ", "12", ",", "345", ".", "67"]),
        ("Don't go", ["Don", "'", "t", " go"]),
        ("x_y (1+2)", ["x", "_", "y", " ", "(", "1", "+", "2", ")"]),
        ("12345678901", ["123", "456", "789", "01"]),
    ]
    got = encode_many(model_bin, falcon_tok, [c[0] for c in cases])
    pieces = [p for _, ps in cases for p in ps]
    piece_ids = encode_many(model_bin, neox_tok, pieces)
    k = 0
    for (text, ps), g in zip(cases, got):
        want = [i for ids in piece_ids[k:k + len(ps)] for i in ids]
        k += len(ps)
        assert g == want, (text, g, want)
    # the plain tokenizer keeps "1234567" whole as one regex word: the sequence is what differs
    assert encode_many(model_bin, neox_tok, ["1234567"])[0] != got[0]


def test_falcon_golden_ids(model_bin, falcon_tok, falcon_corpus):
    """Against Hugging Face `tokenizers` with Falcon's pre_tokenizer (golden_ids_falcon.jsonl)."""
    path = os.path.join(DATA, "golden_ids_falcon.jsonl")
    if not os.path.exists(path):
        pytest.skip("tests/data/tokenizer/golden_ids_falcon.jsonl is absent: see tests/gen_tokenizer_golden.py")
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    header, golden = lines[0], lines[1:]
    assert header.get("n") == len(falcon_corpus) == len(golden), "golden_ids_falcon.jsonl is stale: regenerate it"
    ids_all = encode_many(model_bin, falcon_tok, [c["text"] for c in falcon_corpus])
    bad = [(c["id"], c["text"][:60], ids[:12], g["ids"][:12])
           for c, g, ids in zip(falcon_corpus, golden, ids_all) if ids != g["ids"]]
    assert all(c["id"] == g["id"] for c, g in zip(falcon_corpus, golden))
    assert not bad, "%d of %d texts differ from HF tokenizers %s; first ones:\n%s" % (
        len(bad), len(falcon_corpus), header.get("tokenizers"), "\n".join(map(repr, bad[:10])))


def test_tokenizer_inside_model_bin(model_bin, neox_tok, corpus):
    """./run model.bin --tokenize (the section inside model.bin) == with -z (a tokenizer file)."""
    texts = [c["text"] for c in corpus[:300]]
    assert encode_many(model_bin, None, texts) == encode_many(model_bin, neox_tok, texts)


def test_round_trip(model_bin, neox_tok, corpus, corpus_ids):
    """decode(encode(text)) == NFC(text), byte for byte (== text for the texts already in NFC)."""
    dec = decode_many(model_bin, neox_tok, corpus_ids)
    bad = []
    for c, d in zip(corpus, dec):
        if d != unicodedata.normalize("NFC", c["text"]).encode("utf-8"):
            bad.append((c["id"], c["text"][:60], d[:60]))
    assert not bad, "%d round trips differ; first: %r" % (len(bad), bad[:5])
    golden = os.path.join(DATA, "golden_ids.jsonl")
    if os.path.exists(golden):  # the oracle's decode agrees
        with open(golden, encoding="utf-8") as f:
            g = [json.loads(line) for line in f if line.strip()][1:]
        if len(g) == len(dec):
            assert [x["decoded"].encode("utf-8") for x in g] == dec


def test_decode_stream_split_characters(model_bin, neox_tok, neox_vocab):
    texts = ["😀", "👨‍👩‍👧‍👦", "中文", "é", "👍🏽 ok", "𝄞"]
    ids = encode_many(model_bin, neox_tok, texts)
    split = [i for t, i in zip(texts, ids) if any(len(neox_vocab[x]) and
             (neox_vocab[x][0] & 0xC0) == 0x80 for x in i)]
    assert split, "expected some character split across tokens"
    dec = decode_many(model_bin, neox_tok, ids + [i + i for i in ids])
    n = len(texts)
    for k, t in enumerate(texts):
        assert dec[k] == t.encode(), (t, dec[k])  # printed once, whole
        assert dec[n + k] == (t + t).encode()
    # an unfinished character at the end comes out as one U+FFFD at the flush
    emoji = ids[0]
    assert len(emoji) > 1
    prefix = emoji[:-1]
    assert decode_many(model_bin, neox_tok, [prefix]) == [b"".join(neox_vocab[x] for x in prefix)
                                                          .decode("utf-8", "replace").encode()]


def test_decode_invalid_sequences(model_bin, neox_tok, neox_vocab):
    """Random id sequences (heavy on partial UTF-8 tokens): the streaming decoder gives what a
    whole-text lossy decode (Rust's from_utf8_lossy, as HF does; Python's 'replace' is the same
    policy) gives."""
    r = random.Random(5)
    partial = [i for i, v in enumerate(neox_vocab) if v and any(b >= 0x80 for b in v)]
    seqs = []
    for _ in range(400):
        n = r.randint(1, 12)
        seqs.append([r.choice(partial) if r.random() < 0.7 else r.randrange(len(neox_vocab)) for _ in range(n)])
    dec = decode_many(model_bin, neox_tok, seqs)
    for s, d in zip(seqs, dec):
        want = b"".join(neox_vocab[i] for i in s).decode("utf-8", "replace").encode()
        assert d == want, (s, d, want)


INVALID = [
    (b"\x80", 0), (b"abc\x80def", 3), (b"\xbf", 0),                       # lone continuation bytes
    (b"ok \xc3", 3), (b"\xe2\x82", 0), (b"x\xf0\x9f\x98", 1),              # truncated sequences
    (b"\xc3(", 0), (b"\xe2\x28\xa1", 0),                                    # bad continuation
    (b"\xc0\xaf", 0), (b"\xc1\xbf", 0), (b"\xe0\x80\xaf", 0), (b"\xf0\x80\x80\xaf", 0),  # overlongs
    (b"a\xed\xa0\x80", 1), (b"\xed\xbf\xbf", 0),                           # surrogates
    (b"\xf4\x90\x80\x80", 0), (b"\xf5\x80\x80\x80", 0), (b"\xff", 0), (b"\xfe\xff", 0),  # > U+10FFFF
    ("héllo wörld ".encode() + b"\xe9", 14),
]
VALID_EDGES = [b"\xed\x9f\xbf", b"\xee\x80\x80", b"\xef\xbf\xbd", b"\xf4\x8f\xbf\xbf", b"\xf0\x90\x80\x80",
               b"\xc2\x80", b"\xdf\xbf", b"\xe0\xa0\x80", b"\x7f"]


@pytest.mark.parametrize("text,offset", INVALID)
def test_invalid_utf8(model_bin, neox_tok, text, offset):
    msg = "invalid UTF-8 at byte offset %d" % offset
    r = run_cli(model_bin, neox_tok, ["-i", text, "--tokenize"])
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 1 and msg in err and sanitizer_clean(err), (r.returncode, err)
    r = run_cli(model_bin, neox_tok, ["--tokenize"], b"fine\n" + text + b"\n")
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 1 and msg in err and "line 2" in err and sanitizer_clean(err), err
    assert _parse_ids(r.stdout.decode().split("\n")[0]) == encode_many(model_bin, neox_tok, ["fine"])[0]


def test_valid_utf8_edges(model_bin, neox_tok, neox_vocab):
    ids = encode_many(model_bin, neox_tok, VALID_EDGES)
    for t, i in zip(VALID_EDGES, ids):
        assert b"".join(neox_vocab[x] for x in i) == t


def _corruptions(sec):
    """(name, bytes) variants of a good BPE section that tokenizer_load must refuse."""
    t = tokenizer_pack.unpack(sec)
    mo, ao = t["merges_offset"], t["added_offset"]
    n_vocab = len(t["vocab"])
    out = []
    for cut in [0, 1, 3, 4, 8, 23, 24, 27, 28, 31, 32, 36, 1000, mo - 5, mo - 4, mo - 1, mo, mo + 5, mo + 12,
                ao - 8, ao - 4, ao - 1, ao, ao + 4, len(sec) - 1]:
        out.append(("truncated at %d" % cut, sec[:cut]))

    def put(off, fmt, *v):
        b = bytearray(sec)
        struct.pack_into(fmt, b, off, *v)
        return bytes(b)
    out += [
        ("bad magic", b"TOKX" + sec[4:]),
        ("model.bin magic", b"MAMBABIN" + sec[8:]),
        ("version 2", put(4, "<I", 2)),
        ("version 0", put(4, "<I", 0)),
        ("kind 0", put(8, "<I", 0)),
        ("kind 3", put(8, "<I", 3)),
        ("kind huge", put(8, "<I", 0xFFFFFFFF)),
        ("bos out of range", put(12, "<i", n_vocab)),
        ("eos below -1", put(16, "<i", -2)),
        ("pad out of range", put(20, "<i", 1 << 30)),
        ("unknown BPE flags", put(24, "<I", 0x80)),
        ("n_vocab 0", put(28, "<I", 0)),
        ("n_vocab huge", put(28, "<I", 0xFFFFFFFF)),
        ("n_vocab +1", put(28, "<I", n_vocab + 1)),
        ("n_vocab -1", put(28, "<I", n_vocab - 1)),
        ("first token length huge", put(32, "<I", 0xFFFFFFFF)),
        ("first token length past the end", put(32, "<I", len(sec))),
        ("n_merges huge", put(mo - 4, "<I", 0xFFFFFFFF)),
        ("n_merges +1", put(mo - 4, "<I", len(t["merges"]) + 1)),
        ("merge left out of range", put(mo, "<I", n_vocab)),
        ("merge right out of range", put(mo + 4, "<I", 0xFFFFFFFF)),
        ("merged out of range", put(mo + 8, "<I", n_vocab + 7)),
        ("merged is not the concatenation", put(mo + 8, "<I", t["merges"][1][2])),
        ("merge of swapped parts", put(mo, "<II", t["merges"][5][1], t["merges"][5][0])),
        ("last merge wrong", put(ao - 16, "<I", 12092)),
        ("n_added huge", put(ao - 4, "<I", 0xFFFFFFFF)),
        ("n_added +1", put(ao - 4, "<I", len(t["added"]) + 1)),
        ("added id out of range", put(ao, "<I", n_vocab)),
        ("added flags unknown", put(ao + 4, "<I", 1 << 7)),
        ("trailing garbage", sec + b"\0\0\0\0"),
    ]
    # an added token that points to an empty (unused) id
    t2 = dict(t)
    t2["vocab"] = list(t["vocab"]) + [b""]
    t2["added"] = list(t["added"]) + [(n_vocab, 1)]
    out.append(("added token with empty content", tokenizer_pack.pack(t2)))
    # SentencePiece sections that are not
    out.append(("spm: not a model", tokenizer_pack.pack(dict(kind=2, bos=1, eos=2, pad=-1, proto=b"\xff" * 64))))
    out.append(("spm: n_bytes past the end", struct.pack("<4sIIiiiI", b"TOKN", 1, 2, 1, 2, -1, 1000) + b"x" * 10))
    out.append(("spm: empty", struct.pack("<4sIIiiiI", b"TOKN", 1, 2, 1, 2, -1, 0)))
    return out


def test_corrupt_sections(model_bin, neox_section, tmp_path):
    path = str(tmp_path / "bad.tok")
    failures = []
    for name, data in _corruptions(neox_section):
        with open(path, "wb") as f:
            f.write(data)
        r = run_cli(model_bin, path, ["-i", "hello", "--tokenize"])
        err = r.stderr.decode("utf-8", "replace")
        lines = err.strip().split("\n")
        if r.returncode != 1 or len(lines) != 1 or not lines[0].startswith("error:") or not sanitizer_clean(err):
            failures.append((name, r.returncode, err[:300]))
    assert not failures, failures


def test_fuzzed_sections(model_bin, neox_section, tmp_path):
    """Random truncations and byte flips: refused or loaded, never a crash."""
    r = random.Random(11)
    path = str(tmp_path / "fuzz.tok")
    t = tokenizer_pack.unpack(neox_section)
    hot = [0, 24, 28, t["merges_offset"] - 4, t["merges_offset"], t["added_offset"] - 4, t["added_offset"]]
    for k in range(60):
        b = bytearray(neox_section)
        if k % 3 == 0:
            b = b[:r.randrange(len(b))]
        for _ in range(r.randint(1, 4)):
            if not b:
                break
            base = r.choice(hot) if r.random() < 0.6 else r.randrange(len(b))
            off = min(len(b) - 1, base + r.randrange(16))
            b[off] = r.randrange(256)
        with open(path, "wb") as f:
            f.write(bytes(b))
        p = run_cli(model_bin, path, ["--tokenize"], "Hello world <|endoftext|> ☃ a    b\n".encode())
        err = p.stderr.decode("utf-8", "replace")
        assert p.returncode in (0, 1) and sanitizer_clean(err), (k, p.returncode, err[:400])


def test_long_and_pathological(model_bin, neox_tok, neox_vocab):
    """Long single words stay fast (no quadratic BPE) and round-trip."""
    r = random.Random(3)
    cases = {
        "1M letters a": "a" * 1_000_000,
        "1M random letters": "".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(1_000_000)),
        "100k spaces then x": " " * 100_000 + "x",
        "300k tabs": "\t" * 300_000,
        "200k no-break spaces": "\u00a0" * 200_000,
        "500k digits": "7" * 500_000,
    }
    for name, text in cases.items():
        t0 = time.time()
        (ids,) = encode_many(model_bin, neox_tok, [text])
        dt = time.time() - t0
        assert b"".join(neox_vocab[i] for i in ids) == text.encode(), name
        print("\n  %-22s %8d bytes -> %7d ids in %.3f s" % (name, len(text.encode()), len(ids), dt), end="")
        assert dt < 30, name
    (ids,) = encode_many(model_bin, neox_tok, [" " * 100_000 + "x"])
    assert ids[:100_000 // 24] == [50254] * (100_000 // 24)


def test_encode_speed(model_bin, neox_tok, corpus, neox_vocab):
    """About 1 MB of mixed text on one line: prints MB/s (with -s); asserts only correctness."""
    parts, n = [], 0
    r = random.Random(9)
    texts = [c["text"].replace("\n", " ").replace("\r", " ") for c in corpus if c["cat"] != "longword"]
    while n < 1_000_000:
        t = r.choice(texts)
        parts.append(t)
        n += len(t.encode())
    text = " ".join(parts)
    t0 = time.time()
    (ids,) = encode_many(model_bin, neox_tok, [text])
    dt = time.time() - t0
    r0 = run_cli(model_bin, neox_tok, ["-i", "x", "--tokenize"])  # start-up alone
    t1 = time.time()
    run_cli(model_bin, neox_tok, ["-i", "x", "--tokenize"])
    startup = time.time() - t1
    mb = len(text.encode()) / 1e6
    print("\n  encode: %.2f MB -> %d ids in %.3f s (%.3f s of it start-up): %.1f MB/s"
          % (mb, len(ids), dt, startup, mb / max(dt - startup, 1e-6)), end="")
    assert r0.returncode == 0
    assert b"".join(neox_vocab[i] for i in ids) == unicodedata.normalize("NFC", text).encode()


# ---------------------------------------------------------------------------------------------
# SentencePiece

SPM_CONFIGS = {
    # unigram, SentencePiece's default normalization (nmt_nfkc, dummy prefix, whitespace folding),
    # no byte fallback: unknown characters become <unk>
    "unigram_nfkc": ["--model_type=unigram", "--vocab_size=600", "--character_coverage=0.9995"],
    # BPE with byte fallback and identity normalization, like models/tiny/tokenizer.model
    "bpe_bytes": ["--model_type=bpe", "--vocab_size=700", "--byte_fallback=true", "--character_coverage=1.0",
                  "--normalization_rule_name=identity", "--remove_extra_whitespaces=false",
                  "--split_digits=true"],
    # no dummy prefix: decoding keeps a leading space
    "bpe_no_prefix": ["--model_type=bpe", "--vocab_size=500", "--add_dummy_prefix=false", "--byte_fallback=true"],
}


@pytest.fixture(scope="session")
def spm_models(tmp_path_factory):
    if not shutil.which("spm_train"):
        pytest.skip("spm_train (Debian package sentencepiece) is not installed")
    pytest.importorskip("sentencepiece")
    d = tmp_path_factory.mktemp("spm")
    out = {}
    for name, opts in SPM_CONFIGS.items():
        prefix = str(d / name)
        r = subprocess.run(["spm_train", "--input=" + os.path.join(DATA, "spm_train.txt"), "--model_prefix=" + prefix,
                            "--num_threads=1", "--input_sentence_size=0", "--shuffle_input_sentence=false",
                            "--minloglevel=2"] + opts, capture_output=True)
        assert r.returncode == 0, r.stderr.decode()[-2000:]
        out[name] = prefix + ".model"
    tiny = os.path.join(ROOT, "models", "tiny", "tokenizer.model")
    if os.path.exists(tiny):
        out["models_tiny"] = tiny
    return out


@pytest.fixture(scope="session")
def spm_toks(spm_models, tmp_path_factory):
    d = tmp_path_factory.mktemp("spm_tok")
    return {k: tokenizer_file(v, str(d / (k + ".tok"))) for k, v in spm_models.items()}


@pytest.fixture(scope="session", params=list(SPM_CONFIGS) + ["models_tiny"])
def spm_case(request, spm_models, spm_toks):
    if request.param not in spm_models:
        pytest.skip("models/tiny/tokenizer.model is absent")
    import sentencepiece as spm
    return request.param, spm.SentencePieceProcessor(model_file=spm_models[request.param]), spm_toks[request.param]


def test_spm_encode_matches_library(model_bin, corpus, spm_case):
    name, sp, tok = spm_case
    texts = [c["text"] for c in corpus]
    got = encode_many(model_bin, tok, texts)
    bad = [(c["id"], c["text"][:50], g[:10], sp.encode(c["text"])[:10]) for c, g in zip(corpus, got)
           if g != sp.encode(c["text"])]
    assert not bad, "%s: %d of %d differ; first: %r" % (name, len(bad), len(texts), bad[:5])


def test_spm_decode_matches_library(model_bin, corpus, spm_case):
    name, sp, tok = spm_case
    seqs = [sp.encode(c["text"]) for c in corpus[:600]]
    r = random.Random(13)
    n = sp.get_piece_size()
    nul = sp.piece_to_id("<0x00>") if sp.is_byte(sp.piece_to_id("<0x00>")) else -1
    pool = [i for i in range(n) if i != nul]  # a NUL in the output would break --detokenize's framing
    for _ in range(300):  # random ids: byte pieces, <unk>, control tokens, first-piece spaces
        seqs.append([r.choice(pool) for _ in range(r.randint(1, 10))])
    ws = sp.piece_to_id("\u2581")
    if sp.id_to_piece(ws) == "\u2581":  # the lone space piece at the start
        seqs += [[ws] + sp.encode("Hello"), [ws, ws] + sp.encode("Hello"), [sp.bos_id(), ws, ws]]
    for a in (sp.bos_id(), sp.eos_id(), sp.unk_id()):
        if a >= 0:
            seqs.append([a] + sp.encode("Hello world"))
    byte_ids = [i for i in range(n) if sp.is_byte(i) and i != nul]
    if byte_ids:
        for _ in range(100):
            seqs.append([r.choice(byte_ids) if r.random() < 0.7 else r.choice(pool) for _ in range(r.randint(1, 8))])
    got = decode_many(model_bin, tok, seqs)
    bad = [(s, g, sp.decode(s)) for s, g in zip(seqs, got) if g.decode("utf-8") != sp.decode(s)]
    assert not bad, "%s: %d of %d differ; first: %r" % (name, len(bad), len(seqs), bad[:5])


def test_spm_ids(model_bin, spm_case):
    name, sp, tok = spm_case
    r = run_cli(model_bin, tok, ["-i", "Hello world", "--tokenize"])
    assert r.returncode == 0 and _parse_ids(r.stdout.decode()) == sp.encode("Hello world")
    r = run_cli(model_bin, tok, ["-i", b"bad \xff", "--tokenize"])
    assert r.returncode == 1 and b"invalid UTF-8 at byte offset 4" in r.stderr
