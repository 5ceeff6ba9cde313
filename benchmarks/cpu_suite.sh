#!/usr/bin/env bash
# Every CPU measurement behind benchmarks/RESULTS.md, in one run on one idle machine; then regenerate RESULTS.md.
#   benchmarks/cpu_suite.sh            # all (about an hour on 2 cores)
#   ONLY="generate eval" benchmarks/cpu_suite.sh
# llama.cpp joins the batch-1 rows when tools/llamacpp.sh has built it. Nothing else may run meanwhile.
set -euo pipefail
cd "$(dirname "$0")/.."
ONLY="${ONLY:-generate eval serve train prepare kernels start attention lora export}"
T="${THREADS:-2}"
LLAMA=()
if bash tools/llamacpp.sh --bin >/dev/null 2>&1; then LLAMA=(--llamacpp); fi
has() { [[ " $ONLY " == *" $1 "* ]]; }
# the bf16 rows of eval and train need native bf16 (their targets say so); without it both sides' products are
# emulated and those rows alone take over an hour. bf16 decoding runs gemv.c's kernels everywhere: kept.
NATIVE_BF16=$(python -c "from gpt2kit.device import cpu_has_bf16; print(int(cpu_has_bf16()))")
if has generate; then
  # batch 1 from a one-token prompt, as llama-bench's tg128 decodes; five alternating runs a side (a VM's memory
  # speed can change from one second to the next)
  ONE=(--threads "$T" --prompt-len 1 --huge-pages --repeat 5 "${LLAMA[@]}")
  python benchmarks/generate.py "${ONE[@]}"                                               # fp32
  # without native bf16 transformers' bf16 products are emulated (4 tok/s for 124M on a 2-core Zen 3): its fp32 is
  # what a user there runs instead, and gpt2kit's bf16 runs gemv.c's AVX2 product
  HF_BF16=(); if [[ $NATIVE_BF16 == 0 ]]; then HF_BF16=(--hf-dtype fp32); fi
  python benchmarks/generate.py "${ONE[@]}" --dtype bf16 "${HF_BF16[@]}"                  # native bf16 where the CPU has it
  python benchmarks/generate.py "${ONE[@]}" --weights int8 --hf-dtype fp32
  python benchmarks/generate.py --threads "$T" --batch 8
  python benchmarks/generate.py --threads "$T" --batch 8 --dtype bf16 "${HF_BF16[@]}"
  python benchmarks/generate.py --threads "$T" --prompt-len 512 --new-tokens 1 "${LLAMA[@]}"  # prompt processing
  python benchmarks/generate.py --threads "$T" --prompt-len 32 --new-tokens 1 "${LLAMA[@]}"   # a short prompt (a chat turn)
  python benchmarks/generate.py --threads "$T" --temperature 1                           # sampled, as `gpt2kit generate` is by default
  python benchmarks/generate.py --threads "$T" --weights int8 --hf-dtype fp32 --temperature 0.8 --top-p 0.95
  python benchmarks/generate.py --quality --model builtin                                 # int8 / bf16 perplexity change
fi
if has eval; then
  python benchmarks/eval.py --threads "$T" --strides 1024 512
  if [[ $NATIVE_BF16 == 1 ]]; then python benchmarks/eval.py --threads "$T" --strides 1024 --dtype bfloat16; fi
fi
if has serve; then python benchmarks/serve.py --threads "$T" --clients 1 32; fi
if has train; then
  TRAIN=(--device cpu --model cpu-small --batch 16 --block 256 --impls gpt2kit,transformers --threads "$T" --steps 3)
  python benchmarks/train.py "${TRAIN[@]}" --dtype fp32 --compile off
  python benchmarks/train.py "${TRAIN[@]}" --dtype fp32 --compile on                   # what `gpt2kit train` runs for 200+ steps
  if [[ $NATIVE_BF16 == 1 ]]; then
    python benchmarks/train.py "${TRAIN[@]}" --dtype bf16 --hf-dtype fp32 --compile on   # bf16 against transformers fp32
    python benchmarks/train.py "${TRAIN[@]}" --dtype bf16 --compile off
  fi
fi
if has prepare; then python benchmarks/prepare.py --workers "$T"; fi
if has kernels; then python benchmarks/kernel_choice.py --threads "$T"; fi               # the first run's kernel measurement
if has start; then                                                                       # a whole `gpt2kit generate` command, start to exit
  python benchmarks/cold_start.py "${LLAMA[@]}"
  python benchmarks/cold_start.py --model 124M "${LLAMA[@]}"
fi
if has attention; then python benchmarks/attention.py --threads "$T"; fi                 # attend.c and causal.c against SDPA
if has lora; then python benchmarks/lora.py; fi
if has export && [[ ${#LLAMA[@]} -gt 0 ]]; then                                          # gpt2kit against its own exports
  python benchmarks/peers/export_decode.py --threads "$T"
  python benchmarks/peers/export_decode.py --threads "$T" --shape 124m
fi
python benchmarks/report.py
