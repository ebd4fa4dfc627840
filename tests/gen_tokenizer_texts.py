#!/usr/bin/env python3
"""Generates the tokenizer test corpus, deterministically:

    /usr/bin/python3 tests/gen_tokenizer_texts.py [OUT]   (default tests/data/tokenizer/texts.jsonl)

It also writes tests/data/tokenizer/spm_train.txt next to OUT: ~60 KB of English prose (made up
here from the word lists and paragraphs below), the training text of the small SentencePiece
models that tests/test_tokenizer.py trains with spm_train.

One JSON object a line: {"id": N, "cat": CATEGORY, "text": TEXT}. Every text is valid UTF-8 and
holds no NUL. All the prose and words here are written for this file (no outside text).
Characters come from long-assigned blocks only (Unicode <= 9), so that the Unicode versions of
the oracle (Oniguruma, unicode-normalization) and of utf8proc agree on them.
"""
import json
import os
import random
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "data", "tokenizer", "texts.jsonl")

WORDS = (
    "the of and to in is was that for it with as on be at by this had not are but from or have an "
    "they which one you were all her she there would their we him been has when who will more no if "
    "out so said what up its about into than them can only other new some could time these two may "
    "then do first any my now such like our over man me even most made after also did many before "
    "must through back years where much your way well down should because each just those people "
    "how too little state good very make world still own see men work long get here between both "
    "life being under never day same another know while last might us great old year off come since "
    "against go came right used take three small river mountain snake engine token window garden "
    "machine language model memory signal silver bridge harbor lantern winter summer quietly "
    "suddenly remarkably unbelievable internationalization reconsideration approximately "
    "Mamba state space sequence selective recurrent convolution parameter hardware kernel"
).split()
NAMES = "Alice Bob Carol Dmitri Eve Fatima Guo Hiroshi Ingrid Jamal Kofi Lena Mateo Nadia Oskar".split()

PARAGRAPHS = [
    "The river ran quietly past the old mill, and the children who lived on its banks had long "
    "since stopped wondering where it went. In the evenings they skipped flat stones across the "
    "water and counted the jumps: three, four, sometimes seven when the wind was kind.",
    "A tokenizer turns text into numbers. It is a small program, but it decides what a model can "
    "see: whether \"New York\" is one piece or two, whether a number is read digit by digit, and "
    "whether a run of spaces in source code costs one token or twenty.",
    "She opened the letter slowly. \"Dear Ms. Park,\" it began, \"we regret to inform you that the "
    "lighthouse will close on the 3rd of March.\" She folded it again, put the kettle on, and "
    "decided that the lighthouse would do no such thing.",
    "Recurrent models keep a fixed-size state and update it one step at a time; attention keeps "
    "every past token around. The trade-off is old, but the details (selectivity, parallel scans, "
    "hardware-aware kernels) are what make it interesting again.",
    "Mr. O'Neill's dog wasn't allowed in the bakery, so it sat outside, nose pressed to the glass, "
    "watching the croissants with the patience of a saint and the hunger of a wolf.",
    "In 1969, people walked on the Moon; in 2007, phones learned to browse the web; in 2023, "
    "somebody asked a program to write a poem about a tokenizer, and it did (badly).",
]

SCRIPTS = {
    "greek": "Καλημέρα κόσμε. Η γρήγορη καφέ αλεπού πηδάει πάνω από τον τεμπέλη σκύλο.",
    "cyrillic": "Привет, мир! Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "ukrainian": "Ґанок, їжак, єнот і щука — все це українські слова.",
    "arabic": "مرحبا بالعالم. هذه جملة قصيرة مكتوبة باللغة العربية للاختبار.",
    "hebrew": "שלום עולם. זהו משפט קצר בעברית לבדיקה.",
    "devanagari": "नमस्ते दुनिया। यह हिन्दी में एक छोटा वाक्य है।",
    "thai": "สวัสดีชาวโลก นี่คือประโยคภาษาไทยสั้นๆ สำหรับการทดสอบ",
    "chinese": "你好，世界！这是一个用于测试的简短中文句子。機器學習很有趣。",
    "japanese": "こんにちは世界。これはテスト用の短い日本語の文です。カタカナもあります。",
    "korean": "안녕하세요 세계. 이것은 시험을 위한 짧은 한국어 문장입니다.",
    "armenian": "Բարեւ աշխարհ",
    "georgian": "გამარჯობა მსოფლიო",
    "tamil": "வணக்கம் உலகம்",
    "bengali": "হ্যালো বিশ্ব",
    "amharic": "ሰላም ልዑል",
    "vietnamese": "Xin chào thế giới. Tiếng Việt có rất nhiều dấu: ă â ê ô ơ ư đ.",
    "latin_diacritics": "Crème brûlée, naïve café, Ångström, façade, São Paulo, Zürich, Łódź, Dvořák.",
    "turkish": "İstanbul'da ılık bir gün; ŞİŞLİ, ğüşiöç.",
}

