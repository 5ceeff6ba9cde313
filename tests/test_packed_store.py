"""The packed-weight store (model/packed_store.py): a weight packed twice is stored and mapped from the page cache by
later packings, with the same products; a weight packed once, a changed weight, a damaged file, a store that is off
or cannot be written, and a full store each behave as the module says."""

import gc
import mmap
import os
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gpt2kit import hugepages
from gpt2kit.model import gemv, int8, packed_store

pytestmark = pytest.mark.skipif(gemv.unavailable(torch.float32) is not None or packed_store.unavailable() is not None,
                                reason="gemv.c or the store is not available here")  # fmt: skip


@pytest.fixture(autouse=True)
def store(tmp_path, monkeypatch) -> Path:
    """A store of its own, for weights of any size."""
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(packed_store, "MIN_BYTES", 0)
    return tmp_path / "cache" / "packed"


def weight(seed: int = 0, shape=(40, 72)) -> tuple[torch.Tensor, torch.Tensor]:
    """A weight whose shape is no multiple of gemv.c's blocks (padded when packed), and a non-zero bias."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape[0], generator=g)


def mapped_from(t: torch.Tensor) -> str | None:
    """The file whose mapping holds t's memory, from /proc/self/maps (None: anonymous memory)."""
    at = t.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            if lo <= at < hi:
                return fields[5] if len(fields) > 5 and fields[5].startswith("/") else None
    return None


def stored(w: torch.Tensor, b: torch.Tensor | None, dtype=torch.float32) -> gemv.Packed:
    """Packed twice (as two runs would: the first marks the weight, the second stores it), the second packing."""
    gemv.Packed(w, b, dtype)
    return gemv.Packed(w, b, dtype)


def packed_files(store: Path) -> list[Path]:
    return sorted(store.glob(f"*{packed_store.SUFFIX}"))


def product(p: gemv.Packed, w: torch.Tensor, b: torch.Tensor) -> None:
    x = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(p(x), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_weight_packed_twice_is_stored_and_mapped_by_the_next_packing(store, dtype):
    w, b = weight()
    first = gemv.Packed(w, b, dtype)  # a weight's first packing: marked, kept in memory
    assert mapped_from(first.w) is None and not packed_files(store) and len(list(store.glob("*.seen"))) == 1
    second = gemv.Packed(w, b, dtype)
    [path] = packed_files(store)
    assert path.stat().st_size == second.w.numel() * second.w.element_size() + packed_store.DIGEST
    assert not list(store.glob("*.seen"))  # the mark is replaced by the weight
    again = gemv.Packed(w.clone(), b, dtype)  # another tensor, the same values: the same key
    assert mapped_from(again.w) == str(path) == mapped_from(second.w)
    assert torch.equal(again.w, first.w) and len(packed_files(store)) == 1
    if dtype == torch.float32:
        product(again, w, b)


def test_the_packed_bytes_are_what_packing_in_memory_gives(monkeypatch):
    w, b = weight()
    kept = stored(w, b).w
    monkeypatch.setenv(packed_store.SWITCH, "0")
    in_memory = gemv.Packed(w, b, torch.float32).w
    assert mapped_from(kept) is not None and mapped_from(in_memory) is None and torch.equal(kept, in_memory)


def test_an_int8_weight_is_stored_with_its_scales_and_row_sums_and_not_quantized_again(store, monkeypatch):
    """gemv.c's int8 weight keyed on the float weight it quantizes: a later packing maps q in blocks, the scales and
    the row sums from the file, quantizes nothing, and multiplies as a packing in memory does."""
    w, b = weight(shape=(40, 200))  # K of 4 64-lane blocks, the last one part-filled
    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(7))
    monkeypatch.setenv(packed_store.SWITCH, "0")
    plain = gemv.Packed(w, b, torch.int8)
    monkeypatch.delenv(packed_store.SWITCH)
    q, scale, qsum = int8.quantize(w)
    assert torch.equal(plain.scale, scale) and torch.equal(plain.qsum, qsum) and torch.equal(plain.qsum, q.sum(1, dtype=torch.int32))
    stored(w, b, torch.int8)
    made = []
    real = int8._quantize
    monkeypatch.setattr(int8, "_quantize", lambda weight: made.append(weight.shape) or real(weight))
    source = w.clone()  # another tensor, the same values
    again = gemv.Packed(source, b, torch.int8)
    [path] = packed_files(store)
    assert not made and {mapped_from(t) for t in (again.w, again.scale, again.qsum)} == {str(path)}
    offered = int8.quantize(source)  # what an int8 prompt kernel packed later takes: the file's, unblocked
    assert not made and all(torch.equal(mine, theirs) for mine, theirs in zip(offered, (q, scale, qsum)))
    assert path.stat().st_size == plain.w.numel() + 8 * 40 + packed_store.DIGEST
    for mine, theirs in ((again.w, plain.w), (again.scale, plain.scale), (again.qsum, plain.qsum)):
        assert torch.equal(mine, theirs)
    assert torch.equal(again(x), plain(x))  # the products: test_gemv holds an in-memory packing to int8's scheme


