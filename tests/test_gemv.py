"""gemv.c and its build (model/gemv.py): products against F.linear on shapes that end mid-block, the packed
layout, and every way the kernel can be unavailable (each with its one-line reason). Where the CPU has
AVX-512, the AVX2 kernels are built too (GPT2KIT_GEMV_CFLAGS="-mno-avx512f", and without AVX-VNNI) and get
the same float32 and int8 tests. Tests that must run wherever gemv.c can be built skip only on
`gemv.not_buildable()` (the switch, the platform, the CPU's flags, the source, the compiler: checked without
building), never on the build's own result, so a failed build fails them."""

import pytest
import torch
import torch.nn.functional as F

from conftest import bf16_in_build as _bf16_in
from conftest import gemv_buildable, huge_kib, needs_gemv
from gpt2kit import hugepages
from gpt2kit.model import gemv, packed_store
from gpt2kit.model import linear as L

CPU = torch.device("cpu")
BF = torch.bfloat16
_buildable = gemv_buildable()


def _data(out, inp, lead, seed=0):
    g = torch.Generator().manual_seed(seed)
    w, b, x = torch.randn(out, inp, generator=g), torch.randn(out, generator=g) + 2.0, torch.randn(*lead, inp, generator=g)
    return w, b, x


# (out, in): whole blocks, outputs ending mid-block (16 rows a block), inputs ending mid-chunk (16 floats or 32 bf16)
SHAPES = [(64, 64), (50, 40), (7, 100), (33, 16), (96, 200)]


@needs_gemv(torch.float32)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lead", [(1,), (3,), (2, 4), ()])
@pytest.mark.parametrize("bias", [True, False])
def test_f32_equals_f_linear(build, shape, lead, bias):
    assert gemv.unavailable(torch.float32) is None, build
    w, b, x = _data(*shape, lead)
    b = b if bias else None
    y = L.make_kernel("gemv", w, b)(x)
    assert y.shape == (*lead, shape[0]) and y.dtype == torch.float32
    torch.testing.assert_close(y, F.linear(x, w, b), atol=1e-5, rtol=1e-5)


@needs_gemv(BF)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("lead", [(1,), (5,)])
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_is_the_float32_sum_of_bf16_products_rounded_once(shape, lead, bias):
    w, b, x = (t.to(BF) for t in _data(*shape, lead))
    b = b if bias else None
    y = L.make_kernel("gemv", w, b)(x)
    assert y.dtype == BF and y.shape == (*lead, shape[0])
    ref = F.linear(x.double(), w.double(), None if b is None else b.double())  # exact products, summed in float64
    # summed in float32 then rounded to bf16 once: within one bf16 step (2^-7 relative) of the exact sum
    assert ((y.double() - ref).abs() <= ref.abs() * 2**-7 + 1e-3).all()


@needs_gemv(BF)
@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_weights_over_a_float32_model_answer_in_float32(shape):
    w, b, x = _data(*shape, (3,))
    y = L.make_kernel("bf16-gemv", w, b)(x)
    assert y.dtype == torch.float32
    ref = F.linear(x.to(BF).float(), w.to(BF).float(), b)  # bf16 weights and activations, float32 bias and sum
    torch.testing.assert_close(y, ref, atol=1e-4, rtol=1e-5)
    assert (y - F.linear(x, w, b)).abs().max() > 1e-4  # and it is not the float32 product


@_buildable
@pytest.mark.parametrize(
    "kind, dtype", [("gemv", torch.float32), ("gemv", BF), ("bf16-gemv", torch.float32), ("int8-gemv", torch.float32)]
)
def test_where_it_prefetches_changes_no_number(build, kind, dtype):
    """`gemv-l2` and `gemv-hw` and their bf16 and int8 forms differ from the plain kernels only in where they prefetch
    (into L2 only, nowhere): the same numbers, bit for bit, on shapes that end mid-block and mid-chunk."""
    if (L.KERNELS[kind].compute_dtype or dtype) == BF and not _bf16_in(build):
        pytest.skip("no bf16 kernel in this build (the CPU has no AVX-512 BF16, or the build turns AVX-512 off)")
    for shape in SHAPES:
        w, b, x = (t.to(dtype) for t in _data(*shape, (3,)))
        plain, l2, hw = (L.make_kernel(f"{kind}{s}", w, b) for s in ("", "-l2", "-hw"))
        for other in (l2, hw):
            assert torch.equal(plain(x), other(x)) and torch.equal(plain(x[:1]), other(x[:1]))
    # made like the plain one (as the measurement does), they call its packed weight, each with its own prefetch
    l2, hw = (L.make_kernel(f"{kind}{s}", w, b, like=plain) for s in ("-l2", "-hw"))
    assert l2.packed is plain.packed is hw.packed
    fn, seen = plain.packed._fn, []
    plain.packed._fn = lambda *a: seen.append(a[-2]) or fn(*a)  # (..., threads, prefetch, gelu)
    assert torch.equal(plain(x), l2(x)) and torch.equal(plain(x), hw(x))
    assert seen == [0, 1, 0, 2]
    with pytest.raises(ValueError, match="prefetch must be one of"):
        plain.packed(x.to(plain.packed.in_dtype), prefetch=3)


