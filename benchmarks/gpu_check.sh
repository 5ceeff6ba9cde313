#!/usr/bin/env bash
# Every GPU measurement and check for training speed and generation speed, in one call.
#
#   OUT=/path benchmarks/gpu_check.sh                 # everything (~6-8 min on an H200, see the budget below)
#   ONLY=train OUT=/path benchmarks/gpu_check.sh      # the training group alone (~5 min)
#   ONLY=gen OUT=/path benchmarks/gpu_check.sh        # the generation group alone (~3 min)
#   ONLY="train_bench gen_124m_b1" ...                # named sections
#   DRY=1 OUT=/tmp/gc benchmarks/gpu_check.sh         # the same sections, tiny shapes, on the CPU
#
# The GPU machine gets the repository only (no ../shared, no venv): Python with torch, triton and
# transformers, and PYTHONPATH=src (set here). The real-text shard for the training check is
# benchmarks/data/text.bin (git-ignored: carry it, or this script writes one from tests/fixtures/corpora).
# Everything lands in $OUT: summary.jsonl (one line per section: rc, seconds), <section>.log, and the
# benchmarks' JSON lines (train.jsonl, train_check.jsonl, generate.jsonl, serve.json). A section that
# fails does not stop the others; the sections run in priority order and a time budget (BUDGET_S, default
# 540 s; DRY 2400 s, with 4x the section limits) cuts the last ones short, so the call returns in time with
# what it has. Expected on an H200 (estimates, nothing has run there yet): train_check ~70 s, train_bench
# ~300 s (three processes per side, alternating: six compilations, the later ones from inductor's cache),
# train_355m ~120 s, train_xl ~120 s; each generation row ~30 s. train_bench alone fits the budget; the
# other training rows need their own call (ONLY=train_355m ...).
#
# Training (gpt2kit, transformers, nanoGPT; GPT-2 124M at 16 x 1024, bf16):
#   train_check   fast step (padded vocab, chunked loss, compiled) vs plain step: same-batch loss, 50 steps
#   train_bench   tokens/s, ms/step, MFU, peak memory of the three steps, each in its own process
#   train_355m    gpt2kit's step for GPT-2 355M
#   train_xl      gpt2kit's step for gpt2-xl (1.5B, full AdamW fine-tuning memory), batch 8, eager
#   train_forward_loss  gpt2kit's 124M step with the model's own F.cross_entropy loss: does chunking pay?
# Generation (bf16, greedy, 32-token prompt, 256 new tokens; gpt2kit and transformers on the same weights):
#   gen_124m_b1, gen_1p5b_b1, gen_124m_b32, gen_prefill (1024-token prompt), serve_64 (64 clients)
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
: "${OUT:?set OUT to the folder for results and logs}"
mkdir -p "$OUT"
export GPT2KIT_BENCH_RESULTS="$OUT"  # benchmarks/harness.py (generate.py) writes its JSON lines here
PY=${PYTHON:-python}
DRY=${DRY:-0}
BUDGET_S=${BUDGET_S:-$([ "$DRY" = 1 ] && echo 2400 || echo 540)}
SCALE=$([ "$DRY" = 1 ] && echo 4 || echo 1)  # a 2-core CPU shared with other jobs needs longer than the GPU machine
ONLY=${ONLY:-train gen}
T0=$(date +%s)

if [ "$DRY" = 1 ]; then
    DEV=cpu
    SHAPE_TRAIN=(--model tiny --batch 2 --block 32)
    BENCH=(--steps 1 --warmup 1 --threads 2)
    CHECK=(--steps 12 --lr 3e-3 --warmup 3 --compile off --min-drop 0.3 --threads 2)
    MEDIUM=(--model tiny) XL=(--model tiny) BIG=124M GEN=(--new-tokens 4 --repeat 1) PREFILL=128 CLIENTS=2
else
    DEV=cuda
    SHAPE_TRAIN=(--model gpt2 --batch 16 --block 1024)
    BENCH=(--steps 10 --warmup 3)
    CHECK=(--steps 50)
    MEDIUM=(--model gpt2-medium) XL=(--model gpt2-xl --batch 8 --compile off --steps 2 --warmup 1) BIG=1.5B
    GEN=(--new-tokens 256 --repeat 3) PREFILL=1024 CLIENTS=64
