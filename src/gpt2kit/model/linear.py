"""Linear-layer kernels: the same x W^T + b, with the weight kept in a layout one kernel runs fastest.

A `KernelLinear` stands in for an `nn.Linear` in an inference copy of the model (see kernels.py), so the model's one
`Block.forward` runs unchanged and only the matrix products differ. Which kernel is fastest depends on the CPU, the
shape and the rows, so kernels.py times them where they run, keeping the fastest that matches `F.linear` in float32.

Kernels (each a small class: pack the weight once in __init__, multiply in __call__, (..., in) -> (..., out)):
  - linear:  `F.linear` on the model's own weight (no copy); the reference and the fallback everywhere;
  - mkl:     `addmm` on a pre-transposed (in, out) weight: MKL's matrix-vector layout;
  - float32: a bf16 model's many-row products in float32 on a float32 copy (the same numbers, where bf16 is emulated);
  - onednn:  oneDNN's blocked layout (`mkldnn._reorder_linear_weight`, torch.compile's) and `_linear_pointwise`, c_fc's
             GELU fused as its post-op; private ops, so `available()` checks they exist and give F.linear's numbers;
  - gemv:    gemv.c, our product for a few rows (decode), built for the CPU that runs it (AVX2 with FMA, or AVX-512),
             c_fc's GELU applied as it stores; `gemv-l2` prefetches into L2 only, `gemv-hw` not at all (bf16, int8 too);
  - bf16:    weight-only bf16 over a float32 model (F.linear, oneDNN or gemv.c); approximate, only when asked for;
  - int8:    int8 weights, one scale per output channel: weight-only (`_weight_int8pack_mm`) with activations in bf16
             (`int8`) or float32 (`int8-f32`), or with activations quantized to int8 per call (`int8-dynamic`, torch's
             quantized engine; `int8-gemv`, gemv.c on AVX-512 VNNI, AVX-VNNI or AVX2); approximate, only when asked for.
A kind that calls another's packed weight in its own way (`varies`: gemv.c's prefetches, onednn-split) can share it.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

import torch
import torch.nn.functional as F

from gpt2kit import hugepages
from gpt2kit.model import gemv, int8


class _Linear:
    """F.linear on the weight as it is: the reference."""

    exact = True
    max_rows: int | None = None  # offered for products of at most this many rows (None: any)
    min_rows = 1  # ... and at least this many
    gelu_only: str | None = None  # why it is offered for c_fc alone (it differs from another kind only in the GELU after it)
    varies: type | None = None  # the kind whose packed weight this one calls in its own way (None: its own)
    row_layout = False  # whether the packed layout depends on the rows it is packed for

    @classmethod
    def supports(cls, in_features: int) -> bool:
        return True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int = 1) -> None:
        self.w, self.b = weight, bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.w, self.b)

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        """GPT-2's GELU (tanh) of the product, c_fc's whole work, (..., in) -> (..., out): fused where a kernel can, else in
        place on it (a fresh (2048, 3072) output, page-faulted in per call, cost a 2048-token 124M forward 5-7 %, Zen 3)."""
        return gemv.gelu_(self(x))

    @staticmethod
    def available(device: torch.device, dtype: torch.dtype) -> bool:
        return True

    @classmethod
    def why_unavailable(cls, device: torch.device, dtype: torch.dtype) -> str:
        return "not available on this CPU/torch"


# Output rows transposed a copy at a time into MKL's (in, out) weight: on a 2-core Zen 3 VM a (3072, 768) float32
# weight took 3.6-4.2 ms in copies of 128 rows against 7-13 in one, and GPT-2's head 191 against 268 ms ((768, 3072):
# ~6 ms either way)
TRANSPOSE_ROWS = 128


class _Mkl(_Linear):
    """addmm with a pre-transposed (in, out) weight."""

    exact = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int = 1) -> None:
        # an (out, in) view of an (in, out) copy (in memory advised for 2 MiB pages): F.linear on it is addmm(b, x, wt)
        # on the (in, out) memory, bit for bit, with the leading dimensions folded in C++, not by a reshape here
        w = weight.detach()
        wt = hugepages.empty((w.shape[1], w.shape[0]), w.dtype)  # (in, out)
        for i in range(0, len(w), TRANSPOSE_ROWS):
            wt[:, i : i + TRANSPOSE_ROWS].copy_(w[i : i + TRANSPOSE_ROWS].t())
        self.w, self.b = wt.t(), bias

    @property
    def wt(self) -> torch.Tensor:
        """The pre-transposed (in, out) weight, contiguous."""
        return self.w.t()

    @staticmethod
    def available(device: torch.device, dtype: torch.dtype) -> bool:
        return device.type == "cpu"


class _Float32(_Linear):
    """A bf16 model's product in float32, on a float32 copy of the weight: bf16 values are float32 values, the sums
    are float32 and rounded to bf16 once, as a bf16 F.linear's are. For many rows, where the CPU has no bf16
    products of its own and torch emulates them: a 256-row c_fc of GPT-2 124M took 10 ms against 108 in bf16 on a
    2-core AVX2-only Zen 3 VM. The copy is twice the bf16 weight's size."""

    min_rows = 9

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int = 1) -> None:
        self.w, self.b = weight.detach().float(), None if bias is None else bias.detach().float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.float(), self.w, self.b).to(x.dtype)

    @staticmethod
    def available(device: torch.device, dtype: torch.dtype) -> bool:
        return device.type == "cpu" and dtype == torch.bfloat16

    @classmethod
    def why_unavailable(cls, device: torch.device, dtype: torch.dtype) -> str:
        if dtype == torch.float32:
            return "the model is float32 already"
        return "for bf16 models" if dtype != torch.bfloat16 else super().why_unavailable(device, dtype)


