"""GPT-2's official vocabulary, shipped inside the package and checked by sha256 at load.

Three files in `assets/` (see assets/LICENSE.md for their provenance and OpenAI's license):
  - `encoder.json` + `vocab.bpe`: OpenAI's originals (token string -> id, and the 50,000 merges), in
    the `bytes_to_unicode` alphabet; the reference BPE in `bpe.py` reads these.
  - `gpt2.tiktoken`: the same vocabulary as raw bytes -> rank (base64 per line); the fast path reads it.
The hashes are the ones tiktoken pins for OpenAI's own downloads.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import shutil
from importlib import resources
from pathlib import Path

from gpt2kit.errors import CheckpointError

SHA256 = {
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "gpt2.tiktoken": "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930",
}

# GPT-2's pre-tokenizer: contractions, letter runs, number runs, other symbols, whitespace; each with
# at most one leading space. (Note: GPT-2's contractions are case-sensitive and lowercase only.)
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"


def asset_path(name: str) -> Path:
    return Path(str(resources.files("gpt2kit.tokenizer") / "assets" / name))


def read_asset(name: str) -> bytes:
    """The bytes of a vendored vocabulary file, verified against its pinned sha256."""
    data = asset_path(name).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256[name]:
        raise CheckpointError(
            f"vocabulary file {asset_path(name)} is corrupt (sha256 {digest[:16]}…, expected {SHA256[name][:16]}…). "
            "Reinstall gpt2kit: pip install --force-reinstall gpt2kit."
        )
    return data


@functools.cache
def mergeable_ranks() -> dict[bytes, int]:
    """Token bytes -> rank for the 50,256 ordinary tokens (the rank is also the token id)."""
    ranks: dict[bytes, int] = {}
    for line in read_asset("gpt2.tiktoken").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def encoder_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI's encoder.json (unicode-alphabet token -> id) and vocab.bpe merges, in rank order."""
    encoder = json.loads(read_asset("encoder.json"))
    lines = read_asset("vocab.bpe").decode("utf-8").split("\n")
    assert lines[0].startswith("#version"), "vocab.bpe must start with its #version header"
    merges = [tuple(line.split()) for line in lines[1:] if line]
    return encoder, merges  # type: ignore[return-value]


def write_hf_tokenizer_files(folder: Path) -> None:
    """Write vocab.json/merges.txt/tokenizer_config.json so transformers' AutoTokenizer loads the folder."""
    from gpt2kit.atomic import atomic_path, write_text

    for src, dst in (("encoder.json", "vocab.json"), ("vocab.bpe", "merges.txt")):
        with atomic_path(folder / dst) as tmp:
            shutil.copyfile(asset_path(src), tmp)
    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "model_max_length": 1024,
        "bos_token": ENDOFTEXT,
        "eos_token": ENDOFTEXT,
        "unk_token": ENDOFTEXT,
        "add_prefix_space": False,
    }
    write_text(folder / "tokenizer_config.json", json.dumps(config, indent=2) + "\n")
