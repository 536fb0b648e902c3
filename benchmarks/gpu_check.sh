#!/usr/bin/env bash
# One call on the GPU machine: CUDA tests, then the GPU benchmarks; logs under $OUT, a short table last.
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=540)
# The GPU machine has torch/torchvision/timm/tensorboard but no network: install the
# project without dependencies (they are there) and run against that.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" FINETUNE_CACHE="$OUT/cache"
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt" 2>&1
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)" >> "$OUT/gpu.txt" 2>&1
rows=()
step() {  # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  rows+=("$(printf '%-22s rc=%-3s %4ss  %s' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$(tail -n 1 "$OUT/$name.log" | cut -c1-90)")")
}
step cuda-tests      240 $PY -m pytest -q -m cuda -p no:cacheprovider tests/test_checkpoint_cuda.py tests/test_data_loader.py
step bench-ckpt      90  $PY benchmarks/bench_checkpoint.py --device cuda --json "$OUT/bench_checkpoint.json"
step bench-freeze    120 $PY benchmarks/bench_freeze.py --device cuda
step bench-data-gpu  150 $PY benchmarks/bench_data.py --gpu --quick --json "$OUT/bench_data_gpu.json"
echo; cat "$OUT/gpu.txt"; echo
printf '%s\n' "${rows[@]}"