GELU_POST = ("gelu", [], "tanh")  # oneDNN's post-op: GPT-2's GELU, tanh approximation


class _OneDnn(_Linear):
    """oneDNN's packed layout, in the model's dtype."""

    exact = True
    compute_dtype: torch.dtype | None = None  # None: the input's dtype
    row_layout = True

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int = 1) -> None:
        dt = self.compute_dtype or weight.dtype
        # the blocked layout for the rows it is told: packed for 8, an 8-row product ran 1.2x faster on a 2-core Xeon
        self.w = torch.ops.mkldnn._reorder_linear_weight(weight.detach().to(dt), rows)
        self.b = None if bias is None else bias.detach().to(dt)

    def __call__(self, x: torch.Tensor, post: tuple = ("none", [], "")) -> torch.Tensor:
        dt = self.compute_dtype or x.dtype
        return torch.ops.mkldnn._linear_pointwise(x.to(dt), self.w, self.b, *post).to(x.dtype)

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        # oneDNN applies the GELU to each tile while it is in cache (its sums rounded once, after it): a 1024-row bf16
        # c_fc of GPT-2 124M took 12.6 ms against 15.7 for the product and then F.gelu on a Zen 4 VM
        return self(x, GELU_POST) if _onednn_gelu_works(self.compute_dtype or x.dtype) else super().gelu(x)

    @classmethod
    def available(cls, device: torch.device, dtype: torch.dtype) -> bool:
        return device.type == "cpu" and _onednn_works(cls.compute_dtype or dtype)


class _Bf16(_Linear):
    """Weight-only bf16 through F.linear (works on every CPU; emulated and slow without native bf16)."""

    exact = False

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int = 1) -> None:
        self.w = weight.detach().to(torch.bfloat16).contiguous()
        self.b = None if bias is None else bias.detach().to(torch.bfloat16)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.w, self.b).to(x.dtype)

    @staticmethod
    def available(device: torch.device, dtype: torch.dtype) -> bool:
        return dtype != torch.bfloat16


class _OneDnnSplit(_OneDnn):
    """oneDNN's packed product, then an in-place GELU (gemv.gelu_), not the post-op: on a 2-core Zen 3 VM (AVX2) the
    post-op's GELU took 4.9 ms where torch's after the product took 1.8 (124M c_fc, 256 rows), so which runs is measured."""

    gelu_only = "oneDNN's product with the GELU after it: the same as onednn where no GELU follows"
    varies = _OneDnn
    gelu = _Linear.gelu


class _WeightOnlyBf16:
    """Mixed in before a kernel class: that kernel with bf16 weights under a float32 (or fp16) model, the
    activations cast to bf16 at the product; nothing to offer a bf16 model."""

    exact = False
    compute_dtype = torch.bfloat16

    @classmethod
    def available(cls, device: torch.device, dtype: torch.dtype) -> bool:
        return dtype != torch.bfloat16 and super().available(device, dtype)


class _Bf16OneDnn(_WeightOnlyBf16, _OneDnn):
    """Weight-only bf16 in oneDNN's packed layout (needs native bf16: AVX-512 BF16 or AMX)."""


