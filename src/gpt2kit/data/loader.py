"""ShardLoader: (x, y) batches of B windows of T+1 tokens from memmapped shards, rank-aware, resumable.

    loader = ShardLoader("data/corpora", "train", B=16, T=256, rank=rank, world=world)
    x, y = loader.next_batch()          # (B, T) int64 each; y[b, t] = x[b, t + 1] (shifted here, not in the model)
    state = loader.state_dict()         # JSON-able; load_state_dict(state) continues with the same batches

Two orders:
  - "random" (nanoGPT's get_batch): window starts drawn uniformly over all shards, from an RNG seeded by
    (seed, draw number), so the state is one counter and a resumed run draws exactly the same windows.
  - "sequential" (llm.c's DistributedDataLoader): walk the shards in order, wrapping around at the end.
In both, every draw makes the *global* batch of world * B windows and rank r takes windows
[r*B, (r+1)*B): world processes with B each see exactly what one process with world * B sees.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import numpy as np
import torch

from gpt2kit.data.shards import find_shards, open_shard
from gpt2kit.errors import ConfigError, DataError


class ShardLoader:
    def __init__(
        self,
        data_dir: str | os.PathLike,
        split: str,
        B: int,
        T: int,
        rank: int = 0,
        world: int = 1,
        order: str = "random",
        seed: int = 0,
    ) -> None:
        if B <= 0 or T <= 0:
            raise ConfigError(f"batch size B={B} and sequence length T={T} must be positive.")
        if not 0 <= rank < world:
            raise ConfigError(f"rank {rank} is outside world size {world}.")
        if order not in ("random", "sequential"):
            raise ConfigError(f"order must be 'random' or 'sequential', got {order!r}.")
        self.B, self.T, self.rank, self.world, self.order, self.seed = B, T, rank, world, order, seed
        self.split = split
        paths = find_shards(data_dir, split)
        need = world * B * T + 1 if order == "sequential" else T + 1
        self.shards = [s for s in (open_shard(p) for p in paths) if s.size >= need]
        if not self.shards:
            total = sum(open_shard(p).size for p in paths)
            raise DataError(
                f"the {split} split of {data_dir} has {total:,} tokens in {len(paths)} shard(s), but one "
                f"{'global batch needs ' + str(need) if order == 'sequential' else 'window needs T+1 = ' + str(need)} "
                f"tokens in a single shard. ---> HINT: lower the batch size or block size, or prepare more text "
                f"(for val: a larger --val-tail)."
            )
        self.n_tokens = sum(s.size for s in self.shards)
        # random order: window start k (global over shards) -> shard searchsorted(starts_cum, k, 'right')
        self._starts_cum = np.cumsum([s.size - T for s in self.shards])  # valid starts per shard, cumulative
        self.reset()

    # ---- state -----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Back to the first batch (validation restarts here at every eval)."""
        self.draws, self.shard, self.pos, self.epoch = 0, 0, 0, 0

    def state_dict(self) -> dict:
        return {"order": self.order, "seed": self.seed, "world": self.world, "B": self.B, "T": self.T,
                "draws": self.draws, "shard": self.shard, "pos": self.pos, "epoch": self.epoch}  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        for key in ("order", "seed", "world", "B", "T"):
            if state.get(key) != getattr(self, key):
                raise ConfigError(
                    f"cannot resume the data loader: the checkpoint was written with {key}={state.get(key)!r}, this run "
                    f"has {key}={getattr(self, key)!r}. Resume with the same batch/block size, seed and number of processes."
                )
        self.draws, self.shard, self.pos, self.epoch = state["draws"], state["shard"], state["pos"], state["epoch"]

    # ---- batches ---------------------------------------------------------------------------------
    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """-> x (B, T) int64, y (B, T) int64, this rank's share of the next global batch."""
        B, T = self.B, self.T
        if self.order == "random":
            rng = np.random.default_rng([self.seed, self.draws])
            starts = rng.integers(0, int(self._starts_cum[-1]), size=self.world * B)[self.rank * B : (self.rank + 1) * B]
            shard_ix = np.searchsorted(self._starts_cum, starts, side="right")
            offsets = starts - np.concatenate([[0], self._starts_cum])[shard_ix]
            buf = np.stack([self.shards[s][o : o + T + 1] for s, o in zip(shard_ix, offsets)])  # (B, T+1)
        else:
            shard = self.shards[self.shard]
            begin = self.pos + self.rank * B * T
            buf = np.asarray(shard[begin : begin + B * T + 1])  # (B*T + 1,)
            buf = np.lib.stride_tricks.sliding_window_view(buf, T + 1)[::T]  # (B, T+1), windows overlap by 1
            self.pos += self.world * B * T
            if self.pos + self.world * B * T + 1 > shard.size:
                self.shard, self.pos = (self.shard + 1) % len(self.shards), 0
                self.epoch += self.shard == 0
        self.draws += 1
        buf = torch.from_numpy(buf.astype(np.int64))  # (B, T+1)
        return buf[:, :-1], buf[:, 1:]

    def eval_batches(self, max_batches: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The first `max_batches` batches in sequential order (or fewer, if the split is smaller): the same
        fixed set at every evaluation, so val losses are comparable over a run."""
        if self.order != "sequential":
            raise ConfigError("eval_batches needs a sequential loader (order='sequential').")
        self.reset()
        for _ in range(max_batches):
            yield self.next_batch()
            if self.epoch > 0 or self.shard == 0 and self.pos == 0:
                break
