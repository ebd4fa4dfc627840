"""Chat mode (--chat): the state carries the conversation, so chat over several turns must equal one
run over the whole transcript (same tokens, same logits); saved states resume a chat; templates;
and a terminal session through a pseudo-terminal, Ctrl-C included."""
import json
import os
import pty
import select
import signal
import struct
import subprocess
import time

import numpy as np
import pytest

from conftest import HANG_TIMEOUT, PYTHON, REPO
from test_run import one_line_error, run

RUN = os.path.join(REPO, os.environ.get("RUN", "./run"))
TEMPLATE = "system: <sys>{}</sys>\\n\nuser: <u>{}</u>\\n\nassistant: <a>{}</a>\\n"
PREFIX = {"system": "<sys>", "user": "<u>", "assistant": "<a>"}
SUFFIX = {"system": "</sys>\n", "user": "</u>\n", "assistant": "</a>\n"}
TURNS = ["Hello there", "What is a snake?", "Tell me more, é 😀"]
N = 6


def chat(model, turns, *flags, tmp_path=None):
    r = run(model, "--chat", "--chat-template", TEMPLATE, "-t", "0", "-n", N, "--ignore-eos", "--ids", "-q", *flags,
            stdin="".join(t + "\n" for t in turns).encode())
    assert r.returncode == 0, r.stderr.decode()
    return [[int(x) for x in line.split()] for line in r.stdout.decode().splitlines()]


def tokenize(model, text):
    r = run(model, "--tokenize", "-i", text)
    assert r.returncode == 0, r.stderr.decode()
    return [int(x) for x in r.stdout.split()]


def turn_text(k, line, system=None, resumed=False):
    t = ""
    if k == 0 and system is not None:
        t += PREFIX["system"] + system + SUFFIX["system"]
    if k > 0 or resumed:
        t += SUFFIX["assistant"]
    return t + PREFIX["user"] + line + SUFFIX["user"] + PREFIX["assistant"]


@pytest.mark.parametrize("system", [None, "Be brief."])
def test_chat_equals_one_run_over_the_transcript(tiny_model_bin, tmp_path, system):
    flags = ["--system", system] if system else []
    lf = tmp_path / "chat_logits.bin"
    replies = chat(tiny_model_bin, TURNS, *flags, "--logits", lf)
    assert len(replies) == len(TURNS) and all(len(r) == N for r in replies)
    rows = struct.unpack_from("<i", open(tiny_model_bin, "rb").read(64), 40)[0]
    chat_rows = np.fromfile(lf, dtype=np.float32).reshape(len(TURNS), N, rows)
    transcript = []
    for k, line in enumerate(TURNS):
        transcript += tokenize(tiny_model_bin, turn_text(k, line, system))
        one = tmp_path / ("one%d.bin" % k)
        r = run(tiny_model_bin, "--ids", "-i", " ".join(map(str, transcript)), "-t", "0", "-n", N, "--ignore-eos", "-q", "--logits", one)
        assert r.returncode == 0, r.stderr.decode()
        assert [int(x) for x in r.stdout.split()] == replies[k], k
        one_rows = np.fromfile(one, dtype=np.float32).reshape(N, rows)
        assert np.abs(one_rows - chat_rows[k]).max() < 1e-4, k
        transcript += replies[k]


def test_chat_resumes_from_a_saved_state(tiny_model_bin, tmp_path):
    whole = chat(tiny_model_bin, TURNS)
    s = tmp_path / "chat.state"
    first = chat(tiny_model_bin, TURNS[:2], "--state-out", s)
    assert first == whole[:2]
    rest = chat(tiny_model_bin, TURNS[2:], "--state-in", s)
    assert rest == whole[2:]


def test_chat_text_and_template_suffix_stops(tiny_model_bin):
    """Text replies, one a line; a reply ends where the assistant SUFFIX appears (here: a stop string
    that the random model emits soon, so that the stop is exercised)."""
    r = run(tiny_model_bin, "--chat", "-s", "3", "-n", "40", "-q", stdin=b"Hi\nAgain\n")
    assert r.returncode == 0, r.stderr.decode()
    out = r.stdout.decode()
    assert out.count("\n") >= 2 and "\n\n\n" not in out.rstrip("\n") + "x"  # the fallback's "\n\n" ends a reply and is not printed
    e = run(tiny_model_bin, "--chat", "-s", "3", "-n", "40", "-q", "--chat-template", "user: U: {}\\n\nassistant: A:{}e", stdin=b"Hi\n")
    assert e.returncode == 0 and "e" not in e.stdout.decode()


@pytest.mark.parametrize("args,words", [
    (["--chat", "--chat-template", "{% for m in messages %}{{ m.content }}{% endfor %}"], ["Jinja", "{%"]),
    (["--chat", "--chat-template", "user: {}"], ["no line for the role assistant"]),
    (["--chat", "--chat-template", "user: {}\nassistant: {}\nuser: x{}"], ["two lines for the role user"]),
    (["--chat", "--chat-template", "bot: {}"], ["not \"ROLE: PREFIX{}SUFFIX\""]),
    (["--chat", "--chat-template", "user: {}\\q\nassistant: {}"], ["escape"]),
    (["--chat", "--chat-template", "user: {}\nassistant: {}", "--system", "x"], ["no line for the role system"]),
    (["--chat", "-i", "x"], ["--chat", "-i"]),
    (["--system", "x"], ["--chat"]),
    (["--chat", "--score"], ["--chat", "--score"]),
])
def test_chat_usage_errors(tiny_model_bin, args, words):
    one_line_error(run(tiny_model_bin, *args, stdin=b"hi\n"), 2, *words)


