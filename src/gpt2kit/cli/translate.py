"""Translate a sentence the GPT-2 paper's way: few-shot "english sentence = french sentence" lines, greedy."""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import add_model_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("sentence", help="the sentence to translate")
    p.add_argument(
        "--examples",
        default=None,
        help="file of example pairs 'source = target', one per line (default: built-in English = French)",
    )
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--show-prompt", action="store_true", help="print the prompt to stderr")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> None:
    import sys

    from gpt2kit.cli.common import load_model_and_tokenizer
    from gpt2kit.cli.textio import read_examples
    from gpt2kit.generate.tasks import EN_FR_EXAMPLES, translate

    examples = read_examples(args.examples) if args.examples else EN_FR_EXAMPLES
    model, tok = load_model_and_tokenizer(args)
    r = translate(model, tok, args.sentence, examples=examples, max_new_tokens=args.max_new_tokens)
    if args.show_prompt:
        print(r.prompt, file=sys.stderr)
    print(r.text)
