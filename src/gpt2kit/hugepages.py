"""Huge pages for what a decode step reads: moved in place after an engine is built (`collapse`), or for the
whole process from the start (GPT2KIT_HUGEPAGES=1 runs the `gpt2kit` command with glibc asking for 2 MiB pages).

Decoding one token streams every weight from memory once, so tokens/s is memory bandwidth over weight
bytes. With 4 KiB pages that stream misses the TLB every 4 KiB, and in a virtual machine each miss walks
two page tables: on a 2-core Xeon VM a float32 `sum` over 1 GiB reads at 20 GB/s with 4 KiB pages and at
28-30 GB/s with 2 MiB ones. Between two weight products a step runs a dozen small operations (LayerNorm,
attention, the cache write), and the stream has by then evicted their code, their data and the page tables
that map them: each of those operations took 20-60 us there instead of 3-12. So the weights are not all
a step reads from memory that matters; its machine code (libtorch's, the interpreter's) and the
interpreter's scattered data do too.

The whole process is not the default because fresh huge pages can be slow to get: on that same VM, whose host takes back
the guest's free 2 MiB blocks (virtio-balloon free page reporting), the first write to each fresh 2 MiB
page cost ~1.4 ms, against ~0.1 ms of zeroing. Loading and packing a 124M model then took 1-2.5 s longer,
more than 128 decoded tokens saved, and a one-shot `gpt2kit generate` was slower end to end. A long run on
such a machine, or any run where the kernel hands out huge pages cheaply (most bare-metal Linux), gains.

Linux gives a process transparent huge pages for memory it asks for (THP mode "madvise", the common
default) or for all of it (mode "always"). glibc 2.35+ asks for them on every block malloc takes from the
kernel when the process starts with GLIBC_TUNABLES=glibc.malloc.hugetlb=1. That one setting covers torch's
tensors, the KV cache and the packed weights of MKL, oneDNN and fbgemm alike (fbgemm allocates its own),
but not machine code. glibc reads a tunable only at start-up, so with GPT2KIT_HUGEPAGES=1 the `gpt2kit`
command starts itself again once with it (`relaunch`), before torch is imported. A program that uses
gpt2kit as a library gets the same by starting Python with that variable set.

The second way needs no restart and moves only what a step touches: `collapse` moves memory that already
holds data into huge pages, at the same addresses (madvise MADV_COLLAPSE, Linux 6.1+). A file's pages,
which the kernel cannot collapse (the weights file safetensors maps copy-on-write, a library's code), are
copied into new anonymous huge pages that replace them at the same addresses (mremap; code keeps running,
as its bytes are the same). An Engine uses it on the memory found with `referenced`: cut large mappings into
2 MiB pieces, clear the process's referenced bits, run one step, read which pieces it touched
(/proc/self/smaps "Referenced:"). That finds the packed weights, which fbgemm and oneDNN allocate
themselves, and the code of whatever library ran. Figures: docs/generation.md, "Huge pages".

No torch here: this runs before anything heavy is imported.
"""

from __future__ import annotations

import contextlib
import contextvars
import ctypes
import functools
import math
import mmap
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from gpt2kit.errors import ConfigError

TUNABLE = "glibc.malloc.hugetlb=1"
SWITCH = "GPT2KIT_HUGEPAGES"  # "1": start the command with glibc's hugetlb tunable
THP_ENABLED = "/sys/kernel/mm/transparent_hugepage/enabled"
HUGE_PAGE = 2 << 20  # a transparent huge page with 4 KiB base pages (x86-64, most arm64 kernels)
MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_COLLAPSE = 14, 15, 25  # <linux/mman.h>; MADV_COLLAPSE since Linux 6.1
PROT_READ, PROT_WRITE, PROT_EXEC, MAP_PRIVATE, MAP_ANONYMOUS, MREMAP_MAYMOVE, MREMAP_FIXED = 1, 2, 4, 0x02, 0x20, 1, 2  # <sys/mman.h>
HUGE_PAGE_MODES = ("auto", "on", "off")
# "auto" moves what a decode step reads into huge pages for engines that decode at least this many steps, or
# live on (a server, a chat). For a 124M model on a 2-core Xeon VM it cost 1-2.5 s once (~3-9 ms per 2 MiB)
# and saved 2-7 ms a token; a whole one-shot `gpt2kit generate --max-new-tokens 512` took about as long either
# way (medians of three, alternating: int8 11.2 s without, 11.1 with; fp32 21.9 and 22.5). A 64-token one would
# lose. (The engine's side: generate/decode.py, DecodeRunner.collapse_hot.)
LONG_RUN_STEPS = 512

