"""The built-in model: shipped in the package, used when --model is left out, sha256-checked at load."""

import json
import os
import shutil
import subprocess
import sys

import pytest

import gpt2kit
from gpt2kit import builtin
from gpt2kit.errors import CheckpointError, ModelNotFoundError


def run_cli(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "gpt2kit", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_generate_with_no_model_uses_the_builtin_offline(tmp_path):
    r = run_cli("generate", "The President said", "--max-new-tokens", "12", "--temperature", "0", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.split()) >= 5  # words came out
    [notice] = [line for line in r.stderr.splitlines() if "built-in model" in line]
    meta = builtin.metadata()
    assert meta["name"] in notice and "not OpenAI's GPT-2" in notice and "--model gpt2" in notice


def test_builtin_metadata_matches_the_weights():
    meta = builtin.metadata()
    model = gpt2kit.from_pretrained("builtin")
    assert abs(model.num_params() / 1e6 - meta["params_millions"]) < 0.05
    assert (builtin.builtin_dir() / builtin.WEIGHTS_FILE).stat().st_size <= 64 * 2**20  # ships in ≤ 64 MB
    assert model.config.vocab_size == 50257 and meta["val_tokens"] > 100_000


def test_corrupted_weights_are_refused(tmp_path, monkeypatch):
    folder = tmp_path / "builtin_model"
    shutil.copytree(builtin.builtin_dir(), folder)
    data = bytearray((folder / builtin.WEIGHTS_FILE).read_bytes())
    data[-100] ^= 0xFF  # one flipped byte inside a tensor
    (folder / builtin.WEIGHTS_FILE).write_bytes(bytes(data))
    monkeypatch.setattr(builtin, "builtin_dir", lambda: folder)
    builtin.builtin_folder.cache_clear()
    try:
        with pytest.raises(CheckpointError, match="corrupt"):
            gpt2kit.from_pretrained("builtin")
        (folder / builtin.META_FILE).unlink()
        builtin.builtin_folder.cache_clear()
        with pytest.raises(ModelNotFoundError, match="--model gpt2"):
            gpt2kit.from_pretrained("builtin")
    finally:
        builtin.builtin_folder.cache_clear()


def test_builtin_json_is_complete():
    meta = json.loads((builtin.builtin_dir() / builtin.META_FILE).read_text())
    for key in ("name", "shape", "params_millions", "data", "tokens_seen", "train_loss", "val_loss", "sha256", "train_config"):
        assert key in meta
    assert (builtin.builtin_dir() / "MODEL_CARD.md").is_file()
