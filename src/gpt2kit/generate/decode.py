"""DecodeRunner: the forward passes the engine needs, prefill (many tokens) and decode (one token per row).

Both are the model's own forward (`GPT.hidden_states` with the KV cache: one `Block.forward` for every
path) followed by the head on the last position only: a 32-token prompt would otherwise compute a
(32, 50257) logits matrix to use one row. The speed comes from what that forward calls, not from a
second copy of the math:
  - the KV cache: a decode step writes one column per row and attends the cached keys/values with
    SDPA under the step's additive mask (made once per step for all layers);
  - the linear layers: the runner works on an inference copy of the model (model/kernels.py) whose
    nn.Linear modules are KernelLinear modules, each using the kernel measured fastest on this machine
    for this shape, dtype and batch (exact by default; bf16 or int8 weights when asked for).
  - attention: a decode step's one-query attention runs as this machine runs it fastest (model/attention_plan.py,
    measured too): SDPA in the model's dtype, SDPA in float32 (16-bit models; the cache is then kept in float32,
    `cache_dtype`) or attend.c's one-query kernel; a prefill's many queries as measured too (SDPA or causal.c).
  - the step itself: an aligned, unpadded decode step is recorded once and then replayed in C, the same kernels
    with the same buffers and no Python between them (model/step_graph.py), where every op it makes has a kernel.
Decode on a CPU is memory-bound (every step streams all weights once, tokens/s ~ bandwidth / weight
bytes), so the layout of the weights is what the measurement decides, and the pages they sit in matter
too: `collapse_hot` moves what a step reads into 2 MiB pages (hugepages.py).
"""

from __future__ import annotations

import torch

from gpt2kit import hugepages
from gpt2kit.errors import ConfigError
from gpt2kit.generate.step_choice import plan_step
from gpt2kit.generate.step_prefetch import Trial, plan_prefetch
from gpt2kit.model.attention_plan import apply_to_blocks, float32_cache_fits, plan_attention
from gpt2kit.model.gpt import GPT
from gpt2kit.model.kernels import WEIGHT_MODES, inference_copy
from gpt2kit.model.kv_cache import KVCache
from gpt2kit.model.step_graph import StepGraph, applies, unavailable

__all__ = ["WEIGHT_MODES", "DecodeRunner"]

# A larger KV cache (a server's, for many long rows) is left in 4 KiB pages: moving costs ~4 ms per 2 MiB once
# (seconds for gigabytes). A cache sized to one run moves with the rest: the cache write and attention read
# it every layer, and on a 2-core Xeon VM a 124M fp32 step took 1.8-3.2 ms less with its 20 MiB cache moved
# (25.4 against 27.5 ms, medians of four alternating runs; int8 9.95 against 10.4).
KV_CACHE_MOVED_MAX = 512 << 20
# Recorded decode steps kept per runner: one per row range that decodes (a batch whose rows come and go uses
# several); each holds its step's activations and logits, (B, V) floats.
GRAPHS_KEPT = 16


