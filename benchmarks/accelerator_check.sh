#!/usr/bin/env bash
# The prepared accelerator check of issue 15: on a bare Linux machine with one NVIDIA GPU
# and Python >= 3.10, from the repository root,
#
#   bash benchmarks/accelerator_check.sh            # install, GPU tests, three benchmarks
#   bash benchmarks/accelerator_check.sh --dry-run  # print the plan (commands, timeouts)
#   bash benchmarks/accelerator_check.sh --cpu      # no CUDA install, tiny shapes on the CPU
#                                                   # (a check of this script itself)
#
# Steps, each under `timeout` and logged to OUT/<step>.log, the next one run whatever the
# previous one's exit status (recorded in OUT/summary.txt):
#   1. install: a venv (or the current python with --no-venv, or when TensorFlow already
#      sees a GPU there: nothing to install), `pip install -e '.[test]'` and
#      `tensorflow[and-cuda]>=2.21,<2.22` (pinned like setup.cfg);
#   2. env: nvidia-smi, TensorFlow's version and GPU list;
#   3. tests: `pytest -m gpu` (distributed equivalence on logical GPUs, bf16/XLA images,
#      XLA, export/reload on the device; slow ones included);
#   4. throughput.py on five shapes: ResNet-18 32 px batch 512 bf16 XLA device
#      augmentations (the issue's 10,000 pairs/s goal), ResNet-18 96 px (STL-10 shape,
#      blur), ResNet-50 224 px, ViT-T/4 at 32 px and ViT-S/16 at 224 px (issue 24, each
#      with its PyTorch/timm row); each writes OUT/throughput_<shape>.{log,json}.
# Everything goes under OUT: $OUT when set, else ./accelerator_check_out. The whole check
# stays within BUDGET_S seconds (630 = 10.5 minutes): each step's timeout is cut to what is
# left. Exit status: 0 when every step passed, else 1 (see OUT/summary.txt).
set -uo pipefail

DRY=0 CPU=0 VENV=1
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --cpu) CPU=1 ;;
    --no-venv) VENV=0 ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "accelerator_check.sh: unknown argument $arg (--dry-run, --cpu, --no-venv)" >&2
       exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
OUT_DIR="${OUT:-$ROOT/accelerator_check_out}"
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
SUMMARY="$OUT_DIR/summary.txt"
# 10.5 minutes on the GPU host (8 before the two ViT rows); --cpu (2 shared cores, XLA
# compiles of minutes) gets 30.
BUDGET_S="${BUDGET_S:-$(( CPU ? 1800 : 630 ))}"
START_S=$(date +%s)
PY="${PYTHON:-python3}"
FAILED=0
: > "$SUMMARY"

log() { echo "[accelerator_check $(date +%H:%M:%S)] $*" | tee -a "$SUMMARY"; }

left() { echo $(( BUDGET_S - ($(date +%s) - START_S) )); }

# run NAME TIMEOUT_S CMD...: CMD under `timeout` (cut to the budget left, keeping RESERVE_S
# for the steps after it), output to OUT/NAME.log and the terminal, rc recorded.
run() {
  local name="$1" want="$2" reserve="${RESERVE_S:-0}"; shift 2
  local limit=$(( $(left) - reserve ))
  (( limit > want )) && limit=$want
  if (( DRY )); then
    log "plan: $name (timeout ${want}s): $*"
    return 0
  fi
  if (( limit < 10 )); then
    log "$name: SKIPPED (budget spent: $(left)s left of ${BUDGET_S}s)"
    FAILED=1
    return 0
  fi
  log "$name: start (timeout ${limit}s): $*"
  local t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  tail -n 40 "$OUT_DIR/$name.log"
  (( rc == 124 || rc == 137 )) && log "$name: TIMED OUT after ${limit}s"
  log "$name: rc=$rc in $(( $(date +%s) - t0 ))s"
  (( rc != 0 )) && FAILED=1
  return 0
}

log "repository $ROOT, output $OUT_DIR, budget ${BUDGET_S}s, cpu mode $CPU, dry run $DRY"

# -- 1. install ------------------------------------------------------------------------------
has_gpu_tf() {
  "$1" - <<'EOF' > /dev/null 2>&1
import os
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf, dualssl_tf, pytest  # noqa: F401
v = tf.__version__.split(".")
assert (int(v[0]), int(v[1])) == (2, 21), tf.__version__
assert tf.config.list_physical_devices("GPU")
EOF
}

if (( CPU )); then
  log "install: skipped (--cpu: the current python, no CUDA build)"
elif (( ! DRY )) && has_gpu_tf "$PY"; then
  log "install: skipped ($PY already has TensorFlow 2.21 with a GPU and the package)"