@needs_gemv(torch.float32)
def test_the_packed_layout_is_blocks_of_rows_chunk_by_chunk_zero_padded(build):
    w, b, _ = _data(20, 40, ())
    p = gemv.Packed(w, b, torch.float32)
    rows = 8 if "-mno-avx512f" in build or "avx512f" not in gemv.cpu_flags() else 16
    blocks = -(-20 // rows)
    assert p.w.shape == (blocks, 3, rows, 16) and p.w.is_contiguous()  # (N'/rows blocks, K'/16 chunks, rows, 16 lanes)
    assert torch.equal(p.w[0, 1, 5], w[5, 16:32]) and torch.equal(p.w[19 // rows, 2, 19 % rows, :8], w[19, 32:40])
    assert p.w[-1, :, 20 % rows :].eq(0).all() and p.w[:, 2, :, 8:].eq(0).all()  # the padding is zeros
    assert p.b.dtype == torch.float32 and torch.equal(p.b, b)


@pytest.mark.skipif(hugepages.thp_mode() not in ("madvise", "always"), reason="needs Linux transparent huge pages")
@pytest.mark.parametrize("kind", ["gemv", "mkl"])
def test_packed_weights_of_a_huge_page_or_more_are_written_into_huge_pages_where_asked(kind, huge_asks, monkeypatch):
    """Inside hugepages.packing(True) (an engine that collapses its hot memory) the packed weight sits in huge pages;
    elsewhere in torch's own memory. (gemv.c's packed weights otherwise go to the packed-weight store: off here.)"""
    if not L.KERNELS[kind].available(CPU, torch.float32):
        pytest.skip(f"{kind} does not run here")
    monkeypatch.setenv(packed_store.SWITCH, "0")
    w = torch.randn(1024, 1024)
    with hugepages.packing(True):
        kernel = L.make_kernel(kind, w, None)  # 4 MiB
    packed = kernel.packed.w if kind == "gemv" else kernel.wt
    lo = packed.data_ptr()
    assert lo % hugepages.HUGE_PAGE == 0 and huge_kib(lo, lo + packed.nbytes) >= 2048 and huge_asks == [4 << 20]
    torch.testing.assert_close(kernel(w[:3]), w[:3] @ w.t(), atol=1e-4, rtol=1e-5)
    plain = L.make_kernel(kind, w, None)
    assert huge_asks == [4 << 20]  # not asked for
    torch.testing.assert_close(plain(w[:3]), w[:3] @ w.t(), atol=1e-4, rtol=1e-5)


def test_switched_off_it_is_never_offered(fresh_build, monkeypatch):
    monkeypatch.setenv(gemv.SWITCH, "0")
    assert gemv.unavailable(torch.float32) == "turned off (GPT2KIT_GEMV=0)"
    assert not L._Gemv.available(CPU, torch.float32) and not L._Bf16Gemv.available(CPU, torch.float32)
    assert L._Gemv.why_unavailable(CPU, torch.float32) == "turned off (GPT2KIT_GEMV=0)"
    assert not list(fresh_build.iterdir())  # nothing was built


def test_an_avx2_build_on_an_avx512_cpu_has_every_kind_in_its_avx2_form(fresh_build, monkeypatch):
    if gemv.not_buildable() or not {"avx512f", "avx2", "fma"} <= gemv.cpu_flags():
        pytest.skip(gemv.not_buildable() or "needs an AVX-512 CPU (to build its AVX2 kernels)")
    monkeypatch.setenv(gemv.CFLAGS, "-mno-avx512f")
    assert all(gemv.unavailable(dt) is None for dt in (torch.float32, BF, torch.int8))
    assert "float32 (AVX2), bf16 (AVX2), int8 (AVX2)" in gemv.status()


def test_without_avx2_a_source_or_a_compiler_or_with_a_failing_build_it_says_why(fresh_build, monkeypatch):
    def why(**patch):
        gemv._build.cache_clear()
        for name, value in patch.items():
            monkeypatch.setattr(gemv, name, value)
        return gemv.unavailable(torch.float32)

    monkeypatch.setattr(gemv.machine, "cpu_info", lambda: {"flags": "fpu sse2 sse4_2 avx avx2"})  # AVX2 without FMA
    assert why() == "the CPU has neither AVX2 with FMA nor AVX-512"
    monkeypatch.setattr(gemv.machine, "cpu_info", lambda: {"flags": "fpu avx2 fma"})
    assert why(SOURCE=gemv.SOURCE.with_name("missing.c")) == "missing.c is missing from the installed package"
    monkeypatch.setattr(gemv, "SOURCE", gemv.SOURCE.with_name("gemv.c"))
    assert why(ATTEND_SOURCE=gemv.SOURCE.with_name("gone.c")) == "gone.c is missing from the installed package"
    monkeypatch.setattr(gemv, "ATTEND_SOURCE", gemv.SOURCE.with_name("attend.c"))
    assert why(CAUSAL_SOURCE=gemv.SOURCE.with_name("lost.c")) == "lost.c is missing from the installed package"
    monkeypatch.setattr(gemv, "CAUSAL_SOURCE", gemv.SOURCE.with_name("causal.c"))
    assert why(STEP_SOURCE=gemv.SOURCE.with_name("away.c")) == "away.c is missing from the installed package"
    monkeypatch.setattr(gemv, "STEP_SOURCE", gemv.SOURCE.with_name("step.c"))
    headers = gemv.HEADERS
    assert why(HEADERS=(headers[0], gemv.SOURCE.with_name("gone.h"))) == "gone.h is missing from the installed package"
    monkeypatch.setattr(gemv, "HEADERS", headers)
    monkeypatch.setenv("CC", "no-such-compiler-here")
    assert why() == "no C compiler ('no-such-compiler-here' not found; set CC)"
    monkeypatch.setenv("CC", "false")  # a compiler that fails
    assert why().startswith("the build failed")
    assert not list((fresh_build / "gemv").iterdir())  # no half-written library left behind


def test_a_source_that_does_not_compile_cleanly_is_refused_with_the_compiler_error(fresh_build, monkeypatch, tmp_path):
    """An intrinsic the compiler does not know would otherwise build (a warning) into a library that cannot load."""
    if why := gemv.not_buildable():
        pytest.skip(why)
    built = set((fresh_build / "gemv").glob("*.so"))
    bad = tmp_path / "gemv.c"
    bad.write_text(gemv.SOURCE.read_text().replace("_mm_prefetch(", "_mm_no_such_intrinsic(", 1))
    for header in gemv.HEADERS:  # what it includes, beside it
        (tmp_path / header.name).write_bytes(header.read_bytes())
    monkeypatch.setattr(gemv, "SOURCE", bad)
    gemv._build.cache_clear()
    why = gemv.unavailable(torch.float32)
    assert why.startswith("the build failed: ") and "_mm_no_such_intrinsic" in why and "error:" in why, why
    assert set((fresh_build / "gemv").glob("*.so")) == built  # nothing built for the bad source


@needs_gemv(torch.float32)
def test_the_library_is_built_once_and_then_loaded_from_the_cache(fresh_build, monkeypatch):
    assert gemv.unavailable(torch.float32) is None
    built = list((fresh_build / "gemv").glob("gemv-*.so"))
    assert len(built) == 1
    gemv._build.cache_clear()

    def no_compiler(*a, **k):
        raise AssertionError("compiled again")

    monkeypatch.setattr(gemv.subprocess, "Popen", no_compiler)
    assert gemv.unavailable(torch.float32) is None  # loaded from the cache
    w, b, x = _data(24, 48, (2,))
    torch.testing.assert_close(L.make_kernel("gemv", w, b)(x), F.linear(x, w, b), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, BF])
def test_nothing_past_the_end_of_x_is_read(build, dtype):
    """An input that ends mid-chunk is followed in memory by NaNs: the kernel must mask its last load (weights
    padded with zeros do not help: NaN * 0 is NaN)."""
    if gemv.unavailable(dtype):
        pytest.skip(f"gemv.c for {dtype}: {gemv.unavailable(dtype)}")
    w, b, x = (t.to(dtype) for t in _data(40, 72, (1,)))  # 72 = 4.5 bf16 chunks, 4.5 float32 chunks
    buf = torch.full((72 + 64,), float("nan"), dtype=dtype)
    buf[:72] = x[0]
    y = L.make_kernel("gemv", w, b)(buf[:72])  # contiguous, NaNs right after it
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y.float(), F.linear(x[0].float(), w.float(), b.float()), atol=0.05, rtol=0.02)


def _int8_reference(w, b, x):
    """The scheme gemv.c's int8 product computes: w ~ scale[n] q[n], q = round(w / scale) in [-127, 127], scale =
    max |w[n]| / 127; x ~ s[m] p[m], p = round(x / s), s = max |x[m]| / 127, per row; float32 sums."""
    scale = (w.abs().amax(1) / 127).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp(-127, 127)
    s = x.abs().amax(-1, keepdim=True) / 127
    p = torch.round(x / torch.where(s > 0, s, 1.0)).clamp(-127, 127)
    return F.linear(p.double() * s.double(), q.double() * scale.double()[:, None], None if b is None else b.double())


@needs_gemv(torch.int8)
@pytest.mark.parametrize("shape", SHAPES + [(20, 130)])
@pytest.mark.parametrize("bias", [True, False])
def test_int8_is_the_specified_quantisation(build, shape, bias):
    assert gemv.unavailable(torch.int8) is None, build
    w, b, x = _data(*shape, (4,))
    w[3] = 0.0  # an all-zero output channel
    x[1] = 0.0  # an all-zero row: its scale is 0, its outputs the bias alone
    b = b if bias else None
    y = L.make_kernel("int8-gemv", w, b)(x)
    assert y.dtype == torch.float32 and y.shape == (4, shape[0]) and torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), _int8_reference(w, b, x), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(y[1], torch.zeros(shape[0]) if b is None else b)
    ref = F.linear(x, w, b)
    assert (y - ref).abs().max() < 0.03 * ref.abs().max()  # and still close to float32


