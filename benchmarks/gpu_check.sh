#!/usr/bin/env bash
# The GPU checks of issues 5 (trial throughput, AMP, MFU) and 6 (ridge on CUDA) in one
# command, sized for a single device call (about 6-9 minutes on an H100/H200-class GPU).
# It needs only what such a machine's image has (torch, transformers, scikit-learn, scipy,
# threadpoolctl): no Ray, no emulator. Steps run cheapest first and each copies its
# results to OUT at once, so a call cut short still returns what finished.
#
#   bash benchmarks/gpu_check.sh [OUT]     # OUT defaults to $OUT, else results/benchmarks
set -uo pipefail
out=${1:-${OUT:-results/benchmarks}}
mkdir -p "$out" results/benchmarks
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
log="$out/gpu_check.log"
status=0
step() {  # step NAME CMD...: run, log, remember a failure, go on
  echo "=== $1 ($(date -u +%H:%M:%S))" | tee -a "$log"
  shift
  "$@" 2>&1 | tee -a "$log" || status=1
  cp results/benchmarks/*cuda*.json "$out"/ 2>/dev/null || true
}

"$py" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_check.sh: no CUDA device here; it is for a GPU machine')" || exit 2
step "device" nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
step "versions" "$py" -c "import torch, transformers, sklearn; print(torch.__version__, torch.version.cuda, transformers.__version__, sklearn.__version__, torch.cuda.get_device_name())"
# CUDA tests: the training step in fp32/bf16/fp16 (fused AdamW, GradScaler), ridge CUDA == CPU
step "cuda tests" "$py" -m pytest -q -p no:cacheprovider tests/test_gpt.py tests/test_encoding.py -k "cuda or train_step or initial_loss"
# issue 5: tokens/s and MFU of the reference model (d=576 L=8 H=4, ctx 512) per dtype, eager
step "trial throughput (eager)" "$py" benchmarks/trial_throughput.py --paper
# issue 6: ours on the GPU vs the scikit-learn loop on all CPU cores, identical alphas
step "ridge on cuda" "$py" benchmarks/ridge.py --scale paper --device cuda --threads "$(nproc)" --repeats 3 --no-himalaya --sklearn-budget-s 240
# issue 5 again with torch.compile (slowest: compiles 12 graphs); written to its own file
step "trial throughput (compile)" "$py" benchmarks/trial_throughput.py --paper --compile --out-suffix _compile
exit $status