def test_a_changed_weight_is_packed_anew(store):
    w, b = weight()
    stored(w, b)
    w2 = w.clone()
    w2[3, 5] += 1.0  # one element: another key
    p = stored(w2, b)
    assert len(packed_files(store)) == 2 and mapped_from(p.w) is not None
    product(p, w2, b)


def test_the_same_weight_packed_another_way_is_another_file(store):
    w, b = weight()
    stored(w, b, torch.float32)
    stored(w, b, torch.bfloat16)
    assert len(packed_files(store)) == 2


@pytest.mark.parametrize("damage", ["a byte", "cut short"])
def test_a_damaged_file_is_packed_again(store, damage):
    w, b = weight()
    stored(w, b)
    [path] = packed_files(store)
    data = bytearray(path.read_bytes())
    if damage == "a byte":
        data[103] ^= 0x40  # an exponent bit of a weight (float 25: row 1, column 9)
    else:
        data = data[: len(data) // 2]
    path.write_bytes(bytes(data))
    p = gemv.Packed(w, b, torch.float32)  # not mapped: packed in memory (and marked)
    assert mapped_from(p.w) is None
    product(p, w, b)
    p = gemv.Packed(w, b, torch.float32)  # written again, intact, and mapped
    assert mapped_from(p.w) == str(path) and path.stat().st_size == p.w.numel() * 4 + packed_store.DIGEST
    product(p, w, b)


def test_nothing_is_stored_when_turned_off_small_or_a_slice(store, monkeypatch):
    w, b = weight()
    product(stored(w[:16], b[:16]), w[:16], b[:16])  # a view of part of a weight
    monkeypatch.setattr(packed_store, "MIN_BYTES", 1 << 20)
    stored(w, b)  # 11 KiB
    monkeypatch.setattr(packed_store, "MIN_BYTES", 0)
    monkeypatch.setenv(packed_store.SWITCH, "0")
    p = stored(w, b)
    assert not store.exists() and mapped_from(p.w) is None
    assert packed_store.status().startswith("off: turned off")


def test_a_store_that_cannot_be_written_packs_in_memory(store):
    store.parent.mkdir(parents=True)
    store.write_text("a file where the folder goes")
    w, b = weight()
    p = stored(w, b)
    assert mapped_from(p.w) is None
    product(p, w, b)


def test_the_store_keeps_to_its_limit_removing_what_was_used_longest_ago(store, monkeypatch):
    sizes = []
    for seed in range(3):
        stored(*weight(seed))
        sizes.append(max(f.stat().st_size for f in packed_files(store)))
    old = sorted(packed_files(store), key=lambda f: f.stat().st_mtime)
    for i, f in enumerate(old):
        os.utime(f, (1000 + i, 1000 + i))
    gemv.Packed(*weight(0), torch.float32)  # the oldest used again: the newest now
    monkeypatch.setenv(packed_store.LIMIT, str(2.5 * sizes[0] / (1 << 30)))  # room for two
    stored(*weight(3))
    left = {f.name for f in packed_files(store)}
    assert len(left) == 2 and old[0].name in left and old[1].name not in left and old[2].name not in left
    assert "2 weights" in packed_store.status()


def test_a_transposed_weight_is_stored_by_its_memory_and_strides(store):
    """A Hugging Face checkpoint's Conv1D weights load as transposed views of their memory: stored and found again,
    and told apart from the same memory read the other way round."""
    w, b = weight(shape=(48, 48))
    t = w.t()  # the whole of w's memory, another order
    p = stored(t, b)
    again = gemv.Packed(w.clone().t(), b, torch.float32)
    assert len(packed_files(store)) == 1 and mapped_from(again.w) == mapped_from(p.w) is not None
    product(again, t, b)
    plain = stored(w, b)  # the same bytes, untransposed: another weight
    assert len(packed_files(store)) == 2
    product(plain, w, b)


@pytest.mark.parametrize("weights", ["auto", "int8"])
def test_an_engine_on_stored_weights_draws_the_tokens_one_packing_in_memory_draws(store, monkeypatch, weights):
    """The trained built-in model, greedy: packed in memory (the store off), then stored by one engine and mapped by the
    next, the same tokens each time; the second engine's decode products read the store's files."""
    import gpt2kit
    from gpt2kit.generate import Engine, SamplingParams
    from gpt2kit.model.kernels import KernelLinear

    model = gpt2kit.from_pretrained("builtin")
    prompt = gpt2kit.Tokenizer().encode("It is a truth universally acknowledged")
    params = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)

    def tokens() -> tuple[list[int], Engine]:
        engine = Engine(model, max_batch=1, max_len=64, weights=weights)
        return engine.generate([prompt], params)[0].token_ids, engine

    monkeypatch.setenv(packed_store.SWITCH, "0")
    reference, _ = tokens()
    monkeypatch.delenv(packed_store.SWITCH)
    marked, _ = tokens()
    assert not packed_files(store)
    written, _ = tokens()
    names = {f.name for f in packed_files(store)}
    mapped, engine = tokens()
    assert reference == marked == written == mapped and names == {f.name for f in packed_files(store)} and names
    kernels = [m.one for m in engine.runner.model.modules() if isinstance(m, KernelLinear)]
    files = {mapped_from(k.packed.w) for k in kernels if hasattr(k, "packed")}
    assert files and None not in files and {Path(f).name for f in files} <= names


