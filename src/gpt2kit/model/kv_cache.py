"""KVCache: preallocated keys and values for incremental decoding.

Layout: one tensor kv (L, 2, B, nh, T_max, hs), keys at [:, 0] and values at [:, 1] (`k` and `v` are
those views). Heads come before time (not `(L, B, T_max, nh, hs)`) because then one layer's keys are
already `(B, nh, T_max, hs)`, the layout scaled_dot_product_attention reads, and a decode step needs no
transpose or copy of the cache. Keys and values side by side make a step's write one copy per layer:
c_attn's output, viewed as (3, B, nh, T, hs), holds this step's keys and values as one (2, B, nh, T, hs) slice.

Every row b has its own write column `lengths[b]` and its own next position id `pos[b]`, so rows can
hold prompts of different lengths (left padding: padded columns are marked invalid and don't advance
the position), and a server can reset and refill one row while the others keep decoding
(`row(b)` gives a view of one row that writes into the same storage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from gpt2kit.config import GPTConfig
from gpt2kit.errors import InputError


@dataclass
class StepPlan:
    """What one forward pass needs to read and write the cache (computed once, used by every layer)."""

    cols: torch.Tensor | None  # (B, T) long: cache column each new token is written to; None when `col` says it
    position_ids: torch.Tensor  # (B, T) long: position embedding index of each new token
    attn_mask: torch.Tensor | None  # (B, 1, T, K) bool: True where a query may attend a key column; None when `causal`
    n_keys: int  # K: how many leading cache columns attention reads
    # Set when every row wrote the same columns and none holds padding: `col` is the first column this step
    # writes in every row (the cache update is then one slice copy), and `causal` says the mask is plain
    # causal attention over the K keys (one query, or a prompt into empty rows), which SDPA runs unmasked.
    col: int | None = None
    causal: bool = False  # then attn_mask is None: no layer reads it
    # The views every layer's update uses, made at the step's first update for every layer at once (KVCache.update):
    # the keys and values to attend, and with `col` the slice to write. A step whose attention kernel writes and
    # reads the cache itself (gemv.attend_step) makes none.
    reads: tuple[torch.Tensor, ...] | None = None  # (2L,) of (B, nh, K, hs): layer l's keys at 2l, its values at 2l + 1
    writes: tuple[torch.Tensor, ...] | None = None  # (L,) of (2, B, nh, T, hs); None: each row its own columns
    _bias: dict = field(default_factory=dict, repr=False)

    def attn_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """attn_mask as an additive (B, 1, T, K) bias (0 or -inf) in `dtype`, made once per step for all layers."""
        if dtype not in self._bias:
            self._bias[dtype] = torch.zeros(self.attn_mask.shape, dtype=dtype, device=self.attn_mask.device).masked_fill_(
                ~self.attn_mask, -math.inf
            )
        return self._bias[dtype]


class _HostLengths:
    """Host-side copy of every row's written-column count and whether it holds padding, shared by a cache
    and its row views, so that sizing a step never reads a device tensor (no host sync per token)."""

    __slots__ = ("values", "padded")

    def __init__(self, batch_size: int) -> None:
        self.values = [0] * batch_size
        self.padded = [False] * batch_size


class KVCache:
    """Keys/values of every layer for B rows of up to T_max tokens each.

    kv:       (L, 2, B, nh, T_max, hs); k, v its (L, B, nh, T_max, hs) keys and values
    valid:    (B, T_max) bool, column holds a real (not padding, already written) token
    lengths:  (B,) long, columns written so far per row (the next write column)
    pos:      (B,) long, position id of the next real token per row
    """

    def __init__(
        self,
        config: GPTConfig,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        static: bool = False,
        _views: tuple | None = None,
    ) -> None:
        self.config = config
        if _views is not None:  # a view of rows of another cache (see `row`)
            self.kv, self.valid, self.lengths, self.pos, self._host, self._rows, self.max_len, self.static = _views
            self._make_views()
            return
        self.static = static  # attend all T_max columns every step (masked): fixed shapes for CUDA graphs
        T_max = max_len if max_len is not None else config.n_positions
        if not (0 < T_max <= config.n_positions):
            raise InputError(f"KV cache length must be in 1..{config.n_positions} (n_positions), got {T_max}.")
        L, nh, hs = config.n_layer, config.n_head, config.head_dim
        self.max_len = T_max
        self.kv = torch.zeros(L, 2, batch_size, nh, T_max, hs, device=device, dtype=dtype)
        self.valid = torch.zeros(batch_size, T_max, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.pos = torch.zeros(batch_size, dtype=torch.long, device=device)
        self._host = _HostLengths(batch_size)
        self._rows = range(batch_size)  # which entries of the shared host lengths are this cache's rows
        self._make_views()

    def _make_views(self) -> None:
        """The views every step reads, made once: k, v and each layer's (2, B, nh, T_max, hs) slice; on the CPU, numpy
        views of the counters and a (B, 1) buffer of a decode step's positions (`_one_column`)."""
        self.k, self.v = self.kv[:, 0], self.kv[:, 1]  # (L, B, nh, T_max, hs)
        self._layers = self.kv.unbind(0)
        self._row_views: dict[tuple[int, int], KVCache] = {}
        self._step_positions = None
        if self.kv.device.type == "cpu":
            self._step_positions = torch.zeros(self.lengths.shape[0], 1, dtype=torch.long)  # (B, 1)
            self._counters = (self.valid.numpy(), self.lengths.numpy(), self.pos.numpy(), self._step_positions.numpy())

    @property
    def batch_size(self) -> int:
        return self.kv.shape[2]

    @property
    def seq_len(self) -> int:
        """Upper bound on the columns written in any row (exact when rows were filled together)."""
        return max(self._host.values[r] for r in self._rows)

    def reset(self) -> None:
        self.valid.zero_()
        self.lengths.zero_()
        self.pos.zero_()
        for r in self._rows:
            self._host.values[r] = 0
            self._host.padded[r] = False

    def row(self, b: int) -> KVCache:
        """A one-row view (B=1) that reads and writes row b of this cache in place."""
        return self.rows(b, b + 1)

    def rows(self, start: int, stop: int) -> KVCache:
        """A view of rows start..stop-1 (B=stop-start) that reads and writes this cache in place (made once per
        range: a view holds no state of its own, and the engine asks for one every step)."""
        view = self._row_views.get((start, stop))
        if view is None:
            assert 0 <= start < stop <= self.batch_size, (start, stop, self.batch_size)
            views = (self.kv[:, :, start:stop], self.valid[start:stop], self.lengths[start:stop],
                     self.pos[start:stop], self._host, self._rows[start:stop], self.max_len, self.static)  # fmt: skip
            view = self._row_views[(start, stop)] = KVCache(self.config, stop - start, _views=views)
        return view

    def row_length(self, b: int) -> int:
        """Columns written in row b so far (a host-side count: reading it never syncs with the device)."""
        return self._host.values[self._rows[b]]

    def reset_row(self, b: int) -> None:
        """Empty row b (e.g. a finished request's slot) without touching the other rows."""
        self.valid[b] = False
        self.lengths[b] = 0
        self.pos[b] = 0
        self._host.values[self._rows[b]] = 0
        self._host.padded[self._rows[b]] = False

    def plan(self, T: int, attention_mask: torch.Tensor | None = None) -> StepPlan:
        """Reserve T columns in every row for the next forward pass and advance the counters.

        attention_mask: (B, T), 1 for real tokens, 0 for (left) padding; None means all real.
        """
        if T == 1 and attention_mask is None and self._step_positions is not None and not self.static:
            plan = self._one_column()
            if plan is not None:
                return plan
        if self.seq_len + T > self.max_len:
            raise InputError(
                f"KV cache overflow: {self.seq_len} cached + {T} new tokens > capacity {self.max_len}. "
                "Generate fewer tokens, shorten the prompt, or use the sliding-window mode."
            )
        B, device = self.lengths.shape[0], self.lengths.device
        before = [self._host.values[r] for r in self._rows]
        self._mark_padding(attention_mask)
        aligned = all(n == before[0] for n in before) and not any(self._host.padded[r] for r in self._rows)
        ar = torch.arange(T, device=device)
        if attention_mask is None and aligned:  # the same T new columns in every row (a decode step: few ops)
            cols, position_ids = None, self.pos[:, None] + ar  # (B, T)
            self.valid[:, before[0] : before[0] + T] = True
            self.pos += T
        else:
            cols = self.lengths[:, None] + ar  # (B, T)
            if attention_mask is None:
                real = torch.ones(B, T, dtype=torch.bool, device=device)
                position_ids = self.pos[:, None] + ar
            else:
                real = attention_mask.to(device=device, dtype=torch.bool)
                position_ids = self.pos[:, None] + real.long().cumsum(1) - 1
                position_ids = position_ids.clamp(min=0)  # padding gets position 0; its output is never used
            self.valid.scatter_(1, cols, real)
            self.pos += real.sum(1)
        self.lengths += T
        for r in self._rows:
            self._host.values[r] += T

        K = self.max_len if self.static else self.seq_len  # static: unwritten columns are masked, not cut
        causal = aligned and not self.static and (T == 1 or before[0] == 0)
        if not causal and cols is None:
            cols = (before[0] + ar).expand(B, T)  # (B, T)
        return StepPlan(cols=cols, position_ids=position_ids, attn_mask=None if causal else self._mask(cols, K), n_keys=K,
                        col=before[0] if aligned else None, causal=causal)  # fmt: skip

    def _one_column(self) -> StepPlan | None:
        """`plan(1)` of a CPU cache whose rows are aligned and unpadded (a plain decode step; None otherwise), its
        counters moved through numpy views: the same plan with no torch operation, which after a step's weight stream
        finds its code evicted (~20-40 us an operation). Its position_ids are the cache's own (B, 1) buffer, which the
        next such step overwrites."""
        values, padded = self._host.values, self._host.padded
        col = values[self._rows[0]]
        if col + 1 > self.max_len or any(values[r] != col or padded[r] for r in self._rows):
            return None
        valid, lengths, pos, positions = self._counters
        positions[:, 0] = pos  # aligned, unpadded rows: each row's next position
        valid[:, col] = True
        lengths += 1
        pos += 1
        for r in self._rows:
            values[r] += 1
        return StepPlan(cols=None, position_ids=self._step_positions, attn_mask=None, n_keys=col + 1, col=col, causal=True)

    def _mask(self, cols: torch.Tensor, K: int) -> torch.Tensor:
        """(B, T) write columns -> (B, 1, T, K) bool: each query sees the valid keys up to its own column."""
        keys = torch.arange(K, device=cols.device)  # (K,)
        causal = keys[None, None, :] <= cols[:, :, None]  # (B, T, K)
        diagonal = keys[None, None, :] == cols[:, :, None]  # a padded query still sees itself: no empty rows
        return ((causal & self.valid[:, None, :K]) | diagonal)[:, None]  # (B, 1, T, K)

    def _mark_padding(self, attention_mask: torch.Tensor | None) -> None:
        """Record which rows this step pads. A mask on the CPU is read (free); one on a GPU marks every row,
        rather than sync the device to look."""
        if attention_mask is None:
            return
        if attention_mask.device.type == "cpu":
            pads = (attention_mask == 0).any(dim=1).tolist()  # (B,)
        else:
            pads = [True] * len(self._rows)
        for r, pad in zip(self._rows, pads):
            self._host.padded[r] = self._host.padded[r] or pad

    def layer(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s keys and values, (2, B, nh, T_max, hs) (a view made once)."""
        return self._layers[layer]

    def update(self, layer: int, kv: torch.Tensor, plan: StepPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this step's keys and values kv (2, B, nh, T, hs) for `layer`; return the keys and values to
        attend, each (B, nh, K, hs)."""
        if plan.reads is None:
            plan.reads = self.kv.narrow(4, 0, plan.n_keys).flatten(0, 1).unbind(0)
            if plan.col is not None:
                plan.writes = self.kv.narrow(4, plan.col, kv.shape[3]).unbind(0)
        if plan.writes is not None:  # every row writes the same T columns: one slice copy
            plan.writes[layer].copy_(kv)
        else:  # each row its own columns: an indexed write (2x faster than scatter_ on the CPU, and in 16 bits
            # too, where scatter_ is 10-40x slower than for integers of the same width)
            kv_l = self._layers[layer]  # (2, B, nh, T_max, hs)
            rows = torch.arange(kv.shape[1], device=kv.device)[:, None]  # (B, 1), against plan.cols (B, T)
            kv_l[:, rows, :, plan.cols] = kv.to(kv_l.dtype).permute(1, 3, 0, 2, 4)  # (B, T, 2, nh, hs) at [:, b, :, cols[b, t]]
        return plan.reads[2 * layer], plan.reads[2 * layer + 1]  # keys, values
