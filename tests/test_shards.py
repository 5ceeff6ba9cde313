"""Shard format: round trip, header fields, and clear errors for foreign, old, truncated or missing shards."""

import re
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


def test_tokenizer_id_is_the_gpt2_vocab_hash():
    from gpt2kit.tokenizer.gpt2_vocab import SHA256

    tid = tokenizer_id()
    assert re.fullmatch(r"gpt2-bpe-[0-9a-f]{16}", tid), tid
    assert SHA256["gpt2.tiktoken"].startswith(tid.removeprefix("gpt2-bpe-"))


@pytest.mark.parametrize("bad", [[0, 65536], [5, -1]])
def test_ids_outside_uint16_are_refused(tmp_path, bad):
    with pytest.raises(DataError, match=re.escape(f"must fit uint16 [0, 65535]; got range [{min(bad)}, {max(bad)}]")):
        write_shard(tmp_path / "a.bin", np.array(bad, dtype=np.int64))
    assert not list(tmp_path.iterdir())


def test_empty_and_one_token_shards(tmp_path):
    empty = open_shard(write_shard(tmp_path / "a.bin", np.zeros(0, dtype=np.uint16)))
    assert empty.shape == (0,) and empty.dtype == np.uint16
    one = open_shard(write_shard(tmp_path / "b.bin", np.array([7], dtype=np.uint16)))
    assert one.tolist() == [7] and one.dtype == np.uint16
    assert not one.flags.writeable  # a memmap opened read-only: training can never write into the data


def test_every_refusal_names_the_fix(tmp_path):
    with pytest.raises(DataError, match=re.escape("shard " + str(tmp_path / "none.bin") + " does not exist. Create shards with")):
        read_header(tmp_path / "none.bin")
    path = write_shard(tmp_path / "a.bin", np.arange(10, dtype=np.uint16))
    _patch(path, 12, "<I", 4)
    with pytest.raises(DataError, match="stores 4-byte tokens; gpt2kit shards are uint16"):
        read_header(path)
    path = write_shard(tmp_path / "a.bin", np.arange(10, dtype=np.uint16))
    _patch(path, 8, "<I", 2)
    with pytest.raises(DataError, match=re.escape("reads version 1. ---> HINT: re-run `gpt2kit prepare` with this gpt2kit, or")):
        read_header(path)
    path = write_shard(tmp_path / "a.bin", np.arange(10, dtype=np.uint16))
    _patch(path, 32, "64s", b"bpe-\xff-X")  # not ASCII, and ending in a character that is not padding
    with pytest.raises(DataError, match=re.escape("tokenized with 'bpe-\ufffd-X'") + ".*"
                       + re.escape("(GPT-2's BPE). ---> HINT: token ids from another tokenizer mean nothing")):  # fmt: skip
        read_header(path)
    path = write_shard(tmp_path / "a.bin", np.arange(10, dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(DataError, match=re.escape("promises 10 tokens (1,044 bytes) but the file has 1,040 bytes")):
        read_header(path)
    llmc = tmp_path / "c.bin"
    llmc.write_bytes(struct.pack("<3i", 20240520, 1, 3) + b"\0" * 1024)
    with pytest.raises(DataError, match=re.escape(f"(bad magic {llmc.read_bytes()[:8]!r}). ---> HINT: shards from nanoGPT/llm.c "
                                                  "have other headers; re-create them with `gpt2kit prepare`.")):  # fmt: skip
        read_header(llmc)


def test_a_header_alone_is_a_truncated_shard_not_a_foreign_one(tmp_path):
    path = write_shard(tmp_path / "a.bin", np.arange(10, dtype=np.uint16))
    path.write_bytes(path.read_bytes()[:112])  # the fixed fields, nothing after them
    with pytest.raises(DataError, match="truncated or corrupt"):
        read_header(path)


def test_other_eot_placement_is_refused(tmp_path):
    path = write_shard(tmp_path / "a.bin", np.arange(10, dtype=np.uint16))
    _patch(path, 96, "16s", b"suffi\xffX")
    with pytest.raises(DataError, match=re.escape("places <|endoftext|> as 'suffi\ufffdX'; gpt2kit shards prefix it")):
        read_header(path)


def test_missing_split_lists_what_the_folder_holds(tmp_path):
    with pytest.raises(DataError, match=re.escape("(it holds nothing)")):
        find_shards(tmp_path, "train")
    for name in "abcdefghi":
        (tmp_path / f"{name}.txt").write_text("")
    want = [f"{name}.txt" for name in "abcdefgh"]  # the first 8 only
    with pytest.raises(DataError, match=re.escape(f"(it holds {want})")):
        find_shards(tmp_path, "train")


def test_writer_fills_each_shard_and_counts_tokens(tmp_path):
    w = ShardWriter(tmp_path, "val", shard_tokens=4)
    w.add(np.arange(3, dtype=np.uint16))
    w.add(np.arange(3, 10, dtype=np.uint16))
    assert [open_shard(p).size for p in w.close()] == [4, 4, 2] and w.n_tokens == 10
    one = ShardWriter(tmp_path / "one", "train", shard_tokens=1)
    one.add(np.arange(2, dtype=np.uint16))
    assert [open_shard(p).tolist() for p in one.close()] == [[0], [1]]
    with pytest.raises(AssertionError):
        ShardWriter(tmp_path, "train", shard_tokens=0)


def test_writer_with_no_tokens_writes_one_empty_shard(tmp_path):
    w = ShardWriter(tmp_path, "val")
    assert w.shard_tokens == 100_000_000  # ~100M-token shards by default, as in llm.c
    paths = w.close()
    assert [p.name for p in paths] == ["val_000000.bin"]
    shard = open_shard(paths[0])
    assert shard.size == 0 and shard.dtype == np.uint16
