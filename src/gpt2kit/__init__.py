"""gpt2kit: OpenAI's GPT-2, complete and fast, in PyTorch.

    import gpt2kit
    model = gpt2kit.from_pretrained("gpt2")        # or gpt2kit.GPT.from_pretrained, or a local Hugging Face folder
    tok = gpt2kit.Tokenizer()
    [c] = gpt2kit.TextGenerator(model, tok).complete(["Hello"], gpt2kit.SamplingParams(max_new_tokens=20))
    model.save_pretrained("my-gpt2")              # or gpt2kit.save_pretrained(model, "my-gpt2")
"""

from gpt2kit.config import PRESETS, GPTConfig
from gpt2kit.errors import Gpt2kitError, Gpt2kitWarning
from gpt2kit.generate import Engine, SamplingParams
from gpt2kit.generate.text import TextGenerator
from gpt2kit.model import GPT, KVCache
from gpt2kit.pretrained import from_pretrained, save_pretrained
from gpt2kit.tokenizer import Tokenizer

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "Engine", "Gpt2kitError", "Gpt2kitWarning", "KVCache", "PRESETS", "SamplingParams", "TextGenerator",
           "Tokenizer", "from_pretrained", "save_pretrained"]  # fmt: skip
