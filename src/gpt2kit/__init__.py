"""gpt2kit: OpenAI's GPT-2, complete and fast, in PyTorch.

    import gpt2kit
    model = gpt2kit.from_pretrained("gpt2")        # or a local Hugging Face folder
    tok = gpt2kit.Tokenizer()
"""

from gpt2kit.config import PRESETS, GPTConfig
from gpt2kit.errors import Gpt2kitError
from gpt2kit.model import GPT, KVCache
from gpt2kit.pretrained import from_pretrained, save_pretrained
from gpt2kit.tokenizer import Tokenizer

__version__ = "0.1.0"
__all__ = ["GPT", "GPTConfig", "Gpt2kitError", "KVCache", "PRESETS", "Tokenizer", "from_pretrained", "save_pretrained"]
