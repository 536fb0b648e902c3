#!/usr/bin/env bash
# One call on the GPU machine: CUDA tests, then the GPU benchmarks; logs under $OUT, a short table last.
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=560)
# The GPU machine has torch/torchvision/timm/tensorboard/pytest but no network: the project
# runs from src/ (PYTHONPATH) against what is installed there. Generated data stays in /tmp
# (never under $OUT, which comes back); at most 8 files come back, so: gpu.txt + 6 logs.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" FINETUNE_CACHE=/tmp/finetune-cache PYTHONUNBUFFERED=1
PY=${PY:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
  echo "cpus $(nproc)  date $(date -u +%FT%TZ)  commit $(git rev-parse --short HEAD 2>/dev/null)"; } > "$OUT/gpu.txt" 2>&1
rows=()
step() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  rows+=("$(printf '%-15s rc=%-3s %4ss  %s' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-100)")")
}
# the 8000-image folder both training benchmarks read (16 processes, ~10 s)
step make-data       60  $PY -c "import os; from finetune.data.bench import make_photo_folder; from finetune.data.shapes import cache_dir; make_photo_folder(cache_dir() / 'bench' / 'photos-500x375-8000', count=8000, width=500, height=375, processes=os.cpu_count())"
step cuda-tests      120 $PY -m pytest -q -m cuda -p no:cacheprovider -o addopts= tests/test_checkpoint_cuda.py tests/test_data_loader.py tests/test_train_cuda.py
step bench-ckpt      60  $PY benchmarks/bench_checkpoint.py --device cuda
step bench-freeze    60  $PY benchmarks/bench_freeze.py --device cuda
step bench-train     140 $PY benchmarks/bench_train.py --device cuda --images 8000 --epochs 4
step bench-data-gpu  90  $PY benchmarks/bench_data.py --gpu --seconds 3
echo; cat "$OUT/gpu.txt"; echo
printf '%s\n' "${rows[@]}"
echo; grep -h -A12 "^finetune train," "$OUT/bench-train.log" 2>/dev/null | head -8
grep -h -A12 "^ResNet-50 training" "$OUT/bench-data-gpu.log" 2>/dev/null
