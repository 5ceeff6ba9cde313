"""What every route shares: one `ServerState` on `app.state.server`, built by `create_app`.

The handlers (handlers.py, insight.py) take it as a plain argument, so they run without HTTP: a test builds
a ServerState over a worker and calls `await create_completion(state, request)` directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from gpt2kit.serve.config import ServeConfig
from gpt2kit.serve.metrics import Metrics
from gpt2kit.serve.models import ModelRegistry
from gpt2kit.serve.protocol import now
from gpt2kit.serve.worker import Worker
from gpt2kit.tokenizer import Tokenizer


@dataclass
class ServerState:
    """The workers by model name (the first is the default), the tokenizer, the server's limits, metrics."""

    registry: ModelRegistry
    tokenizer: Tokenizer
    config: ServeConfig
    metrics: Metrics = field(default_factory=Metrics)
    created: int = field(default_factory=now)  # unix time: every model's `created` in /v1/models

    @classmethod
    def build(cls, worker: Worker | ModelRegistry, config: ServeConfig, tokenizer: Tokenizer | None = None) -> ServerState:
        """One worker is served as `config.model_name`; a ModelRegistry as its names."""
        registry = worker if isinstance(worker, ModelRegistry) else ModelRegistry({config.model_name: worker})
        return cls(registry, tokenizer or Tokenizer(), config)


def server_state(request: Request) -> ServerState:
    """The app's ServerState."""
    return request.app.state.server


State = Annotated[ServerState, Depends(server_state)]  # a route's parameter `state: State` receives it
