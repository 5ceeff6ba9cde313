"""Calibrate and evaluate `gpt2kit detect` for one model (by default the built-in one).

    python runs/detect_calibrate.py [--model builtin] [--corpora ../shared/corpora] [--n 200] [--write]

Human side: the held-out split of the corpora (the last 1 % of each file, cut as `gpt2kit prepare
--val-tail 0.01` cuts it, so the model never trained on it), in passages of PROMPT + 256 tokens taken at
random without overlap. Machine side: the model continues each passage's first PROMPT tokens with 256
tokens of its own (the batched Engine), once per sampler. Both sides are then cut to 64, 128 and 256
tokens (the continuation only: the prompt is never scored) and judged as `gpt2kit detect` judges a file:
decoded to text, encoded again, <|endoftext|> in front, one forward (a passage is scored once at 256
tokens; its first 64 and 128 tokens' scores are the same as those texts' alone, the model being causal). <|endoftext|> is banned while sampling,
so every sample has its full length.

Prints the AUROC table (Fast-DetectGPT beside the GLTR baselines) as Markdown; --write stores the logistic
fits in src/gpt2kit/insight/detect_calibration.json, the raw scores in --scores, and the score histograms
in docs/images/detect_hist.png.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import time
from pathlib import Path

import torch

from gpt2kit.data.prepare import tail_cut
from gpt2kit.generate import SamplingParams
from gpt2kit.generate.engine import generate
from gpt2kit.insight.calibration import CALIBRATION_FILE, Calibration, auroc, fit_logistic, model_fingerprint
from gpt2kit.insight.detect import evidence_from_stats
from gpt2kit.insight.surprisal import position_stats
from gpt2kit.pretrained import from_pretrained
from gpt2kit.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
PROMPT = 32
LENGTHS = (64, 128, 256)
SAMPLERS = {
    "default (top-k 40, T 1.0)": dict(temperature=1.0, top_k=40),  # `gpt2kit generate`'s defaults
    "top-p 0.9, T 1.0": dict(temperature=1.0, top_p=0.9),
    "pure (T 1.0, no truncation)": dict(temperature=1.0),
}
DETECTORS = {  # name -> (Evidence -> score where higher means machine-written)
    "Fast-DetectGPT": lambda e: e["fast_detect"],
    "GLTR top-10 fraction": lambda e: e["gltr_top10"],
    "log-rank": lambda e: -e["log_rank"],
    "likelihood": lambda e: e["log_likelihood"],
}


def heldout_passages(corpora: Path, tok: Tokenizer, n: int, length: int, seed: int) -> list[list[int]]:
    chunks = []
    for path in sorted(corpora.glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        ids = tok.encode_ordinary(text[tail_cut(text, 0.01) :])
        chunks += [ids[s : s + length] for s in range(0, len(ids) - length + 1, length)]
    if len(chunks) < n:
        sys.exit(f"only {len(chunks)} held-out passages of {length} tokens; ask for fewer with --n")
    return random.Random(seed).sample(chunks, n)


_STATE: dict = {}


def _init(args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    _STATE.update(args=args, tok=Tokenizer(), model=from_pretrained(args.model, device=args.device).eval())
    _STATE["table"] = _STATE["tok"].token_bytes_table


def _task(task: tuple[str, list[int], list[list[int]]]) -> tuple[list[list[int]], dict[int, list[dict]]]:
    """One chunk of passages: the human continuations, or a sampler's own -> (token ids, evidence per length)."""
    side, index, passages = task
    args, tok, model = _STATE["args"], _STATE["tok"], _STATE["model"]
    if side == "human":
        seqs = [p[PROMPT:] for p in passages]
    else:
        params = [SamplingParams(max_new_tokens=max(LENGTHS), banned_token_ids=(tok.eot_token,),
                                 seed=args.seed * 100_000 + i, **SAMPLERS[side]) for i in index]  # fmt: skip
        done = generate(model, [p[:PROMPT] for p in passages], params, token_bytes=_STATE["table"], max_batch=len(passages))
        seqs = [c.token_ids for c in done]
    evidence: dict[int, list[dict]] = {L: [] for L in LENGTHS}
    for s in seqs:  # the text as `gpt2kit detect` reads it: decoded, then encoded again
        ids = tok.encode_ordinary(tok.decode(s))
        stats = position_stats(model, [tok.eot_token] + ids, top=1, n_vocab=tok.n_vocab)
        for L in LENGTHS:  # the model is causal: a passage's first L tokens score as the L-token text would
            evidence[L].append(vars(evidence_from_stats(stats.prefix(L))))
    return seqs, evidence


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--corpora", default=str(REPO.parent / "shared" / "corpora"))
    ap.add_argument("--n", type=int, default=200, help="passages per side")
    ap.add_argument("--batch", type=int, default=40, help="sequences generated together (one task)")
    ap.add_argument("--workers", type=int, default=3, help="processes")
    ap.add_argument("--samplers", nargs="+", default=list(SAMPLERS)[:2], choices=list(SAMPLERS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: on a shared CPU more threads wait on each other at every small op)",
    )
    ap.add_argument("--write", action="store_true", help="store the calibration file and the histogram picture")
    ap.add_argument("--scores", default=str(REPO / "runs" / "detect_scores.json"))
    ap.add_argument("--from-scores", action="store_true", help="refit from --scores instead of generating again")
    args = ap.parse_args()
    if args.from_scores:
        saved = json.loads(Path(args.scores).read_text())
        scores = {k: {int(L): v for L, v in d.items()} for k, d in saved["scores"].items()}
        args.samplers = [k for k in scores if k != "human"]
        report(args, scores, saved["token_ids"])
        return
    tok = Tokenizer()
    passages = heldout_passages(Path(args.corpora), tok, args.n, PROMPT + max(LENGTHS), args.seed)
    chunks = [list(range(i, min(i + args.batch, args.n))) for i in range(0, args.n, args.batch)]
    tasks = [(side, idx, [passages[i] for i in idx]) for side in ["human", *args.samplers] for idx in chunks]
    t0 = time.time()
    with multiprocessing.get_context("spawn").Pool(args.workers, _init, (args,)) as pool:
        done = pool.map(_task, tasks, chunksize=1)
    print(f"generated and scored {len(tasks)} chunks in {time.time() - t0:.0f} s with {args.workers} processes", file=sys.stderr)
    texts: dict[str, list[list[int]]] = {}
    scores: dict[str, dict[int, list[dict]]] = {}
    for (side, _, _), (seqs, evidence) in zip(tasks, done):
        texts.setdefault(side, []).extend(seqs)
        for L in LENGTHS:
            scores.setdefault(side, {L: [] for L in LENGTHS})[L].extend(evidence[L])
    report(args, scores, texts)


