#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with a CUDA GPU (under 8 minutes on an H100/H200):
# the GPU test tier, the speed/memory benchmark's defaults and paper variants for SD 1.5 and SDXL, then the
# speed levers on SD 1.5.
#
#   bash scripts/gpu_check.sh [OUT]          # figures go to OUT (default: gpu-check/)
#
# Packages the machine lacks travel as wheels in .whl/ (docs/BENCHMARKS.md says how to fetch them); they
# are installed into a scratch folder first. Every step's output is kept in OUT, and a failing step does
# not stop the next.
set -u
OUT=${1:-${OUT:-gpu-check}}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/imagic-site \
    .whl/*.whl && export PYTHONPATH="/tmp/imagic-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{ nvidia-smi; python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"; } \
  > "$OUT/machine.txt" 2>&1
start=$SECONDS
timeout 240 python3 -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider > "$OUT/gpu_tests.txt" 2>&1
echo "gpu tests: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
start=$SECONDS
timeout 300 python3 scripts/benchmark.py --models sd15 sdxl --variants defaults paper_full --allow_tf32 \
  --max_measured_steps 20 --timeout 140 --output "$OUT/benchmark" > "$OUT/benchmark.txt" 2>&1
echo "benchmark: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
# The speed levers (torch.compile, CUDA graphs, channels-last, cuDNN benchmark) against the same settings without
# them, SD 1.5 only; last, so that a compilation slower than its cap costs no other figure.
start=$SECONDS
timeout 170 python3 scripts/benchmark.py --models sd15 --variants recommended compiled cuda_graphs --allow_tf32 \
  --max_measured_steps 20 --timeout 80 --output "$OUT/levers" > "$OUT/levers.txt" 2>&1
echo "levers: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
tail -n 3 "$OUT/gpu_tests.txt" "$OUT/benchmark.txt" "$OUT/levers.txt"
