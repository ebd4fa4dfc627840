#!/usr/bin/env bash
# bench/profile_gpu.sh: where the GPU engine's time goes, kernel by kernel, on a GPU machine with
# Nsight Compute (ncu). Run from anywhere; writes nothing in the repository.
#
#   bench/profile_gpu.sh [shape] [dtype]       default: 2.8b fp16 (shapes of bench/make_synth.py)
#   CASES=decode1 bench/profile_gpu.sh ...     only some of the cases (default: prefill decode1)
#
# Through bench_gpu's BENCH_PROFILE mode (bench/bench_gpu.cu): one full prefill chunk (2048 tokens), then
# two decode steps of one sequence for each way a step ends (logits out, argmax ids, sampled ids: so
# the layers' kernels are counted six times, the sampling kernels twice), every kernel of them timed by ncu on its own (serialized, so
# the sum is more than the graph takes: kernels overlap there under programmatic dependent launch).
# Prints, per case, each kernel name's total time, share, calls and DRAM bytes read, largest first.
set -eu
cd "$(dirname "$0")/.."
SHAPE=${1:-2.8b}
DTYPE=${2:-fp16}
PY=${PYTHON:-python3}
DIR=${BENCH_DIR:-/tmp/bench_gpu}
NCU=${NCU:-$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)}
[ -n "$NCU" ] || { echo "profile_gpu.sh: ncu (Nsight Compute) not found; set NCU=/path/to/ncu" >&2; exit 1; }
mkdir -p "$DIR"
make -s runcuda >/dev/null # builds build/cuda/model.o too
${NVCC:-nvcc} -O3 -arch=${CUDA_ARCH:-sm_90} -I. -lineinfo -o "$DIR/bench_gpu" bench/bench_gpu.cu run.cu build/cuda/model.o -lcublas
M="$DIR/${SHAPE}_$DTYPE.bin"
[ -f "$M" ] || $PY bench/make_synth.py --shape "$SHAPE" --dtype "$DTYPE" "$M"
for CASE in ${CASES:-prefill decode1}; do
    echo "== $SHAPE $DTYPE, $CASE"
    BENCH_PROFILE=1 "$NCU" --profile-from-start off --metrics gpu__time_duration.sum,dram__bytes_read.sum \
        --csv --page raw "$DIR/bench_gpu" "$M" 1 "$CASE" >"$DIR/ncu_$CASE.csv" 2>"$DIR/ncu_$CASE.log" ||
        { tail -5 "$DIR/ncu_$CASE.log"; exit 1; }
    $PY - "$DIR/ncu_$CASE.csv" <<'EOF'
import csv, re, sys
rows = list(csv.reader(open(sys.argv[1])))  # bench_gpu's own lines come first, then ncu's table
start = next((i for i, r in enumerate(rows) if r[:1] == ["ID"]), None)
if start is None or len(rows) < start + 3:
    sys.exit("no kernels profiled (see the .log next to %s)" % sys.argv[1])
rows = rows[start:]
head, units = rows[0], rows[1]
col = {k: i for i, k in enumerate(head)}
SCALE = {"ns": 1e-9, "nsecond": 1e-9, "us": 1e-6, "usecond": 1e-6, "ms": 1e-3, "msecond": 1e-3, "s": 1.0,
         "second": 1.0, "byte": 1.0, "Kbyte": 1e3, "KB": 1e3, "Mbyte": 1e6, "MB": 1e6, "Gbyte": 1e9, "GB": 1e9}
def value(r, k):
    if units[col[k]] not in SCALE:
        sys.exit("unknown unit %r for %s" % (units[col[k]], k))
    return float(r[col[k]].replace(",", "")) * SCALE[units[col[k]]]
agg = {}
for r in rows[2:]:
    name = re.sub(r"\(.*", "", r[col["Kernel Name"]]).replace("void ", "")  # template arguments kept
    a = agg.setdefault(name, [0.0, 0, 0.0])
    a[0] += value(r, "gpu__time_duration.sum")
    a[1] += 1
    a[2] += value(r, "dram__bytes_read.sum")
total = sum(a[0] for a in agg.values())
print("%-60s %10s %6s %6s %10s %8s" % ("kernel", "us", "share", "calls", "MB read", "GB/s"))
for name, (t, n, b) in sorted(agg.items(), key=lambda kv: -kv[1][0]):
    print("%-60s %10.1f %5.1f%% %6d %10.1f %8.0f" % (name[:60], t * 1e6, 100 * t / total, n, b / 1e6, b / t / 1e9))
print("%-60s %10.1f" % ("total (kernels one at a time)", total * 1e6))
EOF
done
