"""Evaluate a model: perplexity of text files (sliding windows), LAMBADA (both protocols), HellaSwag, WikiText.

Benchmark data is never downloaded: pass the standard files with --data (see docs/evaluation.md).
Results print as a table; --output writes them as JSON (task, protocol, metric, value, model, n, date).
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gpt2kit.cli.common import add_model_arguments
    from gpt2kit.cli.flags import Flag, add_config_flags
    from gpt2kit.eval.runner import EvalConfig

    add_model_arguments(p)  # --model, --device, --dtype (--adapter)
    add_config_flags(p, EvalConfig, exclude=("model", "device", "dtype"), flags={
        "task": Flag(name="task"),
        "data": Flag(nargs="+", metavar="FILE"),
        "protocols": Flag(name="--protocol"),
        "output": Flag(aliases=("-o",)),
    })  # fmt: skip


def run(args: argparse.Namespace) -> None:
    from gpt2kit.cli.common import load_model_and_tokenizer
    from gpt2kit.cli.flags import config_values
    from gpt2kit.eval.runner import EvalConfig, run_eval

    options = {k: v for k, v in config_values(args, EvalConfig).items() if v is not None}  # None: the field's default
    cfg = EvalConfig(**options)  # validates the flags before the model is loaded
    model, tokenizer = load_model_and_tokenizer(args)
    run_eval(cfg, model, tokenizer)
