"""Checkpoint folders, unit by unit: what a save writes, the atomic swap, listing, pruning, meta checks, RNG.

The end-to-end check (kill -9, resume, the same losses) is in test_train_resume.py; these run in a second.
"""

import errno
import json
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_gpt
from gpt2kit.errors import CheckpointError
from gpt2kit.pretrained import from_pretrained
from gpt2kit.train import checkpoint as ckpt


def _model():
    return tiny_gpt(n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=96)


def _optimizer_state(model):
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]]))[1].backward()
    opt.step()
    return {"optimizer": opt.state_dict(), "scaler": None}


def _fake(root, step, val_loss="absent"):
    """A checkpoint folder holding only meta.json (all prune/best/list read)."""
    folder = ckpt.step_dir(root, step)
    folder.mkdir(parents=True)
    meta = {} if val_loss == "absent" else {"val_loss": val_loss}
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def test_step_folder_names():
    assert ckpt.step_dir("out", 7).as_posix() == "out/step_000007"
    assert ckpt.step_dir("out", 1234567).name == "step_1234567"


def test_save_writes_a_loadable_model_optimizer_rng_and_meta(tmp_path):
    model = _model()
    state = _optimizer_state(model)
    folder = ckpt.save_checkpoint(tmp_path / "out" / "ck", 3, model, state, {"val_loss": 1.5, "tokens": 96})
    assert folder == tmp_path / "out" / "ck" / "step_000003"
    assert sorted(p.name for p in (tmp_path / "out" / "ck").iterdir()) == ["step_000003"]  # no temporary folder left
    meta = ckpt.read_meta(folder)
    assert {k: meta[k] for k in ("format_version", "step", "val_loss", "tokens")} == {
        "format_version": 1, "step": 3, "val_loss": 1.5, "tokens": 96}  # fmt: skip
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", meta["saved_at"])
    text = (folder / "meta.json").read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2) + "\n"  # human-readable: indented, one key a line
    loaded = from_pretrained(folder)
    for name, p in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p), name
    optim, rng = ckpt.load_training_state(folder)
    want = state["optimizer"]["state"][0]["exp_avg"]
    assert torch.equal(optim["optimizer"]["state"][0]["exp_avg"], want) and optim["scaler"] is None
    assert torch.equal(rng["torch"], torch.get_rng_state())


def test_a_gathered_state_dict_is_saved_instead_of_the_module(tmp_path):
    model, other = _model(), tiny_gpt(seed=5, n_layer=1, n_head=2, n_embd=16, n_positions=8, vocab_size=96)
    folder = ckpt.save_checkpoint(tmp_path, 1, model, {}, {}, model_state=other.state_dict())
    loaded = from_pretrained(folder)
    assert torch.equal(loaded.transformer.wte.weight, other.transformer.wte.weight)
    assert not torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)


def test_a_lora_model_is_saved_as_an_adapter_of_its_base(tmp_path):
    from gpt2kit.model.lora import inject_lora

    model = _model()
    inject_lora(model, r=2, alpha=4.0)
    folder = ckpt.save_checkpoint(tmp_path, 2, model, {}, {"train_config": {"init_from": "base/dir"}})
    assert not (folder / "model.safetensors").exists() and (folder / "adapter_model.safetensors").is_file()
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "base/dir"
    assert ckpt.read_meta(folder)["step"] == 2
    folder = ckpt.save_checkpoint(tmp_path, 3, model, {}, {})  # no train_config: no base named
    assert ckpt.read_meta(folder)["step"] == 3 and (folder / "adapter_config.json").is_file()


