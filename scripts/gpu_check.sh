#!/usr/bin/env bash
# The GPU check of issue #39 (item 7): one prepared command for a lent GPU machine, well inside 10 minutes.
#
#   scripts/gpu_check.sh --fetch-wheels    # here, first: kornia's wheels into .whl/ (the GPU machine has no network)
#   DEVICE=cpu SIZES=64 ROUNDS=1 BATCH=4 EPOCHS=1 TRAIN_LIMIT=256 scripts/gpu_check.sh   # here: the dry run, small
#   # then, with the device tool:  run(command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=600)
#
# It runs, each step timed and logged under $OUT (the device tool brings $OUT back; default runs/gpu-check):
#   1. the environment: torch, the GPU, kornia, timm;
#   2. the GPU tests (tests/test_cuda.py: training under bf16, the loop's synchronisation, frozen compiled
#      inference, a checkpoint that moves to the CPU);
#   3. benchmarks/throughput.py at 224 px in bf16, eager and compiled (frozen for inference), cpvt's DeiT-Ti
#      and CPVT-Ti beside timm's DeiT-Ti (the GPU image has timm), JSON beside the table;
#   4. a short training run of CPVT-Ti on the synthetic shapes (the engine's img/s on the GPU).
# Commit the table (throughput.log / throughput_gpu.json) under docs/results/bench/ with the GPU's name.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}

if [ "${1:-}" = "--fetch-wheels" ]; then  # the GPU image's Python is 3.12 (KINDS.md of the device tool)
  rm -rf .whl && mkdir -p .whl
  for pkg in kornia==0.9.0 kornia_rs==0.2.0; do
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl "$pkg"
  done
  ls -l .whl
  exit 0
fi

DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu-check}
ROUNDS=${ROUNDS:-5}
BATCH=${BATCH:-128}
EPOCHS=${EPOCHS:-3}
SIZES=${SIZES:-224}
TRAIN_LIMIT=${TRAIN_LIMIT:-8192}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cpvt-site .whl/*.whl
  export PYTHONPATH=/tmp/cpvt-site
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
step() { echo; echo "== $1 ($(date +%T))"; }
start=$(date +%s)

step "1. environment"
$PY - <<'PY' 2>&1 | tee "$OUT/environment.log"
import torch, kornia
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| kornia", kornia.__version__)
print("gpu:", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
try:
    import timm
    print("timm", timm.__version__)
except Exception as e:  # noqa: BLE001
    print("timm does not import:", e)
PY

step "2. GPU tests"
CPVT_TEST_DEVICE=$DEVICE $PY -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py 2>&1 | tee "$OUT/tests.log"

step "3. throughput at $SIZES px, bf16"
$PY benchmarks/throughput.py --device "$DEVICE" --sizes "$SIZES" --batch "$BATCH" --rounds "$ROUNDS" --iters 2 \
  --modes "infer bf16,train bf16" --json "$OUT/throughput_gpu.json" 2>&1 | tee "$OUT/throughput.log"

step "4. a short training run"
$PY -m cpvt train --model cpvt_ti --data synthetic --epochs "$EPOCHS" --set device="$DEVICE" --out /tmp/cpvt-gpu-run \
  --set img_size=64 --set train_limit="$TRAIN_LIMIT" --set val_limit=256 2>&1 | tee "$OUT/train.log" | tail -n 8

echo; echo "gpu_check: done in $(( $(date +%s) - start )) s; logs in $OUT"