def report(args, scores: dict, texts: dict) -> None:
    rows = []
    for L in LENGTHS:
        for name in args.samplers:
            row = {"length": L, "sampler": name}
            for det, f in DETECTORS.items():
                row[det] = auroc([f(e) for e in scores[name][L]], [f(e) for e in scores["human"][L]])
            rows.append(row)
    print(markdown(rows, args))
    if args.write:
        write(args, scores, rows, texts)


def markdown(rows: list[dict], args) -> str:
    head = "| tokens | sampler | " + " | ".join(f"AUROC {d}" for d in DETECTORS) + " |"
    lines = [head, "|" + " --- |" * (2 + len(DETECTORS))]
    for r in rows:
        lines.append(f"| {r['length']} | {r['sampler']} | " + " | ".join(f"{r[d]:.3f}" for d in DETECTORS) + " |")
    return "\n".join(lines) + f"\n\n({args.n} passages per side, model {args.model}, seed {args.seed})"


def write(args, scores: dict, rows: list[dict], texts: dict) -> None:
    model = from_pretrained(args.model, device="cpu")
    fits = {}
    machine = [s for s in args.samplers if not s.startswith("pure")]  # the fit: the two samplers people use
    for L in LENGTHS:
        human = [e["fast_detect"] for e in scores["human"][L]]
        mach = [e["fast_detect"] for s in machine for e in scores[s][L]]
        x = mach + human * len(machine)  # equal weight for the two sides
        fits[L] = fit_logistic(x, [1] * len(mach) + [0] * len(human) * len(machine))
    cal = Calibration(args.model if args.model != "builtin" else "gpt2kit-builtin", model_fingerprint(model),
                      " + ".join(machine) + ", <|endoftext|> banned", fits, rows)  # fmt: skip
    out = REPO / "src" / "gpt2kit" / "insight" / CALIBRATION_FILE
    out.write_text(json.dumps(cal.to_json(), indent=1) + "\n", encoding="utf-8")
    Path(args.scores).write_text(json.dumps({"scores": {k: {str(L): v for L, v in d.items()} for k, d in scores.items()},
                                             "token_ids": texts}) + "\n")  # fmt: skip
    plot(scores, REPO / "docs" / "images" / "detect_hist.png")
    print(f"wrote {out}, {args.scores} and docs/images/detect_hist.png", file=sys.stderr)


def plot(scores: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for side, vals in scores.items():
        axes[0].hist([e["fast_detect"] for e in vals[256]], bins=30, alpha=0.5, label=side)
    axes[0].set(title="Fast-DetectGPT criterion, 256-token passages", xlabel="criterion", ylabel="passages")
    axes[0].legend(fontsize=7)
    names = list(scores["human"][256][0]["gltr_counts"])
    width = 0.8 / len(scores)
    for i, (side, vals) in enumerate(scores.items()):
        frac = [sum(e["gltr_counts"][b] for e in vals[256]) / sum(e["n_tokens"] for e in vals[256]) for b in names]
        axes[1].bar([j + i * width for j in range(len(names))], frac, width, label=side)
    axes[1].set_xticks([j + 0.4 - width / 2 for j in range(len(names))], [f"rank {b}" for b in names])
    axes[1].set(title="GLTR: share of tokens by rank, 256-token passages", ylabel="share of tokens")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
