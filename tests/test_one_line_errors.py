"""One line (exit 2, no traceback) for every mistake users and environments make: unreadable or binary
inputs, damaged model folders, config fields of the wrong type, full disks and unwritable folders, bad
flags, and training runs whose out_dir cannot be used.

Models are tiny random GPTs (biases and LayerNorms perturbed; test_hardening's fixtures); every test runs in
about a second.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gpt2kit
from gpt2kit.cli.__main__ import main
from gpt2kit.generate import SamplingParams
from test_hardening import tiny_dir_fixture, tiny_fixture  # noqa: F401 (fixtures)

TOK = gpt2kit.Tokenizer()


HS_FIXTURE = Path(__file__).parent / "fixtures" / "eval" / "hellaswag_val.jsonl"


def one_line_error(capsys, argv, *expected) -> str:
    """Run the CLI in-process; it must exit 2 with ONE line on stderr holding every `expected` string."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"gpt2kit {argv[0]}: error:") and "Traceback" not in err, err
    for text in expected:
        assert text in err, (text, err)
    return err


def unwritable_dir(tmp_path: Path) -> Path:
    """A folder this process may not write in: chmod 555 for a normal user; for root (whom modes do not
    stop) /sys, which refuses new files to everyone."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d
    try:
        (Path("/sys") / "gpt2kit-probe").touch()
    except OSError:
        return Path("/sys")
    pytest.skip("no unwritable folder on this machine")


@pytest.fixture
def model_copy(tiny_dir, tmp_path):
    """A copy of the tiny model folder whose config.json / weights a test may damage."""
    dst = tmp_path / "model"
    shutil.copytree(tiny_dir, dst)
    return dst


def test_generate_from_a_binary_or_non_utf8_file(tiny_dir, tmp_path, capsys):
    binary = tmp_path / "prog"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)))
    one_line_error(capsys, ["generate", "--file", str(binary), "--model", str(tiny_dir)], str(binary), "binary")
    latin1 = tmp_path / "prompts.txt"
    latin1.write_bytes("café\n".encode("latin-1"))
    one_line_error(capsys, ["generate", "--file", str(latin1), "--model", str(tiny_dir)], str(latin1), "UTF-8")
    if Path("/bin/ls").is_file():
        one_line_error(capsys, ["generate", "--file", "/bin/ls", "--model", str(tiny_dir)], "/bin/ls")


@pytest.mark.parametrize("change, expected", [
    ({"n_embd": "sixty-four"}, "n_embd must be an integer, got 'sixty-four'"),
    ({"n_head": None}, "n_head must be an integer, got null"),
    ({"n_embd": 64.9}, "n_embd must be an integer, got 64.9"),
    ({"n_layer": True}, "n_layer must be an integer"),
    ({"layer_norm_epsilon": "1e-5"}, "layer_norm_epsilon must be a number"),
    ({"resid_pdrop": [0.1]}, "resid_pdrop must be a number"),
])  # fmt: skip
def test_config_json_with_wrong_types(model_copy, capsys, change, expected):
    cfg = json.loads((model_copy / "config.json").read_text())
    (model_copy / "config.json").write_text(json.dumps({**cfg, **change}))
    for argv in (["generate", "hi", "--model", str(model_copy)], ["info", str(model_copy)]):
        one_line_error(capsys, argv, str(model_copy / "config.json"), expected)


def test_config_json_that_is_not_utf8(model_copy, capsys):
    (model_copy / "config.json").write_bytes(b'{"model_type": "gpt2", "n_embd": "\xff\xfe"}')
    for argv in (["generate", "hi", "--model", str(model_copy)], ["info", str(model_copy)]):
        one_line_error(capsys, argv, "config.json", "not UTF-8")


def test_nan_or_bit_flipped_weights_are_refused_at_load(model_copy, capsys):
    from safetensors.torch import load_file, save_file

    path = model_copy / "model.safetensors"
    state = load_file(path)
    state["transformer.h.0.attn.c_attn.weight"][3, 5] = math.nan
    save_file(state, path)
    one_line_error(capsys, ["generate", "hi", "--model", str(model_copy)], "transformer.h.0.attn.c_attn.weight", "NaN", "corrupt")
    state["transformer.h.0.attn.c_attn.weight"][3, 5] = 0.02
    save_file(state, path)
    raw = bytearray(path.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    meta = json.loads(raw[8:header])["transformer.h.1.mlp.c_fc.weight"]
    at = header + meta["data_offsets"][0] + 4 * 7 + 3  # the high byte of the 8th float32
    raw[at] ^= 0x40  # flip the exponent's top bit: 0.02 -> ~1e36
    path.write_bytes(bytes(raw))
    one_line_error(capsys, ["generate", "hi", "--model", str(model_copy)], "transformer.h.1.mlp.c_fc.weight", "corrupt")


def test_a_pickled_pytorch_model_bin_is_one_line_without_weights_only_advice(model_copy, capsys):
    from safetensors.torch import load_file

    state = load_file(model_copy / "model.safetensors")
    (model_copy / "model.safetensors").unlink()
    torch.save({**state, "extra": os.getcwd}, model_copy / "pytorch_model.bin")  # a function: not a plain tensor file
    err = one_line_error(capsys, ["generate", "hi", "--model", str(model_copy)], "pytorch_model.bin",
                         "not a plain tensor file", "safetensors")  # fmt: skip
    assert "weights_only" not in err


def test_prepare_mistakes(tmp_path, capsys):
    text = tmp_path / "a.txt"
    text.write_text("Some text to tokenize.\n\nAnother paragraph.\n")
    one_line_error(capsys, ["prepare", str(text), "--out", str(tmp_path / "o"), "--workers", "-3"], "workers", "-3")
    assert not (tmp_path / "o").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(capsys, ["prepare", str(text), "--out", str(afile)], str(afile), "is a file")
    ro = unwritable_dir(tmp_path)
    one_line_error(capsys, ["prepare", str(text), "--out", str(ro / "shards"), "--workers", "1"], str(ro / "shards"))


def test_prepare_on_a_full_disk_names_the_file_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    from gpt2kit.data.shards import ShardHeader

    def full(self):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write() raises: no filename

    monkeypatch.setattr(ShardHeader, "to_bytes", full)
    text = tmp_path / "a.txt"
    text.write_text("Some text to tokenize.\n")
    out = tmp_path / "shards"
    one_line_error(capsys, ["prepare", str(text), "--out", str(out), "--workers", "1", "--no-progress"],
                   str(out / "train_000000.bin"), "No space left", "disk is full")  # fmt: skip
    assert not out.exists()


def test_a_failed_prepare_leaves_no_folder_or_shards(tmp_path, capsys):
    good, empty = tmp_path / "good.txt", tmp_path / "empty.txt"
    good.write_text("Words and more words.\n")
    empty.write_text("   \n")
    out = tmp_path / "new"
    one_line_error(capsys, ["prepare", str(good), str(empty), "--out", str(out), "--workers", "1", "--no-progress"], "empty")
    assert not out.exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.md").write_text("mine")
    one_line_error(capsys, ["prepare", str(good), str(empty), "--out", str(existing), "--workers", "1", "--no-progress"])
    assert [p.name for p in existing.iterdir()] == ["notes.md"]


def test_eval_output_that_cannot_be_written(tiny_dir, tmp_path, capsys):
    ro = unwritable_dir(tmp_path)
    base = ["eval", "hellaswag", "--model", str(tiny_dir), "--data", str(HS_FIXTURE), "--limit", "2", "--no-progress"]
    one_line_error(capsys, [*base, "--output", str(ro / "r.json")], str(ro / "r.json"))
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(capsys, [*base, "--output", str(afile / "r.json")], f"{afile}: File exists", "a file where a folder")


@pytest.mark.parametrize("change, expected", [
    ({"lr": "3e-3"}, "TrainConfig.lr must be a number, got '3e-3'"),
    ({"seed": "abc"}, "TrainConfig.seed must be an integer, got 'abc'"),
    ({"max_steps": 10.5}, "TrainConfig.max_steps must be an integer, got 10.5"),
    ({"dropout": "0.1"}, "TrainConfig.dropout must be a number or null"),
    ({"resume": "yes"}, "TrainConfig.resume must be true or false"),
    ({"out_dir": 7}, "TrainConfig.out_dir must be a string"),
])  # fmt: skip
def test_train_config_fields_are_checked_by_type(tmp_path, capsys, change, expected):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"data": str(tmp_path), "model": "tiny", **change}))
    one_line_error(capsys, ["train", "--config", str(cfg)], expected)


def test_every_config_dataclass_checks_its_field_types():
    from gpt2kit.config import GPTConfig
    from gpt2kit.errors import ConfigError
    from gpt2kit.eval.runner import EvalConfig
    from gpt2kit.generate.text import GenerateOptions
    from gpt2kit.serve.config import ServeConfig
    from gpt2kit.train.config import TrainConfig

    cases = [(GPTConfig, {"n_embd": 64.9}), (GPTConfig, {"dropout": "0.1"}), (TrainConfig, {"data": "d", "lr": "1"}),
             (ServeConfig, {"max_batch_size": 2.5}), (ServeConfig, {"host": None}), (EvalConfig, {"task": "lambada", "limit": "5"}),
             (SamplingParams, {"temperature": "0.5"}), (SamplingParams, {"max_new_tokens": 3.0}), (GenerateOptions, {"max_batch": "8"})]  # fmt: skip
    for cls, kw in cases:
        with pytest.raises(ConfigError, match=f"{cls.__name__}.{list(kw)[-1]} must be"):
            cls(**kw)
    assert GPTConfig(dropout=0).dropout == 0.0 and isinstance(GPTConfig(dropout=0).dropout, float)


def test_generate_to_a_full_stdout(tiny_dir, capsys, monkeypatch):
    class Full(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(sys, "stdout", Full())
    one_line_error(capsys, ["generate", "hi", "--model", str(tiny_dir), "--max-new-tokens", "2"],
                   "standard output", "No space left")  # fmt: skip


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_generate_redirected_to_dev_full_is_one_line(tiny_dir):
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "gpt2kit", "generate", "hi", "--model", str(tiny_dir), "--max-new-tokens", "2",
                            "--weights", "model"], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == ["gpt2kit generate: error: standard output: No space left on device "
                                             "(the disk is full: free some space or write somewhere else)."]  # fmt: skip


# ---- smaller ones -----------------------------------------------------------------------------------


def test_out_of_vocabulary_token_flags_are_errors(tiny_dir, capsys):
    base = ["generate", "hi", "--model", str(tiny_dir), "--max-new-tokens", "2"]
    one_line_error(capsys, [*base, "--logit-bias", "99999999=5"], "--logit-bias 99999999=5", "not in GPT-2's vocabulary")
    one_line_error(capsys, [*base, "--ban-token", str(10**12)], f"--ban-token {10**12}", "not in GPT-2's vocabulary")
    one_line_error(capsys, [*base, "--ban-token", "-1"], "--ban-token -1")


def test_hellaswag_lines_with_empty_endings_or_context_are_rejected(tmp_path):
    from gpt2kit.errors import DataError
    from gpt2kit.eval.hellaswag import load_hellaswag

    good = json.loads(HS_FIXTURE.read_text().splitlines()[0])
    path = tmp_path / "hs.jsonl"
    for change, match in [
        ({"endings": ["a dog runs.", "", "x", "y"]}, r"hs\.jsonl:2: ending 1 is empty"),
        ({"endings": ["a dog runs.", "[title]", "x", "y"]}, r"hs\.jsonl:2: ending 1 is empty"),
        ({"ctx_a": "", "ctx_b": "  "}, r"hs\.jsonl:2: the context .* is empty"),
    ]:
        path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **change}) + "\n")
        with pytest.raises(DataError, match=match):
            load_hellaswag(path)


# ---- training runs: out_dir problems, resume ----------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory, excerpts_dir):
    import numpy as np

    from gpt2kit.data.shards import write_shard

    root = tmp_path_factory.mktemp("shards")
    ids = TOK.encode_ordinary((excerpts_dir / "milton.txt").read_text(encoding="utf-8")[:20000])
    write_shard(root / "train_000000.bin", np.array(ids[:-1000], dtype=np.uint16))
    write_shard(root / "val_000000.bin", np.array(ids[-1000:], dtype=np.uint16))
    return root


def train_argv(data, out, *extra):
    return ["train", "--data", str(data), "--out-dir", str(out), "--model", "tiny", "--block-size", "16", "--micro-batch", "2",
            "--max-steps", "4", "--eval-interval", "2", "--eval-batches", "1", "--log-interval", "1", "--sample-tokens", "0",
            "--device", "cpu", "--threads", "1", *extra]  # fmt: skip


def test_out_dir_that_is_a_file_or_read_only(shards, tmp_path, capsys, monkeypatch):
    import gpt2kit.train.loop as loop

    def too_late(*a, **kw):
        raise AssertionError("the model was loaded before out_dir was checked")

    monkeypatch.setattr(loop, "_load_model", too_late)  # the check comes first: no work is wasted
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line_error(capsys, train_argv(shards, afile), str(afile))
    ro = unwritable_dir(tmp_path)
    one_line_error(capsys, train_argv(shards, ro / "run"), str(ro))


def test_a_full_disk_at_save_time(shards, tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def full(obj, f, *a, **kw):
        if str(getattr(f, "name", f)).endswith("optimizer.pt"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what write() raises: no filename
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", full)
    out = tmp_path / "run"
    one_line_error(capsys, train_argv(shards, out), str(out / "checkpoints" / "step_000002" / "optimizer.pt"), "No space left")
    assert not list((out / "checkpoints").iterdir())  # no checkpoint, no temporary folder
    monkeypatch.undo()

    import safetensors.torch
    from safetensors import SafetensorError

    def full_safetensors(*a, **kw):  # what safetensors raises on a full disk
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", full_safetensors)
    out = tmp_path / "run2"
    one_line_error(capsys, train_argv(shards, out), f"{out / 'checkpoints' / 'step_000002' / 'model.safetensors'}: No space left")
    assert not list((out / "checkpoints").iterdir())


def test_resume_truncates_metrics_and_works_from_another_directory(shards, tmp_path, capsys, monkeypatch):
    from gpt2kit.train.checkpoint import read_meta

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    shutil.copytree(shards, first / "data")
    out = tmp_path / "run"
    monkeypatch.chdir(first)
    assert main(train_argv("data", out)) == 0  # a relative --data
    assert read_meta(out / "checkpoints" / "step_000004")["train_config"]["data"] == str(first / "data")
    # as if killed after step 3 (the checkpoint at 4 never written): its records past step 2 must go
    shutil.rmtree(out / "checkpoints" / "step_000004")
    metrics = out / "metrics.jsonl"
    lines = [ln for ln in metrics.read_text().splitlines() if json.loads(ln)["step"] <= 3]
    metrics.write_text("\n".join(lines) + '\n{"kind": "train", "step": 3, "loss": 999.0}\n{"kind": "tra')
    capsys.readouterr()
    monkeypatch.chdir(second)  # resume from elsewhere: the saved data path is absolute
    assert main(["train", "--resume", "--out-dir", str(out)]) == 0, capsys.readouterr().err
    records = [json.loads(ln) for ln in metrics.read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["kind"] == "train"]
    assert train_steps == [1, 2, 3, 4] and all(r.get("loss") != 999.0 for r in records)
    assert [r["step"] for r in records if r["kind"] == "val"] == [2, 4]
