"""Data: token shards, `prepare` (text -> shards), the shard loader and fine-tuning examples."""

from gpt2kit.data.loader import ShardLoader
from gpt2kit.data.shards import open_shard, read_header, write_shard

__all__ = ["ShardLoader", "open_shard", "read_header", "write_shard"]
