"""How likely a text is to be written by the model (a GPT-2-like sampler): Fast-DetectGPT's analytic
sampling discrepancy from one forward pass, with GLTR's statistics beside it as the baseline.

Prints the score, a calibrated probability (for the model the calibration was made with; docs/inspect.md
has its AUROC table), a one-line verdict and the evidence: the GLTR rank histogram, the mean log-rank and
the mean log-likelihood. It says so when the score is not meaningful (very short text, an uncalibrated model).

    gpt2kit detect essay.txt
    cat essay.txt | gpt2kit detect - --json
"""

from __future__ import annotations

import argparse

from gpt2kit.cli.common import add_model_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="a text file, '-' for stdin, or the text itself")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> None:
    import json

    from gpt2kit.cli.common import load_model_and_tokenizer
    from gpt2kit.cli.score import read_input
    from gpt2kit.insight.detect import detect_text

    text = read_input(args.input)
    model, tok = load_model_and_tokenizer(args)
    d = detect_text(model, tok, text)
    if args.json:
        print(json.dumps(d.to_dict(), ensure_ascii=False))
        return
    e = d.evidence
    print(f"verdict: {d.verdict}")
    prob = "n/a" if d.probability is None else f"{d.probability:.3f}"
    print(f"Fast-DetectGPT score {e.fast_detect:+.3f}   p(machine) {prob}   tokens {e.n_tokens}")
    print(f"log-likelihood {e.log_likelihood:.3f} nats/token   mean log-rank {e.log_rank:.3f}")
    width = max(len(k) for k in e.gltr_counts)
    for bucket, count in e.gltr_counts.items():
        share = count / e.n_tokens
        print(f"  rank {bucket:<{width}} {count:>6} {share:>7.1%} {'#' * round(share * 40)}")
    for note in d.notes:
        print(f"note: {note}")