def test_resaving_a_step_replaces_it_and_stale_temporary_folders_go(tmp_path):
    model = _model()
    ckpt.save_checkpoint(tmp_path, 4, model, {}, {"val_loss": 3.0})
    (tmp_path / ".tmp-step_000009-999").mkdir()  # left by a killed save
    (tmp_path / ".tmp-other").mkdir()  # not ours: kept
    (tmp_path / ".tmp-old-step_000003-999").mkdir()  # left by a save killed between its two renames
    (tmp_path / ".tmp-step_000008-7").write_text("")  # a file, not a folder: left alone, the save goes on
    ckpt.save_checkpoint(tmp_path, 4, model, {}, {"val_loss": 2.0})
    assert sorted(p.name for p in tmp_path.iterdir()) == [".tmp-other", ".tmp-step_000008-7", "step_000004"]
    assert ckpt.read_meta(tmp_path / "step_000004")["val_loss"] == 2.0


@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt", "meta.json"])
def test_a_write_error_without_a_file_name_names_the_checkpoint_file(tmp_path, monkeypatch, name):
    model = _model()
    real_save, real_write = torch.save, Path.write_text

    def full(obj, f, *a, **kw):  # a full disk fails write() with ENOSPC and no file name
        if f.name.endswith(name):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    def write_text(self, *a, **kw):
        if self.name == name:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, *a, **kw)

    monkeypatch.setattr(torch, "save", full)
    monkeypatch.setattr(Path, "write_text", write_text)
    with pytest.raises(OSError) as e:
        ckpt.save_checkpoint(tmp_path, 5, model, {}, {})
    assert e.value.filename == str(tmp_path / "step_000005" / name) and e.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_other_errors_pass_through_and_leave_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("pickling failed")))
    with pytest.raises(RuntimeError, match="pickling failed"):
        ckpt.save_checkpoint(tmp_path, 5, _model(), {}, {})
    assert list(tmp_path.iterdir()) == []


def test_folders_that_cannot_be_removed_do_not_fail_a_save(tmp_path, monkeypatch):
    model = _model()
    ckpt.save_checkpoint(tmp_path, 4, model, {}, {"val_loss": 3.0})
    real_rmdir = os.rmdir

    def stuck(path, *a, **kw):
        if ".tmp-" in str(path):
            raise PermissionError(13, "Permission denied", str(path))
        return real_rmdir(path, *a, **kw)

    monkeypatch.setattr(os, "rmdir", stuck)
    ckpt.save_checkpoint(tmp_path, 4, model, {}, {"val_loss": 2.0})  # the replaced step_000004 cannot be removed
    assert ckpt.read_meta(tmp_path / "step_000004")["val_loss"] == 2.0
    real_save = torch.save

    def full(obj, f, *a, **kw):
        if f.name.endswith("rng.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as e:  # the temporary folder cannot be removed: the disk error is still the one raised
        ckpt.save_checkpoint(tmp_path, 6, model, {}, {})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "step_000006" / "rng.pt")


def test_a_full_disk_names_the_checkpoint_file_not_the_temporary_one(tmp_path, monkeypatch):
    model = _model()
    real_save = torch.save

    def full(obj, f, *a, **kw):
        if f.name.endswith("rng.pt"):
            raise OSError(errno.ENOSPC, "No space left on device", f.name)
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as e:
        ckpt.save_checkpoint(tmp_path, 5, model, {}, {})
    assert (e.value.errno, e.value.strerror) == (errno.ENOSPC, "No space left on device")
    assert e.value.filename == str(tmp_path / "step_000005" / "rng.pt")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch, "save", lambda *a, **kw: (_ for _ in ()).throw(OSError(errno.EACCES, "denied", "/elsewhere")))
    with pytest.raises(OSError) as e:
        ckpt.save_checkpoint(tmp_path, 6, model, {}, {})
    assert e.value.filename == "/elsewhere"  # a file outside the checkpoint keeps its own name
    assert list(tmp_path.iterdir()) == []


def test_listing_sorts_by_step_and_skips_what_is_not_a_checkpoint(tmp_path):
    assert ckpt.list_checkpoints(tmp_path / "none") == [] and ckpt.latest_checkpoint(tmp_path / "none") is None
    for step in (999999, 1000000, 20):
        _fake(tmp_path, step)
    (tmp_path / "step_00001").mkdir()  # five digits: not ours
    (tmp_path / "step_000030x").mkdir()
    (tmp_path / "step_000040").write_text("")  # a file
    (tmp_path / ".tmp-step_000050-1").mkdir()
    assert ckpt.list_checkpoints(tmp_path) == [(20, tmp_path / "step_000020"), (999999, tmp_path / "step_999999"),
                                               (1000000, tmp_path / "step_1000000")]  # fmt: skip
    assert ckpt.latest_checkpoint(tmp_path) == tmp_path / "step_1000000"