@needs_gemv(torch.int8)
def test_int8_takes_bf16_activations_and_answers_in_bf16():
    w, b, x = _data(50, 72, (2,))
    kernel = L.make_kernel("int8-gemv", w, b)
    y = kernel(x.to(BF))
    assert y.dtype == BF and torch.equal(y, kernel(x.to(BF).float()).to(BF))


@needs_gemv(torch.int8)
def test_int8_reads_nothing_past_the_end_of_x(build):
    w, b, x = _data(40, 72, (1,))
    buf = torch.full((72 + 64,), float("nan"))
    buf[:72] = x[0]
    y = L.make_kernel("int8-gemv", w, b)(buf[:72])
    torch.testing.assert_close(y.double(), _int8_reference(w, b, x[0]), atol=1e-4, rtol=1e-5)


def test_it_builds_wherever_it_can():
    """A compile error must fail here, not leave gemv.c out and its tests skipped: where the CPU has AVX2 with
    FMA or AVX-512 and there is a compiler, float32, bf16 and int8 weights are supported (bf16 in its AVX-512
    form where the CPU has AVX-512 BF16)."""
    if why := gemv.not_buildable():
        pytest.skip(why)
    flags = gemv.cpu_flags()
    avx512 = {"avx512f", "avx512bw", "avx512vl"} <= flags
    assert gemv.unavailable(torch.float32) is None and gemv.unavailable(torch.int8) is None
    assert gemv.unavailable(BF) is None
    assert ("bf16 (AVX-512)" in gemv.status()) == (avx512 and "avx512_bf16" in flags)
    assert ("AVX-512" in gemv.status()) == avx512


