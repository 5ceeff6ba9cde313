"""gemv.c, built for this CPU on first use: matrix-vector products that read the weight at the memory's speed.

Why a kernel of our own: a batch-1 decode step is a few dozen matrix-vector products, and on a 2-core Xeon
(Sapphire Rapids, a KVM guest) oneDNN's bf16 product read a GPT-2 layer's weights at 12-21 GB/s while a
`sum` over the same bytes read 25-32; this kernel reads them at 31-39 (one block of rows is one sequential
stream, prefetched ahead: see gemv.c). It is a candidate like any other: kernels.py times it against
F.linear, MKL and oneDNN on the real shapes and keeps it only where it is fastest, and it is offered only
where it built and gave F.linear's numbers on this machine.

The build: the C compiler ($CC, else `cc`) with -O3 -march=native -fno-trapping-math -fopenmp, plus $GPT2KIT_GEMV_CFLAGS
(e.g. "-mno-avx512f" builds the AVX2 kernels on an AVX-512 CPU, as the tests do), about a second, once per
CPU (the library is cached under the user cache directory, named by a hash of the sources, the compiler, the
flags and the CPU's flags, and written atomically). It needs AVX2 with FMA or AVX-512 (F, BW, VL), and then
has float32, bf16 and int8 weights' kernels (bf16 with AVX-512 BF16's dot product where the CPU has it, else
in float32 FMAs on 32-byte registers). No compiler, a compile error or an older CPU leaves
the kernel out, and `unavailable()` says why (`gpt2kit info --kernels` shows it). GPT2KIT_GEMV=0 turns it
off. The library links the same libgomp.so.1 torch loaded, so its threads are torch's; each call passes
torch.get_num_threads(). Each weight is read with its prefetches into L1, into L2 only, or none (the hardware's
prefetchers alone; a call's `prefetch`): which reads faster depends on the CPU, so linear.py offers each as its
own kernel and the measurement picks.

The same library holds attend.c, attention for one query per row (`attend`), and causal.c, causal attention
for many queries per row in bf16 (`causal`): candidates for a decode step's attention and for prefill and
scoring, which attention_plan.py times against torch's SDPA.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from gpt2kit import machine
from gpt2kit.atomic import atomic_path
from gpt2kit.model import int8, packed_store

SOURCE = Path(__file__).with_name("gemv.c")
ATTEND_SOURCE = Path(__file__).with_name("attend.c")  # one-query attention (`attend`), built into the same library
CAUSAL_SOURCE = Path(__file__).with_name("causal.c")  # many-query causal attention in bf16 (`causal`), the same
STEP_SOURCE = Path(__file__).with_name("step.c")  # a decode step replayed from its tape (step_graph.py), the same
SWITCH = "GPT2KIT_GEMV"  # "0": never build or offer the kernel
CFLAGS = "GPT2KIT_GEMV_CFLAGS"  # more compiler flags, after -march=native
PREFETCH = {"l1": 0, "l2": 1, "none": 2}  # a product's weight stream prefetched into L1, into L2 only, or not at all
_PREFETCHES = frozenset(PREFETCH.values())
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


HEADERS = (Path(__file__).with_name("kernel_math.h"),  # the scalar math they share (bf16 in and out, e^x)
           Path(__file__).with_name("share.h"),  # how a product's threads share its blocks
           Path(__file__).with_name("tape.h"))  # what a kernel called while a step records appends to its tape


def _sources() -> tuple[Path, ...]:
    return SOURCE, ATTEND_SOURCE, CAUSAL_SOURCE, STEP_SOURCE


NO_SIMD = "the CPU has neither AVX2 with FMA nor AVX-512"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (/proc/cpuinfo)."""
    return set(machine.cpu_info().get("flags", "").split())


def not_buildable() -> str | None:
    """Why gemv.c cannot be built here, from the switch, the platform, the CPU's flags, the source and the
    compiler alone, without building it (None: it must build)."""
    if os.environ.get(SWITCH) == "0":
        return f"turned off ({SWITCH}=0)"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return "built only on x86-64 Linux"
    flags = cpu_flags()
    if not ({"avx2", "fma"} <= flags or {"avx512f", "avx512bw", "avx512vl"} <= flags):
        return NO_SIMD
    for source in (*_sources(), *HEADERS):
        if not source.is_file():
            return f"{source.name} is missing from the installed package"
    cc = os.environ.get("CC", "cc")
    return f"no C compiler ({cc!r} not found; set CC)" if shutil.which(cc) is None else None


