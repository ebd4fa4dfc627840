#!/bin/sh
# deps.sh: the packages that `make run` and `make test` need; installs the missing ones.
#
#   sh deps.sh [test] [torch] [fuzz]  (make runs it first; `make deps [WITH_TORCH=1]` runs it alone)
#
# Without arguments: what building ./run and `make run` need (the bundled model's tokenizer is a
# SentencePiece one). test: and what the test suite and `make bench` need. torch: and python3-torch,
# which only the tests that write pytorch_model.bin checkpoints (torch.save) use; without it they are
# skipped, and CI asks for it. fuzz: clang and its libFuzzer runtime (make fuzz, make fuzz-ci).
#
# On Debian and Ubuntu (dpkg-query tells what is installed): as root it runs apt-get install with the
# missing packages, as a user with sudo the same through sudo, and otherwise prints the one command
# to run and exits 1. Elsewhere it looks for the programs and libraries themselves and names the
# Fedora (dnf) or Arch (pacman) packages in one line. When everything is there it prints nothing.
set -e

test_deps= torch_deps= fuzz_deps=
for a in "$@"; do
    case $a in
    test) test_deps=1 ;;
    torch) torch_deps=1 ;;
    fuzz) fuzz_deps=1 ;;
    *) echo "usage: sh deps.sh [test] [torch] [fuzz]" >&2; exit 2 ;;
    esac
done

have_dpkg=
command -v dpkg-query >/dev/null 2>&1 && have_dpkg=1
wanted= missing= fedora= arch=

# need DEBIAN FEDORA ARCH CHECK...: one package; CHECK tells whether it is there where dpkg is not.
need() {
    deb=$1 fed=$2 pac=$3
    shift 3
    wanted="$wanted $deb"
    [ -n "$have_dpkg" ] && return 0
    "$@" >/dev/null 2>&1 && return 0
    missing="$missing $deb" fedora="$fedora $fed"
    case "$arch " in *" $pac "*) ;; *) arch="$arch $pac" ;; esac # Arch's gcc has g++ too
}

need gcc gcc gcc command -v gcc
need g++ gcc-c++ gcc command -v g++
need make make make command -v make
need pkg-config pkgconf-pkg-config pkgconf command -v pkg-config
need libutf8proc-dev utf8proc-devel libutf8proc pkg-config --exists libutf8proc
need libcjson-dev cjson-devel cjson pkg-config --exists libcjson
need libxxhash-dev xxhash-devel xxhash pkg-config --exists libxxhash
need libsentencepiece-dev sentencepiece-devel sentencepiece pkg-config --exists sentencepiece
if [ -n "$test_deps" ]; then
    need python3-numpy python3-numpy python-numpy python3 -c "import numpy"
    need python3-pytest python3-pytest python-pytest python3 -c "import pytest"
    need sentencepiece sentencepiece-tools sentencepiece command -v spm_train
    need python3-sentencepiece python3-sentencepiece python-sentencepiece python3 -c "import sentencepiece"
    need python3-jinja2 python3-jinja2 python-jinja python3 -c "import jinja2"
    need parallel parallel parallel command -v parallel # the GNU parallel recipe of README.md (test_batch_resume.py)
    need python3-matplotlib python3-matplotlib python-matplotlib python3 -c "import matplotlib" # bench/plot.py (test_batch.py)
fi
if [ -n "$torch_deps" ]; then
    need python3-torch python3-torch python-pytorch python3 -c "import torch"
fi
if [ -n "$fuzz_deps" ]; then
    need clang clang clang command -v clang
    need libclang-rt-14-dev compiler-rt compiler-rt sh -c 'clang -print-file-name=libclang_rt.fuzzer-x86_64.a | grep -q /'
fi

if [ -n "$have_dpkg" ]; then
    # One dpkg-query for all (make runs this every time): "ii" is installed; a removed package whose
    # configuration files remain, or one dpkg has never heard of, is not.
    installed=" $(dpkg-query -W -f='${db:Status-Abbrev}${Package}\n' $wanted 2>/dev/null | sed -n 's/^ii *//p' | tr '\n' ' ')"
    for p in $wanted; do
        case "$installed" in *" $p "*) ;; *) missing="$missing $p" ;; esac
    done
fi

[ -z "$missing" ] && exit 0
missing=${missing# }

if [ -z "$have_dpkg" ]; then
    if command -v dnf >/dev/null 2>&1; then
        echo "deps.sh: missing:$fedora; install them with: sudo dnf install$fedora" >&2
    elif command -v pacman >/dev/null 2>&1; then
        echo "deps.sh: missing:$arch; install them with: sudo pacman -S --needed$arch" >&2
    else
        echo "deps.sh: missing (Debian names):$missing; Fedora:$fedora; Arch:$arch" >&2
    fi
    exit 1
fi

install="apt-get install -y --no-install-recommends $missing"
if [ "$(id -u)" = 0 ]; then
    echo "deps.sh: installing $missing" >&2
    apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $install >&2
elif command -v sudo >/dev/null 2>&1; then
    echo "deps.sh: installing $missing (through sudo)" >&2
    sudo apt-get update -q >&2
    sudo DEBIAN_FRONTEND=noninteractive $install >&2
else
    echo "deps.sh: missing packages: $missing; install them as root: $install" >&2
    exit 1
fi
