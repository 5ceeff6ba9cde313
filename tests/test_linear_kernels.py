"""linear.py's kernels, unit by unit, against references written out here: F.linear in float32 and bf16
rounding of the weight (the int8 kernels: test_int8_kernels.py). Fast (no model forward passes, no timing); the
choice by measurement and the engine parity are in test_kernels.py."""

import pytest
import torch
import torch.nn.functional as F

from gpt2kit.model import linear as L
from gpt2kit.model.kernels import KernelLinear

CPU = torch.device("cpu")
RUNNABLE = [k for k, c in L.KERNELS.items() if c.available(CPU, torch.float32) and c.supports(64)]


def _data(out=48, inp=64, rows=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out, inp, generator=g), torch.randn(out, generator=g), torch.randn(rows, inp, generator=g)


def test_the_kernel_table():
    gemv = {f"{k}{s}" for k in ("gemv", "bf16-gemv", "int8-gemv") for s in ("", "-l2", "-hw")}
    assert set(L.KERNELS) == {
        "linear", "mkl", "onednn", "onednn-split", "float32", "bf16", "bf16-onednn", "int8", "int8-f32", "int8-dynamic", *gemv
    }  # fmt: skip
    assert {k for k, c in L.KERNELS.items() if c.exact} == {"linear", "mkl", "onednn", "onednn-split", "float32", "gemv", "gemv-l2", "gemv-hw"}
    assert {k for k, c in L.KERNELS.items() if c.max_rows is not None} == gemv
    assert {k: c.min_rows for k, c in L.KERNELS.items() if c.min_rows > 1} == {"float32": 9}
    assert {k for k, c in L.KERNELS.items() if c.gelu_only} == {"onednn-split"}  # offered for c_fc alone
    want = {k: 2 if k.endswith("-hw") else 1 if k.endswith("-l2") else 0 for k in gemv}  # gemv.PREFETCH: L1, L2 only, none
    assert {k: c.prefetch for k, c in L.KERNELS.items() if k in gemv} == want
    assert L.KERNELS["int8"].act_dtype == torch.bfloat16 and L.KERNELS["int8-f32"].act_dtype == torch.float32
    assert L.KERNELS["bf16-onednn"].compute_dtype == torch.bfloat16 and L.KERNELS["onednn"].compute_dtype is None