@_buildable
@pytest.mark.parametrize("kind", ["f32", "bf16", "s8"])
def test_gelu_is_applied_to_each_output_as_it_is_stored(build, kind):
    """c_fc's work in one pass: GPT-2's GELU (tanh form) of product + bias, in float32 before a bf16 output is
    rounded; outputs ending mid-block, values from -12 to 12 (both tails, where the tanh form cancels)."""
    if kind == "bf16" and not _bf16_in(build):
        pytest.skip("no bf16 kernel in this build")
    dtype = {"f32": torch.float32, "bf16": BF, "s8": torch.int8}[kind]
    w, b, x = _data(50, 40, (3,))
    b = b * 3  # outputs of a few units, and a far tail
    b[:2] = torch.tensor([-40.0, 40.0])
    if kind == "s8":
        p = gemv.Packed(w, b, torch.int8)
    else:
        p = gemv.Packed(w, b, dtype, out_dtype=dtype)
    plain = p(x.to(p.in_dtype)).double() if kind != "bf16" else gemv.Packed(w, b, BF, out_dtype=torch.float32)(x.to(BF)).double()
    y = p(x.to(p.in_dtype), gelu=True).double()  # (3, 50)
    ref = F.gelu(plain, approximate="tanh")  # of the same float32 sums
    if kind == "bf16":  # rounded once, after the GELU
        half_step = torch.exp2(torch.floor(torch.log2(ref.abs().clamp(min=1e-30))) - 8)
        assert ((y - ref).abs() <= half_step + 1e-6).all()
    else:
        torch.testing.assert_close(y, ref, atol=2e-6, rtol=2e-6)
    tail = plain[:, 1].to(BF).double() if kind == "bf16" else plain[:, 1]
    assert (y[:, 0].abs() < 1e-30).all() and torch.equal(y[:, 1], tail)  # the tails: 0 and x itself


