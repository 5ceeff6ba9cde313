"""gemv.py's attention kernels: attend.c (one query per row, a decode step, and its own cache write) and causal.c
(many queries per row in bf16), against float64 attention, on every build the CPU can test (conftest's
`build`). Tests skip only on what the CPU's flags and the build's switch rule out, never on the build's own
result, so a failed build fails them."""

import pytest
import torch
import torch.nn.functional as F

from conftest import bf16_in_build as _bf16_in
from conftest import causal_buildable, causal_not_buildable, gemv_buildable
from gpt2kit.model import gemv

BF = torch.bfloat16
_buildable = gemv_buildable()
_causal = causal_buildable()


# ---- attend.c: one query per row ------------------------------------------------------------------------
def _attention_case(B, nh, K, hs, dtype, masked, seed=0):
    """q as a decode step has it (a view of c_attn's (B, 1, 3C) output), k and v as the first K of T_max columns
    of a (2, B, nh, T_max, hs) cache, and (masked) a (B, 1, 1, K) float32 bias hiding a different set of keys
    per row (never the last); plus the float64 SDPA of the same numbers."""
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(B, 1, 3, nh, hs, generator=g) * 2).to(dtype)  # scores of a few units: a peaked softmax
    q = qkv.permute(2, 0, 3, 1, 4)[0]  # (B, nh, 1, hs), strided
    cache = torch.randn(2, B, nh, K + 5, hs, generator=g).to(dtype)
    k, v = cache[0, :, :, :K], cache[1, :, :, :K]  # (B, nh, K, hs): rows of T_max, not K
    bias = None
    if masked:
        hide = torch.rand(B, 1, 1, K, generator=g) < 0.4
        hide[..., -1] = False
        bias = torch.zeros(B, 1, 1, K).masked_fill_(hide, -torch.inf)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=None if bias is None else bias.double())
    return q, k, v, bias, ref


@_buildable
@pytest.mark.parametrize("B, nh, K, hs", [(1, 12, 64, 64), (3, 4, 1, 16), (2, 3, 5, 24), (1, 2, 17, 80), (2, 1, 130, 8)])
@pytest.mark.parametrize("masked", [False, True], ids=["causal", "masked"])
def test_attend_f32_is_sdpa(build, B, nh, K, hs, masked):
    q, k, v, bias, ref = _attention_case(B, nh, K, hs, torch.float32, masked)
    y = gemv.attend(q, k, v, bias)
    assert y.shape == (B, nh, 1, hs) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), ref, atol=2e-6, rtol=1e-5)
    heads_side_by_side = y.transpose(1, 2).reshape(B, 1, nh * hs)  # what the model does next: a view, no copy
    assert heads_side_by_side.data_ptr() == y.data_ptr() and heads_side_by_side.is_contiguous()


@_buildable
@pytest.mark.parametrize("B, nh, K, hs", [(1, 12, 64, 64), (2, 3, 5, 24), (1, 2, 300, 80)])
@pytest.mark.parametrize("masked", [False, True], ids=["causal", "masked"])
def test_attend_bf16_is_sdpa_in_float32_rounded_once(build, B, nh, K, hs, masked):
    """bf16 inputs, float32 arithmetic, one rounding to nearest even at the end: within half a bf16 step of the
    float64 result (truncating instead, or rounding q, the scores or the weights on the way, is further off)."""
    q, k, v, bias, ref = _attention_case(B, nh, K, hs, BF, masked)
    y = gemv.attend(q, k, v, bias)
    assert y.dtype == BF
    half_step = torch.exp2(torch.floor(torch.log2(ref.abs())) - 8)  # half a bf16 step at |ref| (8 bits of precision)
    assert ((y.double() - ref).abs() <= half_step + 1e-6).all()  # + float32 arithmetic on values of ~1


@_buildable
def test_attend_converts_a_cache_in_another_dtype_and_refuses_what_it_cannot_run():
    q, k, v, _, ref = _attention_case(1, 4, 9, 32, torch.float32, False)
    torch.testing.assert_close(gemv.attend(q, k.to(BF), v.to(BF)).double(), F.scaled_dot_product_attention(
        q.double(), k.to(BF).double(), v.to(BF).double()), atol=2e-6, rtol=1e-5)  # fmt: skip
    with pytest.raises(ValueError, match="float32 and bf16"):
        gemv.attend(q.half(), k.half(), v.half())


# ---- causal.c: many queries per row, bf16 ----------------------------------------------------------------
def _causal_case(B, nh, T, K, hs, seed=0):
    """q as prefill has it (a view of c_attn's (B, T, 3C) output), k and v the first K columns of a (2, B, nh,
    K + 7, hs) cache (K = T: c_attn's own k and v views), bf16; plus float64 attention of the same numbers,
    query i seeing keys j <= K - T + i."""
    g = torch.Generator().manual_seed(seed)
    qkv = (torch.randn(B, T, 3, nh, hs, generator=g) * 2).to(BF)  # scores of a few units: a peaked softmax
    q = qkv.permute(2, 0, 3, 1, 4)[0]  # (B, nh, T, hs), strided
    if K == T:
        k, v = qkv.permute(2, 0, 3, 1, 4)[1:]
    else:
        cache = (torch.randn(2, B, nh, K + 7, hs, generator=g) * 2).to(BF)
        k, v = cache[0, :, :, :K], cache[1, :, :, :K]
    seen = torch.ones(T, K, dtype=torch.bool).tril(K - T)  # (T, K)
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=seen)
    return q, k, v, ref