# code point ranges of letters/marks of long-assigned scripts, for random words
RANGES = {
    "latin1": [(0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0xFF)],
    "latin_ext": [(0x100, 0x17F)],
    "greek": [(0x391, 0x3A1), (0x3A3, 0x3A9), (0x3B1, 0x3C9)],
    "cyrillic": [(0x410, 0x44F)],
    "hebrew": [(0x5D0, 0x5EA)],
    "arabic": [(0x627, 0x63A), (0x641, 0x64A)],
    "devanagari": [(0x905, 0x939), (0x93E, 0x94D)],
    "thai": [(0xE01, 0xE30), (0xE31, 0xE3A)],
    "hiragana": [(0x3041, 0x3096)],
    "katakana": [(0x30A1, 0x30FA)],
    "cjk": [(0x4E00, 0x9FA5)],
    "hangul": [(0xAC00, 0xD7A3)],
    "math_alnum": [(0x1D400, 0x1D433)],
    "fullwidth": [(0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0xFF10, 0xFF19)],
    "combining": [(0x300, 0x36F)],
}

EMOJI = ["😀", "😂", "🥲", "👍", "👍🏻", "👍🏽", "👍🏿", "👋🏾", "🙏", "❤️", "❤", "🔥", "✨", "🎉",
         "👨‍👩‍👧‍👦", "👩‍💻", "🧑🏽‍🚀", "🏳️‍🌈", "🏴‍☠️", "👁️‍🗨️", "🇺🇸", "🇯🇵", "🇩🇪", "🇧🇷",
         "#️⃣", "1️⃣", "©️", "™", "☕", "⚡", "🐍", "🦀", "🤖", "👩🏼‍❤️‍💋‍👨🏿", "💯", "🙃"]
UNI_SPACES = ["\u00a0", "\u2003", "\u3000", "\u0085", "\u2028", "\u2029", "\u202f", "\u205f",
              "\u1680", "\u2000", "\u2009", "\u200a", "\u000b", "\u000c"]
NOT_SPACES = ["\u200b", "\u200c", "\u200d", "\ufeff", "\u180e", "\u2060"]
PUNCT = list("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~") + list("—–…«»“”‘’¿¡·•§¶†‡′″‹›「」『』【】〈〉、。，！？：；")
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'T", "'RE", "'VE", "'M", "'LL", "'D",
                "’s", "’t", "'x", "''", "'"]
SPECIALS = ["<|endoftext|>", "<|unk|>", "<|padding|>", "<|endoftext|", "<|endoftext", "|endoftext|>",
            "<|endoftext |>", "<|ENDOFTEXT|>", "<|unk", "<<|unk|>>", "<|", "|>", "<|endoftext|><|endoftext|>"]
COMPAT = ["ﬁ", "ﬂ", "①", "Ⅳ", "x²", "½", "\u212b", "\u2126", "\u212a", "ｆｕｌｌ", "㎞", "ℌ", "ſ", "µ",
          "\u1100\u1161\u11a8", "\u0344", "\u0958", "\u2000", "e\u0301", "a\u0323\u0302", "a\u0302\u0323",
          "\u1e9b\u0323", "o\u0308\u0304", "\u0041\u030a", "\u00c5", "\u0386", "\u1f71"]


def rword(r, rng):
    lo, hi = r.choice(RANGES[rng])
    return "".join(chr(r.randint(lo, hi)) for _ in range(r.randint(1, 9)))