@pytest.mark.parametrize("kind", ["linear", "mkl", "onednn"])
@pytest.mark.parametrize("bias", [True, False])
def test_exact_kernels_equal_f_linear(kind, bias):
    if kind not in RUNNABLE:
        pytest.skip(f"{kind} does not run on this CPU")
    w, b, x = _data()
    b = b if bias else None
    y = L.make_kernel(kind, w, b)(x)
    assert y.dtype == torch.float32 and y.shape == (5, 48)
    torch.testing.assert_close(y, F.linear(x, w, b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_float32_runs_a_bf16_models_product_in_float32_and_rounds_once(bias):
    """bf16 weights and inputs are float32 values: the float32 product of them, rounded to bf16 once, is what a
    bf16 F.linear computes (float32 sums), to within one bf16 step where the sums' order differs."""
    w, b, x = (t.to(torch.bfloat16) for t in _data())
    b = (b + 0.5) if bias else None  # a bias far from zero: dropping it is seen
    k = L.make_kernel("float32", w, b)
    y = k(x)
    assert y.dtype == torch.bfloat16 and y.shape == (5, 48) and k.w.dtype == torch.float32
    exact = F.linear(x.double(), w.double(), None if b is None else b.double())  # (5, 48) float64
    assert torch.equal(y, F.linear(x.float(), w.float(), None if b is None else b.float()).to(torch.bfloat16))
    step = exact.abs().clamp(min=1e-3) * 2.0**-7  # one bf16 step at each value
    assert ((y.double() - exact).abs() <= step).all()
    assert (F.linear(x, w, b).double() - y.double()).abs().max() <= step.max()  # torch's bf16 product: the same numbers
    assert L._Float32.available(CPU, torch.bfloat16) and not L._Float32.available(CPU, torch.float32)
    assert L._Float32.why_unavailable(CPU, torch.float32) == "the model is float32 already"
    assert not L._Float32.available(torch.device("meta"), torch.bfloat16)


def test_linear_uses_the_weight_in_place_and_mkl_a_transposed_copy():
    w, b, _ = _data()
    assert L.make_kernel("linear", w, b).w is w
    mkl = L.make_kernel("mkl", w, b)
    assert mkl.wt.shape == (64, 48) and mkl.wt.is_contiguous() and mkl.b is b
    w, b, x = _data(out=2 * L.TRANSPOSE_ROWS + 44)  # transposed in three copies, the last a part one
    mkl = L.make_kernel("mkl", w, b)
    assert torch.equal(mkl.wt, w.t()) and mkl.wt.is_contiguous()
    torch.testing.assert_close(mkl(x), F.linear(x, w, b))


@pytest.mark.parametrize("bias", [True, False])
def test_bf16_rounds_the_weight_and_the_activations(bias):
    w, b, x = _data()
    b = b if bias else None
    y = L.make_kernel("bf16", w, b)(x)
    bf = torch.bfloat16
    ref = F.linear(x.to(bf).float(), w.to(bf).float(), None if b is None else b.to(bf).float())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, ref, atol=0.02, rtol=0.01)  # bf16 products, summed in bf16's precision
    assert (y - F.linear(x, w, b)).abs().max() > 1e-4  # and it is not the float32 product


@pytest.mark.parametrize("model_dtype", [torch.float32, torch.bfloat16])
def test_onednn_runs_in_the_models_dtype_and_bf16_onednn_in_bf16(model_dtype):
    w, b, x = _data()
    for kind, dt in (("onednn", model_dtype), ("bf16-onednn", torch.bfloat16)):
        if (
            kind not in RUNNABLE
            or not L.KERNELS[kind].available(CPU, model_dtype if kind == "onednn" else torch.float32)  # bf16: not on AVX2 alone
            or (kind == "bf16-onednn" and model_dtype == torch.bfloat16)
        ):
            continue
        k = L.make_kernel(kind, w.to(model_dtype), b.to(model_dtype))
        assert k.b.dtype == dt
        y = k(x.to(model_dtype))
        assert y.dtype == model_dtype and y.shape == (5, 48)
        ref = F.linear(x.to(dt).float(), w.to(dt).float(), b.to(dt).float())
        tol = 1e-5 if dt == torch.float32 else 0.03
        torch.testing.assert_close(y.float(), ref, atol=tol, rtol=tol)


def test_which_kernels_support_which_widths_and_dtypes():
    assert all(c.supports(40) for k, c in L.KERNELS.items() if k != "int8")
    assert not L.KERNELS["int8"].supports(40) and L.KERNELS["int8"].supports(64) and L.KERNELS["int8"].supports(16)
    assert L._Linear.available(torch.device("meta"), torch.float16)
    assert not L._Mkl.available(torch.device("meta"), torch.float32) and L._Mkl.available(CPU, torch.float32)
    assert not L._OneDnn.available(torch.device("meta"), torch.float32)
    assert L._Bf16.available(torch.device("meta"), torch.float32) and not L._Bf16.available(CPU, torch.bfloat16)
    assert not L._Bf16OneDnn.available(CPU, torch.bfloat16)
    assert not L._Gemv.available(torch.device("meta"), torch.float32) and not L._Bf16Gemv.available(CPU, torch.bfloat16)
    assert not L._Int8.available(torch.device("meta"), torch.float32)


def test_availability_follows_the_probe(monkeypatch):
    monkeypatch.setattr(L, "_onednn_works", lambda dt: dt == torch.float32)
    assert L._OneDnn.available(CPU, torch.float32) and not L._OneDnn.available(CPU, torch.bfloat16)
    assert not L._Bf16OneDnn.available(CPU, torch.float32)  # it asks about bf16, whatever the model's dtype
    monkeypatch.setattr(L, "_onednn_works", lambda dt: True)
    assert L._Bf16OneDnn.available(CPU, torch.float32) and not L._Bf16OneDnn.available(CPU, torch.bfloat16)
    monkeypatch.setattr(L, "_int8_works", lambda dt: dt == torch.float32)
    assert L._Int8F32.available(CPU, torch.float32) and not L._Int8.available(CPU, torch.float32)


def test_onednn_probe_checks_bf16_support(monkeypatch):
    L._onednn_works.cache_clear()
    try:
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False, raising=False)
        assert not L._onednn_works(torch.bfloat16)
        probed = []
        monkeypatch.setattr(L, "_probe", lambda kernel, dtype: probed.append((kernel, dtype)) or True)
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
        L._onednn_works.cache_clear()
        assert L._onednn_works(torch.bfloat16) and probed == [(L._OneDnn, torch.bfloat16)]
        assert L._onednn_works(torch.float32) and probed[-1] == (L._OneDnn, torch.float32)
        L._int8_works.cache_clear()
        assert L._int8_works(torch.float32) and probed[-1] == (L._Int8F32, torch.float32)
        assert L._int8_works(torch.bfloat16) and probed[-1] == (L._Int8, torch.float32)
        monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
        L._onednn_works.cache_clear()
        assert not L._onednn_works(torch.float32)
    finally:
        L._onednn_works.cache_clear()
        L._int8_works.cache_clear()


