"""GPTConfig: the shape of a GPT-2 model, validated, with the official presets.

Defaults are GPT-2 124M. The config round-trips through two JSON forms:
  - our own (`to_dict` / `from_dict`, field names as below), and
  - Hugging Face's `config.json` (`to_hf_dict` / `from_hf_dict`), which is what we write beside every
    checkpoint, so that `transformers.GPT2LMHeadModel.from_pretrained(folder)` reads our folders as-is.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from gpt2kit.errors import ConfigError
from gpt2kit.fields import check_types, check_value

# One ignore-index convention for the whole project: targets are shifted by the data layer, and a
# target equal to IGNORE_INDEX contributes no loss (prompt tokens in fine-tuning, padding).
IGNORE_INDEX = -100

# GPT-2's BPE vocabulary: 50,000 merges + 256 byte tokens + <|endoftext|>.
GPT2_VOCAB_SIZE = 50257
GPT2_EOT_ID = 50256


def help_field(text: str, **kw):
    """A dataclass field with its help text (`metadata["help"]`): the CLI's flag help (cli/flags.py)."""
    return field(metadata={"help": text}, **kw)


class DictConfig:
    """The dict round trip every config dataclass shares: `to_dict`, `from_dict` (unknown keys refused by
    name) and `replace`. `_NOUN` names a key in the error, e.g. "training option"."""

    _NOUN = "field"

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict):
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ConfigError(f"unknown {cls._NOUN}(s) {unknown}; known: {sorted(known)}.")
        return cls(**d)


