"""Fine-tune GPT-2 weights (a preset, hub id, Hugging Face folder or one of our checkpoints) on your data.

Same loop as `gpt2kit train`, started from pretrained weights with fine-tuning defaults (lower lr, short
warmup, dropout 0.1, early stopping on val loss). Data: a shards folder from `gpt2kit prepare` (plain text:
continue pretraining) or a .jsonl of {"prompt": ..., "completion": ...} records (loss on completions only,
an automatic validation split of --val-fraction).

  gpt2kit finetune --model gpt2 --data qa.jsonl --out-dir ft --max-steps 300
  gpt2kit finetune --model ./my-gpt2 --data data/mytext --out-dir ft2
  gpt2kit finetune --model gpt2-medium --data qa.jsonl --out-dir ft3 --lora-r 8   # LoRA: adapters only

With --lora-r N only rank-N adapters train (the base stays frozen) and each checkpoint is a PEFT adapter
folder: use it with `--model BASE --adapter DIR`, load it with peft, or `gpt2kit merge` it (docs/training.md).
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gpt2kit.cli.flags import Flag
    from gpt2kit.cli.train import add_config_arguments
    from gpt2kit.train.config import FINETUNE_DEFAULTS

    add_config_arguments(p, exclude=("model",), defaults=FINETUNE_DEFAULTS, flags={"init_from": Flag(name="--model")})


def run(args: argparse.Namespace) -> None:
    from gpt2kit.cli.train import overrides
    from gpt2kit.errors import ConfigError
    from gpt2kit.train import train
    from gpt2kit.train.config import FINETUNE_DEFAULTS, build_config

    given = overrides(args)
    if not given.get("init_from") and not given.get("resume"):
        raise ConfigError("finetune needs --model: a preset (gpt2, ...), a Hugging Face folder, or a checkpoint folder.")
    cfg = build_config(given, args.config, defaults=FINETUNE_DEFAULTS)
    result = train(cfg)
    if cfg.lora_r and (result.best_checkpoint or result.last_checkpoint):
        ckpt = result.best_checkpoint or result.last_checkpoint
        print(f"LoRA adapter: {ckpt}\n  use it:   gpt2kit generate --model {cfg.init_from} --adapter {ckpt} \"...\"\n"
              f"  merge it: gpt2kit merge --model {cfg.init_from} --adapter {ckpt} --out MERGED_DIR")  # fmt: skip
