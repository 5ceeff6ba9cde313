"""Cached decoding must give the same logits as one full forward pass (fp32, ~1e-5)."""

import pytest
import torch

from conftest import perturb_
from gpt2kit import GPT, GPTConfig, KVCache
from gpt2kit.errors import InputError

CFG = GPTConfig(n_layer=3, n_embd=64, n_head=4, n_positions=64, vocab_size=500)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return perturb_(GPT(CFG)).eval()


def test_prefill_then_decode_equals_full_forward(model):
    idx = torch.randint(0, 500, (2, 20))
    cache = KVCache(CFG, batch_size=2, max_len=32)
    with torch.no_grad():
        full, _ = model(idx)
        parts = [model(idx[:, :11], kv_cache=cache)[0]]
        for t in range(11, 20):  # one token at a time
            parts.append(model(idx[:, t : t + 1], kv_cache=cache)[0])
    assert (torch.cat(parts, 1) - full).abs().max().item() < 1e-5
    assert cache.seq_len == 20


def test_left_padded_cache_matches_rows_alone(model):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(0, 500, (1, 5), generator=g), torch.randint(0, 500, (1, 9), generator=g)
    nxt = torch.randint(0, 500, (2, 4), generator=g)
    idx = torch.cat([torch.cat([torch.zeros(1, 4, dtype=torch.long), a], 1), b])
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, :4] = 0
    cache = KVCache(CFG, 2, 32)
    with torch.no_grad():
        first, _ = model(idx, kv_cache=cache, attention_mask=mask)
        steps = [model(nxt[:, t : t + 1], kv_cache=cache)[0] for t in range(4)]
        alone_a, _ = model(torch.cat([a, nxt[:1]], 1))
        alone_b, _ = model(torch.cat([b, nxt[1:]], 1))
    got_a = torch.cat([first[:1, 4:]] + [s[:1] for s in steps], 1)
    got_b = torch.cat([first[1:]] + [s[1:] for s in steps], 1)
    assert (got_a - alone_a).abs().max().item() < 1e-5
    assert (got_b - alone_b).abs().max().item() < 1e-5


def test_row_view_refills_one_row_while_others_keep_their_cache(model):
    g = torch.Generator().manual_seed(2)
    idx = torch.randint(0, 500, (2, 6), generator=g)
    cache = KVCache(CFG, 2, 40)
    with torch.no_grad():
        model(idx, kv_cache=cache)
        cache.reset_row(0)  # row 0's request finished; a new one takes the slot
        new = torch.randint(0, 500, (1, 3), generator=g)
        model(new, kv_cache=cache.row(0))
        # rows now hold different lengths (3 and 6); decode both together
        step = torch.randint(0, 500, (2, 1), generator=g)
        out, _ = model(step, kv_cache=cache)
        alone0, _ = model(torch.cat([new, step[:1]], 1))
        alone1, _ = model(torch.cat([idx[1:], step[1:]], 1))
    assert (out[0, -1] - alone0[0, -1]).abs().max().item() < 1e-5
    assert (out[1, -1] - alone1[0, -1]).abs().max().item() < 1e-5


def test_overflow_and_too_long_inputs_are_clear_errors(model):
    cache = KVCache(CFG, 1, 8)
    with torch.no_grad():
        model(torch.zeros(1, 6, dtype=torch.long), kv_cache=cache)
        with pytest.raises(InputError, match="KV cache overflow"):
            model(torch.zeros(1, 3, dtype=torch.long), kv_cache=cache)
        with pytest.raises(InputError, match="longer than the model's context of 64"):
            model(torch.zeros(1, 65, dtype=torch.long))
        with pytest.raises(InputError, match="outside the vocabulary"):
            model(torch.tensor([[1, 2, 500]]))
        with pytest.raises(InputError, match="empty"):
            model(torch.zeros(1, 0, dtype=torch.long))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_update_writes_each_rows_own_column_in_every_dtype(dtype):
    """Rows at different lengths write their new k, v at their own column (the 16-bit caches move bits)."""
    cache = KVCache(CFG, 3, 16, dtype=dtype)
    g = torch.Generator().manual_seed(3)
    for b, n in enumerate((2, 5, 0)):  # give the rows different lengths
        if n:
            cache.rows(b, b + 1).plan(n)
    plan = cache.plan(1)
    nh, hs = CFG.n_head, CFG.head_dim
    k = torch.randn(3, nh, 1, hs, generator=g).to(dtype)
    v = torch.randn(3, nh, 1, hs, generator=g).to(dtype)
    before_k, before_v = cache.k[1].clone(), cache.v[1].clone()
    keys, values = cache.update(1, torch.stack([k, v]), plan)
    expect_k, expect_v = before_k.clone(), before_v.clone()
    for b, col in enumerate((2, 5, 0)):
        expect_k[b, :, col] = k[b, :, 0]
        expect_v[b, :, col] = v[b, :, 0]
    assert torch.equal(cache.k[1], expect_k) and torch.equal(cache.v[1], expect_v)
    assert torch.equal(cache.k[0], torch.zeros_like(cache.k[0]))  # other layers untouched
    assert keys.dtype == dtype and keys.shape == (3, nh, plan.n_keys, hs) and torch.equal(values, expect_v[:, :, : plan.n_keys])


