"""ShardLoader: shifted targets, rank split = one big batch, exact resume, sequential walk, clear errors."""

import re

import numpy as np
import pytest
import torch

from gpt2kit.data.loader import ShardLoader
from gpt2kit.data.shards import write_shard
from gpt2kit.errors import ConfigError, DataError


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(0)
    write_shard(tmp_path / "train_000000.bin", rng.integers(0, 50257, 5000).astype(np.uint16))
    write_shard(tmp_path / "train_000001.bin", rng.integers(0, 50257, 3000).astype(np.uint16))
    write_shard(tmp_path / "val_000000.bin", np.arange(1000, dtype=np.uint16))
    return tmp_path


@pytest.mark.parametrize("order", ["random", "sequential"])
def test_targets_are_inputs_shifted_by_one(data, order):
    x, y = ShardLoader(data, "train", B=4, T=16, order=order).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])


@pytest.mark.parametrize("order", ["random", "sequential"])
def test_ranks_split_the_global_batch(data, order):
    one = ShardLoader(data, "train", B=6, T=8, order=order, seed=3)
    ranks = [ShardLoader(data, "train", B=2, T=8, rank=r, world=3, order=order, seed=3) for r in range(3)]
    for _ in range(5):
        x, y = one.next_batch()
        parts = [ld.next_batch() for ld in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts])) and torch.equal(y, torch.cat([p[1] for p in parts]))


@pytest.mark.parametrize("order", ["random", "sequential"])
def test_state_dict_resumes_the_same_batches(data, order):
    a = ShardLoader(data, "train", B=4, T=32, order=order, seed=1)
    for _ in range(30):  # sequential: past the end of shard 0
        a.next_batch()
    state = a.state_dict()
    want = [a.next_batch() for _ in range(40)]
    b = ShardLoader(data, "train", B=4, T=32, order=order, seed=1)
    b.load_state_dict(state)
    got = [b.next_batch() for _ in range(40)]
    assert all(torch.equal(w[0], g[0]) for w, g in zip(want, got))
    with pytest.raises(ConfigError, match="checkpoint was written with B=4"):
        ShardLoader(data, "train", B=8, T=32, order=order, seed=1).load_state_dict(state)


def test_sequential_walks_all_shards_and_wraps(data):
    ld = ShardLoader(data, "train", B=2, T=100, order="sequential")
    firsts = []
    for _ in range(40):
        x, _ = ld.next_batch()
        firsts.append(x[0, 0].item())
    assert ld.epoch >= 1
    val = ShardLoader(data, "val", B=2, T=10, order="sequential")
    batches = list(val.eval_batches(1000))
    assert len(batches) == 49  # 1000 tokens, 20 per batch, and one extra token for the last target
    assert batches[0][0][0].tolist() == list(range(10)) and batches[1][0][0].tolist() == list(range(20, 30))
    assert [b[0].tolist() for b in val.eval_batches(3)] == [b[0].tolist() for b in batches[:3]]  # same fixed set each time


def test_random_windows_cover_both_shards_and_stay_inside_one(data):
    ld = ShardLoader(data, "train", B=64, T=50, order="random")
    s0, s1 = (np.asarray(s) for s in ld.shards)
    seen = set()
    for _ in range(20):
        x, y = ld.next_batch()
        for row in torch.cat([x, y[:, -1:]], 1).numpy():
            hits = [
                i for i, s in enumerate((s0, s1)) if any(np.array_equal(s[o : o + 51], row) for o in np.flatnonzero(s == row[0]))
            ]
            assert hits
            seen.update(hits)
    assert seen == {0, 1}