def test_a_write_left_unfinished_long_ago_is_removed_by_the_next(store):
    """A process killed while writing leaves its temporary file; the next write removes it once it is STALE_S old."""
    stored(*weight(0))
    old, new = store / ".x.packed.abc.tmp", store / ".y.packed.def.tmp"
    old.write_bytes(b"half")
    new.write_bytes(b"half")
    os.utime(old, (1000, 1000))
    stored(*weight(1))
    assert not old.exists() and new.exists()


def test_the_marks_of_weights_packed_once_keep_to_their_number(store, monkeypatch):
    monkeypatch.setattr(packed_store, "MAX_MARKS", 2)
    monkeypatch.setattr(packed_store, "PRUNE_EVERY", 1)
    for seed in range(4):
        gemv.Packed(*weight(seed), torch.float32)
    assert len(list(store.glob("*.seen"))) == 2 and not packed_files(store)  # pruned to MAX_MARKS after each


@pytest.mark.parametrize("value", ["eight", "-1", "nan", "inf"])
def test_a_bad_store_size_is_a_clear_error(monkeypatch, value):
    from gpt2kit.errors import ConfigError

    monkeypatch.setenv(packed_store.LIMIT, value)
    with pytest.raises(ConfigError, match=f"GPT2KIT_PACKED_STORE_GB must be a size in GiB, 0 or more .* got '{value}'"):
        gemv.Packed(*weight(), torch.float32)


def test_a_store_size_of_0_turns_it_off(store, monkeypatch):
    monkeypatch.setenv(packed_store.LIMIT, "0")
    p = stored(*weight())
    assert mapped_from(p.w) is None and not store.exists() and packed_store.status() == "off: its size is 0 (GPT2KIT_PACKED_STORE_GB)"


def mapping_of(t: torch.Tensor) -> dict[str, str]:
    """The smaps fields (Rss:, FilePmdMapped:, VmFlags: ...) of the mapping that holds t's memory."""
    at, fields, inside = t.data_ptr(), {}, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)
            if "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line: its address range ...
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                inside = lo <= at < hi
            elif inside:
                fields[head[0]] = head[1].strip() if len(head) > 1 else ""
    return fields


def dropped(path: Path) -> None:
    """path's pages let go by the page cache (written back first: it keeps dirty pages); nothing may map it."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def advised_read_is_huge(where: Path) -> bool:
    """Whether this kernel and file system read a file from the disk into 2 MiB pages for a mapping advised so
    (large folios: ext4, xfs on recent kernels)."""
    path = where / "probe"
    path.write_bytes(os.urandom(8 << 20))
    dropped(path)
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 8 << 20, prot=mmap.PROT_READ, flags=mmap.MAP_SHARED)
    m.madvise(mmap.MADV_HUGEPAGE)
    with warnings.catch_warnings():  # read-only memory, only read
        warnings.simplefilter("ignore", UserWarning)
        view = torch.frombuffer(m, dtype=torch.uint8)
    view.sum()  # every page read in
    huge = int(mapping_of(view)["FilePmdMapped:"].split()[0]) > 0
    del view
    m.close()
    return huge


@pytest.mark.skipif(hugepages.thp_mode() in (None, "never"), reason="no transparent huge pages here")
def test_a_stored_weight_read_from_the_disk_comes_back_in_2_mib_pages(store, tmp_path):
    """The store's mapping asks for huge pages before its first read, so a file the page cache let go (a reboot,
    memory pressure) is read back into 2 MiB pages; a plain mapping would read it into 4 KiB ones, and every later
    run would map those. Where the kernel or the file system reads no file into 2 MiB pages, only the advice is
    checked."""
    w, b = weight(shape=(8192, 256))  # 8 MiB packed: whole 2 MiB pages inside it
    written = stored(w, b)
    assert "hg" in mapping_of(written.w)["VmFlags:"].split()
    [path] = packed_files(store)
    del written
    gc.collect()  # nothing maps the file now
    dropped(path)
    again = gemv.Packed(w, b, torch.float32)  # mapped, its digest's read faulting every page in from the disk
    fields = mapping_of(again.w)
    assert mapped_from(again.w) == str(path) and "hg" in fields["VmFlags:"].split()
    if advised_read_is_huge(tmp_path):
        assert int(fields["FilePmdMapped:"].split()[0]) >= 4096  # kB: at least two of its 2 MiB pages
    product(again, w, b)
