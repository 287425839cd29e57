#!/usr/bin/env bash
# The whole GPU-window command: time-boxed training of every stage, then ONNX-CPU vs torch-CUDA parity
# of every graph exported from what was trained. Everything it keeps goes to $OUT (≤ 8 files):
#   vq.pt cont.pt predictor.pt correction.pt burst_log.json  (hf-train burst)
#   parity.json                                               (export/device_parity.py)
#   gpu_burst.log                                             (this script's console)
# It installs nothing: hybridflow is put on PYTHONPATH as a package of symlinks (pyproject maps
# runtime/ export/ models/ into hybridflow.*), tqdm comes from runs/gpu/pydeps (pure Python).
#
#   bash tools/gpu_burst.sh prepare            # here, once, venv active: runs/gpu/pack + runs/gpu/pydeps
#   bash tools/gpu_burst.sh                    # on the GPU machine (OUT is set there); carry runs/gpu
#   DEVICE=cpu MINUTES=0.2 OUT=/tmp/o bash tools/gpu_burst.sh   # dry run of the same path on a CPU
# BURST_ARGS adds options to hf-train burst (e.g. "--tiles 32 --vq-batch 8" for a CPU dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
GPU_DIR=${GPU_DIR:-runs/gpu}

if [[ "${1:-}" == prepare ]]; then
    hf-train pack --out "$GPU_DIR/pack" --seed "${SEED:-0}" --mib "${PACK_MIB:-24}"
    rm -rf "$GPU_DIR/pydeps" && mkdir -p "$GPU_DIR/pydeps"
    cp -r "$(python -c 'import os, tqdm; print(os.path.dirname(tqdm.__file__))')" "$GPU_DIR/pydeps/"
    du -sb "$GPU_DIR" && echo "tracked tree: $(git ls-files -z | xargs -0 du -cb | tail -1)"
    exit 0
fi

: "${OUT:?set OUT to the output folder}"
MINUTES=${MINUTES:-8}
DEVICE=${DEVICE:-cuda}
PACK=${PACK:-$GPU_DIR/pack}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir -p "$OUT" "$WORK/py/hybridflow"
touch "$WORK/py/hybridflow/__init__.py"
for d in runtime export models; do ln -s "$REPO/$d" "$WORK/py/hybridflow/$d"; done
export PYTHONPATH="$WORK/py:$REPO/$GPU_DIR/pydeps${PYTHONPATH:+:$PYTHONPATH}"
export TQDM_MININTERVAL=10 PYTHONUNBUFFERED=1  # a readable console log, not 10 progress lines a second
PY=${PYTHON:-python3}

{
    echo "== $(date -u +%FT%TZ) burst: $MINUTES min on $DEVICE, pack $PACK"
    $PY -c 'import torch, onnx, onnxruntime as o; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), "onnx", onnx.__version__, "ort", o.__version__)'
    nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv 2>/dev/null || true
    $PY -m hybridflow.models.train.burst --minutes "$MINUTES" --device "$DEVICE" --data "$PACK" --out "$OUT" \
        --work "$WORK/burst" ${BURST_ARGS:-}
    echo "== $(date -u +%FT%TZ) parity: onnxruntime CPU vs torch $DEVICE"
    timeout 150 $PY -m hybridflow.export.device_parity --ckpts "$OUT" --out "$OUT/parity.json" --device "$DEVICE" \
        --data "$PACK" || echo "parity check failed or timed out (exit $?)"
    echo "== $(date -u +%FT%TZ) done"; ls -l "$OUT"
} 2>&1 | tee "$OUT/gpu_burst.log"
