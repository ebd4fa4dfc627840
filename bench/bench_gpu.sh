#!/usr/bin/env bash
# bench/bench_gpu.sh: GPU engine speed on 130m- and 2.8b-shaped models (random weights in the real
# shapes: speed does not depend on the values), against the floors of this machine.
#
#   bench/bench_gpu.sh [shapes...]      default: 130m 2.8b; REPS=5, DTYPE=fp16 (fp32, bf16, q8_0,
#                                       q4_0), BENCH_DIR=/tmp/bench_gpu, CASES (bench_gpu's third
#                                       argument: which cases)
#
# Per model: prefill tok/s for 512/2048/8192-token prompts and for single 16/32/64-token prompts,
# decode tok/s with 1 sequence, and total decode tok/s with 1/8/64 sequences at once; each with its
# floor (see bench/bench_gpu.cu). The benchmark binary is rebuilt only when its sources changed.
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DIR=${BENCH_DIR:-/tmp/bench_gpu}
DTYPE=${DTYPE:-fp16}
mkdir -p "$DIR"
make -s runcuda >/dev/null # builds build/cuda/model.o too
fresh() { local b=$1 f; shift; [ -x "$b" ] || return 1; for f in "$@"; do [ "$b" -nt "$f" ] || return 1; done; }
fresh "$DIR/bench_gpu" bench/bench_gpu.cu run.cu cuda/*.cuh build/cuda/model.o ||
    ${NVCC:-nvcc} -O3 -arch=${CUDA_ARCH:-sm_90} -I. -o "$DIR/bench_gpu" bench/bench_gpu.cu run.cu build/cuda/model.o -lcublas
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem --format=csv,noheader 2>/dev/null || true
for s in ${@:-130m 2.8b}; do
    M="$DIR/${s}_$DTYPE.bin"
    [ -f "$M" ] || $PY bench/make_synth.py --shape "$s" --dtype "$DTYPE" "$M"
    "$DIR/bench_gpu" "$M" "${REPS:-5}" ${CASES:+"$CASES"}
done