class _Gemv(_Linear):
    """gemv.c in the model's dtype (float32 or bf16)."""

    exact = True
    max_rows = 8  # one pass over the weight serves every row, but the arithmetic grows with the rows
    compute_dtype: torch.dtype | None = None  # None: the model's dtype
    prefetch = gemv.PREFETCH["l1"]  # how the weight's stream is prefetched (gemv.PREFETCH): which is faster depends on the CPU

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int = 1) -> None:
        dtype = self.compute_dtype or weight.dtype  # a bf16 model's products answer in bf16, the rest in float32
        out = weight.dtype if dtype == weight.dtype else torch.float32
        self.packed = gemv.Packed(weight, bias, dtype, out)

    def __call__(self, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:  # (..., in) -> (..., out)
        p = self.packed
        y = p(x if x.dtype == p.in_dtype else x.to(p.in_dtype), gelu, self.prefetch)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def gelu(self, x: torch.Tensor) -> torch.Tensor:  # the GELU applied by gemv.c as each output is stored
        return self(x, True)


    @classmethod
    def available(cls, device: torch.device, dtype: torch.dtype) -> bool:
        return device.type == "cpu" and _gemv_works(cls, dtype)

    @classmethod
    def why_unavailable(cls, device: torch.device, dtype: torch.dtype) -> str:
        return gemv.unavailable(cls.compute_dtype or dtype) or super().why_unavailable(device, dtype)


class _Bf16Gemv(_WeightOnlyBf16, _Gemv):
    """Weight-only bf16 over a float32 model through gemv.c; float32 out."""


class _Int8Gemv(_Gemv):
    """int8 weights (one scale per output channel, as `int8`) and float32 activations quantized per call, one
    scale per row (symmetric, 8 bits), through gemv.c's int8 product (AVX-512 VNNI, AVX-VNNI or AVX2); float32 sums, the
    bias added in float32."""

    exact = False
    compute_dtype = torch.int8

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int = 1) -> None:
        self.packed = gemv.Packed(weight, bias, torch.int8)  # quantized (int8.quantize) unless the store holds it


class _Int8(_Linear):
    """Weight-only int8: w ~ scale[o] * q[o, i], q in [-127, 127]; bias added in the activations' dtype."""

    exact = False
    act_dtype = torch.bfloat16  # the kernel's fast path on most CPUs; int8-f32 measures the other one

    @classmethod
    def supports(cls, in_features: int) -> bool:
        # With bf16 activations torch 2.13's kernel reads past the row when `in` is not a multiple of 16:
        # garbage or a segfault at in = 40 or 100 (2-core Sapphire Rapids); GPT-2's widths are multiples of 64.
        return cls.act_dtype != torch.bfloat16 or in_features % 16 == 0

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int = 1) -> None:
        self.q, scale, _ = int8.quantize(weight)  # (out, in), (out,)
        self.scale = scale.to(self.act_dtype)
        self.b = bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1]).to(self.act_dtype)  # (M, in): the kernel multiplies matrices only
        y = torch._weight_int8pack_mm(x2, self.q, self.scale).to(x.dtype).view(*x.shape[:-1], -1)
        return y + self.b if self.b is not None else y

    @classmethod
    def available(cls, device: torch.device, dtype: torch.dtype) -> bool:
        return device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm") and _int8_works(cls.act_dtype)


class _Int8F32(_Int8):
    act_dtype = torch.float32