# T and K ending mid-tile (32 queries) and mid-block (64 keys), heads of 16 to 128 values (1-4 vectors at once)
CAUSAL_SHAPES = [(1, 12, 100, 100, 64), (2, 3, 37, 50, 64), (1, 2, 5, 5, 32), (1, 2, 70, 130, 48), (1, 1, 1, 9, 16),
                 (1, 2, 65, 200, 128), (2, 1, 96, 96, 80), (1, 1, 33, 33, 16)]  # fmt: skip


@_causal
@pytest.mark.parametrize("B, nh, T, K, hs", CAUSAL_SHAPES)
def test_causal_is_attention_with_bf16_probabilities(B, nh, T, K, hs):
    """Float32 scores and sums; each probability rounded to bf16 before the weighted sum (as torch's bf16 SDPA
    rounds them), the output once: within 2^-9 of the largest value plus half a bf16 step of the float64
    result. Each query sees exactly its keys: an unseen key's value of 1000 would show."""
    q, k, v, ref = _causal_case(B, nh, T, K, hs)
    y = gemv.causal(q, k, v)
    assert y.shape == (B, nh, T, hs) and y.dtype == BF
    half_step = torch.exp2(torch.floor(torch.log2(ref.abs())) - 8)
    assert ((y.double() - ref).abs() <= half_step + 2**-9 * v.abs().max().double() + 1e-6).all()
    heads_side_by_side = y.transpose(1, 2).reshape(B, T, nh * hs)  # what the model does next: a view, no copy
    assert heads_side_by_side.data_ptr() == y.data_ptr() and heads_side_by_side.is_contiguous()
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] = q[:, :, -1] * 4  # the last key, seen by the last query alone: made to score high and weigh 1000
    v2[:, :, -1] = 1000.0
    y2 = gemv.causal(q, k2, v2)
    assert torch.equal(y2[:, :, :-1], y[:, :, :-1]) and (y2[:, :, -1] - y[:, :, -1]).abs().max() > 100


@_causal
def test_causal_converts_what_it_can_and_refuses_what_it_cannot():
    q, k, v, ref = _causal_case(1, 2, 20, 30, 32)
    half_step = torch.exp2(torch.floor(torch.log2(ref.abs())) - 8)
    y = gemv.causal(q, k.float(), v.float().contiguous())  # a float32 cache, strides unlike the keys'
    assert ((y.double() - ref).abs() <= half_step + 2**-9 * v.abs().max().double() + 1e-6).all()
    with pytest.raises(ValueError, match="runs bf16, not torch.float32"):
        gemv.causal(q.float(), k.float(), v.float())
    with pytest.raises(ValueError, match="at least as many keys as queries, got 30 keys for 31 queries"):
        gemv.causal(torch.zeros(1, 2, 31, 32, dtype=BF), k, v)
    assert gemv.causal_unavailable(64) is None
    assert gemv.causal_unavailable(40) == "causal.c takes heads of a multiple of 16 values, not 40"


def test_causal_without_avx512_bf16_says_why(fresh_build, monkeypatch):
    if causal_not_buildable():
        pytest.skip(f"causal.c: {causal_not_buildable()}")
    monkeypatch.setenv(gemv.CFLAGS, "-mno-avx512f")
    gemv._build.cache_clear()
    assert gemv.causal_unavailable(64) == "not in this build (GPT2KIT_GEMV_CFLAGS='-mno-avx512f')"


@_buildable
@pytest.mark.parametrize("dtype", [torch.float32, BF])
def test_attend_step_writes_the_new_column_then_attends_as_attend_does(dtype):
    """A decode step's keys and values (c_attn's (B, 1, 3C) output) written as column K - 1 of each row of one layer's
    cache, the rest of the cache untouched, and the output `attend` over the written cache, heads side by side."""
    if dtype == BF and not _bf16_in(""):
        pytest.skip("no AVX-512 BF16")
    g = torch.Generator().manual_seed(3)
    B, nh, hs, T_max, K = 2, 3, 32, 20, 9
    h = torch.randn(B, 1, 3 * nh * hs, generator=g).to(dtype)  # c_attn's output
    qkv = h.view(B, 1, 3, nh, hs).permute(2, 0, 3, 1, 4)  # (3, B, nh, 1, hs), as split_heads views it
    kv = torch.randn(2, B, nh, T_max, hs, generator=g).to(dtype)  # one layer's cache
    before = kv.clone()
    y = gemv.attend_step(h, kv, K)
    want = before.clone()
    want[:, :, :, K - 1] = qkv[1:, :, :, 0]
    assert torch.equal(kv, want)  # the new column, and nothing else
    assert y.shape == (B, 1, nh * hs)
    assert torch.equal(y, gemv.attend(qkv[0], kv[0, :, :, :K], kv[1, :, :, :K]).transpose(1, 2).reshape(B, 1, nh * hs))
    other = torch.zeros(2, B, nh, T_max, hs, dtype=torch.float64)  # a cache it cannot write: nothing happens
    assert gemv.attend_step(h, other, K) is None and not other.any()
    for bad in (h[:, :, : 2 * nh * hs], h.repeat(1, 2, 1)):  # not one step's (B, 1, 3C): nothing happens
        assert gemv.attend_step(bad, kv, K) is None
    assert torch.equal(kv, want)
