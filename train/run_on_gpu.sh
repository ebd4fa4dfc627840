#!/bin/bash
# The one command for the GPU machine, from the repository root:
#     bash train/run_on_gpu.sh                  # Mamba-1, models/tiny
#     bash train/run_on_gpu.sh --arch mamba2    # Mamba-2, models/tiny-mamba2
# Trains models/tiny (Mamba-1, d_model 256, 8 layers, vocab 4096) on the Brown corpus text in
# train/data/, then writes models/tiny/hf/{config.json,model.safetensors}, models/tiny/train_log.txt
# and models/tiny/golden.json. When $OUT is set, those files and models/tiny/tokenizer.model are
# copied there as soon as each exists (5 files). Needs python3 with torch (CUDA), numpy and
# sentencepiece; transformers is optional (used only for the final layout check).
# Wall clock: ~1 min of setup, training stops at 400 s at the latest (fixed 1800 steps expected to
# take less), then ~1 min of evaluation and checks; everything is bounded by a 560 s timeout.
# With --arch mamba2: the same data, tokenizer and recipe for a Mamba-2 (d_model 256, 8 layers,
# 8 heads of 64, d_state 64, 1 group, SSD chunk 64) written to models/tiny-mamba2/ (hf/, train_log.txt,
# golden.json, tokenizer.model; the same 5 file names in $OUT). Training stops at 180 s at the latest
# (a fixed step count expected to take less); everything is bounded by --deadline 300 and a 320 s timeout.
# Extra arguments go to train/train.py (e.g. --max-steps 1000).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export CUBLAS_WORKSPACE_CONFIG=:4096:8
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
"$PY" -c 'import torch, numpy, sentencepiece; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "numpy", numpy.__version__, "sentencepiece", sentencepiece.__version__)'
"$PY" -c 'import transformers; print("transformers", transformers.__version__)' 2>/dev/null || echo "transformers: not importable (the layout check will be skipped)"
DEADLINE=540 LIMIT=560
prev=
for arg in "$@"; do
    if [ "$arg" = "--arch=mamba2" ] || { [ "$prev" = "--arch" ] && [ "$arg" = "mamba2" ]; }; then
        DEADLINE=300 LIMIT=320
    fi
    prev=$arg
done
rc=0
timeout -k 10 $LIMIT "$PY" train/train.py --deadline $DEADLINE "$@" || rc=$?
if [ -n "${OUT:-}" ]; then ls -la "$OUT"; fi
exit $rc
