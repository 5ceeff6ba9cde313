"""Surprisal of a text, token by token: log-probability (bits), the rank of the actual token, and the
top-5 alternatives, in sliding windows past the model's context (eval's perplexity protocol). A summary
gives perplexity, bits per byte and GLTR's top-10/100/1000 fractions.

In a terminal the text is printed shaded green (expected) -> red (surprising); piped, it is a plain
tab-separated table. --json for scripts; --html PAGE writes a self-contained page with alternatives on hover.

    gpt2kit score essay.txt
    echo "The cat sat on the mat." | gpt2kit score - --json
    gpt2kit score "Colorless green ideas sleep furiously." --html ideas.html
"""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import add_model_arguments

# xterm-256 backgrounds from green to red, one per 1.5 bits of surprisal
GRADIENT = (46, 82, 118, 154, 190, 226, 220, 214, 208, 202, 196)
STEP_BITS = 1.5


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="a text file, '-' for stdin, or the text itself")
    p.add_argument("--json", action="store_true", help="print JSON (summary + every token)")
    p.add_argument("--html", default=None, metavar="PAGE", help="also write a self-contained HTML page here")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto", help="shade the text (auto: in a terminal)")
    p.add_argument("--stride", type=int, default=None, help="window stride past the context (default: the context, no overlap)")
    add_model_arguments(p)


def read_input(arg: str) -> str:
    """'-' = stdin, an existing file = its text, anything else = the text itself."""
    import os
    import sys

    from gpt2kit.errors import DataError

    if arg == "-":
        return sys.stdin.read()
    if os.path.isfile(arg):
        try:
            with open(arg, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read {arg} as UTF-8 text: {e}.") from None
    return arg


def run(args: argparse.Namespace) -> None:
    import json
    import os
    import sys

    from gpt2kit.cli.common import load_model_and_tokenizer
    from gpt2kit.insight.html import render_html
    from gpt2kit.insight.surprisal import score_text

    text = read_input(args.input)
    model, tok = load_model_and_tokenizer(args)
    scores = score_text(model, tok, text, stride=args.stride)
    if args.html:
        with open(args.html, "w", encoding="utf-8") as f:
            f.write(render_html(scores, model=args.model))
        print(f"gpt2kit score: wrote {args.html}", file=sys.stderr)
    if args.json:
        print(json.dumps(scores.to_dict(), ensure_ascii=False))
        return
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    print(shaded(scores) if color else table(scores))
    print(summary_line(scores))


def shaded(scores) -> str:
    out = []
    for t in scores.tokens:
        code = GRADIENT[min(len(GRADIENT) - 1, int(t.bits / STEP_BITS))]
        pieces = t.text.split("\n")  # keep line breaks outside the colour, so the shading ends at the line
        out.append("\n".join(f"\x1b[48;5;{code}m\x1b[38;5;16m{piece}\x1b[0m" if piece else "" for piece in pieces))
    return "".join(out) + "\n"


def table(scores) -> str:
    lines = ["index\ttoken\tbits\trank\ttop-5"]
    for t in scores.tokens:
        alts = "  ".join(f"{a} {p:.1%}" for a, p in t.top)
        lines.append(f"{t.index}\t{t.label}\t{t.bits:.2f}\t{t.rank}\t{alts}")
    return "\n".join(lines)


def summary_line(scores) -> str:
    s = scores.summary()
    g = s["gltr"]
    return (f"{s['tokens']} tokens, perplexity {s['perplexity']:.2f}, {s['bits_per_byte']:.3f} bits/byte; "
            f"GLTR top-10 {g['top10']:.1%}, top-100 {g['top100']:.1%}, top-1000 {g['top1000']:.1%}")  # fmt: skip