HOT_SHARE = 0.25  # a mapping `referenced` did not cut is hot when a step touched at least this share of it
PIECE = HUGE_PAGE  # `referenced` tells apart the pieces of this size of a large mapping


def thp_mode(path: str = THP_ENABLED) -> str | None:
    """The kernel's transparent-huge-page mode ("always", "madvise" or "never"); None where there is none."""
    try:
        with open(path, encoding="ascii") as f:
            found = re.search(r"\[(\w+)\]", f.read())
    except OSError:  # not Linux, or a kernel without THP
        return None
    return found.group(1) if found else None


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library's glibc; None for another C library (musl, macOS, Windows)."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
        major, minor = version.split(".")[:2]
        return (int(major), int(minor)) if name == "glibc" else None
    except (AttributeError, ValueError, OSError):
        return None


_THIS_MACHINE = "this machine's"


def environment(environ: Mapping[str, str] = os.environ, mode: str | None = _THIS_MACHINE,
                glibc: tuple[int, int] | None | str = _THIS_MACHINE) -> dict[str, str] | None:  # fmt: skip
    """The environment to start gpt2kit with when GPT2KIT_HUGEPAGES=1 asks for huge pages; None when nothing
    needs to change: not asked for, already set, THP "always" (every large block has them) or "never", or no
    glibc 2.35+. mode (thp_mode) and glibc (glibc_version) are this machine's unless given."""
    tunables = environ.get("GLIBC_TUNABLES", "")
    if environ.get(SWITCH) != "1" or "glibc.malloc.hugetlb=" in tunables:
        return None
    mode = thp_mode() if mode == _THIS_MACHINE else mode
    glibc = glibc_version() if glibc == _THIS_MACHINE else glibc
    if mode != "madvise" or glibc is None or glibc < (2, 35):
        return None
    return {**environ, "GLIBC_TUNABLES": f"{tunables}:{TUNABLE}" if tunables else TUNABLE}


