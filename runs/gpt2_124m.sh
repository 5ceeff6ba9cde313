#!/usr/bin/env bash
# GPT-2 124M from scratch on 10B tokens (the llm.c recipe), on one node of 8 GPUs. TEXT: a folder of text/JSONL.
set -euo pipefail
TEXT=${TEXT:?set TEXT to a folder of .txt/.jsonl files}
DATA=${DATA:-data/gpt2-124m}
NGPU=${NGPU:-8}
[ -f "$DATA/meta.json" ] || gpt2kit prepare "$TEXT" --out "$DATA" --val-tail 0.001
torchrun --standalone --nproc_per_node="$NGPU" -m gpt2kit train --config configs/gpt2_124m.json --data "$DATA" "$@"
