"""The int8 kernels (linear.py) and the int8 weights they share (int8.py), against the quantisation linear.py's
docstring specifies, written out here; a weight quantized once for all its int8 kinds within `int8.once()`."""

import pytest
import torch
import torch.nn.functional as F

from gpt2kit.model import gemv, int8
from gpt2kit.model import kernels as K
from gpt2kit.model import linear as L
from test_linear_kernels import CPU, RUNNABLE, _data


def _int8_reference(w, b, x, act_dtype):
    """w ~ scale[o] * q[o, i] with q = round(w / scale) in [-127, 127], scale = max |w[o]| / 127."""
    scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127)
    y = F.linear(x.to(act_dtype).float(), q, None) * scale.to(act_dtype).float()
    return y if b is None else y + b


def _int8_dynamic_reference(w, b, x):
    """int8 weights per output channel as above; x quantized per call to 7-bit unsigned (reduce_range) with
    an asymmetric zero point over [min(x, 0), max(x, 0)]."""
    scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127)
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    sx = (hi - lo) / 127
    zp = min(max(round(-lo / sx), 0), 127)
    xq = torch.clamp(torch.round(x / sx) + zp, 0, 127)
    return F.linear((xq - zp) * sx, q * scale[:, None], b)


@pytest.mark.parametrize("block_rows", [1, 7, 64, 1000])
def test_quantize_is_the_specified_rounding_in_any_block_of_rows(monkeypatch, block_rows):
    """q = round(w / scale) in [-127, 127], scale = max |w[o]| / 127, and qsum = sum_i q[o, i], however many rows a
    block rounds at a time (a last block of fewer rows, or one block of all)."""
    monkeypatch.setattr(int8, "BLOCK_BYTES", 4 * 48 * block_rows)
    w = torch.randn(50, 48, generator=torch.Generator().manual_seed(3)) * torch.linspace(0.01, 3.0, 50)[:, None]
    w[4] = 0.0  # a zero row: scale at its floor, q all 0
    q, scale, qsum = int8.quantize(w)
    ref_scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
    ref = torch.round(w / ref_scale[:, None]).clamp(-127, 127)
    assert q.dtype == torch.int8 and qsum.dtype == torch.int32 and q.shape == w.shape
    assert torch.equal(scale, ref_scale) and torch.equal(q, ref.to(torch.int8))
    assert torch.equal(qsum, ref.sum(1).to(torch.int32)) and q.abs().max() == 127


def test_quantize_runs_in_a_thread_that_never_entered_once():
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(int8.quantize(torch.ones(8, 8))))
    t.start()
    t.join()
    assert len(out) == 1 and torch.equal(out[0].q, torch.full((8, 8), 127, dtype=torch.int8)) and out[0].qsum.tolist() == [1016] * 8


# only a missing engine skips: an int8-dynamic kernel that fails its probe fails these tests
needs_x86_engine = pytest.mark.skipif(
    L._quantized_engine_name() is None, reason="this torch build has no x86 quantized engine (fbgemm/x86)"
)


@needs_x86_engine
@pytest.mark.parametrize("bias", [True, False])
def test_int8_dynamic_is_the_specified_quantisation(bias):
    w, b, x = _data()
    b = b + 3.0 if bias else None  # a bias the size of the outputs: dropping or doubling it shows
    y = L.make_kernel("int8-dynamic", w, b)(x)
    assert y.dtype == torch.float32 and y.shape == (5, 48)
    torch.testing.assert_close(y, _int8_dynamic_reference(w, b, x), atol=1e-4, rtol=1e-4)
    assert (y - F.linear(x, w, b)).abs().max() < 0.05 * F.linear(x, w, b).abs().max()  # and still close to fp32


@needs_x86_engine
def test_int8_dynamic_multiplies_the_int8_weights_of_every_int8_kind(monkeypatch):
    """Its weights are int8.quantize's, bit for bit (int8 and int8-gemv multiply those too); without torch's
    private constructor of a quantized tensor from them, they are quantized again to the same values."""
    w, b, _ = _data()
    q, scale, _ = int8.quantize(w)
    for make in (torch._make_per_channel_quantized_tensor, None):
        monkeypatch.setattr(torch, "_make_per_channel_quantized_tensor", make, raising=False)
        qw, _ = torch.ops.quantized.linear_unpack(L.make_kernel("int8-dynamic", w, b).packed)
        assert torch.equal(qw.int_repr(), q) and torch.equal(qw.q_per_channel_scales().float(), scale)


@needs_x86_engine
def test_int8_dynamic_takes_bf16_activations_and_answers_in_bf16():
    """A bf16 model with --weights int8: the activations go to the engine in float32 and come back in bf16."""
    w, b, x = _data()
    kernel = L.make_kernel("int8-dynamic", w, b + 3.0)
    xb = x.to(torch.bfloat16)
    y = kernel(xb)
    assert y.dtype == torch.bfloat16 and y.shape == (5, 48)
    # the float32 product (checked against the specification above) of the same activations, rounded to bf16
    assert torch.equal(y, kernel(xb.float()).to(torch.bfloat16))
    assert (y.float() - F.linear(xb.float(), w, b + 3.0)).abs().max() < 0.05 * F.linear(x, w, b + 3.0).abs().max()