class _Off(L._Linear):
    """F.linear plus a relative error of `err` (of the output's scale)."""

    err = 0.0

    def __call__(self, x):
        y = F.linear(x, self.w, self.b)
        return y + self.err * (1 + y.abs().max())


@pytest.mark.parametrize(
    ("err", "exact", "dtype", "ok"),
    [(0.0, True, torch.float32, True), (5e-5, True, torch.float32, True), (5e-4, True, torch.float32, False),
     (5e-4, False, torch.float32, True), (0.04, False, torch.float32, True), (0.06, False, torch.float32, False),
     (5e-4, True, torch.bfloat16, True), (float("nan"), False, torch.float32, False)],
)  # fmt: skip
def test_probe_tolerance(err, exact, dtype, ok):
    kernel = type("K", (_Off,), {"err": err, "exact": exact})
    assert L._probe(kernel, dtype) is ok


@pytest.mark.parametrize(("exact", "margin", "ok"), [(True, 0.5, False), (False, 0.5, False), (True, -0.5, True)])
def test_probe_tolerance_is_relative_to_one_plus_the_largest_output(exact, margin, ok):
    """An error of tol * (1 + margin + max |y|): refused just above the bound, accepted just below it."""

    class Near(L._Linear):
        def __call__(self, x):
            y = F.linear(x, self.w, self.b)
            tol = 1e-4 if exact else 0.05
            return y + tol * (1 + margin + y.abs().max())

    Near.exact = exact
    assert L._probe(Near, torch.float32) is ok


@pytest.mark.parametrize("exc", [RuntimeError, TypeError, AttributeError, NotImplementedError])
def test_probe_says_no_when_the_kernel_fails(exc):
    class Fails(L._Linear):
        def __call__(self, x):
            raise exc("no kernel")

    assert L._probe(Fails, torch.float32) is False


def test_probe_runs_a_real_product(monkeypatch):
    seen = []

    class Spy(L._Linear):
        def __call__(self, x):
            seen.append((tuple(self.w.shape), tuple(self.b.shape), tuple(x.shape), x.dtype))
            return super().__call__(x)

    assert L._probe(Spy, torch.float32)
    assert seen == [((40, 80), (40,), (3, 80), torch.float32)]
    zero = type("Zero", (L._Linear,), {"__call__": lambda self, x: torch.zeros(3, 40)})
    assert not L._probe(zero, torch.float32)
    short = type("Short", (L._Linear,), {"__call__": lambda self, x: super(type(self), self).__call__(x)[:, :32]})
    assert not L._probe(short, torch.float32)  # a wrong shape is a no, not a crash


