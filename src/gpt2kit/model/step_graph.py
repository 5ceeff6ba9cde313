"""StepGraph: a decode step recorded once from the model's own forward, then replayed in C (step.c).

A one-token decode step of an inference copy is its matrix products (gemv.c, reading every weight once) and
~10 small operations a layer between them: the LayerNorms, the residual adds, the embeddings, the attention
kernel's call. Each is a torch or ctypes call from Python, and together they cost ~0.9 ms of a 124M token on a
2-core Zen 4 VM (~70 us a layer), while llama.cpp runs its whole graph in C. So, as a CUDA graph does on a GPU,
the runner records one step and replays the recording:
  - recording runs the real step (`GPT.hidden_states` and the head: the one Block.forward) with this thread's
    kernel calls appended to a tape by the library itself (tape.h) and its torch operations seen through
    torch's dispatcher and appended as the step.c kernels that do the same (embedding, add, LayerNorm, a
    float32/bf16 conversion);
  - every buffer the step made is kept, so a replay writes the same memory: the next step's token ids and
    positions are copied into the recorded step's own, and each attention reads the step's K keys;
  - a step that calls anything else (an op step.c has no kernel for, a torch product, SDPA) is not recorded,
    and its steps run in Python as before; so is one whose replay, run once right after recording on the same
    inputs, does not give the recorded step's logits.
It applies to an aligned, unpadded step (every row writes the same column, `StepPlan.causal`), the steps of a
plain generation. What the step's Python decides (which kernel, which attention path) depends only on shapes,
dtypes and such a plan, which every step replayed from one recording shares (`applies`, and the runner's key:
the cache's rows, shape and dtype, the thread count). `GPT2KIT_STEP_GRAPH=0` turns it off.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import struct
import weakref

import torch

try:  # torch's hook for seeing every operation (documented with __torch_dispatch__, in a private module)
    from torch.utils._python_dispatch import TorchDispatchMode
except ImportError:  # a torch without it: no step is recorded, every step runs in Python
    TorchDispatchMode = None

from gpt2kit.errors import InputError
from gpt2kit.model import gemv
from gpt2kit.model.kv_cache import KVCache, StepPlan

SWITCH = "GPT2KIT_STEP_GRAPH"  # "0": every decode step runs in Python

# step.c's kinds (tape.h's enum gk_kind)
GEMV_F32, GEMV_BF16, GEMV_S8, ATTEND_F32, ATTEND_BF16, EMBED, ADD, LAYER_NORM, CONVERT, UNREPLAYABLE = range(1, 11)
MAX_ARGS = 16

aten = torch.ops.aten
# operations that make no data: their outputs are views of their input or fresh memory that a kernel fills
_NO_DATA = {aten.empty.memory_format, aten.select.int, aten.slice.Tensor, aten.view.default, aten.unsqueeze.default,
            aten.squeeze.dim, aten.alias.default, aten.detach.default}  # fmt: skip
_DTYPES = (torch.float32, torch.bfloat16)

# How far a replay's logits may be from the recorded step's, over their largest: step.c's LayerNorm sums in
# another order than torch's (~1e-7 of each value in float32), which int8 weights' activation rounding and bf16's
# 8-bit mantissa can carry further. Measured on a random 124M and the built-in model, batch 1 and 4: at most 5e-7
# in float32 (int8 weights too), 0 in bf16. A wrong buffer or kernel moves them by their own size.
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


def unavailable() -> str | None:
    """Why no step can be recorded here (None: one can)."""
    if os.environ.get(SWITCH) == "0":
        return f"turned off ({SWITCH}=0)"
    if TorchDispatchMode is None:
        return f"torch {torch.__version__} has no TorchDispatchMode to see the step's operations"
    so, why = gemv._build()
    return why if so is None else None


def applies(plan: StepPlan, tokens: torch.Tensor) -> bool:
    """Whether a step with this plan is one a recording replays: one aligned new column in every row, no padding."""
    return (tokens.shape[1] == 1 and plan.causal and plan.col == plan.n_keys - 1 and tokens.device.type == "cpu"
            and tokens.dtype == plan.position_ids.dtype == torch.long)  # fmt: skip


class _Recorder(TorchDispatchMode or object):
    """Appends each torch operation of the step to the tape as the step.c kernel that does the same; `why` says
    what it could not append (None: everything). Every output is kept, so its memory stays the step's."""

    def __init__(self, so: ctypes.CDLL) -> None:
        super().__init__()
        self.so, self.why, self.keep = so, None, []

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        """False: torch then leaves __torch_dispatch__ as it is rather than wrap it in dynamo's `disable`, whose first
        call imports torch._dynamo (3.0 s of `gpt2kit generate`'s 6.3 on a 2-core Zen 3 VM, in its first decode step).
        A recording runs eagerly, never under torch.compile; a torch that does not ask is unaffected."""
        return False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.keep.append(out)
        if self.why is None:
            self.why = self._append(func, args, kwargs or {}, out)
        return out

    def _append(self, func, args: tuple, kwargs: dict, out) -> str | None:
        if func in _NO_DATA:
            return None if func == aten.empty.memory_format or _same_storage(out, args[0]) else f"{func} copied"
        if func == aten.embedding.default and _plain(args[0], args[1], out) and args[1].dtype == torch.long:
            w, idx = args[0], args[1]  # (rows, C), (...)
            return self._op(EMBED, w, w.shape[0], idx, out, idx.numel(), w.shape[1] * w.element_size())
        if func == aten.add.Tensor and kwargs.get("alpha", 1) == 1 and len(args) == 2 and _plain(*args, out):
            a, b = args
            if a.shape == b.shape == out.shape and a.dtype == b.dtype == out.dtype in _DTYPES:
                return self._op(ADD, a, b, out, out.numel(), int(out.dtype == torch.bfloat16))
        if func == aten.layer_norm.default and len(args) >= 4 and args[2] is not None and args[3] is not None:
            x, shape, w, b = args[:4]
            eps = args[4] if len(args) > 4 else kwargs.get("eps", 1e-5)
            C = x.shape[-1]
            if list(shape) == [C] and _plain(x, w, b, out) and x.dtype == w.dtype == b.dtype in _DTYPES:
                bits = struct.unpack("<q", struct.pack("<d", float(eps)))[0]  # the double's bits, as step.c reads them
                return self._op(LAYER_NORM, x, w, b, out, x.numel() // C, C, bits, int(x.dtype == torch.bfloat16))
        if func in (aten.to.dtype, aten._to_copy.default) and _plain(args[0], out) and {args[0].dtype, out.dtype} == set(_DTYPES):
            return self._op(CONVERT, args[0], out, out.numel(), int(out.dtype == torch.bfloat16))
        return f"the step calls {func}, which step.c has no kernel for"

    def _op(self, kind: int, *args) -> None:
        values = (ctypes.c_int64 * MAX_ARGS)(*(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args))
        self.so.gk_record(kind, len(args), values)


def _plain(*tensors) -> bool:
    return all(isinstance(t, torch.Tensor) and t.is_contiguous() and t.device.type == "cpu" for t in tensors)


def _same_storage(out, source) -> bool:
    return isinstance(out, torch.Tensor) and out.untyped_storage().data_ptr() == source.untyped_storage().data_ptr()


class StepGraph:
    """One recorded decode step of `model` (an inference copy) over `cache` (a view of B rows): `run(tokens, plan)`
    replays it for the next step with the same rows. Made by `record`, which runs that first step itself."""

    def __init__(self, so: ctypes.CDLL, tape: int, keep: list, logits: torch.Tensor, direct: bool = False) -> None:
        self._so, self._tape, self._keep = so, tape, keep  # keep: every buffer the tape points into
        self.logits = logits  # (B, V)
        self.direct = direct  # whether the tape's last op is the product that writes the logits (`run`'s `out`)
        self._into: torch.Tensor | None = None  # the last `out` found laid out as the logits (held: its id stays its)
        weakref.finalize(self, so.gk_tape_free, tape)

    @classmethod
    def record(cls, model, tokens: torch.Tensor, cache: KVCache, plan: StepPlan) -> tuple[torch.Tensor, StepGraph | str]:
        """Run the step (tokens (B, 1), `plan` made by `cache.plan(1)`) while recording it -> (its logits (B, V),
        the graph or why there is none). The logits are the step's either way."""
        so = gemv._build()[0]
        own_tokens, own_positions = tokens.clone(), plan.position_ids.clone()  # (B, 1): what a replay's embeddings read
        plan = dataclasses.replace(plan, position_ids=own_positions)
        tape = so.gk_tape_new()
        recorder = _Recorder(so)
        so.gk_tape_record_on(tape)
        try:
            with recorder:
                logits = model.lm_head(model.hidden_states(own_tokens, cache, plan=plan)[:, -1])  # (B, V)
        except BaseException:
            so.gk_tape_free(tape)
            raise
        finally:
            so.gk_tape_record_on(None)
        why = recorder.why or _check(so, tape, plan.n_keys, {own_tokens.data_ptr(), own_positions.data_ptr()})
        if why is None:  # the cache is kept too: no other memory takes its address while the tape points into it
            so.gk_tape_inputs(tape, own_tokens.data_ptr(), own_positions.data_ptr(), own_tokens.numel())
            direct = _made_by_the_last_product(so, tape, logits.data_ptr())
            if direct:
                so.gk_tape_output(tape, logits.data_ptr())
            graph = cls(so, tape, [*recorder.keep, cache.kv, own_tokens, own_positions], logits, direct)
            first = logits.clone()
            why = _compare(first, graph.run(own_tokens, plan))
            return (first, graph) if why is None else (first, f"its replay differs: {why}")
        so.gk_tape_free(tape)
        return logits, why

    def run(self, tokens: torch.Tensor, plan: StepPlan, out: torch.Tensor | None = None) -> torch.Tensor:
        """The step for tokens (B, 1) with `plan` (which `applies`) -> (B, V) logits, a tensor of their own: `out`
        (B, V' <= V), their first V' columns written there, or a new one. An `out` laid out as the recorded logits
        gets them from the head's product itself: a copy of them after it took ~0.1 ms a token (124M, batch 1, on a
        2-core Zen 3 VM), their two halves in the two cores' caches."""
        positions = plan.position_ids  # (B, 1), as tokens: the replay copies B of each into the recording's own
        tokens, positions = (t if t.is_contiguous() else t.contiguous() for t in (tokens, positions))
        direct = out is not None and self._writes_into(out)
        failed = self._so.gk_replay(self._tape, plan.n_keys, tokens.data_ptr(), positions.data_ptr(), out.data_ptr() if direct else None)
        if failed:
            raise InputError(f"a decode step's token id is outside the vocabulary: {tokens.flatten().tolist()}")
        if direct:
            return out
        if out is None:  # the recorded step's own buffer is the next replay's
            return self.logits.clone()
        return out.copy_(self.logits[:, : out.shape[1]])

    def _writes_into(self, out: torch.Tensor) -> bool:
        """Whether the replay can write its logits into `out` directly: their dtype, shape and layout (checked once for
        an engine's buffer, which it passes every step)."""
        if out is self._into:
            return True
        lg = self.logits
        if self.direct and out.dtype == lg.dtype and out.shape == lg.shape and out.stride() == lg.stride() and out.device == lg.device:
            self._into = out
            return True
        return False

    def prefetches(self) -> list[int]:
        """How each of the step's products prefetches its weight (gemv.PREFETCH's values), in step order."""
        n = self._so.gk_tape_prefetch(self._tape, None, 0, 0)
        pf = (ctypes.c_int32 * n)()
        self._so.gk_tape_prefetch(self._tape, pf, n, 0)
        return list(pf)

    def set_prefetches(self, pf: list[int]) -> None:
        """Replay each product with its prefetch from `pf` (one per product, in step order, as `prefetches` gives)."""
        if len(pf) != self._so.gk_tape_prefetch(self._tape, None, 0, 0) or not set(pf) <= set(gemv.PREFETCH.values()):
            raise ValueError(f"{len(pf)} prefetches {sorted(set(pf))} for a step of {len(self.prefetches())} products")
        self._so.gk_tape_prefetch(self._tape, (ctypes.c_int32 * len(pf))(*pf), len(pf), 1)


def _check(so: ctypes.CDLL, tape: int, K: int, ids: set[int]) -> str | None:
    """Why the recorded tape cannot replay later steps (None: it can): every attention a step's own (its cache
    write, no mask, the step's K keys) and every embedding reading the ids a replay writes."""
    n = so.gk_tape_length(tape)
    if n < 0:
        return "the tape ran out of memory"
    args = (ctypes.c_int64 * MAX_ARGS)()
    for i in range(n):
        kind = so.gk_tape_op(tape, i, args)
        if kind == UNREPLAYABLE:
            return "it calls causal.c"
        if kind in (ATTEND_F32, ATTEND_BF16) and (args[7] != 0 or args[14] == 0 or args[11] != K):
            return "its attention is not the step's own (a mask, or no cache write)"
        if kind == EMBED and args[2] not in ids:
            return "an embedding reads ids the replay does not write"
    return None


def _made_by_the_last_product(so: ctypes.CDLL, tape: int, logits: int) -> bool:
    """Whether the tape's last op is a product whose output is `logits` (so a replay can write them elsewhere)."""
    n = so.gk_tape_length(tape)
    args = (ctypes.c_int64 * MAX_ARGS)()
    kind = so.gk_tape_op(tape, n - 1, args) if n > 0 else None
    return kind in _PRODUCT_OUT and args[_PRODUCT_OUT[kind]] == logits


_PRODUCT_OUT = {GEMV_F32: 5, GEMV_BF16: 6, GEMV_S8: 7}  # where each product's output pointer is (step.c's Y)


def _compare(recorded: torch.Tensor, replayed: torch.Tensor) -> str | None:
    """None where the replay's logits are the recorded step's (TOLERANCE of their scale), else by how much not."""
    scale = max(recorded.float().abs().max().item(), 1.0)
    diff = (recorded.float() - replayed.float()).abs().max().item()
    return None if diff <= TOLERANCE[recorded.dtype] * scale else f"logits {diff:.3g} apart (scale {scale:.3g})"
