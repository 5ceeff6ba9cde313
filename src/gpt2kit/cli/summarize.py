"""Summarize an article the GPT-2 paper's way: article + "TL;DR:", 100 tokens of top-k 2 sampling, first 3 sentences."""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import add_model_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", nargs="?", default="-", help="text file with the article ('-' = stdin)")
    p.add_argument("--max-new-tokens", type=int, default=100, help="tokens generated before the first 3 sentences are kept")
    p.add_argument("--top-k", type=int, default=2, help="top-k sampling (the paper used 2)")
    p.add_argument("--sentences", type=int, default=3, help="sentences kept as the summary")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--show-prompt", action="store_true", help="print the prompt to stderr")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> None:
    import sys

    from gpt2kit.cli.common import load_model_and_tokenizer
    from gpt2kit.cli.textio import read_document
    from gpt2kit.generate.tasks import summarize

    article = read_document(args.file, "a UTF-8 text file with the article")
    model, tok = load_model_and_tokenizer(args)
    r = summarize(
        model, tok, article, max_new_tokens=args.max_new_tokens, top_k=args.top_k, sentences=args.sentences, seed=args.seed
    )
    if args.show_prompt:
        print(r.prompt, file=sys.stderr)
    print(r.text)