def read_until(fd, want, timeout=60.0):
    buf, end = b"", time.time() + timeout
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.2)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            if want in buf:
                return buf
    raise AssertionError("did not see %r in %r" % (want, buf[-400:]))


def test_chat_in_a_terminal_with_ctrl_c(tiny_model_bin):
    """Through a pseudo-terminal: the prompt, a reply, Ctrl-C in the middle of a (very long) reply ends
    that reply and not the program, Ctrl-C at the prompt gives a new prompt, and Ctrl-D ends the chat."""
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["OMP_NUM_THREADS"] = "1"
        os.execv(RUN, [RUN, tiny_model_bin, "--chat", "-s", "1", "-n", "100000000", "--ignore-eos", "-q",
                       "--chat-template", "user: U: {}\\n\nassistant: A:{}</a>"])
    try:
        read_until(fd, b"> ")
        os.write(fd, b"Hello\n")
        read_until(fd, b"Hello\r\n")        # the terminal's echo
        time.sleep(1.0)                      # part of the reply
        os.write(fd, b"\x03")                # Ctrl-C: SIGINT to the program
        out = read_until(fd, b"> ")          # the reply ended, the prompt is back
        assert len(out) > 20
        os.write(fd, b"\x03")                # Ctrl-C at the prompt: a new prompt, not the end
        read_until(fd, b"> ")
        os.write(fd, b"Again\n")
        read_until(fd, b"Again\r\n")
        time.sleep(0.5)
        os.write(fd, b"\x03")
        read_until(fd, b"> ")
        os.write(fd, b"\x04")                # Ctrl-D: the end of the input
        deadline, rest = time.time() + 30, b""
        while time.time() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            try:
                rest += os.read(fd, 4096)
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise AssertionError("the chat did not end at Ctrl-D: %r" % rest[-300:])
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (status, rest[-300:])
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.close(fd)


# ------------------------------------------------------------------------------------------------
# the model's chat template: export.py converts tokenizer_config.json's chat_template into model.bin

MAMBA_CHAT = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n"
              "{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
              "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
              "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
MAMBA_CHAT_OURS = ("system: <|system|>\\n{}<|endoftext|>\\n\nuser: <|user|>\\n{}<|endoftext|>\\n\n"
                   "assistant: <|assistant|>\\n{}<|endoftext|>\\n\n")
BY_POSITION = "{% for m in messages %}{% if loop.first %}FIRST {% endif %}{{ m['content'] }}\n{% endfor %}"


def export_with_template(checkpoints, tmp_path, template):
    import shutil
    pytest.importorskip("jinja2")
    folder = tmp_path / "ckpt"
    shutil.copytree(checkpoints.folder("tiny"), folder)
    cfg = folder / "tokenizer_config.json"
    d = json.loads(cfg.read_text()) if cfg.exists() else {}
    d["chat_template"], d["eos_token"] = template, "<|endoftext|>"
    cfg.write_text(json.dumps(d))
    out = tmp_path / "model.bin"
    r = subprocess.run([PYTHON, os.path.join(REPO, "export.py"), folder, out], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out, r.stderr


def header_chat(path):
    h = open(path, "rb").read(256)
    tok_off, tok_bytes = struct.unpack_from("<2Q", h, 64)
    off, n = struct.unpack_from("<2Q", h, 136)
    return tok_off + tok_bytes, off, n


def test_export_stores_the_chat_template(checkpoints, tmp_path, tiny_model_bin):
    model, err = export_with_template(checkpoints, tmp_path, MAMBA_CHAT)
    tok_end, off, n = header_chat(model)
    assert off == tok_end and n > 0 and err == ""
    assert open(model, "rb").read()[off:off + n].decode() == MAMBA_CHAT_OURS
    # the weights are the same as without the template
    assert open(model, "rb").read()[-4096:] == open(tiny_model_bin, "rb").read()[-4096:]
    assert header_chat(tiny_model_bin)[1:] == (0, 0)
    # chat mode uses it: the same replies as with the same template given on the command line
    args = ["--chat", "-t", "0", "-n", N, "--ignore-eos", "--ids", "-q"]
    turns = "".join(t + "\n" for t in TURNS).encode()
    a = run(model, *args, "--system", "Be brief.", stdin=turns)
    b = run(model, *args, "--system", "Be brief.", "--chat-template", MAMBA_CHAT_OURS, stdin=turns)
    c = run(model, *args, "--system", "Be brief.", "--chat-template", "system: {}\nuser: {}\nassistant: {}", stdin=turns)
    assert a.returncode == 0 and a.stdout == b.stdout and a.stdout != c.stdout, a.stderr


def test_export_refuses_a_template_it_cannot_express(checkpoints, tmp_path):
    model, err = export_with_template(checkpoints, tmp_path, BY_POSITION)
    assert header_chat(model)[1:] == (0, 0)
    assert err.count("\n") == 1 and "warning" in err and "chat_template is not stored" in err and "place" in err, err


def test_corrupt_chat_section_refused(checkpoints, tmp_path):
    model, _ = export_with_template(checkpoints, tmp_path, MAMBA_CHAT)
    data = bytearray(open(model, "rb").read())
    for off, n in ((100, 10), (0, 5), (1 << 40, 5)):
        struct.pack_into("<2Q", data, 136, off, n)
        bad = tmp_path / "bad.bin"
        bad.write_bytes(bytes(data))
        one_line_error(run(bad, "-i", "x", "-n", "1"), 1, "chat template section")
