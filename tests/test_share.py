"""How a product's threads share its blocks (share.h): each thread reads its own contiguous share front to back,
then takes blocks one at a time from the back of the share with the most left, and every block goes to exactly
one claim (`gk_share_claims` replays a given order of claims one at a time). Then products whose threads take
each other's blocks, more threads than cores, against F.linear and the int8 reference, on every build."""

import ctypes
import random

import pytest
import torch
import torch.nn.functional as F

from conftest import gemv_buildable
from gpt2kit.model import gemv
from gpt2kit.model import linear as L

pytestmark = gemv_buildable()
MAX_SHARES = 64  # share.h's GK_MAX_SHARES


def _claims(blocks: int, threads: int, who: list[int]) -> list[int]:
    """The block each claim gets (-1: none left) when threads `who[i]` claim in that order."""
    so = gemv._build()[0]
    order = (ctypes.c_int32 * len(who))(*who)
    out = (ctypes.c_int64 * len(who))()
    so.gk_share_claims(blocks, threads, order, len(who), out)
    return list(out)


def test_a_thread_reads_its_own_share_then_takes_from_the_back_of_the_fullest():
    # 10 blocks, 2 threads: shares [0, 5) and [5, 10)
    assert _claims(10, 2, [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 1]) == [0, 1, 2, 5, 6, 7, 8, 9, 4, 3, -1, -1]
    # 9 blocks, 3 threads: [0, 3), [3, 6), [6, 9); thread 0 done takes 5 (the first of two fullest), then 8
    assert _claims(9, 3, [0, 0, 0, 0, 0, 2, 1]) == [0, 1, 2, 5, 8, 6, 3]
    assert _claims(0, 2, [0, 1]) == [-1, -1]  # a product of no blocks


@pytest.mark.parametrize("blocks, threads", [(1, 2), (5, 3), (97, 2), (97, 7), (1000, 3)])
def test_every_block_goes_to_one_claim_whatever_the_order(blocks, threads):
    rng = random.Random(blocks * 31 + threads)
    for _ in range(20):
        who = [rng.randrange(threads) for _ in range(blocks + 3 * threads)]
        got = _claims(blocks, threads, who)
        taken = [b for b in got if b >= 0]
        assert sorted(taken) == list(range(blocks))  # each block once
        assert got[len(taken) :] == [-1] * (len(got) - len(taken))  # then nothing, for anyone
        for t in range(threads):  # a thread's own share comes front to back, from its first block
            lo, hi = blocks * t // threads, blocks * (t + 1) // threads
            own = [b for b, w in zip(got, who) if w == t and lo <= b < hi]
            assert own == sorted(own)


def test_a_smaller_team_or_more_threads_than_shares_still_takes_every_block():
    # a team of one where four were asked for (nested parallelism): its own share, then the others' from the back
    got = _claims(8, 4, [0] * 9)  # shares [0, 2), [2, 4), [4, 6), [6, 8)
    assert got == [0, 1, 3, 5, 7, 2, 4, 6, -1]
    # 100 threads: shares for the first 64 alone; thread 99 only takes from the back of the fullest
    got = _claims(640, 100, [99] * 3 + [0] * 10)  # shares of 10 blocks
    assert got[:3] == [9, 19, 29] and got[3:] == [*range(9), 39]


@pytest.mark.parametrize("threads", [1, 3, 7])
def test_products_with_threads_taking_each_others_blocks_equal_the_reference(build, threads):
    g = torch.Generator().manual_seed(threads)
    w, b, x = torch.randn(1000, 96, generator=g), torch.randn(1000, generator=g), torch.randn(2, 96, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)  # 7 threads on fewer cores: some start late and their blocks are taken
    try:
        y = L.make_kernel("gemv", w, b)(x)
        q = L.make_kernel("int8-gemv", w, b)(x)
    finally:
        torch.set_num_threads(before)
    ref = F.linear(x, w, b)
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-5)
    assert (q - ref).abs().max() < 0.03 * ref.abs().max()
