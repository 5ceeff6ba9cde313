"""Generation: a token-level engine (KV cache, sampling, stopping, batching, streaming) and zero-shot tasks.

`generate/` never imports the tokenizer: text enters as a token-bytes table (`token_bytes[id] -> bytes`).
"""

from gpt2kit.generate.detok import IncrementalDetokenizer
from gpt2kit.generate.engine import Completion, Engine, TokenEvent, generate
from gpt2kit.generate.logprobs import TokenLogprob
from gpt2kit.generate.sampling import SamplingParams
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
