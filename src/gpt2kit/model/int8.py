"""The int8 weights every int8 kernel multiplies (linear.py): one scale per output channel, w ~ scale[o] * q[o, i].

int8, int8-dynamic and int8-gemv each start from the same `Quantized` of a weight (q and scale; gemv.c's also its row
sums). A kernel measurement makes all three from the same weights, and an int8 inference copy two (its decode and its prompt kernels), so within
`once()` each weight is quantized once: GPT-2 124M's took ~5 ms a (3072, 768) matrix on a 2-core Zen 3 VM, ~0.2 s
for every weight that a decode measurement packs, each time. And a packing that holds a weight's q, scale and qsum
already (gemv.c's, mapped from the packed-weight store or packed in memory) `offer`s them for as long as it lives: an
int8 prompt kernel packed on a copy's first prompt, after `once()` is over, takes them from there rather than rounding
the weight again.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import NamedTuple

import torch

# (q, scale) kept within `once()`, the most recently used last, up to this many bytes of q: more than a decode
# measurement packs (twice the largest cache) on CPUs with up to 256 MiB of it
KEPT_BYTES = 512 << 20
_local = threading.local()  # .kept: OrderedDict while `once()` runs in this thread, else absent
# what packings that hold a weight's Quantized offer (`offer`): {weight's key: (weight, make)}, while they live
_offered: dict[tuple, tuple[torch.Tensor, Callable[[], Quantized]]] = {}
# rows of float32 quotients rounded at a time: a block that stays in the cache, reused, instead of a float32 temporary
# of the whole weight in fresh memory (on a 2-core Zen 3 VM, 124M's int8 weights and their row sums took 0.17 s
# this way against 0.31 s with one temporary)
BLOCK_BYTES = 4 << 20


class Quantized(NamedTuple):
    q: torch.Tensor  # (out, in) int8 in [-127, 127], w ~ scale[o] * q[o, i]
    scale: torch.Tensor  # (out,) float32
    qsum: torch.Tensor  # (out,) int32, sum_i q[o, i] (gemv.c's int8 product offsets its unsigned activations by it)


@contextlib.contextmanager
def once():
    """Within it, `quantize` returns the (q, scale) it made before for the same weight (the same memory, shape,
    strides, dtype and version), of the KEPT_BYTES most recently used. Nested: the outermost holds them."""
    if getattr(_local, "kept", None) is not None:
        yield
        return
    _local.kept = OrderedDict()
    try:
        yield
    finally:
        _local.kept = None


def quantize(weight: torch.Tensor) -> Quantized:
    """(out, in) weight -> its Quantized (q, scale, qsum): kept within `once()`, offered (`offer`), else rounded now."""
    kept = getattr(_local, "kept", None)
    key = _key(weight)
    if kept is None:
        return _made(key, weight)
    if key in kept:
        kept.move_to_end(key)
        return kept[key][1]
    made = _made(key, weight)
    kept[key] = (weight, made)  # the weight held too: its memory cannot be another's while its key is kept
    while sum(v[1].q.numel() for v in kept.values()) > KEPT_BYTES:
        kept.popitem(last=False)
    return made


def offer(weight: torch.Tensor, holder: object, make: Callable[[], Quantized]) -> None:
    """While `holder` (a packing that holds `weight`'s q, scale and qsum in another layout) lives, `quantize(weight)`
    returns `make()`, a new Quantized of them, rather than rounding the weight again; a weight changed in place since
    (another version) is rounded. `make` must not hold `holder`, or it would never be freed. The entry holds `weight`,
    so no other tensor can take its memory, and with it its key, while it lasts."""
    key = _key(weight)
    entry = (weight, make)
    _offered[key] = entry
    weakref.finalize(holder, _withdraw, key, entry)


def _withdraw(key: tuple, entry: tuple) -> None:
    if _offered.get(key) is entry:  # not a later holder's offer of the same weight
        _offered.pop(key, None)


def _key(weight: torch.Tensor) -> tuple:
    """A weight's memory, shape, strides, dtype and version: the same key, the same values."""
    return weight.data_ptr(), tuple(weight.shape), weight.stride(), weight.dtype, weight._version


def _made(key: tuple, weight: torch.Tensor) -> Quantized:
    """weight's Quantized: taken from an `offer` where there is one, else rounded now."""
    offered = _offered.get(key)
    return offered[1]() if offered is not None else _quantize(weight)


def _quantize(weight: torch.Tensor) -> Quantized:
    w = weight.detach().float()
    scale = channel_scale(w)  # (out,)
    n, k = w.shape
    q, qsum = torch.empty((n, k), dtype=torch.int8), torch.empty(n, dtype=torch.int32)
    block = torch.empty(max(1, min(n, BLOCK_BYTES // (4 * k))), k)  # (rows, in)
    for i in range(0, n, len(block)):
        j = min(n, i + len(block))
        t = torch.div(w[i:j], scale[i:j, None], out=block[: j - i]).round_().clamp_(-127, 127)  # whole numbers
        q[i:j] = t
        qsum[i:j] = t.sum(1)  # exact: |sum| <= 127 * in, far below 2^24
    return Quantized(q, scale, qsum)


def channel_scale(w: torch.Tensor) -> torch.Tensor:
    """(out, in) float32 weight -> (out,) the int8 scale of each output channel: its largest |w| maps to 127."""
    return (torch.maximum(w.amax(dim=1), w.amin(dim=1).neg()) / 127.0).clamp(min=1e-12)  # no |w| copy
