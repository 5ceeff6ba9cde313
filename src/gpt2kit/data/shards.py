"""Token shards: a fixed 1024-byte self-describing header, then the token ids as little-endian uint16.

    offset  size  field
    0       8     magic  b"G2KSHARD"
    8       4     version (uint32, currently 1)
    12      4     bytes per token (uint32, 2 = uint16 payload)
    16      8     n_tokens (uint64)
    24      4     vocab_size (uint32, 50257)
    28      4     eot_id (uint32, 50256)
    32      64    tokenizer id (ASCII, NUL-padded): "gpt2-bpe-<first 16 hex of the vocabulary's sha256>"
    96      16    EOT placement (ASCII, NUL-padded): "prefix"
    112     912   zeros (room for later fields)
    1024    2*n   payload: uint16 token ids

EOT placement, decided once for every gpt2kit shard: each document is *prefixed* with <|endoftext|>
(id 50256), as in llm.c and build-nanogpt, so EOT acts as GPT-2's BOS: a window that starts at a
document boundary starts the way GPT-2 saw unconditional text, and "EOT -> first token of a document"
is learned. Shard files are written atomically (temp file + rename), so a crashed `prepare` never
leaves a shard whose header disagrees with its payload.

Readers check everything in the header and say what to do on a mismatch (llm.c `_peek_data_shard`).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gpt2kit.atomic import atomic_path
from gpt2kit.config import GPT2_EOT_ID, GPT2_VOCAB_SIZE
from gpt2kit.errors import DataError

MAGIC = b"G2KSHARD"
VERSION = 1
HEADER_BYTES = 1024
EOT_PLACEMENT = "prefix"
_FIXED = struct.Struct("<8sIIQII64s16s")  # the fields above, 112 bytes
DTYPE = np.dtype("<u2")


def tokenizer_id() -> str:
    """The identifier of the tokenizer every shard we write uses: GPT-2's BPE, pinned by its vocab hash."""
    from gpt2kit.tokenizer.gpt2_vocab import SHA256

    return "gpt2-bpe-" + SHA256["gpt2.tiktoken"][:16]


@dataclass(frozen=True)
class ShardHeader:
    version: int
    n_tokens: int
    vocab_size: int
    eot_id: int
    tokenizer: str
    eot_placement: str

    def to_bytes(self) -> bytes:
        fixed = _FIXED.pack(
            MAGIC, self.version, DTYPE.itemsize, self.n_tokens, self.vocab_size, self.eot_id,
            self.tokenizer.encode("ascii"), self.eot_placement.encode("ascii"),
        )  # fmt: skip
        return fixed + b"\0" * (HEADER_BYTES - len(fixed))


def write_shard(path: str | os.PathLike, tokens: np.ndarray) -> Path:
    """Write one shard atomically. tokens: 1-D ids, all < 2**16."""
    tokens = np.asarray(tokens)
    assert tokens.ndim == 1, tokens.shape
    if tokens.size and (int(tokens.max()) >= 2**16 or int(tokens.min()) < 0):
        raise DataError(f"token ids must fit uint16 [0, 65535]; got range [{tokens.min()}, {tokens.max()}].")
    header = ShardHeader(VERSION, int(tokens.size), GPT2_VOCAB_SIZE, GPT2_EOT_ID, tokenizer_id(), EOT_PLACEMENT)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.to_bytes())
        f.write(tokens.astype(DTYPE, copy=False).tobytes())
    return path


