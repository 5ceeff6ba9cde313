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

import pytest

import gpt2kit
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


def test_lazy_names_are_the_public_ones():
    assert sorted(gpt2kit.__all__) == sorted(gpt2kit._WHERE)
    assert all(getattr(gpt2kit, name) is not None for name in gpt2kit.__all__)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        gpt2kit.nope  # noqa: B018


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


def _huge_kib(address: int) -> int:
    """AnonHugePages of the mapping that holds `address`, from /proc/self/smaps."""
    inside = False
    with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 5 and "-" in fields[0] and ":" in fields[3]:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                inside = lo <= address < hi
            elif inside and fields[0] == "AnonHugePages:":
                return int(fields[1])
    raise AssertionError("address not mapped")


CAN_COLLAPSE = hugepages.thp_mode() not in (None, "never") and hugepages.collapse([]).skipped is None
CAN_COLLAPSE = CAN_COLLAPSE and bool(hugepages.referenced(lambda: None))  # and the process may clear its referenced bits
needs_collapse = pytest.mark.skipif(not CAN_COLLAPSE, reason="needs Linux 6.1+ with transparent huge pages and /proc/self/clear_refs")


@needs_collapse
def test_collapse_moves_a_range_into_huge_pages_and_keeps_its_contents():
    m, buf, address = _private_buffer(8 * hugepages.HUGE_PAGE)
    before = hashlib.sha256(bytes(buf)).hexdigest()
    assert _huge_kib(address) == 0  # written through 4 KiB pages: THP is asked for nowhere here
    end, page = address + 8 * hugepages.HUGE_PAGE, hugepages.HUGE_PAGE
    whole = end // page - -(-address // page)  # 8 where the kernel aligned the mapping to 2 MiB, else 7
    done = hugepages.collapse([hugepages.Region(address, end, 0)])
    assert done.skipped is None and done.refused == 0
    assert done.bytes == whole * page  # partial pages at the ends stay as they are
    assert _huge_kib(address) == whole * 2048
    assert hashlib.sha256(bytes(buf)).hexdigest() == before
    del buf
    m.close()


@needs_collapse
def test_referenced_counts_what_the_run_touched_piece_by_piece():
    """A large mapping is cut into pieces, so that a step's weights inside a big heap are found as hot."""
    size, half = 32 << 20, 16 << 20
    m, buf, address = _private_buffer(size)
    view = memoryview(buf).cast("B")
    found = [r for r in hugepages.referenced(lambda: bytes(view[:half])) if address <= r.start < address + size]
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
    [region] = [r for r in hugepages.referenced(lambda b=buf: bytes(b)) if r.start <= address < r.end]
    assert region.file and region.referenced >= size - (64 << 10)
    assert hugepages.hot([region]) == [region]
    done = hugepages.collapse([region])
    assert done.refused == 0 and done.bytes >= 14 * hugepages.HUGE_PAGE, done
    assert bytes(buf) == data and _huge_kib(address) >= 14 * 2048  # same bytes, same address, huge pages
    buf[0] = b"x"  # still private: the file keeps its bytes
    assert (tmp_path / "weights.bin").read_bytes()[:1] == data[:1]
    del buf
    m.close()


def test_hot_regions_are_those_a_step_mostly_read():
    page = hugepages.HUGE_PAGE
    regions = [
        hugepages.Region(0, 100 * page, 30 * page),  # a quarter or more: hot
        hugepages.Region(200 * page, 300 * page, 20 * page),  # a fifth: cold (a prefill-only copy, an embedding)
        hugepages.Region(400 * page, 402 * page, page // 2),  # a quarter, of a piece `referenced` cut: hot
        hugepages.Region(500 * page, 500 * page + page // 2, page // 2),  # less than one huge page: nothing to gain
    ]
    assert hugepages.hot(regions) == [regions[0], regions[2]]


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