class DecodeRunner:
    """Prefill and one-token decode for an Engine. weights: 'auto' (the fastest exact kernels, measured),
    'model' (the model's own modules, no copy), 'bf16' or 'int8' (approximate, measured). max_len: the
    cache's columns per row (sizes the cache for the attention choice; None: the model's context). step: how
    decode steps run where that is chosen ('measured' or 'replayed', generate/step_choice.py; None: timed, or cached);
    prefetch: how a replayed step's products prefetch their weights ('measured', 'l1', 'l2' or 'none',
    generate/step_prefetch.py; None: timed on the first steps, or cached). huge_pages: the weights packed in 2 MiB
    pages (an engine that collapses its hot memory; hugepages.packing)."""

    def __init__(
        self, model: GPT, weights: str = "auto", batch: int = 1, max_len: int | None = None, step: str | None = None,
        huge_pages: bool = False, prefetch: str | None = None,
    ) -> None:
        if weights not in WEIGHT_MODES:
            raise ConfigError(f"decode weights must be one of {WEIGHT_MODES}, got {weights!r}.")
        param = next(model.parameters())
        if weights == "int8" and param.device.type != "cpu":
            raise ConfigError("int8 weights run on the CPU only; on a GPU use --dtype bf16 instead.")
        self.weights = weights
        with hugepages.packing(huge_pages):  # packed in huge pages only for an engine that collapses (hugepages.packing)
            self.model = inference_copy(model, batch, weights, one_row=True)  # one row of many: one row's kernels
        # the dtype of the cache the engine makes for this runner: the model's, or float32 with float32 attention
        self.cache_dtype = param.dtype
        self.attention = None  # the attention Choice (None: the model's own modules, nothing chosen)
        self.float32_cache = False  # whether a float32 attention choice keeps the cache in float32
        if self.model is not model:
            self.float32_cache = float32_cache = float32_cache_fits(model, batch, max_len or model.config.n_positions)
            self.attention = plan_attention(self.model, batch, float32_cache)
            apply_to_blocks(self.model, self.attention.kind)
            if self.attention.kind == "float32" and float32_cache:
                self.cache_dtype = torch.float32
        # decode steps recorded and replayed in C (model/step_graph.py), one per row range of a cache and thread
        # count, or why that range's step could not be (its steps then run in Python); the GRAPHS_KEPT used last
        self.graphs: dict[tuple, StepGraph | str] = {}
        self.no_graphs = unavailable() if self.model is not model else "the model runs its own modules"
        self.prefetch = None  # how a replayed step prefetches its weights (below); None while the step is chosen
        # whether whole steps run faster replayed with gemv.c's kernels than with those measured one by one
        self.step = plan_step(self, model, batch, weights, step) if self.model is not model else None
        # and how a replayed step's products prefetch their weights: chosen, or a Trial its first steps run
        self.prefetch = plan_prefetch(self, model, batch, weights, prefetch) if self.model is not model else None

    @torch.inference_mode()
    def prefill(self, idx: torch.Tensor, cache: KVCache, mask: torch.Tensor | None, logits: bool = True) -> torch.Tensor | None:
        """(B, T) ids (left-padded per `mask`) -> (B, V) next-token logits; fills the cache rows. A one-token prompt
        (unconditional generation's <|endoftext|>) is a decode step, and is replayed where the step is."""
        if logits and idx.shape[1] == 1 and mask is None:
            return self.decode(idx, cache, None)
        h = self.model.hidden_states(idx, cache, mask)  # (B, T, C)
        return self.model.lm_head(h[:, -1]) if logits else None  # (B, V)

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, cache: KVCache, mask: torch.Tensor | None, out: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1) ids -> (B, V) logits, appending one column per row to the cache. out: (B, V' <= V) memory that
        gets the logits' first V' columns and is returned (an engine's own buffer: no fresh (B, V) a step)."""
        plan = cache.plan(1, mask)  # the engine's sampled ids are in range: no per-step id check
        logits = None
        if self.no_graphs is None and mask is None and applies(plan, tokens):
            logits = self._replayed(tokens, cache, plan, out)
        if logits is None:
            logits = self.model.lm_head(self.model.hidden_states(tokens, cache, plan=plan)[:, -1])  # (B, V)
        return logits if out is None or logits is out else out.copy_(logits[:, : out.shape[1]])

    def _replayed(self, tokens: torch.Tensor, cache: KVCache, plan, out: torch.Tensor | None) -> torch.Tensor | None:
        """The step's (B, V) logits (`out` itself where a replay wrote them there) replayed from the recording for
        these rows of this cache, or run while recording it (the first such step); None where the step cannot be
        recorded (it then runs in Python)."""
        kv = cache.kv  # the tape holds its address and strides
        key = (kv.data_ptr(), kv.shape, kv.stride(), kv.dtype, torch.get_num_threads())
        graph = self.graphs.pop(key, None)
        if graph is not None:
            self.graphs[key] = graph  # the most recently used last: the first is the one to drop
            if isinstance(graph, StepGraph) and isinstance(self.prefetch, Trial):  # the prefetch's ways timed on it
                logits = self.prefetch.run(graph, lambda: graph.run(tokens, plan, out))
                self.prefetch = self.prefetch.choice or self.prefetch  # the Choice once the turns end
                return logits
            return graph.run(tokens, plan, out) if isinstance(graph, StepGraph) else None
        logits, self.graphs[key] = StepGraph.record(self.model, tokens, cache, plan)
        while len(self.graphs) > GRAPHS_KEPT:
            del self.graphs[next(iter(self.graphs))]
        return logits

    def hot_regions(self, cache: KVCache) -> list[hugepages.Region]:
        """The memory one prefill and one decode step into `cache` read (hugepages.referenced), after one such
        step unwatched: first calls run code and touch memory that later steps do not (oneDNN builds its
        primitives). `cache` is emptied again."""
        tokens = torch.zeros(cache.kv.shape[2], 1, dtype=torch.long, device=cache.kv.device)  # (B, 1)

        def step() -> None:
            cache.reset()
            self.prefill(tokens, cache, None, logits=False)
            self.decode(tokens, cache, None)

        step()
        regions = hugepages.referenced(step)
        cache.reset()
        return regions

    def collapse_hot(self, cache: KVCache) -> hugepages.Collapsed:
        """Move the memory a decode step reads into 2 MiB pages: the kernels' weights wherever their libraries
        put them, the interpreter's and torch's own data, the machine code that runs (libtorch's, the
        interpreter's) and the KV cache, unless it is larger than KV_CACHE_MOVED_MAX. Streaming the weights
        through 4 KiB pages misses the TLB every 4 KiB, and each step's few hundred small operations find their
        code and data evicted by that stream; in a virtual machine each miss walks two page tables. Found by
        `hot_regions`."""
        if cache.kv.device.type != "cpu":
            return hugepages.Collapsed(skipped="the model is not on the CPU")
        regions = self.hot_regions(cache)
        kv = cache.kv.untyped_storage()
        exclude = [(kv.data_ptr(), kv.data_ptr() + kv.nbytes())] if kv.nbytes() > KV_CACHE_MOVED_MAX else []
        return hugepages.collapse(hugepages.hot(regions, exclude=exclude))
