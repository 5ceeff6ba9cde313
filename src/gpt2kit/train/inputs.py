"""Turn `TrainConfig.data` into train/val loaders: shards (pretraining, plain-text fine-tuning) or
prompt/completion JSONL (supervised fine-tuning with a loss mask)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gpt2kit.data.loader import ShardLoader
from gpt2kit.data.prepare import INCOMPLETE
from gpt2kit.data.sft import SFTLoader, is_prompt_completion_file, read_prompt_completion, split_pairs
from gpt2kit.errors import DataError, warn
from gpt2kit.train.config import TrainConfig
from gpt2kit.train.distributed import DistInfo, barrier


def _is_text(path: Path) -> bool:
    """A text file, a .jsonl of {"text": ...} records, or a folder holding such files."""
    if path.is_dir():
        return any(path.rglob("*.txt")) or any(path.rglob("*.jsonl"))
    return path.suffix.lower() in (".txt", ".text", ".md", ".jsonl", ".ndjson")


def make_loaders(cfg: TrainConfig, T: int, info: DistInfo, log=print) -> tuple[object, object | None, str]:
    """-> (train loader, val loader or None, kind) where kind is 'shards' or 'prompt-completion'.

    cfg.data may be a shards folder, a prompt/completion JSONL, or plain text (a .txt, a text JSONL or a folder
    of them), which is tokenized once into out_dir/data with the last val_fraction of each file as val."""
    data = Path(cfg.data)
    kw = dict(rank=info.rank, world=info.world, seed=cfg.seed)
    if is_prompt_completion_file(data, cfg.prompt_field, cfg.completion_field):
        from gpt2kit.tokenizer import Tokenizer

        pairs = read_prompt_completion(data, cfg.prompt_field, cfg.completion_field)
        train_pairs, val_pairs = split_pairs(pairs, cfg.val_fraction, seed=cfg.seed)
        tok = Tokenizer()
        train = SFTLoader.from_pairs(train_pairs, tok, cfg.micro_batch, T, order="random", **kw)
        val = SFTLoader.from_pairs(val_pairs, tok, cfg.micro_batch, T, order="sequential", **kw) if val_pairs else None
        log(
            f"data: {len(train_pairs)} train / {len(val_pairs)} val prompt/completion examples from {data} (loss on completions only)"
        )
        return train, val, "prompt-completion"
    if data.is_dir() and (any(data.glob("train_*.bin")) or not _is_text(data)):
        if (data / INCOMPLETE).exists():
            raise DataError(
                f"{data} holds the shards of a `gpt2kit prepare` that did not finish (killed or failed). "
                f"---> HINT: run the prepare again with --overwrite."
            )
        train = ShardLoader(data, "train", cfg.micro_batch, T, order=cfg.data_order, **kw)
        val = None
        if any(data.glob("val_*.bin")):
            val = ShardLoader(data, "val", cfg.micro_batch, T, order="sequential", **kw)
        else:
            warn(f"{data} has no val shards; no validation loss (prepare with --val-tail 0.01).")
        log(f"data: {train.n_tokens:,} train tokens" + (f", {val.n_tokens:,} val tokens" if val else "") + f" from {data}")
        return train, val, "shards"
    if data.exists() and _is_text(data):  # plain text: tokenize once into out_dir/data, val = the tail of each file
        shards = Path(cfg.out_dir) / "data"
        if info.is_main and not (shards / "meta.json").is_file():
            from gpt2kit.data.prepare import prepare

            log(f"data: tokenizing {data} into {shards} (last {cfg.val_fraction:.0%} of each file for validation)")
            log(prepare([data], shards, val_tail=cfg.val_fraction, overwrite=True, progress=False).report())
        barrier(info)
        return make_loaders(dataclasses.replace(cfg, data=str(shards)), T, info, log)
    if data.exists():
        raise DataError(
            f"{data} is not a shards folder or a prompt/completion JSONL. ---> HINT: tokenize text first: "
            f"`gpt2kit prepare {data} --out {data.stem}-shards --val-tail 0.05`, then --data {data.stem}-shards."
        )
    raise DataError(f"training data {data} does not exist. ---> HINT: `gpt2kit prepare TEXT... --out {data}` creates it.")