def read_header(path: str | os.PathLike) -> ShardHeader:
    """Read and check a shard's header; DataError with a hint on anything unexpected."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"shard {path} does not exist. Create shards with `gpt2kit prepare TEXT... --out DIR`.")
    with open(path, "rb") as f:
        raw = f.read(HEADER_BYTES)
    if len(raw) < _FIXED.size or raw[:8] != MAGIC:
        raise DataError(
            f"{path} is not a gpt2kit token shard (bad magic {raw[:8]!r}). ---> HINT: shards from nanoGPT/llm.c "
            "have other headers; re-create them with `gpt2kit prepare`."
        )
    magic, version, itemsize, n_tokens, vocab, eot, tok, placement = _FIXED.unpack(raw[: _FIXED.size])
    if version != VERSION:
        raise DataError(
            f"{path} is shard format version {version}, this gpt2kit reads version {VERSION}. "
            "---> HINT: re-run `gpt2kit prepare` with this gpt2kit, or use the gpt2kit that wrote it."
        )
    if itemsize != DTYPE.itemsize:
        raise DataError(f"{path} stores {itemsize}-byte tokens; gpt2kit shards are uint16 (2 bytes). Re-run `gpt2kit prepare`.")
    header = ShardHeader(version, n_tokens, vocab, eot, tok.rstrip(b"\0").decode("ascii", "replace"),
                         placement.rstrip(b"\0").decode("ascii", "replace"))  # fmt: skip
    if header.tokenizer != tokenizer_id():
        raise DataError(
            f"{path} was tokenized with {header.tokenizer!r}, but this model uses {tokenizer_id()!r} (GPT-2's BPE). "
            "---> HINT: token ids from another tokenizer mean nothing to GPT-2; re-run `gpt2kit prepare` on the text."
        )
    if header.eot_placement != EOT_PLACEMENT:
        raise DataError(
            f"{path} places <|endoftext|> as {header.eot_placement!r}; gpt2kit shards prefix it to each document "
            f"({EOT_PLACEMENT!r}). Re-run `gpt2kit prepare` on the text."
        )
    size = path.stat().st_size
    if size != HEADER_BYTES + DTYPE.itemsize * n_tokens:
        raise DataError(
            f"{path} is truncated or corrupt: its header promises {n_tokens:,} tokens "
            f"({HEADER_BYTES + DTYPE.itemsize * n_tokens:,} bytes) but the file has {size:,} bytes. Re-run `gpt2kit prepare`."
        )
    return header


def open_shard(path: str | os.PathLike) -> np.ndarray:
    """The tokens of a shard as a read-only memmap (n_tokens,) uint16, header checked."""
    header = read_header(path)
    if header.n_tokens == 0:
        return np.zeros(0, dtype=DTYPE)
    return np.memmap(path, dtype=DTYPE, mode="r", offset=HEADER_BYTES, shape=(header.n_tokens,))


def find_shards(data_dir: str | os.PathLike, split: str) -> list[Path]:
    """The shards of one split (`train` or `val`) in a `gpt2kit prepare` output folder, in order."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"data folder {data_dir} does not exist. ---> HINT: create it with `gpt2kit prepare TEXT... --out {data_dir}`."
        )
    shards = sorted(data_dir.glob(f"{split}_*.bin"))
    if not shards:
        found = sorted(p.name for p in data_dir.iterdir())[:8]
        raise DataError(
            f"no {split} shards ({split}_*.bin) in {data_dir} (it holds {found or 'nothing'}). "
            f"---> HINT: `gpt2kit prepare TEXT... --out {data_dir}` writes train_*.bin and val_*.bin."
        )
    return shards


class ShardWriter:
    """Streams token arrays into `{split}_{k:06d}.bin` files of at most `shard_tokens` tokens each."""

    def __init__(self, out_dir: str | os.PathLike, split: str, shard_tokens: int = 100_000_000) -> None:
        assert shard_tokens > 0
        self.out_dir, self.split, self.shard_tokens = Path(out_dir), split, shard_tokens
        self._parts: list[np.ndarray] = []
        self._filled = 0
        self.paths: list[Path] = []
        self.n_tokens = 0

    def add(self, tokens: np.ndarray) -> None:
        while tokens.size:
            take = min(tokens.size, self.shard_tokens - self._filled)
            self._parts.append(tokens[:take])
            self._filled += take
            self.n_tokens += take
            tokens = tokens[take:]
            if self._filled == self.shard_tokens:
                self._flush()

    def close(self) -> list[Path]:
        if self._filled or not self.paths:
            self._flush()
        return self.paths

    def _flush(self) -> None:
        data = np.concatenate(self._parts) if self._parts else np.zeros(0, dtype=DTYPE)
        self.paths.append(write_shard(self.out_dir / f"{self.split}_{len(self.paths):06d}.bin", data))
        self._parts, self._filled = [], 0
