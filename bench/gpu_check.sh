#!/usr/bin/env bash
# Shoal GPU check: the gpu pytest tier, kernel correctness (fp32/fp16/bf16), decode step vs the HBM roofline,
# offline throughput vs transformers. One command, at most 10 minutes (tests 2 + check 8), no network.
#
#   bench/gpu_check.sh              # on a machine with one NVIDIA GPU, PyTorch + Triton installed
#   bench/gpu_check.sh --smoke      # CPU dry run: tiny shapes, Triton interpreter
#
# Results: a table printed last; $OUT/gpu_check.{md,json,log} (OUT defaults to bench/results).
# Python: $PYTHON, else the repo's .venv when it exists, else python3.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"
export OUT
mkdir -p "$OUT"
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# First the `gpu` pytest tier (Triton vs torch with decode CUDA graphs on and off, fp32 + bf16,
# start-up capture); with --smoke (no GPU) its interpreter-runnable cases instead. At most 120 s.
MARKS="gpu"
[[ " $* " == *" --smoke "* ]] && MARKS="gpu or kernels"
timeout --signal=INT --kill-after=10 120 "$PY" -m pytest -q -p no:cacheprovider -m "$MARKS" tests/gpu 2>&1 | tee "$OUT/gpu_tests.log"
TESTS_RC=${PIPESTATUS[0]}
# The script keeps its own budget (--budget-s, 420 s by default) and skips what no longer fits;
# the hard limit only guards against a hang.
timeout --signal=INT --kill-after=15 465 "$PY" bench/gpu_check.py "$@" 2>&1 | tee "$OUT/gpu_check.log"
CHECK_RC=${PIPESTATUS[0]}
echo "gpu pytest tier exit code: $TESTS_RC (log: $OUT/gpu_tests.log)"
[[ $TESTS_RC -ne 0 ]] && exit "$TESTS_RC"
exit "$CHECK_RC"