def test_prune_keeps_the_last_n_and_the_best_finite_val_loss(tmp_path):
    losses = {1: 2.0, 2: float("nan"), 3: 1.5, 4: "absent", 5: None, 6: 1.0, 7: 3.0, 8: 2.5}
    for step, v in losses.items():
        _fake(tmp_path, step, v)
    (tmp_path / "step_000002" / "meta.json").write_text('{"val_loss": NaN}')
    (tmp_path / "step_000004" / "meta.json").write_text("{not json")  # unreadable, before the best: skipped
    (tmp_path / "step_000005" / "meta.json").unlink()
    _fake(tmp_path, 9)
    (tmp_path / "step_000009" / "meta.json").write_text("{not json")
    _fake(tmp_path, 10)
    (tmp_path / "step_000010" / "meta.json").unlink()
    deleted = ckpt.prune(tmp_path, keep_last=2)
    assert [p.name for p in deleted] == [f"step_{s:06d}" for s in (1, 2, 3, 4, 5, 7, 8)]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [6, 9, 10]
    assert ckpt.best_checkpoint(tmp_path) == tmp_path / "step_000006"
    assert [p.name for p in ckpt.prune(tmp_path, keep_last=0)] == ["step_000009", "step_000010"]  # only the best is left


def test_on_a_tie_prune_keeps_the_checkpoint_best_checkpoint_names(tmp_path):
    for step, v in {999999: 1.0, 1000000: 1.0, 1000001: 5.0}.items():  # the first of the equal ones, by step
        _fake(tmp_path, step, v)
    assert ckpt.best_checkpoint(tmp_path) == tmp_path / "step_999999"
    assert ckpt.prune(tmp_path, keep_last=1) == [tmp_path / "step_1000000"]


def test_a_checkpoint_that_cannot_be_deleted_does_not_stop_pruning(tmp_path, monkeypatch):
    for step in (1, 2, 3):
        _fake(tmp_path, step)
    real_rmdir = os.rmdir

    def stuck(path, *a, **kw):
        if str(path).endswith("step_000001"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_rmdir(path, *a, **kw)

    monkeypatch.setattr(os, "rmdir", stuck)
    assert [p.name for p in ckpt.prune(tmp_path, keep_last=1)] == ["step_000001", "step_000002"]
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1, 3]


def test_prune_without_val_losses_keeps_only_the_last(tmp_path):
    for step in (1, 2, 3):
        _fake(tmp_path, step, float("inf") if step == 1 else "absent")
    assert [p.name for p in ckpt.prune(tmp_path, keep_last=1)] == ["step_000001", "step_000002"]
    assert ckpt.best_checkpoint(tmp_path) is None
    assert ckpt.prune(tmp_path, keep_last=5) == []  # fewer than keep_last: all kept


def test_best_is_the_lowest_finite_val_loss(tmp_path):
    for step, v in {1: 3.0, 2: float("-inf"), 3: 2.0, 4: 2.5, 5: "x"}.items():
        _fake(tmp_path, step, v)
    _fake(tmp_path, 6)
    (tmp_path / "step_000006" / "meta.json").write_text("{")
    (tmp_path / "step_000001" / "meta.json").write_text("{")  # unreadable, before the best: skipped
    assert ckpt.best_checkpoint(tmp_path) == tmp_path / "step_000003"
    assert ckpt.best_checkpoint(tmp_path / "none") is None