def test_plan_takes_the_unmasked_path_only_where_the_mask_is_plain_causal(model):
    """Aligned, unpadded rows write one slice and attend unmasked; padding, uneven rows or a prompt that
    continues a cache fall back to the masked path, and a reset row is aligned again."""
    cache = KVCache(CFG, 2, 32)
    p = cache.plan(4)  # a prompt into empty rows: causal
    assert (p.col, p.causal) == (0, True)
    p = cache.plan(1)  # one query: it sees every key
    assert (p.col, p.causal) == (4, True) and p.attn_mask is None  # SDPA attends every key unmasked
    p = cache.plan(3)  # a prompt after cached tokens: same columns, but the mask is offset causal
    assert (p.col, p.causal) == (5, False)
    cache.rows(0, 1).plan(1)  # rows at different lengths
    p = cache.plan(1)
    assert (p.col, p.causal) == (None, False)
    cache.reset()
    p = cache.plan(3, torch.tensor([[0, 1, 1], [1, 1, 1]]))  # left padding in row 0
    assert (p.col, p.causal) == (None, False)
    assert (cache.row(1).plan(1).causal, cache.row(0).plan(1).causal) == (True, False)  # the padded row stays padded
    cache.reset_row(0)
    assert cache.row(0).plan(2).causal


def test_unmasked_fast_path_matches_the_masked_one(model):
    """The same decode through the unmasked path and through the masked one (a static cache attends all its
    columns under the mask) agrees, and the static plans never claim plain causal attention."""
    idx = torch.randint(0, 500, (1, 12), generator=torch.Generator().manual_seed(4))
    outs = []
    for static in (False, True):
        cache = KVCache(CFG, 1, 32, static=static)
        with torch.no_grad():
            model(idx[:, :8], kv_cache=cache)
            outs.append(torch.cat([model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(8, 12)], 1))
        assert cache.plan(1).causal is not static
    assert (outs[0] - outs[1]).abs().max().item() < 1e-5


def test_attention_recorded_over_the_cache_is_the_full_passes(model):
    """record_attention through cached steps (a causal prompt, then one query, which run without a mask)
    gives the rows of the full pass's attention maps."""
    from gpt2kit.model.gpt import record_attention

    idx = torch.randint(0, 500, (1, 7), generator=torch.Generator().manual_seed(3))
    cache = KVCache(CFG, 1, 16)
    with torch.no_grad(), record_attention(model) as full:
        model(idx)
    with torch.no_grad(), record_attention(model) as steps:
        model(idx[:, :5], kv_cache=cache)
        model(idx[:, 5:6], kv_cache=cache)
        model(idx[:, 6:], kv_cache=cache)
    for layer in range(CFG.n_layer):
        prompt, one, two = steps[layer]  # (1, nh, 5, 5), (1, nh, 1, 6), (1, nh, 1, 7)
        torch.testing.assert_close(prompt, full[layer][0][:, :, :5, :5])
        torch.testing.assert_close(one, full[layer][0][:, :, 5:6, :6])
        torch.testing.assert_close(two, full[layer][0][:, :, 6:, :])


@pytest.mark.parametrize("rows", [(0, 1), (1, 3), (0, 3)])
def test_a_decode_step_s_plan_on_the_cpu_equals_the_general_one(rows, monkeypatch):
    """plan(1) of aligned, unpadded CPU rows (`_one_column`, through numpy views of the counters) against the general
    path on a twin cache: the same plan, counters, valid columns and host lengths, step after step, up to the full
    row's error; padded rows take the general path."""
    fast, slow = (KVCache(CFG, batch_size=3, max_len=8) for _ in range(2))
    for cache in (fast, slow):  # the rows hold 3 prompt tokens; another row 5, padded
        cache.rows(*rows).plan(3)
        if rows != (0, 3):
            cache.row(2 if rows == (0, 1) else 0).plan(5, torch.tensor([[0, 1, 1, 1, 1]]))
    real, fast_plans = KVCache._one_column, []
    monkeypatch.setattr(KVCache, "_one_column", lambda self: fast_plans.append(real(self)) or fast_plans[-1])
    for step in range(5):
        a = fast.rows(*rows).plan(1)
        with monkeypatch.context() as m:
            m.setattr(KVCache, "_one_column", lambda self: None)  # the twin takes the general path
            b = slow.rows(*rows).plan(1)
        assert a is fast_plans[-1] is not None
        assert (a.col, a.n_keys, a.causal, a.cols, a.attn_mask) == (b.col, b.n_keys, b.causal, b.cols, b.attn_mask)
        assert (a.col, a.n_keys, a.causal) == (3 + step, 4 + step, True)
        assert torch.equal(a.position_ids, b.position_ids) and a.position_ids.shape == (rows[1] - rows[0], 1)
        for name in ("valid", "lengths", "pos"):
            assert torch.equal(getattr(fast, name), getattr(slow, name)), name
        assert fast._host.values == slow._host.values
    with pytest.raises(InputError, match="overflow"):  # the full rows: the general path's error
        fast.rows(*rows).plan(1)
    padded = KVCache(CFG, batch_size=1, max_len=8)
    padded.plan(2, torch.tensor([[0, 1]]))
    assert real(padded) is None  # padded rows: the general path
