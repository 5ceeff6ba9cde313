"""The GPT-2 network, its KV cache, and conversion to and from Hugging Face checkpoints."""

from gpt2kit.model.gpt import GPT
from gpt2kit.model.kv_cache import KVCache

__all__ = ["GPT", "KVCache"]
