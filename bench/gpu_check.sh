#!/usr/bin/env bash
# GPU check (about 8 minutes on one GPU): the card, CUDA smoke tests, ribosome70s end to end (scored
# against its truth), img/s per stage and peak GPU memory at box 64 / 128 / 256 (bench/scale.py), and with
# two or more GPUs the same ribosome70s run under torchrun (one process per GPU, NCCL).
# Usage: bash bench/gpu_check.sh [--device cuda|cpu] [--out DIR] [--ribosome DIR] [--quick]
#   --device cpu with --quick is the dry check of this script on a machine without a GPU (small sizes).
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=cuda OUT=bench-runs/gpu_check QUICK=0
RIBO=""
for candidate in ../shared/data/ribosome70s shared/data/ribosome70s; do
  [ -f "$candidate/particles.star" ] && RIBO=$candidate && break
done
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --ribosome) RIBO=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    *) echo "unknown option $1. Fix: see the usage line at the top of $0"; exit 2 ;;
  esac
done
PY=${PYTHON:-python}
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
say() { echo "== $* ($(uptime | sed 's/.*load/load/'))" | tee -a "$LOG"; }
status=0
step() {  # step SECONDS COMMAND...: run with a time limit, keep going on failure, remember it
  local limit=$1; shift
  timeout "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  [ $rc -ne 0 ] && { echo "   FAILED (exit $rc): $*" | tee -a "$LOG"; status=1; }
  return 0
}

say "device"
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$LOG"
  NGPU=$(nvidia-smi -L | wc -l)
else
  NGPU=0
fi
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$LOG"

say "tests (the suite pins the CPU; here the parts that reach torch.distributed and the engine)"
TESTS="tests/test_search.py tests/test_reconstruction.py"
[ "$QUICK" = 0 ] && TESTS="tests/test_distributed.py $TESTS"
step 150 $PY -m pytest -q -x -p no:cacheprovider $TESTS

say "tiny end-to-end run on $DEVICE"
step 60 $PY -m napari_cryospin.cli simulate bundled --out "$OUT/tiny" --n 400 --box 32 --snr 0.5 --max-shift 1 --overwrite --device "$DEVICE"
step 90 $PY -m napari_cryospin.cli reconstruct "$OUT/tiny/particles.star" --out "$OUT/tiny_run" --overwrite \
  --device "$DEVICE" --epochs 4 --explore-epochs 2 --switch 3 --encoder-box 16 --encoder-width 8
grep -h "^done:" "$LOG" | tail -1

if [ -n "$RIBO" ] && [ "$QUICK" = 0 ]; then
  say "ribosome70s, default schedule, one process on $DEVICE (scored against the truth)"
  step 240 $PY bench/sweep.py "$RIBO" "$OUT/ribosome70s" "device='$DEVICE'" "overwrite=True"
  tail -3 "$LOG"
  if [ "$NGPU" -ge 2 ]; then
    say "ribosome70s under torchrun, $NGPU processes (NCCL)"
    step 240 $PY -m torch.distributed.run --standalone --nproc-per-node "$NGPU" -m napari_cryospin.cli reconstruct \
      "$RIBO/particles.star" --out "$OUT/ribosome70s_ddp" --overwrite --device cuda --encoder-box 32 --encoder-width 16
    step 120 $PY bench/reconstruct.py "$RIBO" --out "$OUT/ribosome70s_ddp" --reuse
    tail -3 "$LOG"
  fi
else
  say "ribosome70s skipped (${RIBO:-not found}; --quick or pass --ribosome DIR)"
fi

say "img/s per stage and peak memory vs box"
if [ "$QUICK" = 1 ]; then BOXES="64" BOXN=400; else BOXES="64 128 256" BOXN=2000; fi
step 300 $PY bench/scale.py --work "$OUT/scale" --boxes $BOXES --box-n "$BOXN" --batches 2 --device "$DEVICE" --threads 4
$PY bench/scale.py --work "$OUT/scale" --table | tee -a "$LOG"

say "done (exit $status); full log in $LOG"
exit $status