class _Int8Dynamic(_Linear):
    """int8 weights (one scale per output channel) and int8 activations, quantized per call (one scale for
    the call's rows): torch's quantized engine (`quantized::linear_dynamic`, fbgemm's or oneDNN's VNNI/AMX kernels),
    the same scheme as llama.cpp's Q8_0 products. Activations stay 8-bit in range (reduce_range), so CPUs
    without VNNI cannot saturate their 16-bit sums."""

    exact = False

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, rows: int = 1) -> None:
        q, scale, _ = int8.quantize(weight)  # (out, in), (out,): the int8 weights of every int8 kind
        zero = torch.zeros(len(scale), dtype=torch.long)
        make = getattr(torch, "_make_per_channel_quantized_tensor", None)  # q as it is: 5x faster than quantizing again
        with _quantized_engine(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
            qw = make(q, scale.double(), zero, 0) if make else torch.quantize_per_channel(q * scale[:, None], scale.double(), zero, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # the model's dtype: no casts (two dispatches per product saved)
            return torch.ops.quantized.linear_dynamic(x, self.packed, True)
        return torch.ops.quantized.linear_dynamic(x.float(), self.packed, True).to(x.dtype)

    @staticmethod
    def available(device: torch.device, dtype: torch.dtype) -> bool:
        return device.type == "cpu" and _int8_dynamic_works()


def _prefetching(kernel: type, how: str) -> type:
    """`kernel`, a gemv.c kind, its weight's stream prefetched as `how` says (gemv.PREFETCH): into L2 only (on a 2-core
    Zen 4 VM int8 and bf16 products 19-31 % faster than into L1 when the memory was fast), or not at all (on a 2-core
    Zen 3 VM float32 products read at 0.90 of a `sum`'s speed this way, against 0.75-0.79 with either hint)."""
    return type(f"{kernel.__name__}_{how}", (kernel,), {"prefetch": gemv.PREFETCH[how], "varies": kernel, "__doc__": f"{kernel.__doc__} ({how})"})


KERNELS: dict[str, type] = {
    "linear": _Linear, "mkl": _Mkl, "onednn": _OneDnn, "onednn-split": _OneDnnSplit, "float32": _Float32, "bf16": _Bf16, "bf16-onednn": _Bf16OneDnn,
    "int8": _Int8, "int8-f32": _Int8F32, "int8-dynamic": _Int8Dynamic,
    **{f"{name}{suffix}": _prefetching(k, how) if how else k
       for name, k in (("gemv", _Gemv), ("bf16-gemv", _Bf16Gemv), ("int8-gemv", _Int8Gemv))
       for suffix, how in (("", None), ("-l2", "l2"), ("-hw", "none"))},
}  # fmt: skip
# the kinds whose calls a recorded decode step replays in C (gemv.c's products: model/step_graph.py)
STEP_KINDS = tuple(kind for kind, cls in KERNELS.items() if issubclass(cls, _Gemv))


def make_kernel(kind: str, weight: torch.Tensor, bias: torch.Tensor | None, rows: int = 1, like: _Linear | None = None):
    """A `kind` kernel for this weight and bias, packed for products of `rows` rows (a layout hint: any row count runs);
    where `like`, a kernel made from them, has the packed weight `kind` calls (`packing`), it is shared."""
    cls = KERNELS[kind]
    if like is None or packing(type(like)) is not packing(cls):
        return cls(weight, bias, rows)
    kernel = cls.__new__(cls)  # like's packed weight and bias, called in this kind's way
    kernel.__dict__.update(like.__dict__)
    return kernel


def packing(kernel: type) -> type:
    """The kind whose packed weight `kernel` calls: its own, or the one it `varies` (gemv.c's prefetches, onednn-split)."""
    return kernel.__dict__.get("varies") or kernel


@functools.cache
def _onednn_works(dtype: torch.dtype) -> bool:
    """oneDNN's private linear ops exist, run in `dtype` on this CPU, and give F.linear's numbers."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
        return False
    if dtype == torch.bfloat16:
        check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        if check is None or not check():  # AVX2-only CPUs: oneDNN's bf16 kernels refuse to run
            return False
    return _probe(_OneDnn, dtype)


@functools.cache
def _onednn_gelu_works(dtype: torch.dtype) -> bool:
    """oneDNN's linear with a tanh-GELU post-op runs in `dtype` here and gives F.gelu of F.linear's numbers."""
    return _onednn_works(dtype) and _probe(_OneDnn, dtype, GELU_POST)


@functools.cache
def _gemv_works(kernel: type, dtype: torch.dtype) -> bool:
    """gemv.c built here, runs this kernel's products and gives F.linear's numbers for a `dtype` model."""
    return gemv.unavailable(kernel.compute_dtype or dtype) is None and _probe(kernel, dtype)


@functools.cache
def _quantized_engine_name() -> str | None:
    """torch's quantized engine for x86 (x86, else fbgemm), None where it has neither (e.g. ARM builds)."""
    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("x86", "fbgemm") if e in engines), None)


@functools.cache
def _int8_dynamic_works() -> bool:
    return _quantized_engine_name() is not None and _probe(_Int8Dynamic, torch.float32)


@contextlib.contextmanager
def _quantized_engine():
    """Pack with the x86 engine without changing the process-wide setting for good."""
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = _quantized_engine_name()
    try:
        yield
    finally:
        torch.backends.quantized.engine = before


@functools.cache
def _int8_works(act_dtype: torch.dtype) -> bool:
    return _probe(_Int8F32 if act_dtype == torch.float32 else _Int8, torch.float32)


def _probe(kernel: type, dtype: torch.dtype, post: tuple | None = None) -> bool:
    """True when `kernel` runs on a small random product in `dtype` and matches float32 F.linear (with `post`,
    oneDNN's GELU post-op: F.gelu of it)."""
    g = torch.Generator().manual_seed(0)
    w, b, x = (torch.randn(s, generator=g) for s in ((40, 80), (40,), (3, 80)))  # not whole blocks of gemv.c
    try:
        y = kernel(w.to(dtype), b.to(dtype))(x.to(dtype), *([post] if post else [])).float()
    except (RuntimeError, TypeError, AttributeError, NotImplementedError):
        return False
    ref = F.linear(x, w, b) if post is None else F.gelu(F.linear(x, w, b), approximate="tanh")
    tol = 1e-4 if dtype == torch.float32 and kernel.exact else 0.05
    return y.shape == ref.shape and bool(torch.isfinite(y).all() and (y - ref).abs().max() <= tol * (1 + ref.abs().max()))
