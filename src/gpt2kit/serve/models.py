"""The models one server offers, chosen per request by name (the OpenAI `model` field).

    gpt2kit serve --model gpt2 --adapter poems=ft/step_000300 --adapter qa=ft2/step_000500

offers `gpt2` (the base, the default for a request without `model`), `poems` and `qa`. Each is an ordinary
GPT with its own Worker (Engine, KV cache, scheduler): an adapter is merged into a copy of the base
(`adapter.merged_copy`) that shares every tensor the adapter leaves alone (embeddings, LayerNorms,
biases, untargeted layers) with the base.

Why merged copies rather than one set of weights with the adapter picked per row of the batch: the
engine's decode kernels read each layer's packed weight (generate/decode.py), and a per-row LoRA would
need a second, batched low-rank path in every projection; a merged model runs every fast path unchanged
and its outputs are exactly `--adapter`'s. The cost is memory, per adapter: its merged layers (with the
default targets c_attn, c_proj, c_fc that is 12 n_layer n_embd^2 parameters, 85M for 124M = 340 MB fp32,
302M for 355M = 1.2 GB), plus that Engine's packed decode weights and its KV cache. One engine loop
(worker.py `EngineLoop`) steps every model's batch in turn, on one thread (the main thread under `serve()`).
"""

from __future__ import annotations

import dataclasses

from gpt2kit.serve.protocol import ProtocolError
from gpt2kit.serve.worker import Worker, WorkerStats


class ModelRegistry:
    """Workers by model name; the first is the default. Quacks like a Worker for /health and /metrics."""

    def __init__(self, workers: dict[str, Worker]) -> None:
        assert workers, "a server needs at least one model"
        self.workers = dict(workers)
        self.default = next(iter(self.workers))

    @property
    def names(self) -> list[str]:
        return list(self.workers)

    def select(self, name: str | None) -> tuple[str, Worker]:
        """(name, worker) for a request's `model` (None = the default); an unknown name is a 404."""
        name = self.default if name is None else name
        worker = self.workers.get(name)
        if worker is None:
            offered = ", ".join(f"`{n}`" for n in self.workers)
            raise ProtocolError(f"the model `{name[:100]}` does not exist; this server serves {offered} (see /v1/models).",
                                "model", status=404, code="model_not_found")  # fmt: skip
        return name, worker

    @property
    def alive(self) -> bool:
        return all(w.alive for w in self.workers.values())

    @property
    def stats(self) -> WorkerStats:
        """The workers' counters, summed."""
        fields = [f.name for f in dataclasses.fields(WorkerStats)]
        return WorkerStats(**{f: sum(getattr(w.stats, f) for w in self.workers.values()) for f in fields})

    def start(self) -> ModelRegistry:
        for w in self.workers.values():
            w.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        for w in self.workers.values():
            w.close(timeout)
