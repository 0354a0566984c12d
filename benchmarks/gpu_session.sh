#!/usr/bin/env bash
# Issue 7's GPU checks in one call of the lent GPU machine (about 9 minutes): the CUDA tests,
# then the record recipes. That machine has its own PyTorch and no network, so the data travels
# with the working tree. Here, once, from the repo root:
#
#   echo /.gpu-data/ >> .git/info/exclude
#   mkdir -p .gpu-data/fashion-mnist
#   cp /usr/share/datasets/fashion-mnist/*.gz .gpu-data/fashion-mnist/
#
# then call the device tool's run with carry [".gpu-data"], timeout_s 600 and the command
# `bash benchmarks/gpu_session.sh`. Everything lands in $OUT: gpu.txt, tests.log, fast.json/.log,
# compiled.json/.log, wrn.json/.log. A later call can give the WRN the whole budget:
# `STAGES=wrn WRN_SECONDS=420 bash benchmarks/gpu_session.sh`; the photo pipeline at 224 px with
# a ResNet-50 (issue 21; synthetic JPEGs written there, no data to carry) is a call of its own:
# `STAGES=photo bash benchmarks/gpu_session.sh` (photo.json/.log). The same flow on a CPU, tiny:
# `DRY=1 PY=.venv/bin/python OUT=/tmp/gpu-dry bash benchmarks/gpu_session.sh` (a few minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 CONVLENS_DATA=$PWD/.gpu-data
OUT=${OUT:-/tmp/gpu-session}
mkdir -p "$OUT"
PY=${PY:-python3}
STAGES=${STAGES:-tests fast compiled wrn}  # a later call may run fewer: STAGES=wrn WRN_SECONDS=420
WRN_SECONDS=${WRN_SECONDS:-180}
if [[ -n "${DRY:-}" ]]; then  # the same flow on a CPU, tiny: checks the script, measures nothing
    CONVLENS_DATA=/usr/share/datasets
    ARGS=(--device cpu --fast-epochs 1)
    SEEDS=(0)
    WRN=(--wrn-depth 10 --wrn-width 1 --wrn-epochs 1)
    PHOTO=(--device cpu --model fastnet --image-size 64 --per-class 8 2 2 --epochs 1 --workers 1)
else
    ARGS=()
    SEEDS=(0 1 2 3 4)
    WRN=(--wrn-seconds "$WRN_SECONDS")  # the schedule shortened to what fits: 60 epochs may not
    PHOTO=()
fi

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  $PY -c "import torch, sys; print(sys.version.split()[0], torch.__version__, torch.version.cuda)"
} > "$OUT/gpu.txt" 2>&1

stage() {  # stage NAME SECONDS COMMAND...: run it with a time limit, keep its log
    local name=$1 limit=$2
    shift 2
    [[ " $STAGES " == *" $name "* ]] || return 0
    [[ -n "${DRY:-}" ]] && limit=900
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "== $name: exit $? after ${SECONDS}s in all"
    tail -n 4 "$OUT/$name.log"
}

BENCH=($PY benchmarks/fashion_mnist_gpu.py "${ARGS[@]}")
[[ -n "${DRY:-}" ]] && STAGES=${STAGES/tests/}  # the CUDA tests skip on a CPU
stage tests 100 $PY -m pytest -q -p no:cacheprovider tests/test_device.py
stage fast 110 "${BENCH[@]}" --recipes fast --seeds "${SEEDS[@]}" --out "$OUT/fast.json"
stage compiled 80 "${BENCH[@]}" --recipes fast --compile --seeds 0 --out "$OUT/compiled.json"
stage wrn $((WRN_SECONDS + 110)) "${BENCH[@]}" --recipes wrn --seeds 0 "${WRN[@]}" --out "$OUT/wrn.json"
stage photo 400 $PY benchmarks/photo_gpu.py "${PHOTO[@]}" --out "$OUT/photo.json"