def in_use(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether a process started with `environ` has glibc ask for huge pages (the tunable is set to 1)."""
    return TUNABLE in environ.get("GLIBC_TUNABLES", "").split(":")


def relaunch() -> None:
    """Replace this process by the same command started with huge pages, when `environment()` asks for it.
    Call it first thing in a command's entry point: nothing is done twice, the new process finds the
    variable set and goes on."""
    env = environment()
    if env is None or not sys.executable or not getattr(sys, "orig_argv", None):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


def status(smaps: str = "/proc/self/smaps_rollup") -> str:
    """One line on this process's pages, for `gpt2kit info --kernels`: the setting and how much memory is
    in huge pages now."""
    mode = thp_mode()
    if mode is None:
        return "not available (no transparent huge pages on this system)"
    try:
        with open(smaps, encoding="ascii") as f:
            kib = sum(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))
        held = f", {kib / 1024:,.0f} MiB of this process in huge pages"
    except (OSError, ValueError, IndexError):
        held = ""
    if mode == "always":
        return f"on (the kernel's THP mode is always){held}"
    if in_use():
        return f"on (THP {mode}, GLIBC_TUNABLES={TUNABLE}){held}"
    return f"off for the whole process (THP {mode}; {SWITCH}=1 turns them on; an engine moves its hot memory: --huge-pages){held}"


@dataclass(frozen=True)
class Region:
    """One private mapping of this process (or a piece `referenced` cut from one) and how much of it was
    touched. kind: "anon", anonymous memory (the heap included); "file", a file mapped copy-on-write
    (safetensors maps the weights file so: the tensors are views of it); "code", a program's or library's
    machine code (libtorch's, the interpreter's)."""

    start: int
    end: int
    referenced: int  # bytes
    kind: str = "anon"
    flags: frozenset[str] = frozenset()  # its VmFlags ("hg": advised MADV_HUGEPAGE, "nh": MADV_NOHUGEPAGE, ...)


@dataclass(frozen=True)
class Collapsed:
    """What `collapse` did: bytes moved into huge pages (of them, machine code), bytes the kernel refused,
    and how long it took."""

    bytes: int = 0
    refused: int = 0
    seconds: float = 0.0
    skipped: str | None = None  # why nothing was asked of the kernel (None: it was asked)
    code: int = 0

    def describe(self) -> str:
        if self.skipped:
            return f"not used ({self.skipped})"
        code = f" ({self.code / 2**20:,.0f} MiB of it machine code)" if self.code else ""
        refused = f", {self.refused / 2**20:,.0f} MiB refused" if self.refused else ""
        return f"{self.bytes / 2**20:,.0f} MiB read by a decode step{code} moved into huge pages in {self.seconds:.2f} s{refused}"


def referenced(run: Callable[[], object], smaps: str = "/proc/self/smaps") -> list[Region]:
    """This process's private mappings with the bytes `run()` touched in each: the referenced bits of every
    page are cleared (/proc/self/clear_refs), `run()` runs, and smaps counts what is referenced again. smaps
    counts per mapping, and one mapping can be large and mostly cold (the heap, which holds everything
    malloc gave out, fbgemm's packed weights among it; libtorch's 300 MiB of code), so large mappings are
    first cut into PIECE pieces (see `_split`). [] where Linux does not offer this (then `run()` still runs)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            _split(smaps)
            f.write("1")
    except OSError:
        run()
        return []
    run()
    return _mappings(smaps)


def _mappings(smaps: str) -> list[Region]:
    """Every private mapping in `smaps` that a step reads from memory: anonymous read-write ones (the heap
    included), files mapped copy-on-write, and machine code, with what their Referenced: and VmFlags: lines say."""
    found, current = [], None
    with open(smaps, encoding="ascii", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:  # a mapping's header line
                kind = _kind(fields[1], fields[5] if len(fields) > 5 else "")
                current = {"span": [int(x, 16) for x in fields[0].split("-")], "ref": 0, "flags": frozenset(), "kind": kind} if kind else None
                if current:
                    found.append(current)
            elif current and fields[:1] == ["Referenced:"]:
                current["ref"] = int(fields[1]) << 10
            elif current and fields[:1] == ["VmFlags:"]:
                current["flags"] = frozenset(fields[1:])
    return [Region(*m["span"], m["ref"], m["kind"], m["flags"]) for m in found]


def _kind(perms: str, name: str) -> str | None:
    """A mapping's Region kind from its permissions and name; None for those left alone (shared, read-only
    data, a library's data segment, the kernel's [vdso] and [stack])."""
    if perms == "rw-p" and name in ("", "[heap]"):
        return "anon"
    if perms == "rw-p" and name.startswith("/") and not _LIBRARY.search(name):
        return "file"
    if perms == "r-xp" and name.startswith("/"):
        return "code"
    return None


_LIBRARY = re.compile(r"\.so(\.[0-9.]+)?$")  # a shared library's data segment is no weights file


def _split(smaps: str) -> None:
    """Cut every large mapping that has no huge-page advice yet into PIECE pieces, so that smaps counts each
    piece: every other piece is advised MADV_NOHUGEPAGE, and mappings whose flags differ stay apart. A file's
    pages (weights, code) get no transparent huge pages in any THP mode, so that advice changes nothing for
    them; anonymous memory is cut only under THP "madvise", where such a piece got no huge pages anyway. The
    pieces found touched are advised MADV_HUGEPAGE when they are collapsed."""
    madvise, anon_too = _libc().madvise, thp_mode() == "madvise"
    for r in _mappings(smaps):
        if (anon_too or r.kind != "anon") and r.end - r.start > 2 * PIECE and not r.flags & {"hg", "nh"}:
            first = (r.start + PIECE - 1) // PIECE * PIECE + PIECE
            for piece in range(first, r.end - PIECE + 1, 2 * PIECE):
                madvise(piece, PIECE, MADV_NOHUGEPAGE)


@functools.cache
def _libc():
    """The C library, with the signatures of the memory calls used here."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mremap.restype = ctypes.c_void_p
    libc.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int, ctypes.c_void_p]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def hot(regions: Iterable[Region], share: float = HOT_SHARE, exclude: Iterable[tuple[int, int]] = ()) -> list[Region]:
    """The regions of at least one huge page that a step read: a piece (of at most two huge pages) when the
    step touched anything in it, a larger mapping (one `referenced` did not cut) when it touched at least
    `share` of it. None that overlaps a range in `exclude` (start, end), such as a KV cache.

    Any touch counts for a piece: keeping only the pieces a step touched 16 pages or more of moved 206-236 MiB
    instead of 350-412 for a 124M int8 engine, but its steps were 1.3-2.3 ms slower (12.9-14.9 against
    11.2-13.3 ms, alternating runs on a 2-core Xeon VM): the interpreter's and the libraries' sparse pages count too."""
    exclude = list(exclude)

    def read(r: Region) -> bool:
        return r.referenced > 0 if r.end - r.start <= 2 * PIECE else r.referenced >= share * (r.end - r.start)

    return [r for r in regions if r.end - r.start >= HUGE_PAGE and read(r) and not any(lo < r.end and r.start < hi for lo, hi in exclude)]


def collapse(regions: Iterable[Region], mode: str | None = _THIS_MACHINE) -> Collapsed:
    """Move the whole huge pages inside `regions` into huge pages, keeping their contents and addresses;
    partial pages at the ends are left as they are. Anonymous memory is collapsed in place (MADV_COLLAPSE,
    advised MADV_HUGEPAGE first so the kernel keeps it so). A file's pages, which the kernel cannot collapse
    (a file mapped copy-on-write, machine code), are copied into new anonymous huge pages that then replace
    them at the same addresses (`_replace`). Where the kernel cannot (not Linux, THP off or "never", a kernel
    before 6.1) nothing happens and `skipped` says why."""
    mode = thp_mode() if mode == _THIS_MACHINE else mode
    if mode in (None, "never"):
        return Collapsed(skipped="no transparent huge pages on this system" if mode is None else "THP mode is never")
    libc = _libc()
    if libc.madvise(HUGE_PAGE, 0, MADV_COLLAPSE) != 0:  # an empty range: only whether the advice exists (EINVAL)
        return Collapsed(skipped="this kernel has no MADV_COLLAPSE (Linux 6.1+)")
    done = refused = code = 0
    start = time.perf_counter()
    for r in regions:
        lo, hi = (r.start + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE, r.end // HUGE_PAGE * HUGE_PAGE
        if hi <= lo:
            continue
        if r.kind == "anon":
            libc.madvise(lo, hi - lo, MADV_HUGEPAGE)
            ok = libc.madvise(lo, hi - lo, MADV_COLLAPSE) == 0
        else:
            ok = _replace(libc, lo, hi, PROT_READ | (PROT_EXEC if r.kind == "code" else PROT_WRITE))
        # not ok: no huge page free now, pages in use, a mapping that cannot have them; the rest may still work
        done, refused = (done + hi - lo, refused) if ok else (done, refused + hi - lo)
        code += hi - lo if ok and r.kind == "code" else 0
    return Collapsed(done, refused, time.perf_counter() - start, code=code)


def _replace(libc, lo: int, hi: int, prot: int) -> bool:
    """Replace the pages lo..hi (whole huge pages of a file's mapping) by anonymous memory holding the same
    bytes, advised MADV_HUGEPAGE before it is written, so it is made of huge pages: copied into, given the
    protection `prot` (read and execute for machine code), then moved over lo..hi by mremap (the file's pages
    are unmapped in the same call). The bytes are the same, so code running there goes on unaware; a system
    that forbids executable anonymous memory refuses the protection, and the code stays where it was."""
    size = hi - lo
    new = libc.mmap(None, size + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
    if new in (None, ctypes.c_void_p(-1).value):
        return False
    at = (new + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    libc.madvise(at, size, MADV_HUGEPAGE)
    ctypes.memmove(at, lo, size)
    moved = libc.mprotect(at, size, prot) == 0 and libc.mremap(at, size, size, MREMAP_MAYMOVE | MREMAP_FIXED, lo) == lo
    for a, b in ((new, at), (at + size, new + size + HUGE_PAGE)) if moved else ((new, new + size + HUGE_PAGE),):
        if b > a:  # what is left of the new mapping either side (all of it when nothing moved)
            libc.munmap(a, b - a)
    return moved


def advise(buf: mmap.mmap) -> None:
    """Ask Linux for 2 MiB pages for the mapping `buf`, before anything touches it (madvise MADV_HUGEPAGE; nothing
    where there is no madvise or no THP). Anonymous memory is then faulted in as huge pages where the kernel can give
    them. A file's pages that the page cache does not hold yet are read from the disk into 2 MiB folios and mapped
    so (a file system with large folios: ext4 and xfs on recent kernels), where the plain mapping of a file read
    from the disk gets 4 KiB ones, which every later mapping of it shares while the page cache keeps them."""
    with contextlib.suppress(AttributeError, OSError):  # no madvise (not Linux) or no THP: 4 KiB pages
        buf.madvise(mmap.MADV_HUGEPAGE)


def anonymous(nbytes: int) -> tuple[mmap.mmap, int]:
    """(buffer, offset): nbytes of fresh private anonymous memory from `offset` on, which starts on a 2 MiB
    boundary, advised MADV_HUGEPAGE before anything is written to it, so that Linux backs it with 2 MiB pages
    where it can (THP "madvise" or "always"). Filling it can cost little over 4 KiB pages, or many times more
    where the host backs fresh 2 MiB blocks slowly (`packing`; docs/generation.md, "Huge pages"). Freed when the
    last reference to the buffer goes."""
    flags = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)
    buf = mmap.mmap(-1, nbytes + HUGE_PAGE, flags=flags) if flags else mmap.mmap(-1, nbytes + HUGE_PAGE)
    advise(buf)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    return buf, -address % HUGE_PAGE


# Whether `empty` asks for huge pages: inside `packing(True)` only (an engine that moves its hot memory into them)
_PACK_HUGE: contextvars.ContextVar[bool] = contextvars.ContextVar("gpt2kit_pack_huge", default=False)


@contextlib.contextmanager
def packing(huge: bool) -> Iterator[None]:
    """`empty` in this block (this thread's) gives huge pages (`huge`) or torch's own memory. Engines that collapse
    their hot memory (`wants_huge_pages`: servers, long runs) pack their weights in huge pages; the rest do not,
    as fresh huge pages can cost far more than they save: on a 2-core Zen 3 VM (AMD EPYC) whose host had taken back
    the guest's free 2 MiB blocks, packing GPT-2 124M's float32 kernels took 1.6 s in huge pages against 1.1 s in 4 KiB
    ones (benchmarks/kernel_choice.py, RESULTS.md), and 9.1 against 2.2 s in a slower hour, while a 128-token decode ran
    at 30.5-39.9 tok/s with huge pages against 33.9-37.4 without (two runs of benchmarks/generate.py --huge-pages).
    gemv.c's packed weights are packed here only where the packed-weight store has none to map (model/packed_store.py)."""
    token = _PACK_HUGE.set(huge)
    try:
        yield
    finally:
        _PACK_HUGE.reset(token)


def empty(shape: tuple[int, ...], dtype):
    """An uninitialised torch tensor, in `anonymous` memory when it holds at least one huge page and huge pages
    are asked for (`packing`), else torch's own: for weights a decode step streams, written once when a kernel packs
    them, then read without a TLB miss every 4 KiB (a 124M fp32 step's products: ~20.5 ms against ~23.7 with 4 KiB
    pages, MKL's and gemv.c's alike, on the 2-core Xeon VM above)."""
    import torch  # here, not at the top: this module runs before torch is imported (relaunch)

    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < HUGE_PAGE or not _PACK_HUGE.get():
        return torch.empty(shape, dtype=dtype)
    buf, offset = anonymous(nbytes)
    return torch.frombuffer(buf, dtype=torch.uint8, count=nbytes, offset=offset).view(dtype).view(shape)  # keeps `buf` alive


def wants_huge_pages(mode: str, steps: int | None) -> bool:
    """Whether an engine built for `steps` decode steps (None: one that lives on, as a server's) collapses."""
    if mode not in HUGE_PAGE_MODES:
        raise ConfigError(f"huge_pages must be one of {HUGE_PAGE_MODES}, got {mode!r}.")
    return mode == "on" or (mode == "auto" and (steps is None or steps >= LONG_RUN_STEPS))
