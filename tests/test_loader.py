"""ShardLoader: shifted targets, rank split = one big batch, exact resume, sequential walk, clear errors."""

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