def _run(cmds: list[list[str]]) -> None:
    """Run the compiler commands side by side (one source each: gemv.c takes most of a build's ~2 s on one core);
    raise SubprocessError with the first failure's first error line (else its last line)."""
    procs: list[subprocess.Popen] = []
    try:
        for cmd in cmds:
            procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        outs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for cmd, p, err in zip(cmds, procs, outs):
        if p.returncode != 0:
            lines = err.strip().splitlines() or [f"{cmd[0]} failed"]
            raise subprocess.SubprocessError(next((ln for ln in lines if "error:" in ln), lines[-1]).strip())


@functools.cache
def _build() -> tuple[ctypes.CDLL | None, str]:
    """(the loaded library, "") or (None, why not)."""
    if why := not_buildable():
        return None, why
    cc, flags = os.environ.get("CC", "cc"), sorted(cpu_flags())
    # an intrinsic the compiler does not know must fail the build, not leave a library that cannot load; no operation
    # traps (torch leaves the floating-point exceptions masked), so loops with a comparison in them vectorize (GELU's)
    cmd = [cc, "-O3", "-march=native", *shlex.split(os.environ.get(CFLAGS, "")), "-Werror=implicit-function-declaration",
           "-fno-trapping-math", "-fopenmp", "-fPIC"]  # fmt: skip
    code = b"".join(source.read_bytes() for source in (*_sources(), *HEADERS))
    digest = hashlib.sha256(code + " ".join([*cmd, *map(str, _sources()), *flags]).encode()).hexdigest()[:16]
    lib = machine.cache_dir() / "gemv" / f"gemv-{digest}.so"
    if not lib.exists():
        try:
            with atomic_path(lib) as tmp, tempfile.TemporaryDirectory(dir=lib.parent) as objects:
                objs = [str(Path(objects) / f"{source.stem}.o") for source in _sources()]
                _run([[*cmd, "-c", str(source), "-o", obj] for source, obj in zip(_sources(), objs)])  # at once
                _run([[cc, "-fopenmp", "-shared", *objs, "-o", str(tmp)]])
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"the build failed: {e}"
    try:
        so = ctypes.CDLL(str(lib))
    except OSError as e:
        return None, f"the library did not load: {e}"
    tail = [_P, _P, _I64, _INT, _INT, _INT]  # x, y, M, threads, prefetch, gelu
    for name, head in (("gk_gemv_f32", [_P, _P, _I64, _I64]), ("gk_gemv_bf16", [_P, _P, _INT, _I64, _I64]),
                       ("gk_gemv_s8", [_P, _P, _P, _P, _I64, _I64])):  # fmt: skip
        if hasattr(so, name):
            fn = getattr(so, name)
            fn.argtypes, fn.restype = head + tail, None
    for name in ("gk_attend_f32", "gk_attend_bf16"):  # q, its 2 strides, k, v, their 2, bias, y, B, nh, K, hs, threads,
        fn = getattr(so, name)  # the step's new key and value rows (or NULL)
        fn.argtypes, fn.restype = [_P, _I64, _I64, _P, _P, _I64, _I64, _P, _P, _I64, _I64, _I64, _I64, _INT, _P, _P], None
    for name, args, res in (("gk_tape_new", [], _P), ("gk_tape_free", [_P], None), ("gk_tape_record_on", [_P], None),
                            ("gk_tape_length", [_P], _I64), ("gk_tapes_alive", [], _I64), ("gk_tape_op", [_P, _I64, _P], ctypes.c_int32),
                            ("gk_record", [ctypes.c_int32, ctypes.c_int32, _P], None), ("gk_replay", [_P, _I64, _P, _P, _P], _I64),
                            ("gk_tape_inputs", [_P, _P, _P, _I64], None), ("gk_tape_output", [_P, _P], None), ("gk_tape_prefetch", [_P, _P, _I64, _INT], _I64), ("gk_share_claims", [_I64, _INT, _P, _I64, _P], None),
                            ("gk_embed", [_P, _I64, _P, _P, _I64, _I64], _INT), ("gk_add", [_P, _P, _P, _I64, _INT], None),
                            ("gk_convert", [_P, _P, _I64, _INT], None), ("gk_gelu", [_P, _I64, _INT, _INT], None),
                            ("gk_layer_norm", [_P, _P, _P, _P, _I64, _I64, ctypes.c_double, _INT], None)):  # step.c's; fmt: skip
        fn = getattr(so, name)
        fn.argtypes, fn.restype = args, res
    if hasattr(so, "gk_causal_bf16"):  # q, its 3 strides, k, v, their 3, y, its 3, B, nh, T, K, hs, threads
        fn = so.gk_causal_bf16
        fn.argtypes, fn.restype = [_P, _I64, _I64, _I64, _P, _P, *[_I64] * 3, _P, *[_I64] * 8, _INT], _INT
    return so, ""


