"""`gpt2kit prepare` throughput (read, tokenize in worker processes, write shards) next to tiktoken alone on
the same text: one thread, and its own multi-threaded batch encoder (in memory, no files written).

    python benchmarks/prepare.py [--corpora ../shared/corpora] [--workers 2] [--repeat 3]

Each side runs in its own fresh process (benchmarks/harness.py), the sides alternate --repeat times, and the
medians (MB of UTF-8 text per second) go to benchmarks/results/prepare.jsonl. Without ../shared/corpora the
shipped excerpts (tests/fixtures/corpora, ~340 KB: too small for a steady figure) are used.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402

SHARED = HERE.parents[1] / "shared" / "corpora"
FIXTURES = HERE.parent / "tests" / "fixtures" / "corpora"
CORPORA = SHARED if SHARED.is_dir() else FIXTURES
SIDES = ("tiktoken 1 thread", "tiktoken batch", "gpt2kit prepare")


def worker(args) -> None:
    files = sorted(Path(args.corpora).glob("*.txt"))
    n_bytes = sum(f.stat().st_size for f in files)
    if args.side.startswith("tiktoken"):
        from gpt2kit.tokenizer import Tokenizer

        enc, texts = Tokenizer()._enc, [f.read_text(encoding="utf-8") for f in files]
        enc.encode_ordinary(texts[0][:10000])  # warm-up
        t0 = time.perf_counter()
        if args.side == "tiktoken 1 thread":
            n = sum(len(enc.encode_ordinary(t)) for t in texts)
        else:
            n = sum(len(ids) for ids in enc.encode_ordinary_batch([c for t in texts for c in t.split("\n\n")], num_threads=args.workers or 2))
        dt = time.perf_counter() - t0
    else:
        from gpt2kit.data.prepare import prepare

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            s = prepare(files, Path(tmp) / "out", val_tail=0.01, workers=args.workers or None, progress=False)
            dt = time.perf_counter() - t0
        n = s.train.tokens + s.val.tokens
    print(json.dumps({"MB_per_s": n_bytes / 1e6 / dt, "MB": n_bytes / 1e6, "tokens": n, "seconds": dt}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default=str(CORPORA))
    ap.add_argument("--workers", type=int, default=0, help="0 = one per core")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        worker(args)
        return
    if Path(args.corpora).resolve() == FIXTURES.resolve():
        print("prepare.py: no ../shared/corpora here, so the shipped 340 KB excerpts are timed: the figures then measure "
              "start-up more than throughput (pass --corpora with a larger folder)", file=sys.stderr)  # fmt: skip
    common = [__file__, "--corpora", args.corpora, "--workers", str(args.workers)]
    runs = harness.alternate({side: [*common, "--side", side] for side in SIDES}, args.repeat)
    med = {side: harness.median(r, "MB_per_s") for side, r in runs.items()}
    line = harness.record(
        "prepare", sys.argv, args.workers or 0,
        {s: {"figure": round(m, 2), "unit": "MB/s", "runs": [round(r["MB_per_s"], 2) for r in runs[s]]} for s, m in med.items()},
        round(med["gpt2kit prepare"] / med["tiktoken 1 thread"], 3),
        config=dict(corpora=Path(args.corpora).name, MB=round(runs["gpt2kit prepare"][0]["MB"], 1), workers=args.workers or "auto"),
    )  # fmt: skip
    print(json.dumps(line))


if __name__ == "__main__":
    main()
