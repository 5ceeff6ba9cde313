"""Draw a text's attention maps as heatmaps with token labels, from the model's own forward pass.

gpt2kit attention "The cat sat on the mat because it was tired" --layer 3 --head 5 --out attn.png
gpt2kit attention "..." --layer all --head mean --out grid.png      # one panel per layer
"""

from __future__ import annotations

import argparse
import math

from gpt2kit.cli.common import add_model_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="the text ('-' reads stdin)")
    p.add_argument("--layer", default="all", help="layer index, or 'all' for a grid of every layer")
    p.add_argument("--head", default="mean", help="head index, or 'mean' for the average over heads")
    p.add_argument("--out", default="attention.png", help="the PNG to write")
    p.add_argument("--bos", action="store_true", help="put <|endoftext|> in front of the text")
    add_model_arguments(p)


def parse_index(value: str, name: str, word: str) -> int | None | str:
    from gpt2kit.errors import ConfigError

    if value == word:
        return None if word == "all" else word
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"--{name} {value!r}: give an index (0, 1, ...) or '{word}'.") from None


def run(args: argparse.Namespace) -> None:
    import sys

    from gpt2kit.cli.common import load_model_and_tokenizer
    from gpt2kit.insight.attention import attention_maps

    layer = parse_index(args.layer, "layer", "all")
    head = parse_index(args.head, "head", "mean")
    text = sys.stdin.read() if args.text == "-" else args.text
    model, tok = load_model_and_tokenizer(args)
    result = attention_maps(model, tok, text, bos=args.bos)
    panels = result.select(layer, head)  # (L', T, T)
    titles = [f"layer {i if layer is None else layer}, " + ("mean of heads" if head == "mean" else f"head {head}")
              for i in range(panels.shape[0])]  # fmt: skip
    draw(panels, result.labels, titles, args.out)
    print(f"gpt2kit attention: wrote {args.out}", file=sys.stderr)


def draw(panels, labels: list[str], titles: list[str], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, T = panels.shape[0], len(labels)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    size = max(3.5, 0.28 * T + 1.5)
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        im = ax.imshow(panels[i].numpy(), cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_xticks(range(T), labels, rotation=90, fontsize=7)
        ax.set_yticks(range(T), labels, fontsize=7)
        ax.set_title(titles[i], fontsize=9)
        ax.set_xlabel("attends to (key)", fontsize=7)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="attention probability")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