else
  if (( VENV )); then
    run venv 60 "$PY" -m venv "$OUT_DIR/venv"
    if (( DRY )) || [[ -x "$OUT_DIR/venv/bin/python" ]]; then
      PY="$OUT_DIR/venv/bin/python"
    else
      log "venv: not created (python3-venv missing?); installing into $PY instead"
    fi
  fi
  RESERVE_S=300 run install 240 "$PY" -m pip install --quiet -e ".[test]" \
    "tensorflow[and-cuda]>=2.21,<2.22"
fi
[[ -x "$PY" ]] || PY="$(command -v "$PY" || echo "$PY")"

# -- 2. the device -----------------------------------------------------------------------------
if command -v nvidia-smi > /dev/null 2>&1; then
  run nvidia_smi 20 nvidia-smi
else
  log "nvidia_smi: not found on PATH"
  (( CPU )) || FAILED=1
fi
run tf_devices 60 "$PY" -c "
import os; os.environ['TF_CPP_MIN_LOG_LEVEL'] = '2'
import tensorflow as tf
print('tensorflow', tf.__version__, 'built with CUDA', tf.test.is_built_with_cuda())
for d in tf.config.list_physical_devices():
    info = tf.config.experimental.get_device_details(d) if d.device_type == 'GPU' else {}
    print(d.name, d.device_type, info)
"

# -- 3. the tests marked gpu -------------------------------------------------------------------
if (( CPU )); then
  # On 2 CPU cores the gpu-marked tests take many minutes: list them, run the quickest.
  run tests_collect 120 "$PY" -m pytest -q -m gpu --co -p no:cacheprovider
  run tests 300 "$PY" -m pytest -q -m "gpu and not slow" -p no:cacheprovider \
    tests/models/test_batchnorm.py
else
  RESERVE_S=280 run tests 200 "$PY" -m pytest -v -m gpu -p no:cacheprovider --durations=15 \
    -o junit_family=xunit2 --junitxml="$OUT_DIR/tests.xml"
fi

# -- 4. throughput -----------------------------------------------------------------------------
bench() {  # bench NAME TIMEOUT_S FLAGS...
  local name="$1" want="$2"; shift 2
  run "throughput_$name" "$want" env PYTHONPATH="$ROOT" "$PY" benchmarks/throughput.py \
    --json_out="$OUT_DIR/throughput_$name.json" "$@"
}
if (( CPU )); then
  TINY=(--width_multiplier=0.125 --batch_size=16 --steps=2 --warmup=1 --repeats=1)
  bench r18_32px 400 --encoder=resnet18 --image_size=32 --mixed_precision=bfloat16 \
    --jit_compile --augment_on=device --rows=host,device,step "${TINY[@]}"
  bench r18_96px 300 --encoder=resnet18 --image_size=96 --blur --color_jitter_strength=1.0 \
    --rows=host,fit "${TINY[@]}"
  bench r50_224px 300 --encoder=resnet50 --image_size=224 --width_multiplier=0.0625 \
    --batch_size=4 --steps=1 --warmup=1 --repeats=1 --rows=step
  bench vitt4_32px 300 --encoder=vit_tiny --image_size=32 --batch_size=8 --steps=1 \
    --warmup=1 --repeats=1 --rows=step,torch
  bench vits16_224px 300 --encoder=vit_small --image_size=224 --batch_size=2 --steps=1 \
    --warmup=1 --repeats=1 --rows=step,torch
else
  # Estimated for one H200 on a 16-core host (XLA compiles of ~20-60 s per compiled
  # function); BUDGET_S=900 gives every step more room.
  COMMON=(--mixed_precision=bfloat16 --jit_compile --augment_on=device
          --steps_per_execution=10 --warmup=20 --repeats=3)
  RESERVE_S=150 bench r18_32px 130 --encoder=resnet18 --image_size=32 --batch_size=512 \
    --color_jitter_strength=0.5 --steps=50 --rows=host,device,step,fit,torch "${COMMON[@]}"
  RESERVE_S=75 bench r18_96px 75 --encoder=resnet18 --image_size=96 --batch_size=256 \
    --blur --color_jitter_strength=1.0 --steps=30 --rows=host,step,fit "${COMMON[@]}"
  RESERVE_S=150 bench r50_224px 120 --encoder=resnet50 --image_size=224 --batch_size=128 \
    --blur --color_jitter_strength=1.0 --steps=20 --rows=host,step,fit "${COMMON[@]}"
  RESERVE_S=75 bench vitt4_32px 75 --encoder=vit_tiny --image_size=32 --batch_size=512 \
    --color_jitter_strength=0.5 --steps=30 --rows=step,fit,torch "${COMMON[@]}"
  bench vits16_224px 75 --encoder=vit_small --image_size=224 --batch_size=128 --blur \
    --color_jitter_strength=1.0 --steps=20 --rows=step,torch "${COMMON[@]}"
fi

log "done in $(( $(date +%s) - START_S ))s of ${BUDGET_S}s; failed steps: $FAILED"
(( DRY )) && exit 0
exit $(( FAILED ? 1 : 0 ))
