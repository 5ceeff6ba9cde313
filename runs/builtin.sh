#!/usr/bin/env bash
# The built-in model, end to end: prepare ../shared/corpora (the last 1 % of each file held out), train the
# candidate shapes of runs/builtin_sweep.py side by side on one GPU (configs/builtin_gpu.json, each for
# MINUTES), then ship the one with the best validation loss into src/gpt2kit/builtin_model/ (bf16
# safetensors + builtin.json with its sha256 + MODEL_CARD.md).
#   MINUTES=7                            training time of every candidate (they run at once)
#   CANDIDATES="6x384:6:0.2 12x320:5:0.2"  LAYERSxWIDTH:HEADS:DROPOUT (default: the sweep's own list)
#   DEVICE=cpu                           no GPU: train configs/builtin.json's 6 x 384 on the CPU instead (hours;
#                                        rerunning resumes it), STEPS and CPU_MINUTES bound it
set -euo pipefail
cd "$(dirname "$0")/.."
CORPORA=${CORPORA:-../shared/corpora}
DATA=${DATA:-data/corpora}
OUT=${OUT:-out/builtin}
if [ ! -f "$DATA/meta.json" ]; then
  gpt2kit prepare "$CORPORA" --out "$DATA" --val-tail 0.01 --overwrite
fi
if [ "${DEVICE:-cuda}" = cpu ]; then
  RESUME=()
  if ls -d "$OUT"/checkpoints/step_* >/dev/null 2>&1; then RESUME=(--resume); fi
  gpt2kit train --config configs/builtin.json --data "$DATA" --out-dir "$OUT" "${RESUME[@]}" \
    --device cpu --max-steps "${STEPS:-1200}" --max-minutes "${CPU_MINUTES:-0}"
  python runs/ship_builtin.py "$OUT" "$DATA"
else
  ARGS=()
  for c in ${CANDIDATES:-}; do ARGS+=(--candidate "$c"); done
  python runs/builtin_sweep.py "$DATA" "$OUT" --minutes "${MINUTES:-7}" --export "$OUT/best" "${ARGS[@]}"
  python runs/ship_builtin.py "$OUT/best" "$DATA"
fi
