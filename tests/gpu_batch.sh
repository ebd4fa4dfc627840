#!/usr/bin/env bash
# tests/gpu_batch.sh: batch mode on the GPU, on a machine with an NVIDIA GPU. Run from the repo root.
# About 5-6 minutes on an H200 (most of it the builds, the 10,000-prompt runs and the 2.8b model).
#
#   tests/gpu_batch.sh            everything below; GPU_BATCH_DIR (default /tmp/gpu_batch) keeps the
#                                 models between runs; SKIP="longrun first" skips parts by name;
#                                 FIRST_SHAPES (default "130m 2.8b"): the shapes of part 5
#
# 1. build ./runcuda and bench/bench_gpu.cu (in parallel)
# 2. gpus: --gpus 0,0 (two engines on one GPU, so the dealing runs on a one-GPU machine) against
#    one engine, on a tiny model with a real tokenizer (tests/make_checkpoint.py, export.py):
#    stdout identical (timings aside) with -b 1, -o after a SIGTERM and --resume, --shard 1/3;
#    with -b 8 (reported, not failed: batched steps may round differently in other company);
#    the per-engine summary; --gpus all; bad lists refused (exit 2)
# 3. tenk: total tok/s of `./runcuda M -f prompts.jsonl -b 64 -n 64 --ignore-eos -t 0` over 10,000
#    prompts of 5-30 words (seeded), 130m-shaped fp16 (bench/make_synth.py), on 1 GPU and --gpus all;
#    then on 1 GPU with GPT-NeoX's tokenizer in the model (make_synth.py --tokenizer, when a
#    tokenizer.json is found: TOKENIZER_JSON, tests/data/, ../shared/tokenizers/gpt-neox-20b/), whose
#    prompts are as many tokens as with the released model (the byte-level one's are 5 times longer)
# 4. longrun: VmRSS, GPU memory and decode speed at 1k, 10k, 100k and 1M generated tokens in one run
#    (bench/longrun.py: 64 sequences of 15,625 tokens, 130m shape)
# 5. first: the first prompt of a run (512 tokens) against the second in the same run and against
#    the bench's prefill 512, on the 130m and 2.8b shapes (fp16); the summary of `./runcuda -n 16`
# Prints PASS/FAIL per check (INFO for figures); exit status 1 if any check failed.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
W=${GPU_BATCH_DIR:-/tmp/gpu_batch}
SKIP=${SKIP:-}
mkdir -p "$W"
FAILS=0
result() { # name status detail
    printf '%-34s %-5s %s\n' "$1" "$2" "$3"
    [ "$2" = FAIL ] && FAILS=$((FAILS + 1))
    return 0
}
skip() { case " $SKIP " in *" $1 "*) return 0;; esac; return 1; }
# The output objects of a file without their timings, one canonical JSON text a line; sorted with -s.
untimed() { $PY -c '
import json, sys
rows = [json.dumps({k: v for k, v in json.loads(l).items() if k not in ("prefill_ms", "decode_ms")}, sort_keys=True)
        for l in open(sys.argv[1])]
print("\n".join(sorted(rows) if len(sys.argv) > 2 else rows))' "$@"; }

echo "== 1. build"
nvidia-smi --query-gpu=index,name,memory.total --format=csv,noheader 2>/dev/null || echo "(nvidia-smi not found)"
make -s build/cuda/model.o >"$W/build.log" 2>&1
make -s runcuda >>"$W/build.log" 2>&1 & MAKE_PID=$!
${NVCC:-nvcc} -O3 -arch=${CUDA_ARCH:-sm_90} -I. -o "$W/bench_gpu" bench/bench_gpu.cu run.cu build/cuda/model.o -lcublas \
    >"$W/build_bench.log" 2>&1 & BENCH_PID=$!
if wait $MAKE_PID; then result build/runcuda PASS ""; else result build/runcuda FAIL "see $W/build.log"; tail -20 "$W/build.log"; exit 1; fi
if wait $BENCH_PID; then result build/bench_gpu PASS ""; else result build/bench_gpu FAIL "see $W/build_bench.log"; fi
NDEV=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null | wc -l)