@pytest.mark.parametrize("kind", RUNNABLE)
def test_every_kernel_takes_leading_dimensions_as_they_are(kind):
    """KernelLinear hands (..., in) inputs to its kernels unflattened: each answers (..., out), row for row
    what it answers for the same rows as a matrix (a kernel that mixed up rows or dropped the bias on the
    3-D path would differ here)."""
    w, b, x = _data(rows=6)
    kernel = L.make_kernel(kind, w, b + 3.0)
    y = kernel(x.view(2, 3, 64))
    assert y.shape == (2, 3, 48)
    torch.testing.assert_close(y.view(6, 48), kernel(x), atol=1e-5, rtol=1e-5)


def test_kernel_linear_routes_by_rows():
    lin = torch.nn.Linear(64, 48)
    with torch.no_grad():
        lin.bias.normal_()
    kl = KernelLinear(lin, "mkl", "linear", rows=4)
    assert isinstance(kl.small, L._Mkl) and kl.large is None  # the prompts' kind: packed on its first call
    assert kl.one is kl.small and kl.one_kind == "mkl"  # no kind of its own for one row: the decode kind's
    x = torch.randn(5, 64)
    torch.testing.assert_close(kl(x), lin(x), atol=1e-5, rtol=1e-5)
    assert isinstance(kl.large, L._Linear) and type(kl.large) is not L._Mkl
    calls = []
    for name in ("one", "small", "large"):
        k = getattr(kl, name)
        setattr(kl, name, lambda x, k=k, name=name: calls.append((name, x.numel() // x.shape[-1])) or k(x))
    for shape in [(4, 64), (5, 64), (1, 4, 64), (2, 3, 64), (1, 1, 64), (2, 64)]:
        x = torch.randn(shape)
        y = kl(x)
        assert y.shape == (*shape[:-1], 48)
        torch.testing.assert_close(y, lin(x), atol=1e-5, rtol=1e-5)
    assert calls == [("small", 4), ("large", 5), ("small", 4), ("large", 6), ("one", 1), ("small", 2)]
    assert kl.kinds == ("mkl", "linear") and (kl.in_features, kl.out_features, kl.rows) == (64, 48, 4)
    assert kl.extra_repr() == "in=64, out=48, one=mkl, small=mkl (<= 4 rows), large=linear"
    kl = KernelLinear(lin, "mkl", "mkl", rows=4, one="linear")  # one row's own kind, packed for it
    assert isinstance(kl.one, L._Linear) and isinstance(kl.small, L._Mkl) and kl.large is kl.small
    x = torch.randn(1, 64)
    torch.testing.assert_close(kl(x), lin(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(kl.gelu(x), torch.nn.functional.gelu(lin(x), approximate="tanh"), atol=1e-5, rtol=1e-5)
    kl = KernelLinear(lin, "mkl", "linear", rows=4, one="linear")
    assert kl.one is kl.large  # the prompts' kind: no third copy


def test_kernel_linear_packs_a_shared_kind_once_and_copes_without_bias():
    lin = torch.nn.Linear(64, 48, bias=False)
    kl = KernelLinear(lin, "mkl", "mkl", rows=2)
    assert kl.small is kl.large and kl.small.b is None
    x = torch.randn(3, 64)
    torch.testing.assert_close(kl(x), lin(x), atol=1e-5, rtol=1e-5)
    assert not kl.small.wt.requires_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["linear", "mkl", "onednn", "onednn-split", "gemv"])
def test_each_kernels_gelu_is_gpt2s_gelu_of_its_product(kind, dtype, monkeypatch):
    """c_fc's work (MLP.forward calls `gelu`): oneDNN fuses it as a post-op, where that gives F.gelu's numbers;
    the others apply F.gelu to their product."""
    if kind not in RUNNABLE or not L.KERNELS[kind].available(CPU, dtype):
        pytest.skip(f"{kind} does not run here in {dtype}")
    w, b, x = (t.to(dtype) for t in _data())
    k = L.make_kernel(kind, w, b)
    ref = F.gelu(F.linear(x.float(), w.float(), b.float()), approximate="tanh")
    tol = 1e-5 if dtype == torch.float32 else 0.03
    torch.testing.assert_close(k.gelu(x).float(), ref, atol=tol, rtol=tol)
    if kind == "onednn" and L._onednn_gelu_works(dtype):  # really fused: F.gelu is never called
        monkeypatch.setattr(L.F, "gelu", lambda *a, **kw: pytest.fail("F.gelu called"))
        torch.testing.assert_close(k.gelu(x).float(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("kind", ["linear", "mkl", "onednn-split"])
def test_an_unfused_gelu_runs_in_place_on_the_product_and_keeps_the_gradient(kind, monkeypatch):
    """No second (rows, 4C) tensor per call; autograd still gets F.gelu's gradient."""
    w, b, x = _data()
    ref = F.gelu(F.linear(x, w, b), approximate="tanh")
    with monkeypatch.context() as m:
        m.setattr(L.F, "gelu", lambda *a, **kw: pytest.fail("F.gelu called: a second tensor"))
        torch.testing.assert_close(L.make_kernel(kind, w, b).gelu(x), ref, atol=1e-5, rtol=1e-5)
    wg = w.clone().requires_grad_()
    L.make_kernel("linear", wg, b).gelu(x).square().sum().backward()
    w_ref = w.clone().requires_grad_()
    F.gelu(F.linear(x, w_ref, b), approximate="tanh").square().sum().backward()
    torch.testing.assert_close(wg.grad, w_ref.grad, atol=1e-5, rtol=1e-5)


def test_a_gelu_post_op_with_other_numbers_is_never_fused(monkeypatch):
    if not L._onednn_works(torch.float32):
        pytest.skip("oneDNN's linear does not run here")
    L._onednn_gelu_works.cache_clear()
    monkeypatch.setattr(L, "GELU_POST", ("relu", [], ""))  # a post-op that is not GPT-2's GELU
    try:
        assert not L._onednn_gelu_works(torch.float32)
        w, b, x = _data()
        ref = F.gelu(F.linear(x, w, b), approximate="tanh")
        torch.testing.assert_close(L.make_kernel("onednn", w, b).gelu(x), ref, atol=1e-5, rtol=1e-5)  # unfused
    finally:
        L._onednn_gelu_works.cache_clear()


@pytest.mark.skipif(not L.KERNELS["onednn"].available(CPU, torch.float32), reason="oneDNN's linear ops do not run in this torch")
def test_onednn_split_runs_the_gelu_apart_from_the_product(monkeypatch):
    """onednn-split is oneDNN's product without the GELU post-op (torch's GELU after it); onednn fuses it where it can."""
    w, b, x = _data()
    fused = L._onednn_gelu_works(torch.float32)  # its probe runs the post-op once
    posts, real = [], L._OneDnn.__call__
    monkeypatch.setattr(L._OneDnn, "__call__", lambda self, x, post=("none", [], ""): posts.append(post[0]) or real(self, x, post))
    ref = F.gelu(F.linear(x, w, b), approximate="tanh")
    torch.testing.assert_close(L.make_kernel("onednn-split", w, b).gelu(x), ref, atol=1e-5, rtol=1e-5)
    assert posts == ["none"]
    posts.clear()
    torch.testing.assert_close(L.make_kernel("onednn", w, b).gelu(x), ref, atol=1e-5, rtol=1e-5)
    assert posts == (["gelu"] if fused else ["none"])
