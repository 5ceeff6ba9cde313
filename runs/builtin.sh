#!/usr/bin/env bash
# The built-in model, end to end: prepare ../shared/corpora (last 1 % of each file held out), train the
# 6 x 384 GPT-2 of configs/builtin.json, then ship the best checkpoint into src/gpt2kit/builtin_model/
# (bf16 safetensors + builtin.json with its sha256 + MODEL_CARD.md). Rerunning resumes the training.
#   On a GPU: DEVICE=cuda and raise STEPS (e.g. STEPS=20000 with dropout 0.1 for a multi-epoch run).
set -euo pipefail
cd "$(dirname "$0")/.."
CORPORA=${CORPORA:-../shared/corpora}
DATA=${DATA:-data/corpora}
OUT=${OUT:-out/builtin}
if [ ! -f "$DATA/meta.json" ]; then
  gpt2kit prepare "$CORPORA" --out "$DATA" --val-tail 0.01 --overwrite
fi
RESUME=()
if ls -d "$OUT"/checkpoints/step_* >/dev/null 2>&1; then RESUME=(--resume); fi
gpt2kit train --config configs/builtin.json --data "$DATA" --out-dir "$OUT" "${RESUME[@]}" \
  --device "${DEVICE:-auto}" --max-steps "${STEPS:-1200}" --max-minutes "${MINUTES:-0}"
python runs/ship_builtin.py "$OUT" "$DATA"
