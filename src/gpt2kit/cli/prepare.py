"""Tokenize text into GPT-2 token shards for `gpt2kit train` / `gpt2kit finetune`.

  gpt2kit prepare my_texts/ --out data/corpora --val-tail 0.01
  gpt2kit prepare notes.jsonl --text-field body --out data/notes --val-tail 0.05

Inputs: text files, folders of them (*.txt, *.jsonl, searched recursively), .jsonl files (one document per
line, from --text-field), or --hf-dataset NAME[:SPLIT] when `datasets` is installed. Each document is
prefixed with <|endoftext|>. Writes DIR/train_NNNNNN.bin, DIR/val_NNNNNN.bin and DIR/meta.json.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="*", help="text files, folders, .jsonl files")
    p.add_argument("--out", required=True, help="output folder for the shards")
    p.add_argument("--val-tail", type=float, default=0.0, help="fraction at the end of EACH input that goes to val (e.g. 0.01)")
    p.add_argument("--val-files", nargs="+", default=[], help="files that go to val whole")
    p.add_argument("--docs", choices=["file", "paragraph"], default="file",
                   help="a text file is one document, or each blank-line-separated block is")  # fmt: skip
    p.add_argument("--text-field", default="text", help="JSONL / dataset field holding the text")
    p.add_argument("--hf-dataset", help="a Hugging Face dataset NAME[:SPLIT] (needs `datasets` and network)")
    p.add_argument("--workers", type=int, default=0, help="tokenizer processes (0 = one per CPU core)")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file")
    p.add_argument("--on-bad-input", choices=["fail", "skip"], default="fail",
                   help="empty/binary/non-UTF-8 input: stop, or skip it with a warning")  # fmt: skip
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> None:
    from gpt2kit.data.prepare import prepare

    summary = prepare(args.inputs, args.out, val_tail=args.val_tail, val_files=args.val_files, docs=args.docs,
                      text_field=args.text_field, hf_dataset=args.hf_dataset, workers=args.workers or None,
                      shard_tokens=args.shard_tokens, on_bad_input=args.on_bad_input, overwrite=args.overwrite,
                      progress=not args.no_progress)  # fmt: skip
    print(summary.report())