@pytest.mark.parametrize("kind", ["int8", "int8-f32"])
@pytest.mark.parametrize("bias", [True, False])
def test_int8_is_the_specified_quantisation(kind, bias):
    if kind not in RUNNABLE:  # the op is missing, or gives other numbers on this CPU (its probe says so): never offered
        assert kind not in K._candidates("int8", 1, CPU, torch.float32, 64, None)[0]
        return
    w, b, x = _data()
    w[3] = 0.0  # an all-zero output channel: scale clamped, no division by zero
    b = b if bias else None
    k = L.make_kernel(kind, w, b)
    assert k.q.dtype == torch.int8 and k.q.shape == (48, 64) and k.q.is_contiguous()
    assert int(k.q.abs().max()) == 127 and k.q[3].eq(0).all()
    assert k.scale.dtype == k.act_dtype
    y = k(x)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()
    tol = 1e-4 if kind == "int8-f32" else 0.05
    torch.testing.assert_close(y, _int8_reference(w, b, x, k.act_dtype), atol=tol, rtol=tol)
    if bias:
        torch.testing.assert_close(y[:, 3], b[3].expand(5))


def test_the_int8_kinds_of_a_weight_share_one_quantization_within_once(monkeypatch):
    """Within int8.once() each weight is quantized once for every int8 kind made from it (the same memory, shape,
    strides and version); another weight, a slice of it, or it changed in place is quantized again; outside, every time."""
    w, b, x = _data(out=64)
    kinds = [k for k in ("int8", "int8-dynamic", "int8-gemv") if L.KERNELS[k].available(CPU, torch.float32)]
    for k in kinds:  # any probe a kind runs on its first use (its own random weights), before counting
        L.make_kernel(k, w, b)
    made = []
    real = int8._quantize
    monkeypatch.setattr(int8, "_quantize", lambda w: made.append(tuple(w.shape)) or real(w))
    with int8.once():
        ks = [L.make_kernel(k, w, b) for k in kinds]
        assert made == [(64, 64)]
        assert int8.quantize(w)[0] is int8.quantize(w)[0]
        int8.quantize(w[:16])
        other = w.clone()
        int8.quantize(other)
        with int8.once():  # nested: the outer one's
            int8.quantize(w)
        assert made == [(64, 64), (16, 64), (64, 64)]
        other.mul_(2.0)
        q2, s2, _ = int8.quantize(other)
        assert len(made) == 4 and torch.equal(s2, 2 * int8.quantize(w)[1])
    for k, kernel in zip(kinds, ks):  # and the kernels still multiply the weight's own int8 values
        assert (kernel(x) - F.linear(x, w, b)).abs().max() < 0.05 * F.linear(x, w, b).abs().max(), k
    del ks, kernel  # int8-gemv's packing, which offers w's quantization while it lives (the next test)
    int8.quantize(w)
    int8.quantize(w)
    assert len(made) == 6


@pytest.mark.skipif(gemv.unavailable(torch.int8) is not None, reason="gemv.c's int8 kernel is not available here")
def test_a_live_gemv_packing_offers_its_quantization_to_the_int8_kernels_made_after_once(monkeypatch):
    """An int8 prompt kernel packed on a copy's first prompt, after once(), takes q, scale and qsum from gemv.c's
    packing of the same weight (which may be mapped from the store) as long as it lives: unblocked into new memory,
    equal to rounding the weight, nothing rounded. A weight changed in place since, or whose packing is gone, is
    rounded again."""
    w = torch.randn(40, 200, generator=torch.Generator().manual_seed(3))  # blocks of rows and 64 lanes part-filled
    b = torch.randn(40, generator=torch.Generator().manual_seed(4))
    x = torch.randn(5, 200, generator=torch.Generator().manual_seed(5))
    want, plain = int8._quantize(w), L.make_kernel("int8-dynamic", w, b)
    packing = gemv.Packed(w, b, torch.int8)
    made = []
    real = int8._quantize
    monkeypatch.setattr(int8, "_quantize", lambda w: made.append(tuple(w.shape)) or real(w))
    got = int8.quantize(w.detach())  # a kernel's view of the weight: the same memory and version
    assert not made
    for mine, theirs in zip(got, want):
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs)
    assert got.q.is_contiguous() and got.q.untyped_storage().data_ptr() != packing.w.untyped_storage().data_ptr()
    assert torch.equal(L.make_kernel("int8-dynamic", w, b)(x), plain(x)) and not made
    int8.quantize(w.clone())  # another tensor, the same values: not the packing's weight
    assert made == [(40, 200)]
    w.mul_(1.0)  # a new version of the weight: the packing's values may no longer be its
    int8.quantize(w)
    assert made == [(40, 200)] * 2
    other = torch.randn(8, 64)
    held = gemv.Packed(other, None, torch.int8)
    int8.quantize(other)
    assert len(made) == 3  # packed in memory, so rounded once, and offered since
    del held
    int8.quantize(other)
    assert len(made) == 4


def test_once_keeps_at_most_kept_bytes_of_quantized_weights(monkeypatch):
    monkeypatch.setattr(int8, "KEPT_BYTES", 2 * 64 * 64)  # two (64, 64) int8 matrices
    ws = [torch.randn(64, 64) for _ in range(3)]
    with int8.once():
        q = [int8.quantize(w)[0] for w in ws]
        assert int8.quantize(ws[2])[0] is q[2] and int8.quantize(ws[1])[0] is q[1]
        assert int8.quantize(ws[0])[0] is not q[0]  # the least recently used, dropped
