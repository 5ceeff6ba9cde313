"""Packed weights kept on disk and mapped back from the page cache: a later run maps what an earlier one packed.

A decode step streams every weight once, so where the packed weights sit decides its speed as much as their
layout. llama.cpp maps its GGUF file, and Linux maps a file's page cache in 2 MiB pages where it holds the file in
large folios (ext4 and xfs on recent kernels: `FilePmdMapped` in /proc/<pid>/smaps). Its weights then stream
without a TLB miss every 4 KiB, and no fresh memory is faulted in to hold them. Fresh anonymous huge pages can cost
far more where a virtual machine's host has taken back the guest's free 2 MiB blocks (hugepages.packing). On a
2-core Zen 3 VM (AMD EPYC), 124M fp32, a `llama-bench` on its mapped file ran at 59-65 tok/s against 57-62 with the
weights read into its own 4 KiB pages (`--load-mode none`, two runs each), and gpt2kit's decode at 63.5 tok/s
with its packed weights in a mapped file against 59.5 in 4 KiB pages (medians of five alternating runs).

gemv.c's packed weights (gemv.Packed) get the same here. The first run that packs a weight marks it; the second
writes the packed bytes to the store and maps them from there; later runs, in any process, map them and pack
nothing. (A weight packed once, as each of a training run's checkpoints or a test's random model is, is never
written: ~0.5 GB each for 124M.)
  - the key is the content: xxh3-128 (the xxhash package) of the source weight's bytes and of what decides the
    layout (the kind, dtypes, shapes and strides, LAYOUT's version). So a weight changed in memory after loading (fine-tuned,
    merged) is packed anew, never taken for the file's;
  - what a file holds is the packing's to say (`fill`): gemv.c's int8 weight keys the float weight it rounds, and its
    file holds the 8-bit blocks, the scales and the row sums, so a stored one is not rounded again;
  - each file ends with the xxh3-128 of its packed bytes, checked when it is mapped: a file cut short or damaged
    (a crash, a full disk) is packed again and replaced;
  - files are written under a temporary name and renamed, so a reader never sees one half-written;
  - a file is mapped advised MADV_HUGEPAGE (hugepages.advise) before its digest's read: a write leaves it in large
    folios, but one the page cache let go (a reboot, memory pressure, a host taking pages back) is read back from the
    disk into 4 KiB folios by a plain mapping, and every later run maps those (on the Zen 3 VM the stored 124M fp32
    weights had fallen to 18 % in 2 MiB pages); advised, the reads come back in 2 MiB folios (99 %);
  - the store keeps to GPT2KIT_PACKED_STORE_GB (LIMIT_GB by default), removing the files used longest ago (a
    file still mapped stays readable until its mapping goes).
Weights of under MIN_BYTES (a tiny model's; counted in the source weight's bytes, which the packing's work grows
with) are packed in memory. GPT2KIT_PACKED_STORE=0 packs in memory every run, as does a store folder that cannot be
written. `gpt2kit info --kernels` shows the store.
"""

from __future__ import annotations

import contextlib
import functools
import math
import mmap
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from gpt2kit import hugepages, machine
from gpt2kit.atomic import atomic_path
from gpt2kit.errors import ConfigError

SWITCH = "GPT2KIT_PACKED_STORE"  # "0": pack in memory every run
LIMIT = "GPT2KIT_PACKED_STORE_GB"  # the store's size, in GiB (LIMIT_GB unless set)
LIMIT_GB = 8.0  # GPT-2 1.5B's float32 weights packed once, or 124M's in every kind a few times over
LAYOUT = "gpt2kit packed v1"  # part of every key: a change of what a file holds makes every old key miss
MIN_BYTES = 2 << 20  # smaller source weights are packed in memory: a file each would cost more than it saves
DIGEST = 16  # bytes of the trailer: xxh3-128 of the packed bytes
SUFFIX = ".packed"
MARK = ".seen"  # an empty file: a weight packed once, stored when it is packed again (`_seen_before`)
MAX_MARKS, PRUNE_EVERY = 4096, 1024
STALE_S = 3600  # a temporary file this old was left by a write that never finished