echo "== 2. --gpus"
if ! skip gpus; then
    TINY="$W/tiny_fp16.bin"
    if [ ! -f "$TINY" ]; then
        $PY tests/make_checkpoint.py --shape tiny --layout hf "$W/tiny_hf" >"$W/tiny.log" 2>&1 &&
            $PY export.py "$W/tiny_hf" "$TINY" --dtype fp16 >>"$W/tiny.log" 2>&1 || result model/tiny FAIL "see $W/tiny.log"
    fi
    # 300 JSONL lines with string ids, 1 to 40 tokens each, every 29th an error object (no prompt).
    $PY -c '
import json
for k in range(300):
    o = {"id": "q%d" % k, "n": 1 + (k * 7) % 40}
    if k % 29 != 5:
        o["prompt"] = "Line %d: the %s" % (k, ["cat", "river", "old house", "question of time"][k % 4])
    print(json.dumps(o))' >"$W/in.jsonl"
    A=(-s 3 -t 0.8 -p 0.95 --ignore-eos)
    ./runcuda "$TINY" -f "$W/in.jsonl" "${A[@]}" -b 1 >"$W/one_b1.jsonl" 2>"$W/one_b1.err"; rc1=$?
    ./runcuda "$TINY" -f "$W/in.jsonl" "${A[@]}" -b 1 --gpus 0,0 >"$W/two_b1.jsonl" 2>"$W/two_b1.err"; rc2=$?
    if [ $rc1 = 3 ] && [ $rc2 = 3 ] && [ "$(wc -l <"$W/one_b1.jsonl")" = 300 ] &&
        cmp -s <(untimed "$W/one_b1.jsonl") <(untimed "$W/two_b1.jsonl"); then
        result gpus/stdout-b1 PASS "300 lines in input order, identical to one engine's"
    else result gpus/stdout-b1 FAIL "exit $rc1/$rc2; diff <(untimed one_b1) <(untimed two_b1) in $W"; fi
    # The summary: a total line, then one line an engine; both engines ran lines.
    if $PY - "$W/two_b1.err" <<'EOF'
import re, sys
lines = [l for l in open(sys.argv[1]) if not l.startswith("warning: ")]
per = [int(re.search(r"engine \d+: (\d+) prompt", l).group(1)) for l in lines[1:]]
ok = len(lines) == 3 and lines[0].startswith("[2 engines] batch: 300 prompts") and sum(per) == 300 and min(per) > 0
print("".join(lines), end="")
sys.exit(0 if ok else 1)
EOF
    then result gpus/summary PASS "$(grep -o 'engine [0-9]*: [0-9]* prompts' "$W/two_b1.err" | paste -sd, -)"
    else result gpus/summary FAIL "see $W/two_b1.err"; fi
    ./runcuda "$TINY" -f "$W/in.jsonl" "${A[@]}" -b 8 -q >"$W/one_b8.jsonl"
    ./runcuda "$TINY" -f "$W/in.jsonl" "${A[@]}" -b 8 -q --gpus 0,0 >"$W/two_b8.jsonl"
    nd=$(diff <(untimed "$W/one_b8.jsonl") <(untimed "$W/two_b8.jsonl") | grep -c '^<')
    if [ "$nd" = 0 ]; then result gpus/stdout-b8 PASS "identical to one engine's"
    else result gpus/stdout-b8 INFO "$nd of 300 lines differ (batched steps round differently; -b 1 is exact)"; fi
    # --shard 1/3 on two engines: the lines of index 1 mod 3 of the one-engine run.
    ./runcuda "$TINY" -f "$W/in.jsonl" "${A[@]}" -b 1 -q --gpus 0,0 --shard 1/3 >"$W/shard.jsonl"
    if cmp -s <(untimed "$W/shard.jsonl") <(untimed "$W/one_b1.jsonl" | awk 'NR % 3 == 2'); then
        result gpus/shard PASS "100 lines, those of shard 1/3 of the one-engine run"
    else result gpus/shard FAIL "see $W/shard.jsonl"; fi
    # -o, SIGTERM after 100 lines, --resume: the same set of lines as the one-engine run (600 lines:
    # sampling 50,280 logits on the host bounds -b 1 to a few hundred lines a second).
    for k in 0 1; do cat "$W/in.jsonl"; done | $PY -c '
