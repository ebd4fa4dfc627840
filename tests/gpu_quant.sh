#!/usr/bin/env bash
# tests/gpu_quant.sh: the GPU machine's checks of q8_0 and q4_0 weights in ./runcuda, in one call
# (from the repo root; OUT is where results go, default /tmp/gpu_quant; about 6 minutes on an H200):
#   1. checkpoints (tests/make_checkpoint.py) of tiny and 130m (Mamba-1), m2tiny and m2codestral
#      (Mamba-2, tied and untied), falcon-tiny (Falcon-Mamba, untied), exported in q8_0 and q4_0;
#      tests/gpu_check.sh on them (SHAPES=none EXTRA_MODELS=...): ./runcuda against ./run section by
#      section (relative L2 5e-2 for quantized files: gpu_check.sh's compare.py says why), against
#      itself, with the GEMV rows split or not and the scan cut or not, with PDL off, and ./run vs
#      ./runcuda on the command line; its step 4 (transformers) says why it skips them
#   2. compute-sanitizer memcheck and racecheck on the tiny q4_0 model (EXTRA_SANITIZE=1)
#   3. bench/bench_gpu.sh on the 130m and 2.8b shapes in fp16, q8_0 and q4_0 (prefill 512/2048/8192,
#      decode batch 1/8/64; REPS=3), then each quantized type's speed against fp16's, per model and
#      case (the issue's targets, 2.8b: decode batch 1 q8_0 >= 1.7x, q4_0 >= 2.8x; prefill >= 0.8x)
# Both engines quantize a quantized matrix's activations per block of 32 (model.h, "ACTIVATIONS OF A
# QUANTIZED MATRIX"); gpu_check.sh's bounds for q8_0/q4_0 say what that leaves between them. ./run
# must be one that implements it (its branch merged), or the GPU-vs-CPU lines fail at ~1e-2.
# STEPS="check sanitize bench" picks the parts. Pass: gpu_check's "failed 0" (twice) and the ratios.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_quant}
PY=${PYTHON:-python3}
W=${GPU_CHECK_DIR:-/tmp/gpu_check}
mkdir -p "$OUT" "$W"
STEPS=${STEPS:-check sanitize bench}
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null

if has check || has sanitize; then
    make -s run runcuda >"$W/build_quant.log" 2>&1 || { tail -20 "$W/build_quant.log"; exit 1; }
    EXTRA=""
    for s in tiny m2tiny m2codestral falcon-tiny 130m; do
        [ -d "$W/${s}_hf" ] || $PY tests/make_checkpoint.py --shape $s --layout hf "$W/${s}_hf" >/dev/null ||
            { echo "make_checkpoint.py --shape $s failed"; continue; }
        for d in q8_0 q4_0; do
            [ -f "$W/${s}_$d.bin" ] || $PY export.py "$W/${s}_hf" "$W/${s}_$d.bin" --dtype $d >/dev/null ||
                { echo "export.py $s --dtype $d failed"; continue; }
            EXTRA="$EXTRA $W/${s}_$d.bin:$W/${s}_hf"
        done
    done
fi

if has check; then
    echo "== gpu_check on the quantized models"
    SHAPES=none EXTRA_MODELS="$EXTRA" OMP_NUM_THREADS=16 timeout 360 bash tests/gpu_check.sh >"$OUT/gpu_check.log" 2>&1
    echo "gpu_check exit $?"
    grep -E "FAIL|WARN" "$OUT/gpu_check.log" | head -40
    grep -E "SKIP" "$OUT/gpu_check.log" | sort -u | head -3
    tail -1 "$OUT/gpu_check.log"
fi

if has sanitize; then
    echo "== compute-sanitizer on tiny q4_0"
    SHAPES=none EXTRA_MODELS="$W/tiny_q4_0.bin" EXTRA_SANITIZE=1 OMP_NUM_THREADS=16 timeout 240 \
        bash tests/gpu_check.sh >"$OUT/gpu_sanitizer.log" 2>&1
    echo "gpu_check (sanitizer) exit $?"
    grep -E "sanitizer" "$OUT/gpu_sanitizer.log" | tail -4
    tail -1 "$OUT/gpu_sanitizer.log"
fi

if has bench; then
    echo "== bench"
    for d in fp16 q8_0 q4_0; do
        DTYPE=$d REPS=3 CASES=prefill,decode1,decode8,decode64 timeout 240 bash bench/bench_gpu.sh 130m 2.8b 2>&1 |
            tee "$OUT/bench_$d.txt"
    done
    # speed of each quantized type against fp16's, per model and case
    $PY - "$OUT" <<'EOF'
import re, sys
def cases(path):
    out, model = {}, None
    for line in open(path):
        m = re.match(r"# .*\| (?:\S*/)?([^/\s]+?)_(?:fp32|fp16|bf16|q8_0|q4_0)\.bin:", line)
        if m: model = m.group(1)
        m = re.match(r"((?:prefill|decode batch) \d+)\s+(\d+)", line)
        if m and model: out[(model, m.group(1))] = float(m.group(2))
    return out
base = cases(sys.argv[1] + "/bench_fp16.txt")
q = {d: cases("%s/bench_%s.txt" % (sys.argv[1], d)) for d in ("q8_0", "q4_0")}
print("%-6s %-18s %10s %14s %14s" % ("model", "case", "fp16 tok/s", "q8_0 (x fp16)", "q4_0 (x fp16)"))
for k, v in base.items():
    cols = ["%7.0f (%4.2fx)" % (q[d][k], q[d][k] / v) if k in q[d] else "-" for d in ("q8_0", "q4_0")]
    print("%-6s %-18s %10.0f %14s %14s" % (k[0], k[1], v, *cols))
EOF
fi
