"""ServeConfig: everything the server's edge enforces (address, auth, limits, batching), validated once.

Defaults are safe for a laptop: bind 127.0.0.1 only, small bodies, bounded queue, a per-request timeout.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field

from gpt2kit.errors import ConfigError
from gpt2kit.fields import check_types
from gpt2kit.hugepages import wants_huge_pages

API_KEY_ENV = "GPT2KIT_API_KEY"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


@dataclass
class ServeConfig:
    """How `gpt2kit serve` listens, whom it lets in, and how much work it accepts."""

    host: str = field(default="127.0.0.1", metadata={"help": "address to bind; 127.0.0.1 = this machine only (use 0.0.0.0 deliberately, with --api-key)"})
    port: int = field(default=8000, metadata={"help": "TCP port (0 = any free port)"})
    api_key: str | None = field(default=None, metadata={"help": f"require `Authorization: Bearer KEY` on every path but / and /health (default: ${API_KEY_ENV} if set)"})
    model_name: str = field(default="gpt2", metadata={"help": "the model id shown by /v1/models and accepted in `model`"})
    max_batch_size: int = field(default=32, metadata={"help": "sequences decoded together (slots of the KV cache)"})
    max_model_len: int | None = field(default=None, metadata={"help": "KV-cache length per slot, prompt + output (None = the model's context); lower it to save memory"})
    max_queue: int = field(default=256, metadata={"help": "sequences allowed to wait for a slot; beyond that requests get 503 + Retry-After"})
    max_tokens_limit: int = field(default=1024, metadata={"help": "largest max_tokens a request may ask for"})
    default_max_tokens: int = field(default=16, metadata={"help": "max_tokens of a completion request that gives none (OpenAI's default)"})
    max_prompt_tokens: int | None = field(default=None, metadata={"help": "longest prompt in tokens (None = the model's context minus 1)"})
    max_n: int = field(default=16, metadata={"help": "largest n (choices per prompt) and number of prompts x n per request"})
    max_stop: int = field(default=4, metadata={"help": "most stop strings per request (OpenAI allows 4)"})
    max_body_bytes: int = field(default=1 << 20, metadata={"help": "largest request body in bytes (413 beyond)"})
    request_timeout: float = field(default=600.0, metadata={"help": "seconds a request may take in total before it is cancelled (408)"})
    banned_phrases: tuple[str, ...] = field(default=(), metadata={"help": "content filter: phrases the model is never allowed to complete"})
    cors_origins: tuple[str, ...] = field(default=(), metadata={"help": "web origins (scheme://host[:port]) whose pages may call the API from a browser; none by default"})
    header_timeout: float = field(default=10.0, metadata={"help": "seconds a connection may take to send a request's headers before it is closed"})
    body_timeout: float = field(default=30.0, metadata={"help": "seconds a request may take to send its body (408 and close beyond)"})
    keep_alive_timeout: float = field(default=5.0, metadata={"help": "seconds an idle keep-alive connection stays open"})
    max_connections: int = field(default=256, metadata={"help": "open connections at most; requests beyond get 503"})
    huge_pages: str = field(default="auto", metadata={"help": "the memory a decode step reads in 2 MiB pages, moved once at start (auto: on for a server)"})

    def __post_init__(self) -> None:
        if self.api_key is None:
            self.api_key = os.environ.get(API_KEY_ENV) or None
        check_types(self)
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise ConfigError(f"api_key must be a non-empty string (or unset); got {self.api_key!r}.")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port must be in 0..65535, got {self.port!r}.")
        for name in ("max_batch_size", "max_tokens_limit", "max_n", "max_stop", "max_body_bytes", "max_connections"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"ServeConfig.{name} must be a positive integer, got {value!r}.")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ConfigError(f"ServeConfig.max_queue must be an integer >= 0, got {self.max_queue!r}.")
        if not isinstance(self.default_max_tokens, int) or not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise ConfigError(
                f"ServeConfig.default_max_tokens={self.default_max_tokens!r} must be in 1..max_tokens_limit ({self.max_tokens_limit})."
            )
        if self.max_model_len is not None and (not isinstance(self.max_model_len, int) or self.max_model_len < 2):
            raise ConfigError(f"ServeConfig.max_model_len must be an integer >= 2 or None, got {self.max_model_len!r}.")
        if self.max_prompt_tokens is not None and (not isinstance(self.max_prompt_tokens, int) or self.max_prompt_tokens < 1):
            raise ConfigError(f"ServeConfig.max_prompt_tokens must be a positive integer or None, got {self.max_prompt_tokens!r}.")
        for name in ("request_timeout", "header_timeout", "body_timeout", "keep_alive_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ConfigError(f"ServeConfig.{name} must be a positive number of seconds, got {value!r}.")
        wants_huge_pages(self.huge_pages, None)  # says what is allowed when it is not
        self.banned_phrases = tuple(self.banned_phrases)
        if not all(isinstance(p, str) and p for p in self.banned_phrases):
            raise ConfigError(f"ServeConfig.banned_phrases must be non-empty strings, got {list(self.banned_phrases)!r}.")
        self.cors_origins = tuple(self.cors_origins)
        for origin in self.cors_origins:
            if not isinstance(origin, str) or not (origin == "*" or ORIGIN.fullmatch(origin)):
                raise ConfigError(f"cors origin {origin!r} is not a web origin: give scheme://host[:port] with no path, "
                                  "e.g. --cors-origin http://localhost:3000 (or * for any page).")  # fmt: skip

    @property
    def is_public(self) -> bool:
        """Bound to an address other machines can reach."""
        return self.host not in LOOPBACK_HOSTS