import json, sys
for i, l in enumerate(sys.stdin):
    o = json.loads(l); o["id"] = "r%d" % i; print(json.dumps(o))' >"$W/in600.jsonl"
    ./runcuda "$TINY" -f "$W/in600.jsonl" "${A[@]}" -b 1 -q -o "$W/full.jsonl"
    rm -f "$W/out.jsonl"
    ./runcuda "$TINY" -f "$W/in600.jsonl" "${A[@]}" -b 1 -q --gpus 0,0 -o "$W/out.jsonl" 2>"$W/killed.err" & P=$!
    for _ in $(seq 3000); do [ -f "$W/out.jsonl" ] && [ "$(wc -l <"$W/out.jsonl")" -ge 100 ] && break; sleep 0.01; done
    kill -TERM $P; wait $P; rck=$?
    before=$(wc -l <"$W/out.jsonl")
    ./runcuda "$TINY" -f "$W/in600.jsonl" "${A[@]}" -b 1 -q --gpus 0,0 -o "$W/out.jsonl" --resume; rcr=$?
    if [ $rck = 143 ] && [ "$before" -lt 600 ] && [ $rcr = 3 ] &&
        cmp -s <(untimed "$W/out.jsonl" sort) <(untimed "$W/full.jsonl" sort); then
        result gpus/sigterm-resume PASS "exit 143 with $before of 600 lines written; resumed: the same 600 lines"
    else result gpus/sigterm-resume FAIL "exit $rck ($before lines), resume exit $rcr; see $W/out.jsonl, $W/killed.err"; fi
    ./runcuda "$TINY" -f "$W/in.jsonl" "${A[@]}" -b 1 -q --gpus all >"$W/all.jsonl"; rca=$?
    if [ $rca = 3 ] && cmp -s <(untimed "$W/all.jsonl") <(untimed "$W/one_b1.jsonl"); then
        result gpus/all PASS "$NDEV GPU(s), identical to one engine's"
    else result gpus/all FAIL "exit $rca; see $W/all.jsonl"; fi
    bad=""
    for g in x 99 "" 0, -1 " 0"; do
        ./runcuda "$TINY" -f "$W/in.jsonl" --gpus "$g" >/dev/null 2>"$W/bad.err"; rc=$?
        { [ $rc = 2 ] && [ "$(wc -l <"$W/bad.err")" = 1 ] && grep -q -- "--gpus" "$W/bad.err"; } || bad="$bad '$g'(exit $rc)"
    done
    if [ -z "$bad" ]; then result gpus/bad-lists PASS "x, 99, '', '0,', -1, ' 0': one line, exit 2"
    else result gpus/bad-lists FAIL "$bad"; fi
fi

echo "== 3. 10,000 prompts"
M130="$W/130m_fp16.bin"
[ -f "$M130" ] || $PY bench/make_synth.py --shape 130m --dtype fp16 "$M130" >/dev/null
if ! skip tenk; then
    $PY -c '
import json, random
words = ("the a of and to in is was he she it that for on with as his her they at by this had not are but from "
         "or have an were which one you all we their there been has when who will more no if out so said what up "
         "its about into than them can only other new some could time these two may then do first any my now such "
         "like our over man me even most made after also did many before must through back years where much your "
         "way well down should because each just those people how too little state good very make world still own "
         "see men work long get here between both life being under never day same another know while last might us "
         "great old year off come since against go came right used take three river mountain house water light").split()
