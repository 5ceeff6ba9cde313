"""The int8 weights every int8 kernel multiplies (linear.py): one scale per output channel, w ~ scale[o] * q[o, i].

int8, int8-dynamic and int8-gemv each start from the same (q, scale) of a weight. A kernel measurement makes all
three from the same weights, and an int8 inference copy two (its decode and its prompt kernels), so within
`once()` each weight is quantized once: GPT-2 124M's took ~5 ms a (3072, 768) matrix on a 2-core Zen 3 VM, ~0.2 s
for every weight that a decode measurement packs, each time.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict

import torch

# (q, scale) kept within `once()`, the most recently used last, up to this many bytes of q: more than a decode
# measurement packs (twice the largest cache) on CPUs with up to 256 MiB of it
KEPT_BYTES = 512 << 20
_local = threading.local()  # .kept: OrderedDict while `once()` runs in this thread, else absent


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


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, in) weight -> (q, scale): q (out, in) int8 in [-127, 127] with w ~ scale[o] * q[o, i], scale (out,) float32."""
    kept = getattr(_local, "kept", None)
    if kept is None:
        return _quantize(weight)
    key = (weight.data_ptr(), tuple(weight.shape), weight.stride(), weight.dtype, weight._version)
    if key in kept:
        kept.move_to_end(key)
        return kept[key][1:]
    q, scale = _quantize(weight)
    kept[key] = (weight, q, scale)  # the weight held too: its memory cannot be another's while its key is kept
    while sum(v[1].numel() for v in kept.values()) > KEPT_BYTES:
        kept.popitem(last=False)
    return q, scale


def _quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = weight.detach().float()
    scale = channel_scale(w)  # (out,)
    return torch.div(w, scale[:, None]).round_().clamp_(-127, 127).to(torch.int8).contiguous(), scale  # one temporary


def channel_scale(w: torch.Tensor) -> torch.Tensor:
    """(out, in) float32 weight -> (out,) the int8 scale of each output channel: its largest |w| maps to 127."""
    return (torch.maximum(w.amax(dim=1), w.amin(dim=1).neg()) / 127.0).clamp(min=1e-12)  # no |w| copy
