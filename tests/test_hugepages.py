"""Huge pages on request: when GPT2KIT_HUGEPAGES=1 makes the `gpt2kit` command start itself again with glibc's
hugetlb tunable, and that it does so before torch is imported and ends up with its memory in 2 MiB pages."""

from __future__ import annotations

import json
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
    assert off.startswith("off (THP madvise; GPT2KIT_HUGEPAGES=1 turns them on), 0 MiB"), off


@pytest.mark.parametrize(
    "tunables, on",
    [("glibc.malloc.hugetlb=1", True), ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", True),
     ("glibc.malloc.hugetlb=0", False), ("glibc.malloc.hugetlb=10", False), ("", False)],
)  # fmt: skip
def test_knows_when_glibc_asks_for_huge_pages(tunables, on):
    assert hugepages.in_use({"GLIBC_TUNABLES": tunables}) is on
