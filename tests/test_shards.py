"""Shard format: round trip, header fields, and clear errors for foreign, old, truncated or missing shards."""

import struct

import numpy as np
import pytest

from gpt2kit.data.shards import (
    EOT_PLACEMENT,
    HEADER_BYTES,
    MAGIC,
    VERSION,
    ShardWriter,
    find_shards,
    open_shard,
    read_header,
    tokenizer_id,
    write_shard,
)  # fmt: skip
from gpt2kit.errors import DataError


def test_round_trip_and_header(tmp_path):
    ids = np.array([50256, 464, 3290, 0, 65535], dtype=np.uint16)
    path = write_shard(tmp_path / "train_000000.bin", ids)
    h = read_header(path)
    assert (h.version, h.n_tokens, h.vocab_size, h.eot_id) == (VERSION, 5, 50257, 50256)
    assert h.tokenizer == tokenizer_id() and h.eot_placement == EOT_PLACEMENT == "prefix"
    assert path.stat().st_size == HEADER_BYTES + 2 * 5
    np.testing.assert_array_equal(open_shard(path), ids)
    assert path.read_bytes()[:8] == MAGIC


def test_writer_splits_into_shards(tmp_path):
    w = ShardWriter(tmp_path, "train", shard_tokens=4)
    w.add(np.arange(5, dtype=np.uint16))
    w.add(np.arange(5, 10, dtype=np.uint16))
    paths = w.close()
    assert [p.name for p in paths] == ["train_000000.bin", "train_000001.bin", "train_000002.bin"]
    np.testing.assert_array_equal(np.concatenate([open_shard(p) for p in paths]), np.arange(10))
    assert find_shards(tmp_path, "train") == paths


def _patch(path, offset, fmt, value):
    raw = bytearray(path.read_bytes())
    struct.pack_into(fmt, raw, offset, value)
    path.write_bytes(bytes(raw))


def test_other_tokenizer_is_refused(tmp_path):
    path = write_shard(tmp_path / "a.bin", np.arange(10, dtype=np.uint16))
    _patch(path, 32, "64s", b"llama-sentencepiece")
    with pytest.raises(DataError, match="tokenized with 'llama-sentencepiece'.*re-run `gpt2kit prepare`"):
        open_shard(path)


def test_other_version_magic_and_truncation_are_refused(tmp_path):
    path = write_shard(tmp_path / "a.bin", np.arange(10, dtype=np.uint16))
    _patch(path, 8, "<I", 99)
    with pytest.raises(DataError, match="format version 99"):
        read_header(path)
    path = write_shard(tmp_path / "b.bin", np.arange(10, dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DataError, match="truncated or corrupt"):
        open_shard(path)
    llmc = tmp_path / "c.bin"  # an llm.c shard: int32 header 20240520, 1, n
    llmc.write_bytes(np.array([20240520, 1, 3] + [0] * 253, dtype=np.int32).tobytes() + b"\0" * 6)
    with pytest.raises(DataError, match="not a gpt2kit token shard"):
        read_header(llmc)


def test_missing_folder_and_split(tmp_path):
    with pytest.raises(DataError, match="does not exist.*gpt2kit prepare"):
        find_shards(tmp_path / "nope", "train")
    write_shard(tmp_path / "train_000000.bin", np.arange(3, dtype=np.uint16))
    with pytest.raises(DataError, match="no val shards"):
        find_shards(tmp_path, "val")
