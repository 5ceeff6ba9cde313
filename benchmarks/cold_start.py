"""What a user waits for: one whole generation command, from starting the process to its exit.

    python benchmarks/cold_start.py [--model builtin|124M] [--new-tokens 32] [--repeat 5] [--llamacpp]

Each side is a fresh process that loads the model, turns a prompt into tokens, generates --new-tokens greedy
tokens, prints the text and exits; its wall time includes the interpreter's start, the imports and the exit:
  - `gpt2kit generate PROMPT --model FOLDER --temperature 0`, as a user types it (the kernel choice cached by one
    untimed run first, as every run after a user's first finds it);
  - transformers: `AutoTokenizer` and `GPT2LMHeadModel.from_pretrained(FOLDER)`, `generate()` and `decode` in a
    `python -c` script (the folder holds the tokenizer's files: gpt2kit's save_pretrained writes them);
  - with --llamacpp, llama.cpp's `llama-simple` on an F32 GGUF export of the same folder (tools/llamacpp.sh builds it).
The model is the built-in one or a random 124M GPT-2, saved once to a temporary folder. Each command is timed by a
fresh worker process (this script with --time, harness.alternate); every side runs once untimed, then the sides
alternate --repeat times; medians, in seconds, go to benchmarks/results/cold_start.jsonl with each
peer's time over gpt2kit's (`speedup`: over 1, gpt2kit finished first).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import harness  # noqa: E402

PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
TRANSFORMERS = """import sys, torch, transformers
folder, n, prompt = sys.argv[1], int(sys.argv[2]), sys.argv[3]
tok = transformers.AutoTokenizer.from_pretrained(folder)
model = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
ids = tok(prompt, return_tensors="pt").input_ids
with torch.inference_mode():
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=50256)
print(tok.decode(out[0, ids.shape[1]:].tolist()))
"""


def time_command(argv: list[str]) -> dict:
    """A side's worker (harness.alternate runs this script with --time): wall seconds of the command, start to exit
    (its output discarded; a failure exits with its last lines)."""
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        sys.exit(f"{argv[:3]} exit {done.returncode}: " + " | ".join(done.stderr.strip().splitlines()[-3:]))
    return {"seconds": seconds}


def _folder(model: str, out: str) -> str:
    """The model saved to `out` as a Hugging Face folder (config.json + model.safetensors), loadable by every side."""
    import torch

    import gpt2kit

    torch.manual_seed(0)
    m = gpt2kit.from_pretrained("builtin") if model == "builtin" else gpt2kit.GPT(gpt2kit.GPTConfig()).eval()
    m.save_pretrained(out)
    return out


def main() -> int:
    if sys.argv[1:2] == ["--time"]:
        print(json.dumps(time_command(sys.argv[2:])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("builtin", "124M"), default="builtin")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--llamacpp", action="store_true", help="also llama.cpp's llama-simple (tools/llamacpp.sh builds it)")
    args = ap.parse_args()
    n = str(args.new_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        folder = _folder(args.model, str(Path(tmp) / "model"))
        sides = {
            "gpt2kit generate": [sys.executable, "-m", "gpt2kit", "generate", PROMPT, "--model", folder, "--max-new-tokens", n,
                                 "--temperature", "0", "--ignore-eos"],  # fmt: skip
            "transformers": [sys.executable, "-c", TRANSFORMERS, folder, n, PROMPT],
        }
        if args.llamacpp:
            import gpt2kit
            from gpt2kit.export import export_gguf

            gguf = export_gguf(gpt2kit.from_pretrained(folder), Path(tmp) / "m-f32.gguf", type="f32")
            sides["llama.cpp"] = [str(harness.llamacpp_bin() / "llama-simple"), "-m", str(gguf), "-n", n, PROMPT]
        sides = {name: [__file__, "--time", *argv] for name, argv in sides.items()}
        harness.alternate(sides, 1)  # untimed: gpt2kit's kernel choice cached, every file in the page cache
        runs = harness.alternate(sides, args.repeat)
    figures = {name: harness.median(r, "seconds") for name, r in runs.items()}
    ours = figures["gpt2kit generate"]
    line = harness.record(
        "cold_start", ["python", "benchmarks/cold_start.py", *sys.argv[1:]], int(os.environ.get("OMP_NUM_THREADS") or os.cpu_count()),
        {name: {"figure": round(f, 3), "unit": "s", "runs": [round(r["seconds"], 3) for r in runs[name]]} for name, f in figures.items()},
        None, model=args.model, new_tokens=args.new_tokens,
        speedup={name: round(f / ours, 3) for name, f in figures.items() if name != "gpt2kit generate"},
    )  # fmt: skip
    print(json.dumps(line, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