def unavailable(dtype: torch.dtype) -> str | None:
    """Why the kernel for `dtype` weights cannot run here (None: it can)."""
    so, why = _build()
    if so is None:
        return why
    name = {torch.float32: "gk_gemv_f32", torch.bfloat16: "gk_gemv_bf16", torch.int8: "gk_gemv_s8"}.get(dtype)
    if name is None:
        return f"no kernel for {dtype}"
    return None if hasattr(so, name) else "not in this build (the compiler left it out)"


def _why_no_bf16() -> str:
    """Why the library lacks causal.c's bf16 kernel (it needs AVX-512 BF16)."""
    if not {"avx512f", "avx512bw", "avx512vl", "avx512_bf16"} <= cpu_flags():
        return "the CPU has no AVX-512 BF16"
    extra = os.environ.get(CFLAGS, "").strip()  # flags that leave out what the CPU has (-mno-avx512f)
    return f"not in this build ({CFLAGS}={extra!r})" if extra else "not in this build (the compiler left it out)"


def _ptr(t: torch.Tensor | None) -> ctypes.c_void_p | None:
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def status() -> str:
    """One line for `gpt2kit info --kernels`: where the library was built and for which weights, or why not."""
    so, why = _build()
    if so is None:
        return f"not available: {why}"
    kinds = [
        f"{name} ({'AVX-512' if getattr(so, f'gk_rows_{kind}')() == 16 else 'AVX2'})"
        for dtype, name, kind in ((torch.float32, "float32", "f32"), (torch.bfloat16, "bf16", "bf16"), (torch.int8, "int8", "s8"))
        if unavailable(dtype) is None
    ]
    return f"built for this CPU ({', '.join(kinds)} weights): {so._name}"