fi

wanted() {  # section name, group name ("all": always)
    [ "$2" = all ] && return 0
    for w in $ONLY; do [ "$w" = "$1" ] || [ "$w" = "$2" ] && return 0; done
    return 1
}

section() {  # name group limit_s command...
    local name=$1 group=$2 limit=$(($3 * SCALE))
    shift 3
    wanted "$name" "$group" || return 0
    local left=$((BUDGET_S - ($(date +%s) - T0)))
    if [ "$left" -lt 20 ]; then
        echo "{\"section\": \"$name\", \"rc\": null, \"skipped\": \"time budget spent\"}" >>"$OUT/summary.jsonl"
        echo "== $name: skipped (budget)"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s): $*"
    local start=$(date +%s)
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    local took=$(($(date +%s) - start))
    local cmd=$(printf '%s' "$*" | sed 's/\\/\\\\/g; s/"/\\"/g')  # JSON-escaped
    echo "{\"section\": \"$name\", \"rc\": $rc, \"seconds\": $took, \"command\": \"$cmd\"}" >>"$OUT/summary.jsonl"
    echo "   rc=$rc in ${took}s; last line: $(tail -c 300 "$OUT/$name.log" | tail -1)"
}

section env all 60 sh -c "nvidia-smi 2>&1 | head -15; $PY -c 'import torch, sys; print(sys.version); print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.is_available() and torch.cuda.get_device_name(0)); import transformers; print(\"transformers\", transformers.__version__)'; nproc; free -g | head -2"

# ---- training -------------------------------------------------------------------------------------
SHARD=benchmarks/data/text.bin
if wanted train_check train && [ ! -s "$SHARD" ]; then  # not carried along: the fixtures' 85k tokens
    $PY benchmarks/make_text_shard.py --src tests/fixtures/corpora --out "$SHARD" >"$OUT/data.log" 2>&1
fi
section train_check train 150 $PY benchmarks/train_check.py --device $DEV "${SHAPE_TRAIN[@]}" "${CHECK[@]}" --data "$SHARD" --out "$OUT/train_check.jsonl"
section train_bench train 420 $PY benchmarks/train.py --device $DEV "${SHAPE_TRAIN[@]}" "${BENCH[@]}" --out "$OUT/train.jsonl"

# ---- generation (benchmarks/generate.py and serve.py: gpt2kit and transformers in one run) -----------
G=($PY benchmarks/generate.py --device $DEV --dtype bf16 --prompt-len 32 "${GEN[@]}")
section gen_124m_b1 gen 90 "${G[@]}" --shape 124M --batch 1
section gen_1p5b_b1 gen 150 "${G[@]}" --shape $BIG --batch 1
section gen_124m_b32 gen 90 "${G[@]}" --shape 124M --batch 32
section gen_prefill gen 90 $PY benchmarks/generate.py --device $DEV --dtype bf16 --shape 124M --batch 1 --prompt-len $PREFILL --new-tokens 1 --repeat 3
section serve_64 gen 150 $PY benchmarks/serve.py --device $DEV --dtype bfloat16 --clients $CLIENTS --max-tokens "${GEN[1]}" --baseline-requests 4 --json "$OUT/serve.json"

# ---- training, the rest --------------------------------------------------------------------------------
section train_355m train 150 $PY benchmarks/train.py --device $DEV "${SHAPE_TRAIN[@]}" "${BENCH[@]}" "${MEDIUM[@]}" --impls gpt2kit --out "$OUT/train.jsonl"
section train_xl train 120 $PY benchmarks/train.py --device $DEV "${SHAPE_TRAIN[@]}" "${BENCH[@]}" "${XL[@]}" --impls gpt2kit --out "$OUT/train.jsonl"
section train_forward_loss train 150 $PY benchmarks/train.py --device $DEV "${SHAPE_TRAIN[@]}" "${BENCH[@]}" --impls gpt2kit --loss forward --out "$OUT/train.jsonl"

echo "== done in $(($(date +%s) - T0))s; results in $OUT"
