"""Train a GPT-2 from scratch on shards from `gpt2kit prepare` (one process, or many under torchrun).

gpt2kit train --data data/corpora --model cpu-small --max-minutes 10
gpt2kit train --config configs/corpora_cpu.json
gpt2kit train --resume --out-dir out                      # continue exactly where it stopped
torchrun --nproc_per_node=8 -m gpt2kit train --config configs/gpt2_124m.json
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing

HELP = "train a GPT-2 from scratch on prepared shards"


def add_config_arguments(p: argparse.ArgumentParser, exclude: tuple[str, ...] = (), defaults: dict | None = None,
                         rename: dict | None = None) -> None:  # fmt: skip
    """One --flag per TrainConfig field (help from the field's metadata); unset flags stay out of args."""
    from gpt2kit.train.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    p.add_argument("--config", help="JSON file of TrainConfig fields (see configs/); flags override it")
    for f in dataclasses.fields(TrainConfig):
        if f.name in exclude:
            continue
        flag = "--" + (rename or {}).get(f.name, f.name).replace("_", "-")
        default = (defaults or {}).get(f.name, f.default)
        help_text = f"{f.metadata['help']} (default: {default!r})"
        kind = hints[f.name]
        if kind is bool:
            p.add_argument(flag, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=help_text)
            continue
        if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        p.add_argument(
            flag, dest=f.name, type=kind, default=argparse.SUPPRESS, help=help_text, metavar=flag[2:].upper().replace("-", "_")
        )


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p, exclude=("init_from",))


def overrides(args: argparse.Namespace) -> dict:
    return {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command", "config")}


def run(args: argparse.Namespace) -> None:
    from gpt2kit.train import train
    from gpt2kit.train.config import build_config

    train(build_config(overrides(args), args.config))
