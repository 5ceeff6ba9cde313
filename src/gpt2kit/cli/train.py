"""Train a GPT-2 from scratch on shards from `gpt2kit prepare` (one process, or many under torchrun).

gpt2kit train --data data/corpora --model cpu-small --max-minutes 10
gpt2kit train --config configs/corpora_cpu.json
gpt2kit train --resume --out-dir out                      # continue exactly where it stopped
torchrun --nproc_per_node=8 -m gpt2kit train --config configs/gpt2_124m.json
"""

from __future__ import annotations

import argparse


def add_config_arguments(p: argparse.ArgumentParser, exclude: tuple[str, ...] = (), defaults: dict | None = None,
                         flags: dict | None = None) -> None:  # fmt: skip
    """--config, then one --flag per TrainConfig field (cli/flags.py); flags not given stay out of args."""
    from gpt2kit.cli.flags import add_config_flags
    from gpt2kit.train.config import TrainConfig

    p.add_argument("--config", help="JSON file of TrainConfig fields (see configs/); flags override it")
    add_config_flags(p, TrainConfig, exclude=exclude, defaults=defaults, flags=flags, unset=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, exclude=("init_from",))


def overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command", "config")}


def run(args: argparse.Namespace) -> None:
    from gpt2kit.train import train
    from gpt2kit.train.config import build_config

    train(build_config(overrides(args), args.config))