class Packed:
    """A weight packed for gemv.c, with its bias in float32: call with x (..., K) in `in_dtype` -> (..., N) in
    `out_dtype`. dtype float32 or bfloat16: the weight in that dtype, x too. int8: the weight quantized
    (int8.quantize: q with w ~ scale[n] q[n, k], and qsum, sum_k q[n, k]), x in float32. out_dtype: float32, or bf16
    for bf16 weights. Packed from `weight` (N, K) in any dtype, or mapped from the packed-weight store where an earlier
    run packed the same weight the same way: an int8 weight's file holds its scales and row sums too, so a stored
    one is not quantized again, and while it lives it offers them, with q, to the weight's other int8 kinds
    (int8.offer: the prompt kernels a copy packs on its first prompt)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype, out_dtype: torch.dtype = torch.float32) -> None:
        so = _build()[0]
        self.n, self.k = n, k = weight.shape
        self.in_dtype, self.out_dtype = torch.float32 if dtype == torch.int8 else dtype, out_dtype
        kind = {torch.float32: "f32", torch.bfloat16: "bf16", torch.int8: "s8"}[dtype]
        rows, lanes = getattr(so, f"gk_rows_{kind}")(), getattr(so, f"gk_lanes_{kind}")()
        source = weight.detach()
        blocks = (-(-n // rows), -(-k // lanes), rows, lanes)  # (N'/rows, K'/lanes, rows, lanes)

        def to_blocks(w: torch.Tensor, out: torch.Tensor) -> None:  # out (blocks) = w (N, K) in blocks
            if k % lanes or n % rows:  # (N', K'): zero rows and columns to whole blocks (a copy: only where needed)
                w = torch.nn.functional.pad(w, (0, -k % lanes, 0, -n % rows))
            out.copy_(w.reshape(-1, rows, w.shape[1] // lanes, lanes).transpose(1, 2))

        # mapped from the packed-weight store where an earlier packing left it (in 2 MiB pages where the page cache
        # holds it so), else packed now, in memory (in huge pages inside hugepages.packing(True)), and stored
        if dtype == torch.int8:
            at = math.prod(blocks)  # q's bytes, whole 64-byte blocks: the scales after them are aligned

            def fill(out: torch.Tensor) -> None:  # out (at + 8N,) bytes: q in blocks, scale (N,) float32, qsum (N,) int32
                q, scale, qsum = int8.quantize(source)
                to_blocks(q, out[:at].view(torch.int8).view(blocks))
                out[at : at + 4 * n].view(torch.float32).copy_(scale)
                out[at + 4 * n :].view(torch.int32).copy_(qsum)

            packed = packed_store.packed(source, (at + 8 * n,), torch.uint8, fill, "gemv.c s8, scale, qsum")
            self.w = packed[:at].view(torch.int8).view(blocks)
            self.scale, self.qsum = packed[at : at + 4 * n].view(torch.float32), packed[at + 4 * n :].view(torch.int32)  # (N,) each
            w, scale, qsum = self.w, self.scale, self.qsum  # q, scale and qsum for int8's other kinds (a prompt's)
            int8.offer(source, self, lambda: int8.Quantized(_unblocked(w, n, k), scale.clone(), qsum.clone()))
        else:
            self.w = packed_store.packed(source, blocks, dtype, lambda out: to_blocks(source.to(dtype), out), f"gemv.c {kind}")
        self.b = None if bias is None else bias.detach().float().contiguous()  # (N,)
        size = (_I64(n), _I64(k))
        if dtype == torch.int8:
            bound = (_ptr(self.w), _ptr(self.scale), _ptr(self.qsum), _ptr(self.b), *size)
        elif dtype == torch.bfloat16:
            bound = (_ptr(self.w), _ptr(self.b), _INT(out_dtype == torch.float32), *size)
        else:
            bound = (_ptr(self.w), _ptr(self.b), *size)
        # the weight's arguments converted once: a call converts only x, y, M and the threads (~2 us a call
        # saved, of ~50 a step)
        self._fn, self._bound = getattr(so, f"gk_gemv_{kind}"), bound

    def __call__(self, x: torch.Tensor, gelu: bool = False, prefetch: int = PREFETCH["l1"]) -> torch.Tensor:
        """x (..., K) in_dtype -> (..., N) out_dtype; with `gelu`, GPT-2's GELU (tanh form) of it, applied in float32
        as each output is stored (before a bf16 output's rounding). `prefetch`: how the weight's stream is prefetched
        (PREFETCH), a choice of each call's: the packing is the same."""
        if prefetch not in _PREFETCHES:
            raise ValueError(f"prefetch must be one of {PREFETCH}, got {prefetch!r}")
        if not x.is_contiguous():
            x = x.contiguous()
        y = torch.empty((*x.shape[:-1], self.n), dtype=self.out_dtype)  # (..., N)
        self._fn(*self._bound, x.data_ptr(), y.data_ptr(), x.numel() // self.k, torch.get_num_threads(), prefetch, gelu)
        return y


def _unblocked(w: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """A weight packed in blocks, w (N'/rows, K'/lanes, rows, lanes), as the (n, k) matrix it was packed from, in new memory."""
    blocks, lanes = w.shape[1], w.shape[3]
    return torch.empty((n, k), dtype=w.dtype).copy_(w.transpose(1, 2).reshape(-1, blocks * lanes)[:n, :k])  # (n, k)


ATTEND_DTYPES = (torch.float32, torch.bfloat16)


def gelu_(y: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU (tanh form) of y, in place -> y: step.c's `gk_gelu` (the form gemv.c applies as it stores, to
    float32's precision) where the library is built and y is a contiguous float32 or bf16 CPU tensor that autograd does
    not track, else torch's. On a 2-core Zen 3 VM: 70 us against torch's 179 for a 32-token prompt's c_fc output of
    GPT-2 124M ((32, 3072) float32), 0.59 against 1.45 ms at 256 tokens."""
    so = _build()[0]
    if so is None or y.device.type != "cpu" or y.dtype not in (torch.float32, torch.bfloat16) or not y.is_contiguous() or y.requires_grad:
        return torch.ops.aten.gelu_(y, approximate="tanh")
    so.gk_gelu(y.data_ptr(), y.numel(), int(y.dtype == torch.bfloat16), torch.get_num_threads())
    return y


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Attention for one query per row (attend.c's `gk_attend_*`): q (B, nh, 1, hs), k and v (B, nh, K, hs), all in
    one dtype of ATTEND_DTYPES; bias None (every key seen) or (B, 1, 1, K) float32, added to the scores (0 or
    -inf) -> (B, nh, 1, hs), a view of a (B, 1, nh, hs) tensor (so heads side by side again is free)."""
    if q.dtype not in ATTEND_DTYPES:
        raise ValueError(f"gemv.attend runs float32 and bf16, not {q.dtype}")
    B, nh, _, hs = q.shape
    K = k.shape[2]
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.stride(-1) != 1 or k.stride(-2) != hs or v.stride() != k.stride():  # each key's hs values, keys in a row
        k, v = k.contiguous(), v.contiguous()
    if k.dtype != q.dtype:  # a cache kept in another dtype
        k, v = k.to(q.dtype), v.to(q.dtype)
    if bias is not None:
        bias = bias.float().contiguous()  # (B, 1, 1, K)
    y = torch.empty(B, 1, nh, hs, dtype=q.dtype)  # (B, 1, nh, hs)
    fn = getattr(_build()[0], "gk_attend_bf16" if q.dtype == torch.bfloat16 else "gk_attend_f32")
    fn(q.data_ptr(), q.stride(0), q.stride(1), k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1),
       None if bias is None else bias.data_ptr(), y.data_ptr(), B, nh, K, hs, torch.get_num_threads(), None, None)  # fmt: skip
    return y.transpose(1, 2)  # (B, nh, 1, hs)


def attend_step(qkv: torch.Tensor, kv: torch.Tensor, K: int) -> torch.Tensor | None:
    """A decode step's attention with its cache write (attend.c with the new rows): qkv (B, 1, 3C), c_attn's output
    (every head's query, then its keys, then its values); kv (2, B, nh, T_max, hs), one layer's cache, every row's
    first K - 1 columns written. Writes qkv's keys and values as column K - 1 of every row, then attends each query
    over the first K keys -> (B, 1, C), heads side by side, as `attend` on the written cache. None where it does not
    apply (the cache in another dtype or layout than qkv), with nothing written."""
    _, B, nh, _, hs = kv.shape
    C = nh * hs
    if (kv.dtype != qkv.dtype or qkv.dtype not in ATTEND_DTYPES or qkv.shape != (B, 1, 3 * C) or qkv.stride(-1) != 1
            or kv.stride(-1) != 1 or kv.stride(-2) != hs):  # fmt: skip
        return None
    size = qkv.element_size()
    y = torch.empty(B, 1, C, dtype=qkv.dtype)  # (B, 1, C)
    fn = getattr(_build()[0], "gk_attend_bf16" if qkv.dtype == torch.bfloat16 else "gk_attend_f32")
    at, kat = qkv.data_ptr(), kv.data_ptr()
    fn(at, qkv.stride(0), hs, kat, kat + kv.stride(0) * size, kv.stride(1), kv.stride(2), None, y.data_ptr(), B, nh, K, hs,
       torch.get_num_threads(), at + C * size, at + 2 * C * size)  # fmt: skip
    return y


def causal_unavailable(head_size: int) -> str | None:
    """Why `causal` cannot run here for heads of `head_size` (None: it can)."""
    so, why = _build()
    if so is None:
        return why
    if not hasattr(so, "gk_causal_bf16"):
        return _why_no_bf16()
    return None if head_size % 16 == 0 else f"causal.c takes heads of a multiple of 16 values, not {head_size}"


def causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal attention for T queries per row over K >= T keys (causal.c's `gk_causal_bf16`): q (B, nh, T, hs),
    k and v (B, nh, K, hs); query i sees keys j <= K - T + i. q in bf16 (k and v converted to it) -> (B, nh, T, hs)
    bf16, a view of a (B, T, nh, hs) tensor (so heads side by side again is free)."""
    if q.dtype != torch.bfloat16:
        raise ValueError(f"gemv.causal runs bf16, not {q.dtype}")
    B, nh, T, hs = q.shape
    K = k.shape[2]
    if K < T:
        raise ValueError(f"gemv.causal needs at least as many keys as queries, got {K} keys for {T} queries")
    if q.stride(-1) != 1:
        q = q.contiguous()
    if k.dtype != q.dtype:  # a cache kept in another dtype
        k, v = k.to(q.dtype), v.to(q.dtype)
    if k.stride(-1) != 1 or v.stride() != k.stride() or k.stride(-2) % 2:  # rows of hs values, alike, pairs aligned
        k, v = k.contiguous(), v.contiguous()
    y = torch.empty(B, T, nh, hs, dtype=q.dtype)  # (B, T, nh, hs)
    done = _build()[0].gk_causal_bf16(
        q.data_ptr(), *q.stride()[:3], k.data_ptr(), v.data_ptr(), *k.stride()[:3],
        y.data_ptr(), y.stride(0), y.stride(2), y.stride(1), B, nh, T, K, hs, torch.get_num_threads(),
    )  # fmt: skip
    if done != 0:
        raise MemoryError(f"gemv.causal could not allocate its packed keys and values ({B * nh * K * hs * 4} bytes)")
    return y.transpose(1, 2)  # (B, nh, T, hs)