def folder() -> Path:
    """The store: packed/ in the user cache directory (machine.cache_dir)."""
    return machine.cache_dir() / "packed"


def unavailable() -> str | None:
    """Why packed weights are not stored here (None: they are)."""
    if os.environ.get(SWITCH) == "0":
        return f"turned off ({SWITCH}=0)"
    if _xxhash() is None:
        return "the xxhash package is not installed (pip install xxhash)"
    if limit_bytes() <= 0:
        return f"its size is 0 ({LIMIT})"
    return None


def limit_bytes() -> int:
    """The store's size cap, from GPT2KIT_PACKED_STORE_GB (LIMIT_GB unless set; 0 turns the store off)."""
    value = os.environ.get(LIMIT, str(LIMIT_GB))
    try:
        gib = float(value)
    except ValueError:
        gib = math.nan
    if not gib >= 0 or math.isinf(gib):
        raise ConfigError(f"{LIMIT} must be a size in GiB, 0 or more (e.g. {LIMIT_GB:g}; 0 turns the store off), got {value!r}.")
    return int(gib * (1 << 30))


@functools.cache
def _xxhash():
    try:
        import xxhash
    except ImportError:
        return None
    return xxhash


def packed(source: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, fill: Callable[[torch.Tensor], None],
           layout: str) -> torch.Tensor:  # fmt: skip
    """A tensor of `shape` and `dtype` holding what `fill(out)` writes into `out` from `source` (the weight it packs,
    whole): mapped from the store where it holds this source packed this way (`layout` names the way), else packed
    into memory (hugepages.empty), and, where a run packed it before (`_seen_before`), written to the store and mapped
    from there; packed in memory alone where nothing is stored (`unavailable`, a small weight, a source that is a view
    of a larger tensor, a weight's first packing, a failed write)."""
    if source.numel() * source.element_size() < MIN_BYTES or unavailable() or not _whole(source):
        return _in_memory(shape, dtype, fill)
    path = folder() / f"{key(source, shape, dtype, layout)}{SUFFIX}"
    found = _mapped(path, shape, dtype)
    if found is not None:
        with contextlib.suppress(OSError):
            os.utime(path)  # used now: the last to be removed
        return found
    out = _in_memory(shape, dtype, fill)
    if not _seen_before(path) or not _write(path, out):  # a weight packed once, as a training run's, is never written
        return out
    _trim(path)
    found = _mapped(path, shape, dtype, check=False)  # its digest was just taken from `out`
    return out if found is None else found


def _seen_before(path: Path) -> bool:
    """Whether a run packed this weight before (its mark is there; the write that follows replaces it), else mark it
    now. So only a weight packed twice is stored: a model a user runs again, not each of a training run's checkpoints
    or a test's random model, which would write their packed weights (~0.5 GB for 124M) for nothing."""
    mark = path.with_suffix(MARK)
    if mark.exists():
        with contextlib.suppress(OSError):
            mark.unlink()
        return True
    global _marks_made
    try:
        mark.parent.mkdir(parents=True, exist_ok=True)
        mark.touch()
    except OSError:
        return False
    if _marks_made % PRUNE_EVERY == 0:
        _prune_marks(mark.parent)
    _marks_made += 1
    return False


_marks_made = 0  # marks this process made (`_prune_marks` runs at its first and every PRUNE_EVERY after)


def _prune_marks(where: Path) -> None:
    """Keep the MAX_MARKS newest marks (a weight's first packing), removing the rest."""
    marks = sorted(_entries(where, MARK), key=lambda f: f[2])
    for path, _, _ in marks[: max(0, len(marks) - MAX_MARKS)]:
        with contextlib.suppress(OSError):
            path.unlink()


def key(source: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype, layout: str) -> str:
    """The store's name for `source` packed to `shape` and `dtype` the way `layout` says: xxh3-128, in hex."""
    h = _xxhash().xxh3_128()
    h.update(f"{LAYOUT} | {layout} | {source.dtype} {tuple(source.shape)} {source.stride()} -> {dtype} {tuple(shape)}".encode())
    h.update(_bytes(source))
    return h.hexdigest()


