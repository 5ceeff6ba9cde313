"""Write the real-text token shard that benchmarks/train_check.py (and gpu_check.sh) train on.

    python benchmarks/make_text_shard.py                      # ../shared/corpora if present, else tests/fixtures
    python benchmarks/make_text_shard.py --src tests/fixtures/corpora --max-tokens 200000

Documents are EOT-prefixed GPT-2 ids, in our shard format (gpt2kit.data.shards), at most --max-tokens
(2M tokens = 4 MB by default, small enough to carry to a machine that gets the repository alone). The
default output, benchmarks/data/text.bin, is ignored by git: a GPU run carries it along, and
gpu_check.sh writes a smaller one from the repository's fixtures when it is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "benchmarks" / "data" / "text.bin"


def main(argv=None) -> int:
    from gpt2kit.config import GPT2_EOT_ID
    from gpt2kit.data.shards import write_shard
    from gpt2kit.tokenizer import Tokenizer

    shared = REPO.parent / "shared" / "corpora"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", default=str(shared if shared.is_dir() else REPO / "tests" / "fixtures" / "corpora"), help="folder of .txt files")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--max-tokens", type=int, default=2_000_000)
    args = ap.parse_args(argv)
    files = sorted(Path(args.src).glob("*.txt"))
    if not files:
        print(f"make_text_shard: no .txt files in {args.src}", file=sys.stderr)
        return 2
    tok, ids = Tokenizer(), []
    per_file = args.max_tokens // len(files) + 1  # every corpus contributes: a mix, not the first book alone
    for path in files:
        text = path.read_text(encoding="utf-8")[: per_file * 6]  # ~4-5 characters per token: enough text, no more
        ids += [GPT2_EOT_ID, *tok.encode_ordinary(text)[: per_file - 1]]
    tokens = np.array(ids[: args.max_tokens], dtype=np.uint16)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_shard(args.out, tokens)
    print(f"{args.out}: {tokens.size:,} tokens from {len(files)} files in {args.src}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
