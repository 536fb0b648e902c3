#!/usr/bin/env bash
# One call on the GPU machine: CUDA tests, then the GPU benchmarks; logs under $OUT, a short table last.
#   run(command="bash benchmarks/gpu_check.sh", timeout_s=560)          # everything (~6 min on an H200)
#   run(command="bash benchmarks/gpu_check.sh cuda-tests bench-train")  # only these steps
# (cuda-tests: 25 tests, each CUDA `finetune train` test a ~30 s subprocess; 4 at once, ~90 s)
# Optional steps (named only): ablations (with bench-train), profile (cProfile of finetune train),
# profile-frozen (the same, --linear-probe: where a frozen step's 22.8 ms go, BENCHMARKS.md),
# profile-decode (torch.profiler of a decode="gpu" training loop).
# The GPU machine has torch/torchvision/timm/tensorboard/pytest but no network: the project
# runs from src/ (PYTHONPATH) against what is installed there. Generated data stays in /tmp
# (never under $OUT, which comes back); at most 8 files come back: gpu.txt + one log per step.
set -uo pipefail
OUT=${OUT:-/tmp/gpu_check}; mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" FINETUNE_CACHE=/tmp/finetune-cache PYTHONUNBUFFERED=1
PY=${PY:-python3}
STEPS=" ${*:-cuda-tests bench-ckpt bench-freeze bench-train bench-data-gpu} "
DATA=/tmp/finetune-cache/bench/photos-500x375-8000
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, 'cuda', torch.version.cuda)"
  echo "cpus $(nproc)  date $(date -u +%FT%TZ)  steps:$STEPS"; } > "$OUT/gpu.txt" 2>&1
rows=()
step() {  # name, timeout seconds, command...  (runs only if named in STEPS)
  local name=$1 limit=$2; shift 2
  [[ $STEPS == *" $name "* ]] || return 0
  local t0=$(date +%s)
  # SIGABRT on timeout: faulthandler prints every thread's stack (what hung)
  PYTHONFAULTHANDLER=1 timeout -s ABRT -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1; local rc=$?
  rows+=("$(printf '%-15s rc=%-3s %4ss  %s' "$name" "$rc" "$(( $(date +%s) - t0 ))" "$(grep -v '^\s*$' "$OUT/$name.log" | tail -n 1 | cut -c1-100)")")
}
if [[ $STEPS == *bench-train* || $STEPS == *bench-data* || $STEPS == *profile* ]]; then  # the 8000-JPEG folder (~20 s)
  $PY -c "import os; from finetune.data.bench import make_photo_folder; make_photo_folder('$DATA', count=8000, width=500, height=375, processes=os.cpu_count())" > /dev/null 2>&1
fi
step cuda-tests      240 $PY -m pytest -q -n 4 --durations=8 -m cuda -p no:cacheprovider -o addopts= tests/test_checkpoint_cuda.py tests/test_data_loader.py tests/test_train_cuda.py tests/test_cam.py tests/test_eval_transform.py
step bench-ckpt      60  $PY benchmarks/bench_checkpoint.py --device cuda
step bench-freeze    60  $PY benchmarks/bench_freeze.py --device cuda
step bench-train     260 $PY benchmarks/bench_train.py --device cuda --images 8000 --epochs 3 $([[ $STEPS == *ablations* ]] && echo --ablations)
step bench-data-gpu  90  $PY benchmarks/bench_data.py --gpu --seconds 3
step profile         60  bash -c "$PY -m cProfile -o /tmp/train.prof -m finetune train --data $DATA --model resnet50 --epochs 3 --batch-size 256 --optimizer sgd --device cuda --workers 16 --cache gpu --prefetch none --amp bf16 --channels-last -q --out /tmp/prof-run && $PY -c \"import pstats; s = pstats.Stats('/tmp/train.prof'); s.sort_stats('tottime').print_stats(30); s.sort_stats('cumulative').print_stats(45)\""
step profile-frozen  60  bash -c "$PY -m cProfile -o /tmp/frozen.prof -m finetune train --data $DATA --model resnet50 --epochs 3 --batch-size 256 --optimizer sgd --device cuda --workers 16 --cache gpu --linear-probe --amp bf16 --channels-last -q --out /tmp/prof-frozen && $PY -c \"import pstats; s = pstats.Stats('/tmp/frozen.prof'); s.sort_stats('tottime').print_stats(30); s.sort_stats('cumulative').print_stats(45)\""
step profile-decode  90  $PY benchmarks/profile_train_input.py --data $DATA --decode gpu
echo; cat "$OUT/gpu.txt"; echo
printf '%s\n' "${rows[@]}"
echo; grep -h -A12 "^finetune train," "$OUT/bench-train.log" 2>/dev/null | head -10
grep -h -A12 "^ResNet-50 training" "$OUT/bench-data-gpu.log" 2>/dev/null
