"""gpt2kit: OpenAI's GPT-2, complete and fast, in PyTorch.

    import gpt2kit
    model = gpt2kit.from_pretrained("gpt2")        # or gpt2kit.GPT.from_pretrained, or a local Hugging Face folder
    tok = gpt2kit.Tokenizer()
    [c] = gpt2kit.TextGenerator(model, tok).complete(["Hello"], gpt2kit.SamplingParams(max_new_tokens=20))
    model.save_pretrained("my-gpt2")              # or gpt2kit.save_pretrained(model, "my-gpt2")

The names below are imported on first use, so that `gpt2kit.errors` or `gpt2kit.hugepages` load without
torch: the `gpt2kit` command decides how to start its process before anything heavy is imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpt2kit.lazy import exports

__version__ = "0.1.0"

_WHERE = {
    "PRESETS": "gpt2kit.config", "GPTConfig": "gpt2kit.config",
    "Gpt2kitError": "gpt2kit.errors", "Gpt2kitWarning": "gpt2kit.errors",
    "Engine": "gpt2kit.generate.engine", "SamplingParams": "gpt2kit.generate.params", "TextGenerator": "gpt2kit.generate.text",
    "GPT": "gpt2kit.model", "KVCache": "gpt2kit.model",
    "from_pretrained": "gpt2kit.pretrained", "save_pretrained": "gpt2kit.pretrained",
    "Tokenizer": "gpt2kit.tokenizer",
}  # fmt: skip
__all__ = ["GPT", "GPTConfig", "Engine", "Gpt2kitError", "Gpt2kitWarning", "KVCache", "PRESETS", "SamplingParams", "TextGenerator",
           "Tokenizer", "from_pretrained", "save_pretrained"]  # fmt: skip  (the names of _WHERE; a test keeps them equal)

if TYPE_CHECKING:
    from gpt2kit.config import PRESETS, GPTConfig
    from gpt2kit.errors import Gpt2kitError, Gpt2kitWarning
    from gpt2kit.generate.engine import Engine
    from gpt2kit.generate.params import SamplingParams
    from gpt2kit.generate.text import TextGenerator
    from gpt2kit.model import GPT, KVCache
    from gpt2kit.pretrained import from_pretrained, save_pretrained
    from gpt2kit.tokenizer import Tokenizer


__getattr__, __dir__ = exports(__name__, _WHERE)  # a public name (GPT, Engine, ...) or a submodule (gpt2kit.device)
