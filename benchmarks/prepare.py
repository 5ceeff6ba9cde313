"""`prepare` throughput on ../shared/corpora (read, tokenize in worker processes, write shards), next to
tiktoken alone on the same text (1 thread, and its own multi-threaded batch encoder).

  python benchmarks/prepare.py --workers 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

CORPORA = Path(__file__).resolve().parents[2] / "shared" / "corpora"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpora", default=str(CORPORA))
    ap.add_argument("--workers", type=int, default=0, help="0 = one per core")
    ap.add_argument("--skip-tiktoken", action="store_true")
    args = ap.parse_args()
    from gpt2kit.data.prepare import prepare
    from gpt2kit.tokenizer import Tokenizer

    files = sorted(Path(args.corpora).glob("*.txt"))
    n_bytes = sum(f.stat().st_size for f in files)
    if not args.skip_tiktoken:
        texts = [f.read_text(encoding="utf-8") for f in files]
        enc = Tokenizer()._enc
        t0 = time.perf_counter()
        n = sum(len(enc.encode_ordinary(t)) for t in texts)
        t1 = time.perf_counter()
        chunks = [c for t in texts for c in t.split("\n\n")]
        t2 = time.perf_counter()
        enc.encode_ordinary_batch(chunks, num_threads=2)
        t3 = time.perf_counter()
        print(json.dumps({"impl": "tiktoken encode_ordinary, 1 thread, in memory", "MB": round(n_bytes / 1e6, 1), "tokens": n,
                          "MB_per_s": round(n_bytes / 1e6 / (t1 - t0), 2)}))  # fmt: skip
        print(
            json.dumps(
                {"impl": "tiktoken encode_ordinary_batch, 2 threads, in memory", "MB_per_s": round(n_bytes / 1e6 / (t3 - t2), 2)}
            )
        )
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        s = prepare(files, Path(tmp) / "out", val_tail=0.01, workers=args.workers or None, progress=False)
        dt = time.perf_counter() - t0
    print(json.dumps({"impl": f"gpt2kit prepare --val-tail 0.01 (workers={args.workers or 'auto'}), read+tokenize+write",
                      "MB": round(n_bytes / 1e6, 1), "tokens": s.train.tokens + s.val.tokens, "seconds": round(dt, 2),
                      "MB_per_s": round(n_bytes / 1e6 / dt, 2)}))  # fmt: skip


if __name__ == "__main__":
    main()
