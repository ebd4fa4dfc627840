"""deps.sh (make deps, run first by make run and make test) against fake system tools: a dpkg-query
that reports some packages missing, an id -u that says root or not, and apt-get, sudo and dnf that
only record their arguments. PATH holds only the fakes (and the few real tools the script uses), so
the real system is never asked nor changed."""
import os
import shutil
import subprocess

import pytest

from conftest import REPO

DEPS = os.path.join(REPO, "deps.sh")
BUILD = ["gcc", "g++", "make", "pkg-config", "libutf8proc-dev", "libcjson-dev", "libxxhash-dev", "libsentencepiece-dev"]
TEST = ["python3-numpy", "python3-pytest", "sentencepiece", "python3-sentencepiece", "python3-jinja2", "parallel",
        "python3-matplotlib"]

# dpkg-query -W -f=FORMAT PKG...: "ii PKG" for an installed package, as the real one prints with
# ${db:Status-Abbrev}${Package}; a package of FAKE_MISSING is unknown to it.
FAKE_DPKG_QUERY = """#!/bin/sh
shift 2
for p; do
    case " $FAKE_MISSING " in
    *" $p "*) echo "dpkg-query: no packages found matching $p" >&2 ;;
    *) echo "ii $p" ;;
    esac
done
"""
FAKE_APT_GET = '#!/bin/sh\necho "apt-get[$DEBIAN_FRONTEND] $*" >> "$FAKE_LOG"\n'
FAKE_SUDO = '#!/bin/sh\necho "sudo $*" >> "$FAKE_LOG"\n'


@pytest.fixture
def fake(tmp_path):
    """fake(missing, uid, sudo, dpkg, extra) -> run(*args, make=False), which runs deps.sh (or make)
    and returns its exit code, stdout, stderr and the recorded apt-get and sudo calls."""
    def setup(missing=(), uid=0, sudo=False, dpkg=True, extra=None):
        bin_ = tmp_path / "bin"
        bin_.mkdir()
        for tool in ("sed", "tr", "make", "pkg-config"):
            os.symlink(shutil.which(tool), bin_ / tool)
        files = {"id": "#!/bin/sh\necho %d\n" % uid, "apt-get": FAKE_APT_GET}
        if dpkg:
            files["dpkg-query"] = FAKE_DPKG_QUERY
        if sudo:
            files["sudo"] = FAKE_SUDO
        files.update(extra or {})
        for name, text in files.items():
            path = bin_ / name
            if path.is_symlink():
                path.unlink()  # a fake in place of a real tool: never write through the link
            path.write_text(text)
            path.chmod(0o755)
        log = tmp_path / "log"
        env = {"PATH": str(bin_), "FAKE_MISSING": " ".join(missing), "FAKE_LOG": str(log), "HOME": str(tmp_path)}

        def run(*args, make=False):
            cmd = ["make", "-s", "--no-print-directory", *args] if make else ["/bin/sh", DEPS, *args]
            r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
            calls = log.read_text().splitlines() if log.exists() else []
            return r.returncode, r.stdout, r.stderr, calls
        return run
    return setup


def test_user_without_sudo_gets_the_command(fake):
    rc, out, err, calls = fake(missing=["libutf8proc-dev", "python3-pytest"], uid=1000)("test")
    assert rc == 1 and out == "" and calls == []
    assert err.count("\n") == 1, err
    assert err.strip().endswith("install them as root: apt-get install -y --no-install-recommends libutf8proc-dev python3-pytest"), err


def test_root_installs_the_missing_packages(fake):
    rc, out, err, calls = fake(missing=["libsentencepiece-dev", "python3-numpy"], uid=0)("test")
    assert rc == 0, err
    assert calls == ["apt-get[] update -q",
                     "apt-get[noninteractive] install -y --no-install-recommends libsentencepiece-dev python3-numpy"]


def test_user_with_sudo_installs_through_sudo(fake):
    rc, out, err, calls = fake(missing=["gcc"], uid=1000, sudo=True)()
    assert rc == 0, err
    assert calls == ["sudo apt-get update -q",
                     "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc"]


def test_groups(fake):
    """Without arguments only the build's packages count; torch adds python3-torch."""
    run = fake(missing=TEST + ["python3-torch"], uid=1000)
    assert run()[:3] == (0, "", "")
    rc, _, err, _ = run("test")
    assert rc == 1 and err.strip().endswith("apt-get install -y --no-install-recommends " + " ".join(TEST)), err
    rc, _, err, _ = run("test", "torch")
    assert rc == 1 and err.strip().endswith(" ".join(TEST) + " python3-torch"), err
    assert run("bogus")[0] == 2


def test_build_packages(fake):
    """Every package the build links against is asked for without arguments (xxHash: saved states)."""
    rc, _, err, _ = fake(missing=BUILD, uid=1000)()
    assert rc == 1 and err.strip().endswith("apt-get install -y --no-install-recommends " + " ".join(BUILD)), err


def test_all_present_is_silent(fake):
    run = fake(missing=["python3-torch"], uid=1000)
    assert run("test") == (0, "", "", [])
    assert run("deps", make=True) == (0, "", "", [])


def test_make_stops_with_the_message(fake):
    """make deps (and make run, make test) stop before any compiler error."""
    rc, out, err, calls = fake(missing=["libutf8proc-dev"], uid=1000)("deps", make=True)
    assert rc == 2 and calls == []
    assert "apt-get install -y --no-install-recommends libutf8proc-dev" in err and "cc " not in err, err


def test_other_distributions_get_their_package_names(fake):
    """No dpkg: the programs and libraries are looked for themselves, and dnf's names given."""
    ok = "#!/bin/sh\nexit 0\n"
    tools = {"gcc": ok, "g++": ok, "dnf": ok,
             "pkg-config": '#!/bin/sh\n[ "$2" != libutf8proc ]\n'}
    rc, out, err, calls = fake(dpkg=False, uid=1000, extra=tools)()
    assert rc == 1 and calls == []
    assert err == "deps.sh: missing: utf8proc-devel; install them with: sudo dnf install utf8proc-devel\n", err