@_buildable
def test_gelu_in_place_equals_torchs(build, monkeypatch):
    """gemv.gelu_ (step.c's gk_gelu, the GELU after a prompt product that does not fuse it): GPT-2's GELU (tanh form)
    of every element in place, float32 to its precision against a float64 reference and torch's own, bf16 rounded
    once as torch's; lengths not a multiple of a vector or of the threads; both tails; a NaN stays NaN. A tensor that
    is not contiguous, or that autograd tracks, goes to torch's."""
    so, calls = gemv._build()[0], []
    real_c = so.gk_gelu
    monkeypatch.setattr(so, "gk_gelu", lambda *a: calls.append(a[1]) or real_c(*a))
    g = torch.Generator().manual_seed(0)
    for n in (1, 7, 3 * 1024 + 5):
        x = torch.randn(n, generator=g) * 4
        x[0] = -40.0 if n > 1 else x[0]
        ref = F.gelu(x.double(), approximate="tanh")
        y = x.clone()
        assert gemv.gelu_(y) is y
        torch.testing.assert_close(y.double(), ref, atol=2e-6, rtol=2e-6)
        torch.testing.assert_close(y, F.gelu(x, approximate="tanh"), atol=2e-6, rtol=2e-6)
        xb = x.to(BF)
        assert (gemv.gelu_(xb.clone()).float() - F.gelu(xb, approximate="tanh").float()).abs().max() <= 2 ** -7 * xb.float().abs().max()
    assert calls == [n for n in (1, 7, 3 * 1024 + 5) for _ in range(2)]  # float32 and bf16, all in C
    nan = gemv.gelu_(torch.tensor([float("nan"), 1.0]))
    assert nan[0].isnan() and nan[1].item() == pytest.approx(F.gelu(torch.tensor(1.0), approximate="tanh").item(), abs=1e-6)
    x = torch.randn(6, 8, generator=g)
    strided = x.clone().t()  # not contiguous: torch's, in place all the same
    want = F.gelu(strided, approximate="tanh")
    calls.clear()
    assert gemv.gelu_(strided) is strided and torch.allclose(strided, want) and not calls
    tracked = x.clone().requires_grad_() * 1.0  # autograd's: torch's, with its gradient
    gemv.gelu_(tracked).sum().backward()
    assert not calls


@_buildable
def test_a_kernel_without_a_fused_gelu_applies_gemv_gelu(build, monkeypatch):
    """onednn-split's c_fc (and every kind's GELU that is not fused) goes through gemv.gelu_, with the product's
    numbers: F.gelu of F.linear's."""
    seen = []
    real = gemv.gelu_
    monkeypatch.setattr(gemv, "gelu_", lambda y: seen.append(y.shape) or real(y))
    w, b, x = _data(50, 40, (3,))
    for kind in ("linear", "mkl", "onednn-split"):
        if not L.KERNELS[kind].available(CPU, torch.float32):
            continue
        y = L.make_kernel(kind, w, b, 3).gelu(x)
        torch.testing.assert_close(y, F.gelu(F.linear(x, w, b), approximate="tanh"), atol=1e-5, rtol=1e-5)
    assert seen and all(s == (3, 50) for s in seen)
