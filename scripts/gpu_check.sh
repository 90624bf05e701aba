#!/usr/bin/env bash
# The whole GPU check in one command, for a machine with a CUDA GPU: the GPU test tier and the speed/memory
# benchmark's defaults and paper variants for SD 1.5 and SDXL, capped at 180 + 280 s (under 8 minutes). The
# speed levers (torch.compile, CUDA graphs, channels-last, cuDNN benchmark: their GPU test, then SD 1.5 with
# and without them) are a second command, capped at 120 + 450 s: one device command may run 600 s, and
# compiling an SD 1.5 UNet takes minutes.
#
#   bash scripts/gpu_check.sh [OUT]            # the check; figures go to OUT (default: gpu-check/)
#   bash scripts/gpu_check.sh [OUT] levers     # the speed levers alone
#   bash scripts/gpu_check.sh [OUT] all        # both, one after the other (about 15 minutes)
#
# Packages the machine lacks travel as wheels in .whl/ (docs/BENCHMARKS.md says how to fetch them); they
# are installed into a scratch folder first. Every step's output is kept in OUT, the benchmark writes its
# figures after every variant, and a failing or capped step does not stop the next.
set -u
OUT=${1:-${OUT:-gpu-check}}
WHAT=${2:-check}
case "$WHAT" in check|levers|all) ;; *) echo "gpu_check.sh: unknown step '$WHAT' (check, levers or all)" >&2; exit 2;; esac
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/imagic-site \
    .whl/*.whl && export PYTHONPATH="/tmp/imagic-site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
{ nvidia-smi; python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"; } \
  > "$OUT/machine.txt" 2>&1
if [ "$WHAT" = check ] || [ "$WHAT" = all ]; then
  start=$SECONDS
  timeout 180 python3 -m pytest -q -m gpu -k "not levers" tests/test_gpu.py -p no:cacheprovider \
    > "$OUT/gpu_tests.txt" 2>&1
  echo "gpu tests: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  start=$SECONDS
  timeout 280 python3 scripts/benchmark.py --models sd15 sdxl --variants defaults paper_full --allow_tf32 \
    --max_measured_steps 20 --timeout 140 --output "$OUT/benchmark" > "$OUT/benchmark.txt" 2>&1
  echo "benchmark: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  tail -n 3 "$OUT/gpu_tests.txt" "$OUT/benchmark.txt"
fi
if [ "$WHAT" = levers ] || [ "$WHAT" = all ]; then
  start=$SECONDS
  timeout 120 python3 -m pytest -q -m gpu -k levers tests/test_gpu.py -p no:cacheprovider > "$OUT/levers_test.txt" 2>&1
  echo "levers test: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  # Each compiled variant pays its compilation in a warm-up edit before the timed one.
  start=$SECONDS
  timeout 450 python3 scripts/benchmark.py --models sd15 --variants recommended compiled cuda_graphs --allow_tf32 \
    --max_measured_steps 20 --timeout 150 --output "$OUT/levers" > "$OUT/levers.txt" 2>&1
  echo "levers: exit $? in $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
  tail -n 3 "$OUT/levers_test.txt" "$OUT/levers.txt"
fi