def status() -> str:
    """One line for `gpt2kit info --kernels`: where the store is and what it holds, or why there is none."""
    if why := unavailable():
        return f"off: {why}"
    files = _entries(folder(), SUFFIX)
    used = sum(size for _, size, _ in files)
    return f"{folder()}: {len(files)} weights, {used / (1 << 20):.0f} of {limit_bytes() / (1 << 20):.0f} MiB"


def _whole(source: torch.Tensor) -> bool:
    """Whether `source` is the whole of its memory in some order (a weight, or a transposed view of one, as a Hugging
    Face checkpoint's Conv1D weights load), not a view of part of a tensor (a measurement's slice of the head)."""
    storage = source.untyped_storage()
    return source.device.type == "cpu" and source.storage_offset() == 0 and storage.nbytes() == source.numel() * source.element_size()


def _bytes(t: torch.Tensor) -> memoryview:
    """The bytes of the memory of a CPU tensor `_whole` holds, as they lie (its strides say the order), without a copy."""
    return memoryview(torch.empty(0, dtype=torch.uint8).set_(t.untyped_storage()).numpy())


def _in_memory(shape: tuple[int, ...], dtype: torch.dtype, fill: Callable[[torch.Tensor], None]) -> torch.Tensor:
    out = hugepages.empty(shape, dtype)
    fill(out)
    return out


def _mapped(path: Path, shape: tuple[int, ...], dtype: torch.dtype, check: bool = True) -> torch.Tensor | None:
    """The packed weight in `path`, mapped read-only, or None where there is none or it is not whole and intact
    (its size, and with `check` the trailer's digest of its bytes)."""
    nbytes = math.prod(shape) * dtype.itemsize
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size != nbytes + DIGEST:
                return None
            m = mmap.mmap(f.fileno(), nbytes + DIGEST, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED)
    except (OSError, ValueError):
        return None
    hugepages.advise(m)  # before the digest's read: a file read from the disk comes in 2 MiB folios
    view = memoryview(m)
    intact = not check or _xxhash().xxh3_128_digest(view[:nbytes]) == bytes(view[nbytes:])
    view.release()
    if not intact:
        m.close()
        return None
    with warnings.catch_warnings():  # read-only memory: nothing writes a packed weight once it is packed
        warnings.simplefilter("ignore", UserWarning)
        data = torch.frombuffer(m, dtype=torch.uint8, count=nbytes)  # keeps `m` alive
    return data.view(dtype).view(shape)


def _write(path: Path, out: torch.Tensor) -> bool:
    """Write `out`'s bytes and their digest to `path` (atomically); False where that failed (a read-only or full
    disk): the weight is then used from memory."""
    data = memoryview(out.reshape(-1).view(torch.uint8).numpy())  # (nbytes,): out is contiguous (hugepages.empty's)
    try:
        with atomic_path(path, sync=False) as tmp, open(tmp, "wb") as f:  # the digest checks it
            f.write(data)
            f.write(_xxhash().xxh3_128_digest(data))
    except OSError:
        return False
    return True


def _entries(where: Path, suffix: str) -> list[tuple[Path, int, float]]:
    """(path, size, last modified) of each file in `where` whose name ends with `suffix`: the stored weights (SUFFIX),
    the marks (MARK), unfinished writes (".tmp")."""
    found = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(where):
            if entry.name.endswith(suffix):
                with contextlib.suppress(OSError):
                    st = entry.stat()
                    found.append((Path(entry.path), st.st_size, st.st_mtime))
    return found


def _trim(kept: Path) -> None:
    """Remove the weights used longest ago until the store holds no more than its limit; `kept` (just written) stays.
    A write's temporary file older than STALE_S (its process was killed mid-write) goes too."""
    for path, _, modified in _entries(kept.parent, ".tmp"):
        if time.time() - modified > STALE_S:
            with contextlib.suppress(OSError):
                path.unlink()
    files = sorted(_entries(kept.parent, SUFFIX), key=lambda f: f[2])
    used, limit = sum(size for _, size, _ in files), limit_bytes()
    for path, size, _ in files:
        if used <= limit:
            break
        if path != kept:
            with contextlib.suppress(OSError):
                path.unlink()
                used -= size