def sentence(r, n=None):
    n = n or r.randint(4, 16)
    ws = [r.choice(WORDS + NAMES) for _ in range(n)]
    ws[0] = ws[0].capitalize()
    s = " ".join(ws)
    if r.random() < 0.3:
        i = r.randrange(len(ws))
        s = s.replace(" ", ", ", 1) if i % 2 else s
    return s + r.choice([".", ".", ".", "!", "?", "...", ";", ":"])


def prose(r):
    if r.random() < 0.3:
        return r.choice(PARAGRAPHS)
    return " ".join(sentence(r) for _ in range(r.randint(1, 5)))


def ws_run(r, maxn=40, chars=" \t\n"):
    k = r.random()
    if k < 0.5:
        return " " * r.randint(1, maxn)
    if k < 0.6:
        return "\n" * r.randint(1, 6)
    if k < 0.7:
        return "\r\n" * r.randint(1, 4)
    return "".join(r.choice(chars) for _ in range(r.randint(1, maxn)))


def code(r):
    lines = []
    indent_unit = r.choice(["    ", "  ", "\t", "        "])
    depth = 0
    for _ in range(r.randint(3, 14)):
        kind = r.random()
        ind = indent_unit * depth
        if kind < 0.25:
            lines.append(ind + "if (%s %s %d) {" % (r.choice(["x", "n_tokens", "self.count", "arr[i]"]),
                                                   r.choice(["<", ">=", "==", "!=", "&&"]), r.randint(0, 999)))
            depth = min(depth + 1, 10)
        elif kind < 0.4 and depth:
            depth -= 1
            lines.append(indent_unit * depth + "}")
        elif kind < 0.55:
            lines.append(ind + "def %s(self, %s=None):" % (r.choice(WORDS), r.choice(WORDS)))
            depth = min(depth + 1, 10)
        elif kind < 0.7:
            lines.append(ind + "%s = %s(%s, %r)  # %s" % (r.choice(WORDS), r.choice(WORDS), r.randint(-50, 50),
                                                       r.choice(WORDS), sentence(r, 4)))
        elif kind < 0.8:
            lines.append(ind + "for (int i = 0; i < n; i++) sum += a[i] * b[i];\t// dot")
        elif kind < 0.9:
            lines.append("")
        else:
            lines.append(ind + "return {\"key\": [1, 2.5, -3e-4], 'x': None}" + " " * r.randint(0, 6))
    sep = r.choice(["\n", "\n", "\r\n"])
    s = sep.join(lines)
    if r.random() < 0.3:
        s = " " * r.randint(1, 40) + s
    if r.random() < 0.3:
        s += sep * r.randint(1, 3)
    return s


def numbers(r):
    parts = []
    for _ in range(r.randint(1, 8)):
        k = r.randrange(10)
        if k == 0:
            parts.append(str(r.randint(0, 10 ** r.randint(1, 15))))
        elif k == 1:
            parts.append("%d-%02d-%02d" % (r.randint(1900, 2100), r.randint(1, 12), r.randint(1, 28)))
        elif k == 2:
            parts.append("%.*f" % (r.randint(1, 6), r.uniform(-1e4, 1e4)))
        elif k == 3:
            parts.append("{:,}".format(r.randint(1000, 10 ** 10)))
        elif k == 4:
            parts.append("%02d:%02d:%02d" % (r.randint(0, 23), r.randint(0, 59), r.randint(0, 59)))
        elif k == 5:
            parts.append("v%d.%d.%d" % (r.randint(0, 20), r.randint(0, 99), r.randint(0, 999)))
        elif k == 6:
            parts.append("+1 (%03d) %03d-%04d" % (r.randint(100, 999), r.randint(100, 999), r.randint(0, 9999)))
        elif k == 7:
            parts.append("%de%+d" % (r.randint(1, 9), r.randint(-30, 30)))
        elif k == 8:
            parts.append("$%d.%02d" % (r.randint(0, 99999), r.randint(0, 99)))
        else:
            parts.append(r.choice(["٣٤٥", "१२३", "๑๒๓", "Ⅻ", "½", "²³", "①②", "一二三", "０１２"]))
    return r.choice([" ", ", ", "; ", "\n", " and ", "/"]).join(parts)


