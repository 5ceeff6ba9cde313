"""Huge pages: when GPT2KIT_HUGEPAGES=1 makes the `gpt2kit` command start itself again with glibc's hugetlb
tunable (before torch is imported, ending up with its memory in 2 MiB pages), and how an engine moves the
memory a decode step reads into huge pages in place (find it, collapse it, decide when it pays)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import mmap
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import huge_kib
from gpt2kit import hugepages

MADVISE, GLIBC, ASKED = "madvise", (2, 36), {"GPT2KIT_HUGEPAGES": "1"}


def test_asks_for_huge_pages_where_the_kernel_gives_them_on_request():
    env = hugepages.environment({"PATH": "/bin", **ASKED}, MADVISE, GLIBC)
    assert env == {"PATH": "/bin", **ASKED, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_keeps_the_users_other_tunables():
    env = hugepages.environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", **ASKED}, MADVISE, GLIBC)
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


@pytest.mark.parametrize(
    "environ, mode, glibc",
    [
        ({}, MADVISE, GLIBC),  # not asked for: the default
        ({"GPT2KIT_HUGEPAGES": "0"}, MADVISE, GLIBC),
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1", **ASKED}, MADVISE, GLIBC),  # already started with it: no loop
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0", **ASKED}, MADVISE, GLIBC),  # the user chose otherwise
        (ASKED, "always", GLIBC),  # every large block has them already
        (ASKED, "never", GLIBC),
        (ASKED, None, GLIBC),  # no THP (not Linux)
        (ASKED, MADVISE, (2, 34)),  # glibc before the tunable
        (ASKED, MADVISE, None),  # musl, macOS, Windows
    ],
)
def test_leaves_the_process_alone(environ, mode, glibc):
    assert hugepages.environment(environ, mode, glibc) is None


def test_reads_the_kernels_mode(tmp_path):
    (tmp_path / "enabled").write_text("always [madvise] never\n")
    assert hugepages.thp_mode(str(tmp_path / "enabled")) == "madvise"
    assert hugepages.thp_mode(str(tmp_path / "absent")) is None


def test_the_package_loads_its_entry_point_without_torch():
    """The command relaunches before importing torch (~2 s): importing its entry module must not load torch."""
    code = "import sys, gpt2kit.cli.__main__; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


LAZY_PACKAGES = ("gpt2kit", "gpt2kit.generate", "gpt2kit.train", "gpt2kit.eval", "gpt2kit.export", "gpt2kit.scaling")


@pytest.mark.parametrize("name", LAZY_PACKAGES)
def test_lazy_names_are_the_public_ones(name):
    """Each package whose names lazy.exports imports on first use: its _WHERE says what its TYPE_CHECKING imports
    (what type checkers see) say, its __all__ holds them and names nothing it lacks, and each name is its module's
    own object; an unknown name is an AttributeError."""
    import ast
    import importlib

    package = importlib.import_module(name)
    tree = ast.parse(Path(package.__file__).read_text(encoding="utf-8"))
    [block] = [n for n in tree.body if isinstance(n, ast.If) and getattr(n.test, "id", None) == "TYPE_CHECKING"]
    checked = {alias.name: imp.module for imp in block.body for alias in imp.names}
    assert checked == package._WHERE
    assert set(package._WHERE) <= set(package.__all__) and all(hasattr(package, public) for public in package.__all__)
    for public, module in package._WHERE.items():
        assert getattr(package, public) is getattr(importlib.import_module(module), public)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope  # noqa: B018


def test_submodules_are_attributes_of_the_package_as_before():
    """`import gpt2kit; gpt2kit.device.resolve_dtype(...)` worked when the package imported everything at once."""
    code = "import gpt2kit; print(gpt2kit.device.resolve_dtype('bf16'), gpt2kit.eval.perplexity.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["torch.bfloat16", "gpt2kit.eval.perplexity"]


needs_madvise = pytest.mark.skipif(
    hugepages.thp_mode() != MADVISE or (hugepages.glibc_version() or (0, 0)) < (2, 35),
    reason="needs Linux transparent huge pages in madvise mode and glibc 2.35+",
)


def _info(tmp_path, **env) -> dict:
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "GPT2KIT_HUGEPAGES")}
    environ |= {"GPT2KIT_CACHE_DIR": str(tmp_path), **env}
    cmd = [sys.executable, "-m", "gpt2kit", "info", "--kernels", "--json"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=environ, timeout=300).stdout)


@needs_madvise
def test_the_command_asked_for_huge_pages_runs_with_its_weights_in_them(tmp_path):
    on = _info(tmp_path, GPT2KIT_HUGEPAGES="1")["huge_pages"]
    assert on.startswith("on (THP madvise, GLIBC_TUNABLES=glibc.malloc.hugetlb=1)"), on
    assert int(on.split(", ")[-1].split()[0].replace(",", "")) > 0, on  # MiB of the process in huge pages
    off = _info(tmp_path)["huge_pages"]
    assert off.startswith("off for the whole process (THP madvise; GPT2KIT_HUGEPAGES=1 turns them on; an engine moves its hot memory: --huge-pages), 0 MiB"), off


@pytest.mark.parametrize(
    "tunables, on",
    [("glibc.malloc.hugetlb=1", True), ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", True),
     ("glibc.malloc.hugetlb=0", False), ("glibc.malloc.hugetlb=10", False), ("", False)],
)  # fmt: skip
def test_knows_when_glibc_asks_for_huge_pages(tunables, on):
    assert hugepages.in_use({"GLIBC_TUNABLES": tunables}) is on


# ---- moving the memory a decode step reads into huge pages (MADV_COLLAPSE) -------------------------------


def _private_buffer(nbytes: int):
    """A private anonymous mapping filled with a pattern, and its address (what malloc hands torch and fbgemm)."""
    m = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    m.write(bytes(range(256)) * (nbytes // 256))
    buf = (ctypes.c_char * nbytes).from_buffer(m)
    return m, buf, ctypes.addressof(buf)


CAN_COLLAPSE = hugepages.thp_mode() not in (None, "never") and hugepages.collapse([]).skipped is None
CAN_COLLAPSE = CAN_COLLAPSE and bool(hugepages.referenced(lambda: None))  # and the process may clear its referenced bits
needs_collapse = pytest.mark.skipif(not CAN_COLLAPSE, reason="needs Linux 6.1+ with transparent huge pages and /proc/self/clear_refs")


@pytest.mark.skipif(hugepages.thp_mode() not in ("madvise", "always"), reason="needs Linux transparent huge pages")
def test_anonymous_memory_starts_on_a_huge_page_and_is_made_of_them():
    size = 6 * hugepages.HUGE_PAGE
    buf, offset = hugepages.anonymous(size)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buf)) + offset
    assert address % hugepages.HUGE_PAGE == 0 and len(buf) >= offset + size
    view = memoryview(buf)[offset : offset + size]
    view[:] = bytes(size)  # the first write: the kernel backs it now
    assert huge_kib(address, address + size) >= 2048  # 2 MiB pages (all six where the kernel has them free)
    view.release()
    buf.close()


@pytest.mark.skipif(hugepages.thp_mode() not in ("madvise", "always"), reason="needs Linux transparent huge pages")
def test_empty_tensors_of_a_huge_page_or_more_sit_in_huge_pages_where_packing_asks(huge_asks):
    import torch

    with hugepages.packing(True):
        big = hugepages.empty((1024, 1024), torch.float32).fill_(1.5)  # 4 MiB
        small = hugepages.empty((8, 8), torch.bfloat16)  # torch's own allocation
        with hugepages.packing(False):
            plain = hugepages.empty((1024, 1024), torch.float32).fill_(1.5)
        again = hugepages.empty((512, 1024), torch.float32).fill_(1.5)  # the outer block's again
    outside = hugepages.empty((1024, 1024), torch.float32).fill_(1.5)  # not asked for: torch's own memory
    assert huge_asks == [4 << 20, 2 << 20]
    lo = big.data_ptr()
    assert big.shape == (1024, 1024) and big.dtype == torch.float32 and big.is_contiguous()
    assert lo % hugepages.HUGE_PAGE == 0 and huge_kib(lo, lo + big.nbytes) >= 2048 and float(big.sum()) == 1.5 * 2**20
    assert again.data_ptr() % hugepages.HUGE_PAGE == 0 and huge_kib(again.data_ptr(), again.data_ptr() + again.nbytes) >= 2048
    assert small.shape == (8, 8) and small.dtype == torch.bfloat16 and small.untyped_storage().nbytes() == 128
    assert all(t.shape == (1024, 1024) and float(t.sum()) == 1.5 * 2**20 for t in (plain, outside))


def test_an_engine_packs_its_weights_in_huge_pages_only_when_it_collapses(monkeypatch):
    from conftest import tiny_gpt
    from gpt2kit.generate import Engine, decode

    asked = []
    real = decode.inference_copy
    monkeypatch.setattr(decode, "inference_copy", lambda *a, **k: asked.append(hugepages._PACK_HUGE.get()) or real(*a, **k))
    model = tiny_gpt(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=64)
    Engine(model, max_batch=1)
    Engine(model, max_batch=1, huge_pages=True)
    assert asked == [False, True] and hugepages._PACK_HUGE.get() is False


@needs_collapse
def test_collapse_moves_a_range_into_huge_pages_and_keeps_its_contents():
    m, buf, address = _private_buffer(8 * hugepages.HUGE_PAGE)
    before = hashlib.sha256(bytes(buf)).hexdigest()
    assert huge_kib(address, address + 1) == 0  # written through 4 KiB pages: THP is asked for nowhere here
    end, page = address + 8 * hugepages.HUGE_PAGE, hugepages.HUGE_PAGE
    whole = end // page - -(-address // page)  # 8 where the kernel aligned the mapping to 2 MiB, else 7
    done = hugepages.collapse([hugepages.Region(address, end, 0)])
    assert done.skipped is None and done.refused == 0
    assert done.bytes == whole * page  # partial pages at the ends stay as they are
    assert huge_kib(address, address + 1) == whole * 2048
    assert hashlib.sha256(bytes(buf)).hexdigest() == before
    del buf
    m.close()


@needs_collapse
def test_referenced_counts_what_the_run_touched_piece_by_piece():
    """A large mapping is cut into pieces, so that a step's weights inside a big heap are found as hot. The
    run reads one byte of each 4 KiB page of the first half: a copy of all of it would be a new mapping that
    the kernel may place next to the buffer and merge with its last piece."""
    size, half = 32 << 20, 16 << 20
    m, buf, address = _private_buffer(size)
    view = memoryview(buf).cast("B")
    found = [r for r in hugepages.referenced(lambda: bytes(view[:half:4096])) if address <= r.start < address + size]
    assert sum(r.referenced for r in found) >= half - (64 << 10)  # the first half, read (4 KiB pages)
    assert len(found) >= 4  # cut into pieces, smaps counting each
    assert all(r.referenced == 0 for r in found if r.start >= address + half)
    hot = hugepages.hot(found)
    assert hot and all(r.start < address + half for r in hot)  # nothing from the cold half alone is moved
    untouched = [r for r in hugepages.referenced(lambda: None) if address <= r.start < address + size]
    assert [r.referenced for r in untouched] == [0] * len(untouched)
    view.release()
    del buf
    m.close()


@needs_collapse
def test_a_file_mapped_copy_on_write_is_replaced_by_huge_pages_with_the_same_bytes(tmp_path):
    """safetensors maps the weights file copy-on-write and the tensors are views of it: the kernel cannot
    collapse such a mapping, so its bytes move into anonymous huge pages at the same addresses."""
    size = 16 * hugepages.HUGE_PAGE
    data = bytes(range(256)) * (size // 256)
    (tmp_path / "weights.bin").write_bytes(data)
    with open(tmp_path / "weights.bin", "r+b") as f:
        m = mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    buf = (ctypes.c_char * size).from_buffer(m)
    address = ctypes.addressof(buf)
    pieces = [r for r in hugepages.referenced(lambda b=buf: bytes(b)) if address <= r.start < address + size]
    assert len(pieces) >= 4 and {r.kind for r in pieces} == {"file"}  # cut into pieces, as the heap is
    assert sum(r.referenced for r in pieces) >= size - (64 << 10)
    assert hugepages.hot(pieces) == pieces
    done = hugepages.collapse(pieces)
    assert done.refused == 0 and done.code == 0 and done.bytes >= 14 * hugepages.HUGE_PAGE, done
    assert bytes(buf) == data and huge_kib(address, address + size) >= 14 * 2048  # same bytes, same address, huge pages
    buf[0] = b"x"  # still private: the file keeps its bytes
    assert (tmp_path / "weights.bin").read_bytes()[:1] == data[:1]
    del buf
    m.close()


# Run in a fresh process: it moves libtorch's own code. It checks that the pieces of code a torch call ran are
# found, that they move into huge pages with the bytes the library file has at those places, and that the
# same call then runs from them and gives the same numbers.
_MOVE_CODE = """
import ctypes, json, sys, torch
from gpt2kit import hugepages
sys.path.insert(0, sys.argv[1])
from conftest import huge_kib
x, w = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)), torch.randn(64, 64)
run = lambda: torch.nn.functional.gelu(x @ w).sum().item()
before = run()
code = [r for r in hugepages.hot(hugepages.referenced(run)) if r.kind == "code"]
pieces = []  # libtorch's code, as `referenced` cut it: (start, end, offset in the file, path)
for line in open("/proc/self/maps"):
    f = line.split()
    if len(f) > 5 and f[1] == "r-xp" and f[5].endswith("libtorch_cpu.so"):
        pieces.append((*(int(v, 16) for v in f[0].split("-")), int(f[2], 16), f[5]))
