"""Generate text from a prompt, a file of prompts (one per line, or JSONL with "prompt") or stdin.

The generated text goes to stdout (completions separated by a blank line, or one JSON object per completion
with --jsonl); in a terminal each completion follows its prompt, dimmed (plain with NO_COLOR). Notices go
to stderr. Every sampling control is a flag; --temperature 0 is greedy.
"""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import add_model_arguments, add_sampling_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", nargs="?", default=None, help="the prompt (omit to read --file or stdin)")
    p.add_argument("--file", default=None, help="prompts file: one per line, or .jsonl with a \"prompt\" field; '-' = stdin")
    p.add_argument("--jsonl", action="store_true", help="write one JSON object per completion")
    p.add_argument("--stream", action="store_true", help="print the text as it is generated (one prompt, --n 1)")
    add_model_arguments(p)
    add_sampling_arguments(p)


def run(args: argparse.Namespace) -> None:
    import sys

    from gpt2kit.cli.common import generate_options, load_model_and_tokenizer, sampling_params
    from gpt2kit.cli.textio import read_prompts, run_generate

    params, options = sampling_params(args), generate_options(args)
    prompts = read_prompts(args.prompt, args.file)
    model, tok = load_model_and_tokenizer(args)
    run_generate(model, tok, prompts, params, options, sys.stdout, stream=args.stream, jsonl=args.jsonl)
