#!/usr/bin/env bash
# tests/gpu_ssd.sh: the GPU checks of the chunked Mamba-2 prefill (cuda/ssd_chunk.cuh) in one call, from
# the repo root; about 5 minutes on an H200. Logs under OUT (default /tmp/gpu_ssd).
#   1. builds ./run, ./runcuda, engine_dump for the GPU and bench_gpu, at once; meanwhile makes the
#      checkpoints: m2tiny, m2codestral (8 groups), m2-130m (tests/make_checkpoint.py + export.py,
#      fp32 and fp16) and m2clamp (m2tiny with time_step_limit [0.01, 0.05]: dt clamped; fp32), and the
#      fp16 synthetic m2-130m and m2-2.7b models of the benchmark
#   2. tests/gpu_check.sh on them (SHAPES=none): ./runcuda against ./run, itself and transformers, by
#      default and with RUNCUDA_SSD=scan and =chunk (the two also against each other)
#   3. at the same time, tests/gpu_check.sh with EXTRA_SANITIZE=1 on m2tiny and m2codestral fp32:
#      compute-sanitizer memcheck and racecheck, by default and with RUNCUDA_SSD=chunk
#   4. bench/bench_gpu.sh m2-130m m2-2.7b: by default, with RUNCUDA_SSD=scan (prefill cases) and with
#      RUNCUDA_SSD=chunk (short prompts), then their prefill tok/s side by side
# STEPS="check bench" picks the parts (the build and the checkpoints come with either).
# Pass: both gpu_check runs print "exit 0" (every line PASS), and the table's default/scan column.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu_ssd}
PY=${PYTHON:-python3}
NVCC=${NVCC:-nvcc}
ARCH=${CUDA_ARCH:-sm_90}
# gpu_check.sh's work directory, our own: it also sanitizes the Mamba-1 tiny models when it finds them there
export GPU_CHECK_DIR=${GPU_CHECK_DIR:-$OUT/check} BENCH_DIR=${BENCH_DIR:-/tmp/bench_gpu}
W=$GPU_CHECK_DIR
mkdir -p "$OUT" "$W" "$BENCH_DIR"
STEPS=${STEPS:-check bench}
has() { case " $STEPS " in *" $1 "*) return 0;; esac; return 1; }
T0=$(date +%s)
stamp() { echo "== $1 ($(($(date +%s) - T0)) s)"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null

stamp "1. build, checkpoints"
checkpoints() {
    local s d
    for s in m2tiny m2codestral m2-130m; do
        [ -d "$W/${s}_hf" ] || $PY tests/make_checkpoint.py --shape $s --layout hf "$W/${s}_hf" || return 1
        for d in fp32 fp16; do
            [ -f "$W/${s}_$d.bin" ] || $PY export.py "$W/${s}_hf" "$W/${s}_$d.bin" --dtype $d || return 1
        done
    done
    if [ ! -f "$W/m2clamp_fp32.bin" ]; then # transformers clamps by time_step_limit too
        rm -rf "$W/m2clamp_hf" && cp -r "$W/m2tiny_hf" "$W/m2clamp_hf" &&
            $PY - "$W/m2clamp_hf/config.json" <<'EOF' && $PY export.py "$W/m2clamp_hf" "$W/m2clamp_fp32.bin" --dtype fp32
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["time_step_limit"] = [0.01, 0.05]
json.dump(cfg, open(sys.argv[1], "w"), indent=2)
EOF
    fi
}
checkpoints >"$OUT/checkpoints.log" 2>&1 &
p_ckpt=$!
has bench && (for s in m2-130m m2-2.7b; do
    [ -f "$BENCH_DIR/${s}_fp16.bin" ] || $PY bench/make_synth.py --shape $s --dtype fp16 "$BENCH_DIR/${s}_fp16.bin"
done) >"$OUT/synth.log" 2>&1 &
p_synth=$!
# the same commands as gpu_check.sh's and bench_gpu.sh's, which then find their binaries up to date
make -s build/cuda/model.o build/cuda/sampler.o build/cuda/util.o >"$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
make -s -j4 run runcuda >"$OUT/build_make.log" 2>&1 &
p1=$!
$NVCC -O3 -arch=$ARCH -I. -lineinfo -o "$W/dump_gpu" tests/engine_dump.c run.cu build/cuda/model.o build/cuda/sampler.o build/cuda/util.o -lcublas \
    >"$OUT/build_dump.log" 2>&1 &
p2=$!
$NVCC -O3 -arch=$ARCH -I. -o "$BENCH_DIR/bench_gpu" bench/bench_gpu.cu run.cu build/cuda/model.o -lcublas \
    >"$OUT/build_bench.log" 2>&1 &
p3=$!
build_ok=1
for p in $p1 $p2 $p3; do wait $p || build_ok=0; done
if [ $build_ok = 0 ]; then
    echo "build FAILED"; tail -20 "$OUT"/build_*.log; exit 1
fi
wait $p_ckpt || { echo "checkpoints FAILED"; tail -20 "$OUT/checkpoints.log"; exit 1; }

if has check; then
stamp "2, 3. gpu_check, and gpu_check with compute-sanitizer on m2tiny and m2codestral fp32, side by side"
EXTRA="$W/m2clamp_fp32.bin:$W/m2clamp_hf"
for s in m2tiny m2codestral m2-130m; do
    for d in fp32 fp16; do EXTRA="$EXTRA $W/${s}_$d.bin:$W/${s}_hf"; done
done
SHAPES=none EXTRA_MODELS="$EXTRA" OMP_NUM_THREADS=8 timeout 360 bash tests/gpu_check.sh >"$OUT/gpu_check.log" 2>&1 &
p_check=$!
# the sanitizer run in a directory of its own (gpu_check.sh's files are named by model), with a copy
# of the engine_dump just built
mkdir -p "$W/san" && cp -p "$W/dump_gpu" "$W/san/dump_gpu"
GPU_CHECK_DIR="$W/san" SHAPES=none EXTRA_MODELS="$W/m2tiny_fp32.bin $W/m2codestral_fp32.bin" EXTRA_SANITIZE=1 \
    OMP_NUM_THREADS=8 timeout 360 bash tests/gpu_check.sh >"$OUT/gpu_sanitizer.log" 2>&1 &
p_san=$!
wait $p_check
echo "gpu_check exit $?"
grep -E "FAIL|WARN" "$OUT/gpu_check.log" | sort -u | head -40
echo "SSD variant lines (SSD=scan, SSD=chunk, chunk_vs_scan): $(grep -E "SSD=|gpu_ssd/" "$W/results.tsv" | wc -l), failed: $(grep -E "SSD=|gpu_ssd/" "$W/results.tsv" | grep -c FAIL)"
tail -1 "$OUT/gpu_check.log"
wait $p_san
echo "gpu_check (sanitizer) exit $?"
grep -E "^sanitizer" "$W/san/results.tsv" | cut -f1-3
tail -1 "$OUT/gpu_sanitizer.log"

fi

has bench || { stamp done; exit 0; }
stamp "4. bench: default, RUNCUDA_SSD=scan, RUNCUDA_SSD=chunk"
wait $p_synth || { echo "synthetic models FAILED"; tail -5 "$OUT/synth.log"; }
REPS=3 timeout 150 bash bench/bench_gpu.sh m2-130m m2-2.7b 2>&1 | tee "$OUT/bench_default.txt"
RUNCUDA_SSD=scan CASES=prefill,short REPS=3 timeout 100 bash bench/bench_gpu.sh m2-130m m2-2.7b >"$OUT/bench_scan.txt" 2>&1
RUNCUDA_SSD=chunk CASES=short REPS=3 timeout 60 bash bench/bench_gpu.sh m2-130m m2-2.7b >"$OUT/bench_chunk.txt" 2>&1
# model | case: tok/s by default, forced scan, forced chunked
awk 'FNR == 1 { f++ }
     /^# .*\|/ { m = $0; sub(/^[^|]*\| */, "", m); sub(/:.*/, "", m); sub(/.*\//, "", m); next }
     /^(prefill|prompt)/ {
         c = substr($0, 1, 22); sub(/ +$/, "", c); k = m " | " c
         if (!(k in seen)) { seen[k] = 1; order[++n] = k }
         v[k, f] = $(NF - 2)
     }
     END {
         printf "%-38s %10s %10s %10s %13s\n", "model | case (tok/s)", "default", "scan", "chunk", "default/scan"
         for (i = 1; i <= n; i++) {
             k = order[i]; r = v[k, 2] > 0 ? sprintf("%.2fx", v[k, 1] / v[k, 2]) : "-"
             printf "%-38s %10s %10s %10s %13s\n", k, v[k, 1] == "" ? "-" : v[k, 1], v[k, 2] == "" ? "-" : v[k, 2],
                    v[k, 3] == "" ? "-" : v[k, 3], r
         }
     }' "$OUT/bench_default.txt" "$OUT/bench_scan.txt" "$OUT/bench_chunk.txt"
stamp done