def whitespace(r):
    toks = []
    for _ in range(r.randint(1, 8)):
        toks.append(ws_run(r, 40, " \t\n\r") if r.random() < 0.55 else r.choice(WORDS + PUNCT + ["123", "x"]))
    s = "".join(toks)
    return s


def punct(r):
    n = r.randint(1, 40)
    s = "".join(r.choice(PUNCT + [" ", " ", "a", "1"]) for _ in range(n))
    return s


def scripts(r):
    k = r.random()
    if k < 0.35:
        return r.choice(list(SCRIPTS.values()))
    if k < 0.5:
        s = r.choice(list(SCRIPTS.values()))
        return unicodedata.normalize(r.choice(["NFD", "NFC", "NFKD"]), s)
    if k < 0.8:
        names = [x for x in RANGES if x != "combining"]
        return " ".join(rword(r, r.choice(names)) for _ in range(r.randint(1, 8)))
    # base letters with random combining marks (out of canonical order too)
    out = []
    for _ in range(r.randint(1, 8)):
        out.append(r.choice("aeiouAEIOUnczs"))
        for _ in range(r.randint(0, 3)):
            out.append(chr(r.choice([0x300, 0x301, 0x302, 0x303, 0x308, 0x30A, 0x323, 0x327, 0x328, 0x331,
                                     0x345, 0x35C, 0x316])))
        if r.random() < 0.3:
            out.append(" ")
    return "".join(out)


def emoji(r):
    toks = []
    for _ in range(r.randint(1, 10)):
        toks.append(r.choice(EMOJI))
        if r.random() < 0.4:
            toks.append(r.choice([" ", "", "  ", "\n", " " + r.choice(WORDS) + " "]))
    return "".join(toks)


def specials(r):
    toks = []
    for _ in range(r.randint(1, 6)):
        k = r.random()
        if k < 0.45:
            toks.append(r.choice(SPECIALS))
        elif k < 0.7:
            toks.append(r.choice([" ", "  ", "   ", "\n", "", " " * r.randint(2, 30)]))
        else:
            toks.append(r.choice(WORDS))
    return "".join(toks)


def contractions(r):
    toks = []
    for _ in range(r.randint(1, 8)):
        w = r.choice(WORDS + NAMES + ["I", "you", "we", "DON", "can", "won", "y", ""])
        if r.random() < 0.5:
            w = w.upper()
        toks.append(w + r.choice(CONTRACTIONS) + r.choice(["", "", "s", "up", "x", "'s"]))
    return r.choice([" ", "  ", "", ", "]).join(toks)


def uspaces(r):
    toks = []
    for _ in range(r.randint(1, 8)):
        k = r.random()
        if k < 0.4:
            toks.append("".join(r.choice(UNI_SPACES + [" ", " ", "\t", "\n"]) for _ in range(r.randint(1, 5))))
        elif k < 0.5:
            toks.append(r.choice(NOT_SPACES))
        else:
            toks.append(r.choice(WORDS + ["1", "!", "é", "中"]))
    return "".join(toks)


