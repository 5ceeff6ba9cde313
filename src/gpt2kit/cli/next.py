"""Show the most likely next tokens after a text: rank, token (leading space shown as ␣, stray bytes as
<0xNN>), probability, cumulative probability, and what the sampler keeps with --temperature/--top-k/--top-p.

    gpt2kit next "The cat sat on the" --top 10
    gpt2kit next "The cat sat on the" --top-k 5 --temperature 0.7 --json
"""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import add_model_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="the text to continue ('-' reads stdin)")
    p.add_argument("--top", type=int, default=10, help="how many candidates to list")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--bos", action="store_true", help="put <|endoftext|> in front of the text")
    g = p.add_argument_group("sampler to show (what it would keep)")
    g.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy")
    g.add_argument("--top-k", type=int, default=None, help="keep the k most likely tokens")
    g.add_argument("--top-p", type=float, default=1.0, help="keep the smallest set with this total probability")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x p(top token)")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> None:
    import json
    import sys

    from gpt2kit.cli.common import load_model_and_tokenizer
    from gpt2kit.generate import SamplingParams
    from gpt2kit.insight.next_token import next_tokens

    text = sys.stdin.read() if args.text == "-" else args.text
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p)
    model, tok = load_model_and_tokenizer(args)
    result = next_tokens(model, tok, text, params, top=args.top, bos=args.bos)
    if args.json:
        print(json.dumps(result.to_dict(), ensure_ascii=False, indent=1))
        return
    shows_sampler = params.greedy or params.top_k is not None or params.top_p < 1 or params.min_p > 0 or params.temperature != 1
    head = f"{'rank':>4}  {'token':<20} {'prob':>8} {'cum':>8}" + (f" {'sampler':>8}" if shows_sampler else "")
    print(head)
    for c in result.candidates:
        line = f"{c.rank:>4}  {c.label:<20} {c.prob:>8.2%} {c.cum_prob:>8.2%}"
        if shows_sampler:
            line += f" {c.sampler_prob:>8.2%}" if c.sampler_prob > 0 else f" {'-':>8}"
        print(line)
    print(f"entropy {result.entropy_bits:.2f} bits", end="")
    if shows_sampler:
        print(
            f"; the sampler keeps {result.sampler_kept} tokens holding {result.sampler_kept_mass:.1%} of the probability", end=""
        )
    print()
