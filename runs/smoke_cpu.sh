#!/usr/bin/env bash
# A one-minute CPU smoke run: prepare two corpora -> train a tiny GPT-2 for 100 steps -> sample -> resume.
set -euo pipefail
CORPORA=${CORPORA:-../shared/corpora}
OUT=${OUT:-out/smoke}
gpt2kit prepare "$CORPORA/austen.txt" "$CORPORA/shakespeare.txt" --out data/smoke --val-tail 0.01 --overwrite
gpt2kit train --config configs/smoke_cpu.json --data data/smoke --out-dir "$OUT"
gpt2kit train --resume --out-dir "$OUT" --max-steps 120        # continue exactly where it stopped
echo "metrics: $OUT/metrics.jsonl, plot: $OUT/loss.png, model: $(ls -d "$OUT"/checkpoints/step_* | tail -1)"