def test_errors(data, tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ShardLoader(tmp_path / "missing", "train", 2, 8)
    with pytest.raises(DataError, match="1,000 tokens.*lower the batch size"):
        ShardLoader(data, "val", B=64, T=64, order="sequential")
    with pytest.raises(ConfigError, match="rank 2 is outside world size 2"):
        ShardLoader(data, "train", 2, 8, rank=2, world=2)


def _ramp(folder, split, *sizes):
    """Shards whose token at position i is (shard number * 10000 + i), so a window names where it came from."""
    for k, n in enumerate(sizes):
        write_shard(folder / f"{split}_{k:06d}.bin", (k * 10000 + np.arange(n)).astype(np.uint16))
    return folder


def test_random_windows_start_where_the_seeded_draw_says(tmp_path):
    _ramp(tmp_path, "train", 40, 30, 50)  # valid starts per shard: 40-T, 30-T, 50-T
    T, B, seed = 8, 5, 7
    ld = ShardLoader(tmp_path, "train", B=B, T=T, seed=seed)
    cum = np.cumsum([40 - T, 30 - T, 50 - T])
    for draw in range(4):
        starts = np.random.default_rng([seed, draw]).integers(0, cum[-1], size=B)  # the documented seeding
        want = []
        for s in starts:
            k = int(np.searchsorted(cum, s, side="right"))
            want.append(k * 10000 + s - (cum[k - 1] if k else 0) + np.arange(T + 1))
        x, y = ld.next_batch()
        assert torch.equal(torch.cat([x, y[:, -1:]], 1), torch.tensor(np.stack(want), dtype=torch.int64))
    assert ld.state_dict()["draws"] == 4
    assert torch.equal(ShardLoader(tmp_path, "train", B=B, T=T).next_batch()[0],
                       ShardLoader(tmp_path, "train", B=B, T=T, seed=0).next_batch()[0])  # fmt: skip


def test_sequential_walks_shards_in_order_wraps_and_counts_epochs(tmp_path):
    B, T = 2, 3  # a global batch reads B*T + 1 = 7 tokens and moves on by 6
    _ramp(tmp_path, "train", 13, 7, 6, 7)  # 13 = two batches exactly; 6 is too short and skipped
    ld = ShardLoader(tmp_path, "train", B=B, T=T, order="sequential")
    assert ld.n_tokens == 13 + 7 + 7 and len(ld.shards) == 3 and ld.split == "train"
    seen = []
    for _ in range(8):
        x, y = ld.next_batch()
        assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(x[1:, 0], y[:-1, -1])  # rows continue each other
        seen.append((int(x[0, 0]), ld.epoch))
    assert seen == [(0, 0), (6, 0), (10000, 0), (30000, 1), (0, 1), (6, 1), (10000, 1), (30000, 2)]
    assert ld.state_dict()["draws"] == 8
    one = ShardLoader(tmp_path, "train", B=3, T=1, order="sequential")  # T = 1: windows of 2 tokens
    assert one.next_batch()[0].tolist() == [[0], [1], [2]]


def test_shards_just_long_enough_are_used_and_shorter_ones_are_refused(tmp_path):
    _ramp(tmp_path / "seq", "val", 2 * 4 * 5 + 1)  # world * B * T + 1
    assert ShardLoader(tmp_path / "seq", "val", B=4, T=5, world=2, order="sequential").n_tokens == 41
    with pytest.raises(
        DataError, match=re.escape("has 41 tokens in 1 shard(s), but one global batch needs 49 tokens in a single")
    ):
        ShardLoader(tmp_path / "seq", "val", B=4, T=6, world=2, order="sequential")
    _ramp(tmp_path / "rnd", "val", 9)  # T + 1
    assert ShardLoader(tmp_path / "rnd", "val", B=4, T=8).next_batch()[0].tolist() == [list(range(8))] * 4
    with pytest.raises(DataError, match=re.escape("but one window needs T+1 = 10 tokens in a single shard")):
        ShardLoader(tmp_path / "rnd", "val", B=4, T=9)


def test_eval_batches_read_every_shard_once(tmp_path):
    _ramp(tmp_path, "val", 7, 13)
    ld = ShardLoader(tmp_path, "val", B=2, T=3, order="sequential")
    assert [int(x[0, 0]) for x, _ in ld.eval_batches(10)] == [0, 10000, 10006]
    with pytest.raises(ConfigError, match="^" + re.escape("eval_batches needs a sequential loader (order='sequential').") + "$"):
        next(ShardLoader(tmp_path, "val", B=2, T=3).eval_batches(1))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"B": 0, "T": 8}, "batch size B=0 and sequence length T=8 must be positive."),
        ({"B": 2, "T": 0}, "batch size B=2 and sequence length T=0 must be positive."),
        ({"B": 2, "T": 8, "order": "shuffled"}, "order must be 'random' or 'sequential', got 'shuffled'."),
    ],
)
def test_bad_settings_are_refused(data, kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        ShardLoader(data, "train", **kwargs)


def test_one_row_and_one_token_windows_are_allowed(data):
    x, y = ShardLoader(data, "val", B=1, T=1, order="sequential").next_batch()
    assert x.tolist() == [[0]] and y.tolist() == [[1]]