rng = random.Random(0)
for k in range(10000):
    print(json.dumps({"id": k, "prompt": " ".join(rng.choice(words) for _ in range(rng.randint(5, 30)))}))' >"$W/prompts.jsonl"
    TOKJ=
    for f in "${TOKENIZER_JSON:-}" tests/data/tokenizer.json ../shared/tokenizers/gpt-neox-20b/tokenizer.json; do
        [ -n "$f" ] && [ -f "$f" ] && { TOKJ=$f; break; }
    done
    M130N="$W/130m_fp16_neox.bin"
    [ -n "$TOKJ" ] && { [ -f "$M130N" ] || $PY bench/make_synth.py --shape 130m --dtype fp16 --tokenizer "$TOKJ" "$M130N" >/dev/null; }
    for g in one $([ "$NDEV" -gt 1 ] && echo all) $([ -n "$TOKJ" ] && echo neox); do # --gpus all on one GPU is the one-engine run
        extra=(); [ $g = all ] && extra=(--gpus all)
        M=$M130; [ $g = neox ] && M=$M130N
        t0=$(date +%s.%N)
        # --progress: a line as each 64,000 tokens are done, so a run cut short still shows its rate
        { ./runcuda "$M" -f "$W/prompts.jsonl" -b 64 -n 64 --ignore-eos -t 0 --progress 64000 "${extra[@]}" \
            >"$W/tenk_$g.jsonl"; echo $? >"$W/tenk_$g.rc"; } 2>&1 | tee "$W/tenk_$g.err" | grep --line-buffered '^progress:'
        rc=$(cat "$W/tenk_$g.rc")
        t1=$(date +%s.%N)
        n=$(wc -l <"$W/tenk_$g.jsonl")
        grep -v '^progress:' "$W/tenk_$g.err" | head -1
        if [ $rc = 0 ] && [ "$n" = 10000 ]; then
            run_s=$(grep -o 'run [0-9.]* s' "$W/tenk_$g.err" | head -1 | awk '{print $2}')
            result "tenk/$g" PASS "$(awk -v a="$t0" -v b="$t1" -v r="$run_s" 'BEGIN { printf "640000 tokens generated: %.0f tok/s over the batch (%.2f s), %.0f tok/s wall clock with the load (%.2f s)", 640000 / r, r, 640000 / (b - a), b - a }')"
        else result "tenk/$g" FAIL "exit $rc, $n lines; see $W/tenk_$g.err"; fi
    done
fi

echo "== 4. long run: 1,000,000 tokens"
if ! skip longrun; then
    if $PY bench/longrun.py ./runcuda "$M130" --tokens 1000000 --seqs 64 --every 1000 \
        --checkpoints 1000,10000,100000,1000000 --gpu-mem | tee "$W/longrun.txt"; then
        result longrun/1M INFO "figures above (VmRSS and tok/s per window; flat = steady)"
    else result longrun/1M FAIL "see $W/longrun.txt"; fi
fi

echo "== 5. the first prompt"
if ! skip first; then
    M28="$W/2.8b_fp16.bin"
    case " ${FIRST_SHAPES:-130m 2.8b} " in *" 2.8b "*) [ -f "$M28" ] || $PY bench/make_synth.py --shape 2.8b --dtype fp16 "$M28" >/dev/null;; esac
    # 512 tokens: the synthetic models' tokenizer has a token a byte.
    P512=$($PY -c 'print(("The first prompt of a run, as fast as the bench. " * 11)[:512])')
    for s in ${FIRST_SHAPES:-130m 2.8b}; do
        M="$W/${s}_fp16.bin"
        ./runcuda "$M" -i "$P512" -n 16 -t 0 --ignore-eos >/dev/null 2>"$W/first_$s.err"
        echo "./runcuda ${s} -i <512 tokens> -n 16: $(cat "$W/first_$s.err")"
        # Two lines of the same prompt in one run, one at a time: the first pays any one-time cost.
        printf '%s\n%s\n' "$P512" "$P512" | ./runcuda "$M" -f - -b 1 -n 1 -t 0 -q >"$W/first_$s.jsonl"
        read -r ms1 ms2 < <($PY -c '
import json, sys
r = [json.loads(l) for l in open(sys.argv[1])]
assert [o["prompt_tokens"] for o in r] == [512, 512], r
print(r[0]["prefill_ms"], r[1]["prefill_ms"])' "$W/first_$s.jsonl")
        if [ -x "$W/bench_gpu" ]; then
            bench=$("$W/bench_gpu" "$M" 5 prefill | grep "^prefill 512 " | awk '{print $3}')
        else bench="?"; fi
        detail="first 512-token prompt ${ms1} ms, second ${ms2} ms; bench prefill 512: ${bench} tok/s = $($PY -c "import sys; print('%.2f' % (512e3 / float(sys.argv[1])) if sys.argv[1] != '?' else '?')" "$bench") ms"
        if $PY -c 'import sys; a, b = map(float, sys.argv[1:]); sys.exit(0 if a <= 1.5 * b + 2 else 1)' "$ms1" "$ms2"; then
            result "first/$s" PASS "$detail"
        else result "first/$s" FAIL "$detail (the first pays a one-time cost)"; fi
    done
fi

echo "== $FAILS check(s) failed"
[ $FAILS = 0 ]
