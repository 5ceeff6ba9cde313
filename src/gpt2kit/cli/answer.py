"""Answer a question the GPT-2 paper's way: optional context, example "Q: / A:" pairs, "Q: question / A:", greedy."""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import add_model_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("question", help="the question")
    p.add_argument("--context", default=None, help="a text file with a document to answer from ('-' = stdin)")
    p.add_argument("--examples", default=None, help="file of example pairs 'question = answer', one per line")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--show-prompt", action="store_true", help="print the prompt to stderr")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> None:
    import sys

    from gpt2kit.cli.common import load_model_and_tokenizer
    from gpt2kit.cli.textio import read_document, read_examples
    from gpt2kit.generate.tasks import QA_EXAMPLES, answer

    context = read_document(args.context, "a UTF-8 text file with the context document") if args.context else None
    examples = read_examples(args.examples) if args.examples else QA_EXAMPLES
    model, tok = load_model_and_tokenizer(args)
    r = answer(model, tok, args.question, context=context, examples=examples, max_new_tokens=args.max_new_tokens)
    if args.show_prompt:
        print(r.prompt, file=sys.stderr)
    print(r.text)
