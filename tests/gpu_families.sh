#!/usr/bin/env bash
# tests/gpu_families.sh: the GPU machine's part of the Mamba-2 and Falcon-Mamba checks, in one call
# (from the repo root; OUT is where results go, default /tmp/gpu_families):
#   1. golden logits from Hugging Face transformers (Mamba2ForCausalLM with the group-wise gated
#      norm patched in for n_groups > 1, FalconMambaForCausalLM; fp32, TF32 off) for the seeded
#      checkpoints of tests/make_checkpoint.py -> $OUT/golden/hf_<shape>_seed0.npz (committed as
#      tests/data/golden/)
#   2. tests/gpu_check.sh on those models (fp32, fp16, bf16): ./runcuda against ./run, against
#      itself (prefill vs step, copied states) and against transformers; compute-sanitizer
#   3. speed: bench/bench_gpu.sh on the mamba2-130m and mamba2-2.7b shapes (fp16)
# STEPS="golden check bench" picks the parts.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_families}
PY=${PYTHON:-python3}
W=${GPU_CHECK_DIR:-/tmp/gpu_check}
mkdir -p "$OUT" "$W"
STEPS=${STEPS:-golden check bench}
SHAPES_NEW=${SHAPES_NEW:-m2tiny m2codestral falcon-tiny m2-130m}
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
$PY -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'

golden() { # shapes...: the 130m-shaped one takes longest, so it runs last
    mkdir -p "$OUT/golden"
    for s in "$@"; do
        echo "== golden $s"
        timeout 300 $PY tests/gen_hf_golden.py --shape $s --device cuda --out "$OUT/golden" 2>&1 | tail -8
    done
}
SMALL=$(echo $SHAPES_NEW | tr ' ' '\n' | grep -v 130m | tr '\n' ' ')
has golden && golden $SMALL

if has check; then
    echo "== gpu_check"
    make -s run runcuda >"$W/build_families.log" 2>&1 || { tail -20 "$W/build_families.log"; exit 1; }
    EXTRA=""
    for s in $SHAPES_NEW; do
        [ -d "$W/${s}_hf" ] || $PY tests/make_checkpoint.py --shape $s --layout hf "$W/${s}_hf" >/dev/null
        for d in fp32 fp16 bf16; do
            [ $s = m2-130m ] && [ $d = bf16 ] && continue
            [ -f "$W/${s}_$d.bin" ] || $PY export.py "$W/${s}_hf" "$W/${s}_$d.bin" --dtype $d >/dev/null
            EXTRA="$EXTRA $W/${s}_$d.bin:$W/${s}_hf"
        done
    done
    SHAPES=none EXTRA_MODELS="$EXTRA" OMP_NUM_THREADS=16 timeout 420 bash tests/gpu_check.sh >"$OUT/gpu_check.log" 2>&1
    echo "gpu_check exit $?"
    grep -E "FAIL|WARN" "$OUT/gpu_check.log" | head -40
    tail -3 "$OUT/gpu_check.log"
    # compute-sanitizer on the small fp32 models (the checks above repeat on them: they are quick)
    SAN_MODELS=""
    for s in $SMALL; do SAN_MODELS="$SAN_MODELS $W/${s}_fp32.bin"; done
    SHAPES=none EXTRA_MODELS="$SAN_MODELS" EXTRA_SANITIZE=1 OMP_NUM_THREADS=16 timeout 300 bash tests/gpu_check.sh >"$OUT/gpu_sanitizer.log" 2>&1
    echo "gpu_check (sanitizer) exit $?"
    grep -E "sanitizer" "$OUT/gpu_sanitizer.log" | tail -8
fi

if has bench; then
    echo "== bench"
    REPS=3 timeout 300 bash bench/bench_gpu.sh m2-130m m2-2.7b 2>&1 | tee "$OUT/bench.txt"
fi

has golden && echo "$SHAPES_NEW" | grep -q 130m && golden $(echo $SHAPES_NEW | tr ' ' '\n' | grep 130m)
