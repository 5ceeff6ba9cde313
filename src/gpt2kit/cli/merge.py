"""Merge a LoRA adapter into its base model: a plain model folder that needs neither peft nor --adapter.

  gpt2kit merge --model gpt2 --adapter ft/checkpoints/step_000300 --out gpt2-poems
  gpt2kit generate --model gpt2-poems "Once upon a time"

The folder is what `gpt2kit.save_pretrained` writes (config.json, model.safetensors, tokenizer files), so
transformers' GPT2LMHeadModel.from_pretrained loads it too; its logits are base + adapter's.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="the base model: a preset (gpt2, ...), 'builtin', a hub id or a model folder")
    p.add_argument("--adapter", required=True, metavar="DIR", help="the LoRA adapter folder (PEFT format)")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write")
    p.add_argument("--dtype", default=None, help="save the weights as fp32, bf16 or fp16 (default: the base's dtype)")


def run(args: argparse.Namespace) -> None:
    from pathlib import Path

    from gpt2kit.adapter import apply_adapter
    from gpt2kit.errors import ConfigError
    from gpt2kit.pretrained import from_pretrained, save_pretrained

    out = Path(args.out)
    if out.resolve() in (Path(args.adapter).resolve(), Path(args.model).resolve()):
        raise ConfigError(f"--out {out} is the adapter or base folder itself; write the merged model to a new folder.")
    model = apply_adapter(from_pretrained(args.model, device="cpu"), args.adapter)
    save_pretrained(model, out, dtype=args.dtype)
    print(f"wrote {out}: {args.model} + {args.adapter}, merged")