def test_read_meta_refuses_missing_incomplete_corrupt_and_newer_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {tmp_path / 'nope'} does not exist.")):
        ckpt.read_meta(tmp_path / "nope")
    folder = _fake(tmp_path, 1)
    missing = "['optimizer.pt', 'rng.pt', 'config.json', 'model.safetensors']"
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {folder} is incomplete: missing {missing}. It was not")
                       + ".*" + re.escape("delete it and resume from an earlier step, or use it with --init-from if it is a plain model folder.")
                       + "$"):  # fmt: skip
        ckpt.read_meta(folder)
    for name in ("optimizer.pt", "rng.pt", "adapter_config.json"):
        (folder / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match=re.escape("missing ['adapter_model.safetensors']")):
        ckpt.read_meta(folder)
    (folder / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {folder} has format version None; this gpt2kit reads 1.")):
        ckpt.read_meta(folder)
    (folder / "meta.json").write_text('{"format_version": 2}')
    with pytest.raises(CheckpointError, match="has format version 2;"):
        ckpt.read_meta(folder)
    (folder / "meta.json").write_bytes(b'{"format_version": 1, "note": "caf\xc3\xa9"}')
    assert ckpt.read_meta(folder)["note"] == "café"  # UTF-8, whatever the locale
    (folder / "meta.json").write_text("{")
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {folder}: meta.json is corrupt (")):
        ckpt.read_meta(folder)
    (folder / "meta.json").write_bytes(b"\xff\xfe")
    with pytest.raises(CheckpointError, match="meta.json is corrupt"):
        ckpt.read_meta(folder)


class NotATensor:
    """Any pickled object but tensors and plain containers: weights_only loading refuses it."""


def test_only_plain_tensors_are_loaded(tmp_path):
    torch.save({"t": torch.zeros(1)}, tmp_path / "rng.pt")
    for name in ("optimizer.pt", "rng.pt"):
        torch.save({"x": NotATensor()}, tmp_path / name)
        with pytest.raises(CheckpointError) as e:
            ckpt.load_training_state(tmp_path)
        m = re.fullmatch(r"checkpoint .*: optimizer.pt or rng.pt is unreadable \(UnpicklingError: (.{200})\)\. "
                         r"Delete this checkpoint folder and resume from an earlier one\.", str(e.value), re.S)  # fmt: skip
        assert m and m.group(1).startswith("Weights only load failed"), str(e.value)
        torch.save({"a": torch.ones(1)}, tmp_path / name)


def test_unreadable_training_state_is_a_checkpoint_error(tmp_path):
    torch.save({"a": torch.ones(2)}, tmp_path / "optimizer.pt")
    (tmp_path / "rng.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {tmp_path}: optimizer.pt or rng.pt is unreadable (")):
        ckpt.load_training_state(tmp_path)
    torch.save({"t": torch.zeros(1)}, tmp_path / "rng.pt")
    optim, rng = ckpt.load_training_state(os.fspath(tmp_path))
    assert torch.equal(optim["a"], torch.ones(2)) and torch.equal(rng["t"], torch.zeros(1))


def test_cuda_rng_is_captured_and_restored_where_there_is_one(monkeypatch):
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: ["cuda-state"])
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    state = ckpt.capture_rng()
    assert "cuda" not in state
    ckpt.restore_rng({**state, "cuda": ["saved"]})
    assert restored == []  # saved on a GPU machine, resumed on a CPU one
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ckpt.capture_rng()["cuda"] == ["cuda-state"]
    ckpt.restore_rng(state)
    assert restored == []  # saved on a CPU machine
    ckpt.restore_rng({**state, "cuda": ["saved"]})
    assert restored == [["saved"]]
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    assert "cuda" not in ckpt.capture_rng()  # CUDA never used: nothing to save (and no context created)


def _draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)], random.gauss(0, 1)


def test_rng_capture_and_restore_round_trip_through_a_safe_load(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    random.gauss(0, 1)  # leaves a cached second gaussian in Python's state
    torch.save(ckpt.capture_rng(), tmp_path / "rng.pt")
    want = _draws()
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert _draws() == want
    assert "cuda" not in ckpt.capture_rng() or torch.cuda.is_initialized()
