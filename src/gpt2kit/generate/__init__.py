"""Generation: a token-level engine (KV cache, sampling, stopping, batching, streaming) and zero-shot tasks.

`generate/` never imports the tokenizer: text enters as a token-bytes table (`token_bytes[id] -> bytes`).
"""

from typing import TYPE_CHECKING

from gpt2kit.lazy import exports

_WHERE = {
    "IncrementalDetokenizer": "gpt2kit.generate.detok",
    "Completion": "gpt2kit.generate.engine", "Engine": "gpt2kit.generate.engine", "TokenEvent": "gpt2kit.generate.engine",
    "generate": "gpt2kit.generate.engine",
    "TokenLogprob": "gpt2kit.generate.logprobs",
    "SamplingParams": "gpt2kit.generate.params",
    "FinishReason": "gpt2kit.generate.stopping", "StopStringMatcher": "gpt2kit.generate.stopping",
}  # fmt: skip
__getattr__, __dir__ = exports(__name__, _WHERE)  # imported on first use: params.py alone loads without torch

if TYPE_CHECKING:
    from gpt2kit.generate.detok import IncrementalDetokenizer
    from gpt2kit.generate.engine import Completion, Engine, TokenEvent, generate
    from gpt2kit.generate.logprobs import TokenLogprob
    from gpt2kit.generate.params import SamplingParams
    from gpt2kit.generate.stopping import FinishReason, StopStringMatcher

__all__ = [
    "Completion",
    "Engine",
    "FinishReason",
    "IncrementalDetokenizer",
    "SamplingParams",
    "StopStringMatcher",
    "TokenEvent",
    "TokenLogprob",
    "generate",
]
