#!/usr/bin/env bash
# A first CPU run for newcomers: a 4 x 256 GPT-2 (16M) on all of ../shared/corpora, val = last 1 % of each file,
# about an hour on a 2-core CPU. Safe to stop and rerun: a second run resumes from the last checkpoint.
#   DTYPE=bf16 (default; ~1.9x fp32 on CPUs with AVX-512 BF16), COMPILE=on|off, THREADS (0 = all cores).
set -euo pipefail
CORPORA=${CORPORA:-../shared/corpora}
OUT=${OUT:-out/corpora-cpu}
DATA=${DATA:-data/corpora}
if [ ! -f "$DATA/meta.json" ]; then
  gpt2kit prepare "$CORPORA"/*.txt --out "$DATA" --val-tail 0.01 --overwrite
fi
RESUME=()
if ls -d "$OUT"/checkpoints/step_* >/dev/null 2>&1; then RESUME=(--resume); fi
gpt2kit train --config configs/corpora_cpu.json --data "$DATA" --out-dir "$OUT" "${RESUME[@]}" \
  --dtype "${DTYPE:-bf16}" --compile "${COMPILE:-off}" --threads "${THREADS:-0}" --max-minutes "${MINUTES:-60}"
