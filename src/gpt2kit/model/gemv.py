"""gemv.c, built for this CPU on first use: matrix-vector products that read the weight at the memory's speed.

Why a kernel of our own: a batch-1 decode step is a few dozen matrix-vector products, and on a 2-core Xeon
(Sapphire Rapids, a KVM guest) oneDNN's bf16 product read a GPT-2 layer's weights at 12-21 GB/s while a
`sum` over the same bytes read 25-32; this kernel reads them at 31-39 (one block of rows is one sequential
stream, prefetched ahead: see gemv.c). It is a candidate like any other: kernels.py times it against
F.linear, MKL and oneDNN on the real shapes and keeps it only where it is fastest, and it is offered only
where it built and gave F.linear's numbers on this machine.

The build: the C compiler ($CC, else `cc`) with -O3 -march=native -fopenmp, about a second, once per CPU
(the library is cached under the user cache directory, named by a hash of the source, the compiler and the
CPU's flags, and written atomically). No compiler, a compile error or a CPU without AVX-512 leaves the
kernel out, and `unavailable()` says why (`gpt2kit info --kernels` shows it). GPT2KIT_GEMV=0 turns it off.
The library links the same libgomp.so.1 torch loaded, so its threads are torch's; each call passes
torch.get_num_threads().
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
from pathlib import Path

import torch

from gpt2kit.atomic import atomic_path

SOURCE = Path(__file__).with_name("gemv.c")
SWITCH = "GPT2KIT_GEMV"  # "0": never build or offer the kernel
_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def cache_root() -> Path:
    """$GPT2KIT_CACHE_DIR, else $XDG_CACHE_HOME/gpt2kit, else ~/.cache/gpt2kit."""
    root = os.environ.get("GPT2KIT_CACHE_DIR")
    return Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt2kit"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


@functools.cache
def _build() -> tuple[ctypes.CDLL | None, str]:
    """(the loaded library, "") or (None, why not)."""
    if os.environ.get(SWITCH) == "0":
        return None, f"turned off ({SWITCH}=0)"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, "built only on x86-64 Linux"
    flags = _cpu_flags().split()
    if "avx512f" not in flags:
        return None, "the CPU has no AVX-512"
    if not SOURCE.is_file():
        return None, f"{SOURCE.name} is missing from the installed package"
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return None, f"no C compiler ({cc!r} not found; set CC)"
    digest = hashlib.sha256(SOURCE.read_bytes() + cc.encode() + " ".join(flags).encode()).hexdigest()[:16]
    lib = cache_root() / "gemv" / f"gemv-{digest}.so"
    if not lib.exists():
        try:
            with atomic_path(lib) as tmp:
                cmd = [cc, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(SOURCE), "-o", str(tmp)]
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
                if done.returncode != 0:
                    raise OSError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"{cc} failed")
        except (OSError, subprocess.SubprocessError) as e:
            return None, f"the build failed: {e}"
    try:
        so = ctypes.CDLL(str(lib))
    except OSError as e:
        return None, f"the library did not load: {e}"
    for name, args in (("gk_gemv_f32", [_P, _P, _P, _P, _I64, _I64, _I64, _INT]),
                       ("gk_gemv_bf16", [_P, _P, _P, _P, _I64, _I64, _I64, _INT, _INT])):  # fmt: skip
        if hasattr(so, name):
            fn = getattr(so, name)
            fn.argtypes, fn.restype = args, None
    return so, ""


def unavailable(dtype: torch.dtype) -> str | None:
    """Why the kernel for `dtype` weights cannot run here (None: it can)."""
    so, why = _build()
    if so is None:
        return why
    if dtype == torch.bfloat16 and not hasattr(so, "gk_gemv_bf16"):
        return "the CPU has no AVX-512 BF16"
    if dtype not in (torch.float32, torch.bfloat16):
        return f"no kernel for {dtype}"
    return None


def _lanes(dtype: torch.dtype) -> int:
    so = _build()[0]
    return so.gk_lanes_bf16() if dtype == torch.bfloat16 else so.gk_lanes_f32()


class Packed:
    """A weight packed for gemv.c, with its bias in float32: call with (..., K) -> (..., N)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype) -> None:
        so = _build()[0]
        self.dtype, self.n, self.k = dtype, *weight.shape
        rows, lanes = so.gk_rows(), _lanes(dtype)
        w = weight.detach().to(dtype)
        n_pad, k_pad = -self.n % rows, -self.k % lanes
        w = torch.nn.functional.pad(w, (0, k_pad, 0, n_pad))  # (N', K') zero rows and columns
        self.w = w.reshape(-1, rows, w.shape[1] // lanes, lanes).transpose(1, 2).contiguous()  # (N'/rows, K'/lanes, rows, lanes)
        self.b = None if bias is None else bias.detach().float().contiguous()  # (N,)
        self._f32, self._bf16 = getattr(so, "gk_gemv_f32", None), getattr(so, "gk_gemv_bf16", None)

    def __call__(self, x: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        """x (..., K) in the packed dtype -> (..., N) in out_dtype (float32, or bf16 for bf16 weights)."""
        x2 = x.reshape(-1, self.k)
        if not x2.is_contiguous():
            x2 = x2.contiguous()
        y = torch.empty(x2.shape[0], self.n, dtype=out_dtype)  # (M, N)
        b = None if self.b is None else self.b.data_ptr()
        args = (x2.data_ptr(), self.w.data_ptr(), b, y.data_ptr(), x2.shape[0], self.n, self.k)
        if self.dtype == torch.bfloat16:
            self._bf16(*args, int(out_dtype == torch.float32), torch.get_num_threads())
        else:
            self._f32(*args, torch.get_num_threads())
        return y.view(*x.shape[:-1], self.n)
