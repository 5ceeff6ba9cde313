"""The packed-weight store (model/packed_store.py): a weight packed once is mapped from the page cache by later
packings, with the same products; a changed weight, a damaged file, a store that is off or cannot be written, and
a full store each behave as the module says."""

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gpt2kit.model import gemv, packed_store

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


def product(p: gemv.Packed, w: torch.Tensor, b: torch.Tensor) -> None:
    x = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(p(x), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_weight_packed_once_is_mapped_from_the_store_by_the_next_packing(store, dtype):
    w, b = weight()
    first = gemv.Packed(w, b, dtype)
    [stored] = list(store.iterdir())
    assert stored.stat().st_size == first.w.numel() * first.w.element_size() + packed_store.DIGEST
    again = gemv.Packed(w.clone(), b, dtype)  # another tensor, the same values: the same key
    assert mapped_from(again.w) == str(stored) and mapped_from(first.w) == str(stored)
    assert torch.equal(again.w, first.w) and len(list(store.iterdir())) == 1
    if dtype == torch.float32:
        product(again, w, b)


def test_the_packed_bytes_are_what_packing_in_memory_gives(monkeypatch):
    w, b = weight()
    stored = gemv.Packed(w, b, torch.float32).w
    monkeypatch.setenv(packed_store.SWITCH, "0")
    in_memory = gemv.Packed(w, b, torch.float32).w
    assert mapped_from(in_memory) is None and torch.equal(stored, in_memory)


def test_a_changed_weight_is_packed_anew(store):
    w, b = weight()
    gemv.Packed(w, b, torch.float32)
    w2 = w.clone()
    w2[3, 5] += 1.0  # one element: another key
    p = gemv.Packed(w2, b, torch.float32)
    assert len(list(store.iterdir())) == 2
    product(p, w2, b)


def test_the_same_weight_packed_another_way_is_another_file(store):
    w, b = weight()
    gemv.Packed(w, b, torch.float32)
    gemv.Packed(w, b, torch.bfloat16)
    assert len(list(store.iterdir())) == 2


@pytest.mark.parametrize("damage", ["a byte", "cut short"])
def test_a_damaged_file_is_packed_again(store, damage):
    w, b = weight()
    gemv.Packed(w, b, torch.float32)
    [stored] = list(store.iterdir())
    data = bytearray(stored.read_bytes())
    if damage == "a byte":
        data[103] ^= 0x40  # an exponent bit of a weight (float 25: row 1, column 9)
    else:
        data = data[: len(data) // 2]
    stored.write_bytes(bytes(data))
    p = gemv.Packed(w, b, torch.float32)
    product(p, w, b)
    assert mapped_from(p.w) == str(stored)  # written again, intact, and mapped
    assert stored.stat().st_size == p.w.numel() * 4 + packed_store.DIGEST


def test_nothing_is_stored_when_turned_off_small_or_a_slice(store, monkeypatch):
    w, b = weight()
    product(gemv.Packed(w[:16], b[:16], torch.float32), w[:16], b[:16])  # a view of part of a weight
    monkeypatch.setattr(packed_store, "MIN_BYTES", 1 << 20)
    gemv.Packed(w, b, torch.float32)  # 11 KiB
    monkeypatch.setattr(packed_store, "MIN_BYTES", 0)
    monkeypatch.setenv(packed_store.SWITCH, "0")
    p = gemv.Packed(w, b, torch.float32)
    assert not store.exists() and mapped_from(p.w) is None
    assert packed_store.status().startswith("off: turned off")


def test_a_store_that_cannot_be_written_packs_in_memory(store):
    store.parent.mkdir(parents=True)
    store.write_text("a file where the folder goes")
    w, b = weight()
    p = gemv.Packed(w, b, torch.float32)
    assert mapped_from(p.w) is None
    product(p, w, b)


def test_the_store_keeps_to_its_limit_removing_what_was_used_longest_ago(store, monkeypatch):
    sizes = []
    for seed in range(3):
        gemv.Packed(*weight(seed), torch.float32)
        sizes.append(max(f.stat().st_size for f in store.iterdir()))
    old = sorted(store.iterdir(), key=lambda f: f.stat().st_mtime)
    for i, f in enumerate(old):
        os.utime(f, (1000 + i, 1000 + i))
    gemv.Packed(*weight(0), torch.float32)  # the oldest used again: the newest now
    monkeypatch.setenv(packed_store.LIMIT, str(2.5 * sizes[0] / (1 << 30)))  # room for two
    gemv.Packed(*weight(3), torch.float32)
    left = {f.name for f in store.iterdir()}
    assert len(left) == 2 and old[0].name in left and old[1].name not in left and old[2].name not in left
    assert "2 weights" in packed_store.status()


def test_a_transposed_weight_is_stored_by_its_memory_and_strides(store):
    """A Hugging Face checkpoint's Conv1D weights load as transposed views of their memory: stored and found again,
    and told apart from the same memory read the other way round."""
    w, b = weight(shape=(48, 48))
    t = w.t()  # the whole of w's memory, another order
    p = gemv.Packed(t, b, torch.float32)
    again = gemv.Packed(w.clone().t(), b, torch.float32)
    assert len(list(store.iterdir())) == 1 and mapped_from(again.w) == mapped_from(p.w) is not None
    product(again, t, b)
    plain = gemv.Packed(w, b, torch.float32)  # the same bytes, untransposed: another weight
    assert len(list(store.iterdir())) == 2
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
    stored, _ = tokens()
    written = {f.name for f in store.iterdir()}
    mapped, engine = tokens()
    assert reference == stored == mapped and written == {f.name for f in store.iterdir()} and written
    kernels = [m.one for m in engine.runner.model.modules() if isinstance(m, KernelLinear)]
    files = {mapped_from(k.packed.w) for k in kernels if hasattr(k, "packed")}
    assert files and None not in files and {Path(f).name for f in files} <= written