ours = [r for r in code if any(p[0] <= r.start < p[1] for p in pieces)]
done = hugepages.collapse(ours)
lo = min((r.start + hugepages.HUGE_PAGE - 1) // hugepages.HUGE_PAGE * hugepages.HUGE_PAGE for r in ours)
start, _, offset, path = min(pieces)
with open(path, "rb") as f:
    f.seek(offset + lo - start)
    same = f.read(hugepages.HUGE_PAGE) == ctypes.string_at(lo, hugepages.HUGE_PAGE)
print(json.dumps(dict(pieces=len(ours), code=done.code, refused=done.refused, same=same,
                      huge=huge_kib(start, max(p[1] for p in pieces)), before=before, after=run())))
"""


@needs_collapse
def test_the_machine_code_a_step_runs_moves_into_huge_pages_and_still_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", _MOVE_CODE, os.path.dirname(__file__)], capture_output=True, text=True,
                         env=env, timeout=300, check=True).stdout  # fmt: skip
    got = json.loads(out.strip().splitlines()[-1])
    assert got["pieces"] > 0 and got["refused"] == 0, got  # found; moved
    assert got["code"] >= got["pieces"] * hugepages.HUGE_PAGE // 2 and got["huge"] * 1024 >= got["code"], got
    assert got["same"] and got["after"] == got["before"], got


def test_a_system_that_forbids_executable_memory_keeps_the_code_where_it_was():
    """Where mprotect(PROT_EXEC) on anonymous memory is refused (SELinux execmem), nothing moves and the
    new memory is handed back."""

    class Refusing:
        def __init__(self):
            self.unmapped, self.libc = [], hugepages._libc()

        def __getattr__(self, name):
            return getattr(self.libc, name)

        def mprotect(self, *args):
            return -1

        def mremap(self, *args):
            raise AssertionError("nothing may move without its protection")

        def munmap(self, at, size):
            self.unmapped.append(size)
            return self.libc.munmap(at, size)

    m, buf, address = _private_buffer(4 * hugepages.HUGE_PAGE)
    lo = (address + hugepages.HUGE_PAGE - 1) // hugepages.HUGE_PAGE * hugepages.HUGE_PAGE
    libc = Refusing()
    assert hugepages._replace(libc, lo, lo + hugepages.HUGE_PAGE, hugepages.PROT_READ | hugepages.PROT_EXEC) is False
    assert libc.unmapped == [2 * hugepages.HUGE_PAGE]  # the whole new mapping, given back
    del buf
    m.close()


def test_hot_regions_are_the_pieces_a_step_touched_and_the_mappings_it_mostly_read():
    page = hugepages.HUGE_PAGE
    regions = [
        hugepages.Region(0, 100 * page, 30 * page),  # a mapping not cut, a quarter or more read: hot
        hugepages.Region(200 * page, 300 * page, 20 * page),  # a fifth: cold (a prefill-only copy, an embedding)
        hugepages.Region(400 * page, 402 * page, 4096),  # a piece `referenced` cut, touched once: hot
        hugepages.Region(402 * page, 404 * page, 0, "code"),  # a piece not touched
        hugepages.Region(500 * page, 500 * page + page // 2, page // 2),  # less than one huge page: nothing to gain
        hugepages.Region(600 * page, 601 * page, page, "code"),  # machine code the step ran
        hugepages.Region(700 * page, 702 * page, page),  # inside an excluded range (a KV cache)
    ]
    assert hugepages.hot(regions, exclude=[(701 * page, 800 * page)]) == [regions[0], regions[2], regions[5]]
    assert hugepages.hot(regions)[-1] == regions[6]


@pytest.mark.parametrize("mode, why", [("never", "THP mode is never"), (None, "no transparent huge pages")])
def test_collapse_asks_nothing_where_the_kernel_has_no_huge_pages(mode, why):
    done = hugepages.collapse([hugepages.Region(0, 64 * hugepages.HUGE_PAGE, 0)], mode=mode)
    assert done.bytes == 0 and why in done.skipped
    assert done.describe().startswith("not used (")


@pytest.mark.parametrize(
    "mode, steps, on",
    [("on", 1, True), ("off", None, False), ("off", 10_000, False), ("auto", None, True),
     ("auto", hugepages.LONG_RUN_STEPS, True), ("auto", hugepages.LONG_RUN_STEPS - 1, False), ("auto", 64, False)],
)  # fmt: skip
def test_auto_collapses_for_engines_that_run_long(mode, steps, on):
    assert hugepages.wants_huge_pages(mode, steps) is on


def test_a_bad_huge_pages_value_says_what_is_allowed():
    from gpt2kit.errors import ConfigError
    from gpt2kit.generate.text import GenerateOptions
    from gpt2kit.serve.config import ServeConfig

    for make in (lambda: GenerateOptions(huge_pages="yes"), lambda: ServeConfig(huge_pages="yes")):
        with pytest.raises(ConfigError, match=r"huge_pages must be one of \('auto', 'on', 'off'\), got 'yes'"):
            make()