@dataclass
class GPTConfig(DictConfig):
    """The architecture of one GPT-2 model. Defaults are GPT-2 small (124M)."""

    _NOUN = "GPTConfig field"

    vocab_size: int = field(default=GPT2_VOCAB_SIZE, metadata={"help": "rows of the token embedding (50257 for GPT-2's BPE)"})
    n_positions: int = field(default=1024, metadata={"help": "context length: rows of the learned position embedding"})
    n_embd: int = field(default=768, metadata={"help": "width of the residual stream (C)"})
    n_layer: int = field(default=12, metadata={"help": "number of transformer blocks (L)"})
    n_head: int = field(default=12, metadata={"help": "attention heads per block (nh); must divide n_embd"})
    n_inner: int | None = field(default=None, metadata={"help": "MLP hidden width; None means 4 * n_embd"})
    dropout: float = field(default=0.0, metadata={"help": "dropout on embeddings, attention and residual branches (training only)"})
    layer_norm_eps: float = field(default=1e-5, metadata={"help": "LayerNorm epsilon (GPT-2 uses 1e-5)"})
    n_vocab: int | None = field(
        default=None,
        metadata={"help": "real tokens when vocab_size is padded for aligned matmuls (50257 in a 50304-row head): "
                          "rows beyond are left out of the softmax, never sampled, dropped on export; None = vocab_size"},
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("vocab_size", "n_positions", "n_embd", "n_layer", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}.")
        if self.n_embd % self.n_head != 0:
            divisors = [h for h in range(1, min(self.n_embd, 64) + 1) if self.n_embd % h == 0]
            raise ConfigError(
                f"GPTConfig.n_embd={self.n_embd} is not divisible by n_head={self.n_head}: every head must get "
                f"the same width. Pick n_head from {divisors} or change n_embd (GPT-2 uses 64-wide heads)."
            )
        if self.n_inner is not None and (not isinstance(self.n_inner, int) or self.n_inner <= 0):
            raise ConfigError(f"GPTConfig.n_inner must be a positive integer or None, got {self.n_inner!r}.")
        if self.n_vocab is not None and (not isinstance(self.n_vocab, int) or not 0 < self.n_vocab <= self.vocab_size):
            raise ConfigError(f"GPTConfig.n_vocab must be None or an integer in [1, vocab_size={self.vocab_size}], got {self.n_vocab!r}.")
        if not (0.0 <= float(self.dropout) < 1.0):
            raise ConfigError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout!r}.")
        if not (float(self.layer_norm_eps) > 0.0):
            raise ConfigError(f"GPTConfig.layer_norm_eps must be > 0, got {self.layer_norm_eps!r}.")

    # ---- derived ----------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        """hs: the width of one attention head."""
        return self.n_embd // self.n_head

    @property
    def real_vocab_size(self) -> int:
        """Token ids the model can see and predict: n_vocab, or vocab_size when the head is not padded."""
        return self.vocab_size if self.n_vocab is None else self.n_vocab

    @property
    def mlp_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    def num_params(self) -> int:
        """Exact parameter count (head tied to wte, so counted once), from the shape alone."""
        C, V, L, H = self.n_embd, self.vocab_size, self.n_layer, self.mlp_dim
        embeddings = V * C + self.n_positions * C
        block = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (C * H + H) + (H * C + C)
        return embeddings + L * block + 2 * C

    # (our JSON: to_dict / from_dict, from DictConfig)

    # ---- Hugging Face's config.json ---------------------------------------------------------------
    def to_hf_dict(self) -> dict:
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_positions": self.n_positions,
            "n_ctx": self.n_positions,
            "n_embd": self.n_embd,
            "n_layer": self.n_layer,
            "n_head": self.n_head,
            "n_inner": self.n_inner,
            "activation_function": "gelu_new",
            "resid_pdrop": self.dropout,
            "embd_pdrop": self.dropout,
            "attn_pdrop": self.dropout,
            "layer_norm_epsilon": self.layer_norm_eps,
            "initializer_range": 0.02,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            "tie_word_embeddings": True,
            "bos_token_id": GPT2_EOT_ID,
            "eos_token_id": GPT2_EOT_ID,
        }

    @classmethod
    def from_hf_dict(cls, d: dict, source: str = "config.json") -> GPTConfig:
        model_type = d.get("model_type", "gpt2")
        if model_type != "gpt2":
            raise ConfigError(f"{source}: model_type is {model_type!r}; gpt2kit loads GPT-2 models (model_type 'gpt2') only.")
        act = d.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ConfigError(
                f"{source}: activation_function={act!r}, but GPT-2 uses the tanh GELU ('gelu_new'); "
                "this checkpoint is not a GPT-2 architecture gpt2kit can run exactly."
            )
        for flag, want in (("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True), ("tie_word_embeddings", True)):
            if d.get(flag, want) != want:
                raise ConfigError(f"{source}: {flag}={d.get(flag)!r} is not GPT-2's setting ({want}); unsupported.")
        missing = [k for k in ("n_embd", "n_layer", "n_head") if k not in d]
        if missing:
            raise ConfigError(f"{source}: missing required GPT-2 field(s) {missing}.")

        def get(key: str, kind: object, default: object) -> object:  # typed: "n_embd": "64" or 64.9 is an error
            return check_value(d.get(key, default), kind, f"{source}: {key}")

        drops = [get(k, float, 0.1) for k in ("resid_pdrop", "embd_pdrop", "attn_pdrop")]
        return cls._checked(source, vocab_size=get("vocab_size", int, GPT2_VOCAB_SIZE),
                            n_positions=get("n_positions", int, get("n_ctx", int, 1024)), n_embd=get("n_embd", int, None),
                            n_layer=get("n_layer", int, None), n_head=get("n_head", int, None),
                            n_inner=get("n_inner", int | None, None), dropout=max(drops),
                            layer_norm_eps=get("layer_norm_epsilon", float, 1e-5))  # fmt: skip

    @classmethod
    def _checked(cls, source: str, **fields) -> GPTConfig:
        """cls(**fields), with the file named in any error (e.g. n_head that does not divide n_embd)."""
        try:
            return cls(**fields)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> GPTConfig:
        """Read either form: a Hugging Face config.json (has `model_type`/`n_ctx`…) or our own dict."""
        d = read_json_object(path, "a model's config.json")
        if "model_type" in d or "architectures" in d or "layer_norm_epsilon" in d:
            return cls.from_hf_dict(d, source=str(path))
        try:
            return cls.from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None


def read_json_object(path: str | os.PathLike, what: str) -> dict:
    """The JSON object in file `path`; `what` names the file in errors (e.g. "a JSON config of training options")."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from None
    except UnicodeDecodeError as e:
        byte = e.object[e.start]
        raise ConfigError(f"{path}: not UTF-8 text (byte {byte:#04x} at offset {e.start}); expected {what}.") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected {what} (a JSON object), got {type(d).__name__}.")
    return d


PRESETS: dict[str, GPTConfig] = {
    "gpt2": GPTConfig(n_layer=12, n_head=12, n_embd=768),  # 124M
    "gpt2-medium": GPTConfig(n_layer=24, n_head=16, n_embd=1024),  # 355M
    "gpt2-large": GPTConfig(n_layer=36, n_head=20, n_embd=1280),  # 774M
    "gpt2-xl": GPTConfig(n_layer=48, n_head=25, n_embd=1600),  # 1558M
    "distilgpt2": GPTConfig(n_layer=6, n_head=12, n_embd=768),  # 82M
}

# Where each preset's official weights live on the Hugging Face hub.
HUB_IDS: dict[str, str] = {
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "distilgpt2": "distilbert/distilgpt2",
}
