"""Ship a trained checkpoint as gpt2kit's built-in model (the last step of runs/builtin.sh).

    python runs/ship_builtin.py RUN_DIR DATA_DIR [--checkpoint best|last]

1. loads the run's best (or last) checkpoint and stores it in bf16 in src/gpt2kit/builtin_model/
   (config.json + model.safetensors: a Hugging Face folder like every gpt2kit checkpoint);
2. measures the validation loss of the *shipped* (bf16-rounded) weights on the whole val split of DATA_DIR
   (every token scored once, in non-overlapping windows of the model's context);
3. writes builtin.json (metadata + the weights' sha256, checked at every load) and MODEL_CARD.md, with
   unedited samples from fixed prompts and seeds, and copies the run's loss plot to docs/builtin/.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import sys
from datetime import date
from pathlib import Path

import torch
from builtin_sweep import table  # runs/builtin_sweep.py, beside this script

import gpt2kit
from gpt2kit.atomic import write_text
from gpt2kit.builtin import META_FILE, WEIGHTS_FILE, builtin_dir
from gpt2kit.eval.perplexity import shards_loss
from gpt2kit.generate import SamplingParams
from gpt2kit.generate.text import TextGenerator
from gpt2kit.train.checkpoint import best_checkpoint, latest_checkpoint

REPO = Path(__file__).resolve().parents[1]
PROMPTS = [
    ("The President said", 0),
    ("It is a truth universally acknowledged", 0),
    ("And God said unto Moses,", 1),
    ("ROMEO. O, my love,", 2),
    ("The blessed man, saith the Psalmist,", 3),
]
GREEDY = ["The President said", "It is a truth universally acknowledged"]


def pick_checkpoint(run: Path, which: str) -> Path:
    found = (best_checkpoint if which == "best" else latest_checkpoint)(run / "checkpoints")
    if found is None:
        sys.exit(f"no checkpoints in {run}/checkpoints")
    return found


def quote(text: str) -> str:
    """Markdown blockquote, line by line, so the sample is shown exactly as generated."""
    return "\n".join("> " + line for line in text.split("\n"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--checkpoint", choices=["best", "last"], default="best")
    ap.add_argument("--notes", default="", help="what the model card should say about this particular run")
    ap.add_argument("--sweep-notes", default="", help="what the model card should say about the shape sweep")
    args = ap.parse_args()
    torch.set_num_threads(2)

    ckpt = pick_checkpoint(args.run, args.checkpoint)
    meta = json.loads((ckpt / "meta.json").read_text())
    cfg = meta["train_config"]
    model = gpt2kit.from_pretrained(ckpt)
    out = builtin_dir()
    gpt2kit.save_pretrained(model, out, dtype="bfloat16", tokenizer_files=False)
    shipped = gpt2kit.from_pretrained(out)  # evaluate exactly what ships (bf16-rounded weights)
    loss, n_val = shards_loss(shipped, args.data, "val")
    print(f"{ckpt.name}: val loss {loss:.4f} over {n_val:,} tokens (shipped bf16 weights)")

    c = shipped.config
    info = {
        "name": "gpt2kit-builtin",
        "shape": f"{c.n_layer} layers x {c.n_embd} wide, {c.n_head} heads, {c.n_positions} context",
        "params_millions": shipped.num_params() / 1e6,
        "data": "41 MB of public-domain English: State of the Union addresses, Jane Austen, the King James and World English Bibles, Shakespeare, Milton, Spurgeon's Treasury of David",
        "checkpoint": f"{args.run.name}/{ckpt.name}",
        "step": meta["step"],
        "tokens_seen": meta["tokens"],
        "train_loss": meta["train_loss"],
        "val_loss": loss,
        "val_perplexity": math.exp(loss),
        "val_tokens": n_val,
        # the shape inline (the run's model file was a temporary one of the sweep)
        "train_config": {k: v for k, v in cfg.items() if k not in ("data", "out_dir", "resume")} | {"model": c.to_dict()},
        "date": date.today().isoformat(),
        "sha256": hashlib.sha256((out / WEIGHTS_FILE).read_bytes()).hexdigest(),
    }
    write_text(out / META_FILE, json.dumps(info, indent=2) + "\n")

    docs = REPO / "docs" / "builtin"
    docs.mkdir(parents=True, exist_ok=True)
    if (args.run / "loss.png").is_file():
        shutil.copyfile(args.run / "loss.png", docs / "loss.png")
    shutil.copyfile(args.run / "metrics.jsonl", docs / "metrics.jsonl")

    tg = TextGenerator(shipped, gpt2kit.Tokenizer())
    samples = []
    for prompt, seed in PROMPTS:
        [comp] = tg.complete([prompt], SamplingParams(max_new_tokens=60, temperature=0.8, top_k=40, seed=seed))
        samples.append(f"**{prompt}** (temperature 0.8, top-k 40, seed {seed})\n\n{quote(prompt + comp.text)}")
    for prompt in GREEDY:
        [comp] = tg.complete([prompt], SamplingParams(max_new_tokens=40, temperature=0.0))
        samples.append(f"**{prompt}** (greedy)\n\n{quote(prompt + comp.text)}")
    sweep = args.run / "sweep.json"
    sweep_table = table(json.loads(sweep.read_text())["candidates"]) if sweep.is_file() else "(no sweep.json in the run folder)"
    train_tokens = json.loads((args.data / "meta.json").read_text())["train"]["tokens"]  # written by `gpt2kit prepare`
    card = (REPO / "runs" / "MODEL_CARD.template.md").read_text()
    card = card.format(**info, samples="\n\n".join(samples), tokens_seen_m=info["tokens_seen"] / 1e6,
                       epochs=info["tokens_seen"] / train_tokens, train_json=json.dumps(info["train_config"], indent=2), shape_ctx=c.n_positions, run_notes=args.notes,
                       sweep_table=sweep_table, sweep_notes=args.sweep_notes)  # fmt: skip
    write_text(out / "MODEL_CARD.md", card)
    print(f"shipped {out} ({(out / WEIGHTS_FILE).stat().st_size / 2**20:.1f} MiB), sha256 {info['sha256'][:16]}…")


if __name__ == "__main__":
    main()