def longword(r):
    k = r.randrange(9)
    n = r.randint(50, 3000)
    if k == 0:
        return r.choice("ab") * n
    if k == 1:
        return "".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
    if k == 2:
        return "".join(r.choice("0123456789") for _ in range(n))
    if k == 3:
        return "".join(r.choice("!?.-=*#") for _ in range(n))
    if k == 4:
        return "https://example.com/" + "/".join(r.choice(WORDS) for _ in range(n // 10)) + "?q=" + "x" * 20
    if k == 5:
        import base64
        return base64.b64encode(bytes(r.randrange(256) for _ in range(n))).decode()
    if k == 6:
        return "".join(r.choice("0123456789abcdef") for _ in range(n))
    if k == 7:
        return rword(r, "cjk") * (n // 20 + 1)
    return "\u00e9" * n


def compat(r):
    toks = [r.choice(COMPAT) for _ in range(r.randint(1, 6))]
    return r.choice(["", " ", "x", "\u0301"]).join(toks)


def misc(r):
    return r.choice([
        "\x1b[31mred\x1b[0m and \x1b[1mbold\x1b[0m",
        "tab\there\x01\x02\x7f control",
        "private \ue000\uf8ff use",
        "noncharacters \ufffe \uffff",
        "replacement \ufffd char",
        "astral 𝐀𝐁𝐂 𝟙𝟚 𐍈 𝄞",
        "mixed: abc123def 4.5e6 x_y z-w α1 β2",
        "email: someone@example.com, path C:\\Users\\x\\file.txt, /usr/local/bin/",
        "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>",
        "ALL CAPS SENTENCE WITH NUMBERS 123 AND 'QUOTES'",
        "\r\n\r\n",
        " ",
        "\n",
        "\t",
        "a",
        "  leading and trailing  ",
        "\u0300 starts with a combining mark",
        "ends with a combining mark e\u0301",
        "ends with space ",
        "Ω \u03a9 \u2126 K \u212a",
    ])


CATEGORIES = [
    ("prose", prose, 400), ("code", code, 250), ("numbers", numbers, 150), ("whitespace", whitespace, 250),
    ("punct", punct, 100), ("scripts", scripts, 250), ("emoji", emoji, 100), ("specials", specials, 120),
    ("contractions", contractions, 100), ("uspaces", uspaces, 100), ("longword", longword, 40),
    ("compat", compat, 60), ("misc", misc, 40), ("mixed", None, 150),
]

HAND = [
    "Hello world", "Hello", " Hello", "hello world!", "a b", "a  b", "a   b", "a    b", " a    b", "a" + " " * 25 + "b",
    " " * 24, " " * 25, " " * 48, " " * 49, "\n\n\n", " \n", "\n ", "a \n b", "a\t\tb", "  \tb",
    "<|endoftext|>", " <|endoftext|>", "<|endoftext|> ", "a<|endoftext|>b", "<|unk|>", "a   <|endoftext|>",
    "I'm", "I'M", "don't", "DON'T", "'s", " 's", "''s", "it's 'sup", "x'll'd've", "", "'", "''",
    "3.14159", "2024-01-01", "1,000,000", "Ångström", "A\u030angstro\u0308m", "e\u0301", "ﬁ",
    "😀", "👍🏽", "👨‍👩‍👧‍👦", "a\u00a0b", "\u00a0", " \u00a0", "\u00a0 ", "a\u3000b", "x\u0085y",
    "x \u2003 y", "Hello world\r\n", "\r\n", "\r", " \r\n a",
]


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUT
    r = random.Random(20261123)
    texts = [("hand", t) for t in HAND]
    gens = [(c, g) for c, g, _ in CATEGORIES if g]
    for cat, gen, n in CATEGORIES:
        for _ in range(n):
            if gen is None:
                parts = [r.choice(gens)[1](r) for _ in range(r.randint(2, 4))]
                t = "".join(p + (ws_run(r, 6) if r.random() < 0.5 else "") for p in parts)
            else:
                t = gen(r)
            texts.append((cat, t))
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    size = 0
    with open(out, "w", encoding="utf-8", newline="\n") as f:
        for i, (cat, t) in enumerate(texts):
            assert "\0" not in t
            t.encode("utf-8")  # valid (no lone surrogates)
            line = json.dumps({"id": i, "cat": cat, "text": t}, ensure_ascii=False)
            size += len(line.encode("utf-8")) + 1
            f.write(line + "\n")
    print("wrote %s: %d texts, %d bytes" % (out, len(texts), size))
    r = random.Random(7)
    lines = []
    while sum(len(x) + 1 for x in lines) < 60000:
        k = r.random()
        if k < 0.15:
            lines.append(r.choice(PARAGRAPHS))
        elif k < 0.25:
            lines.append(sentence(r) + " " + numbers(r) + ".")
        elif k < 0.3:
            lines.append(r.choice(list(SCRIPTS.values())[-3:]))
        else:
            lines.append(" ".join(sentence(r) for _ in range(r.randint(1, 4))))
    spm_out = os.path.join(os.path.dirname(os.path.abspath(out)), "spm_train.txt")
    with open(spm_out, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")
    print("wrote %s: %d lines" % (spm_out, len(lines)))


if __name__ == "__main__":
    main()
