"""Loading from folders and hub ids, and the errors a user sees when something is wrong."""

import json
import os

import pytest
import torch

import gpt2kit
from gpt2kit.errors import CheckpointError, ConfigError, ModelNotFoundError


def test_unknown_model_id_offline_names_the_model_and_the_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as e:
        gpt2kit.from_pretrained("some-org/not-a-real-gpt2")
    msg = str(e.value)
    assert "some-org/not-a-real-gpt2" in msg and "local folder" in msg and "HF_HUB_OFFLINE" in msg


def test_preset_offline_maps_to_its_hub_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="openai-community/gpt2-medium"):
        gpt2kit.from_pretrained("gpt2-medium")


def test_missing_folder_and_folder_without_weights(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no such model folder"):
        gpt2kit.from_pretrained(tmp_path / "nope")
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        gpt2kit.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(gpt2kit.GPTConfig(n_layer=1).to_hf_dict()))
    with pytest.raises(ModelNotFoundError, match="no weights"):
        gpt2kit.from_pretrained(tmp_path)
    with pytest.raises(ModelNotFoundError, match="is a file"):
        gpt2kit.from_pretrained(tmp_path / "config.json")


def test_corrupt_weights_file(tmp_path, tiny_hf_dir):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_hf_dir / "config.json").read_text())
    data = (tiny_hf_dir / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        gpt2kit.from_pretrained(folder)


def test_config_that_does_not_match_the_weights(tmp_path, tiny_hf_dir):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((tiny_hf_dir / "model.safetensors").read_bytes())
    cfg = json.loads((tiny_hf_dir / "config.json").read_text())
    cfg["n_layer"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing"):
        gpt2kit.from_pretrained(folder)
    cfg["n_layer"], cfg["n_head"] = 2, 5
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="not divisible"):
        gpt2kit.from_pretrained(folder)


def test_save_pretrained_is_loadable_by_autotokenizer_and_in_bf16(tmp_path, tiny_hf_dir):
    import transformers

    model = gpt2kit.from_pretrained(tiny_hf_dir)
    out = gpt2kit.save_pretrained(model, tmp_path / "out", dtype="bfloat16")
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert tok("Hello world")["input_ids"] == gpt2kit.Tokenizer().encode("Hello world")
    again = gpt2kit.from_pretrained(out)
    assert torch.equal(again.transformer.wte.weight, model.transformer.wte.weight.to(torch.bfloat16).float())
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))  # no temp files left behind
    umask = os.umask(0)
    os.umask(umask)
    for f in out.iterdir():  # a normal file's mode, not mkstemp's 0600 (safetensors recreates the temp file)
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name


def test_sharded_safetensors_load_like_transformers(tmp_path, tiny_hf_dir):
    """A folder saved by transformers in several safetensors shards + model.safetensors.index.json."""
    import transformers

    ref = transformers.GPT2LMHeadModel.from_pretrained(tiny_hf_dir).eval()
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="300KB")
    shards = sorted(p.name for p in (tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) >= 3 and (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert not (tmp_path / "sharded" / "model.safetensors").exists()
    model = gpt2kit.from_pretrained(tmp_path / "sharded")
    idx = torch.randint(0, 50257, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], ref(idx).logits, atol=1e-4, rtol=1e-4)
    # a shard the index names but that is missing is an error naming it
    (tmp_path / "sharded" / shards[-1]).unlink()
    with pytest.raises((CheckpointError, ModelNotFoundError), match=shards[-1]):
        gpt2kit.from_pretrained(tmp_path / "sharded")
