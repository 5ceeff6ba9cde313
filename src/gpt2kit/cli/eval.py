"""Evaluate a model: perplexity of text files (sliding windows), LAMBADA (both protocols), HellaSwag, WikiText.

Benchmark data is never downloaded: pass the standard files with --data (see docs/evaluation.md).
Results print as a table; --output writes them as JSON (task, protocol, metric, value, model, n, date).
"""

from __future__ import annotations

import argparse

HELP = "evaluate: perplexity, lambada, hellaswag, wikitext"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gpt2kit.cli.common import add_model_arguments
    from gpt2kit.eval.runner import TASKS

    p.add_argument("task", choices=TASKS, help="what to evaluate")
    add_model_arguments(p)  # --model, --device, --dtype
    p.add_argument("--data", nargs="+", default=[], metavar="FILE", help="data file(s); a folder = its *.txt files (perplexity)")
    p.add_argument("--limit", type=int, default=None, help="first N examples (tokens for perplexity, articles for wikitext)")
    p.add_argument("--batch-size", type=int, default=8, help="windows / requests per forward pass")
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        help="sliding-window stride (default: n_positions, no overlap; 512 = transformers guide)",
    )
    p.add_argument(
        "--no-bos", dest="bos", action="store_false", help="perplexity: do not prefix <|endoftext|> (first token unscored)"
    )
    p.add_argument("--protocol", dest="protocols", action="append", choices=("lm-eval", "paper-last-token"),
                   help="lambada protocol(s) to run (default: both)")  # fmt: skip
    p.add_argument("--output", "-o", default=None, help="write the results as JSON to this file")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> None:
    from gpt2kit.cli.common import load_model_and_tokenizer
    from gpt2kit.eval.runner import EvalConfig, run_eval

    options = {k: v for k, v in vars(args).items() if k in EvalConfig.__dataclass_fields__ and v is not None}
    cfg = EvalConfig(**options)  # validates the flags before the model is loaded
    model, tokenizer = load_model_and_tokenizer(args)
    run_eval(cfg, model, tokenizer)
