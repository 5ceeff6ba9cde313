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


def test_loading_initialises_nothing_and_stays_light():
    """from_pretrained builds the model on the meta device and assigns the file's weights: no random init runs.
    torch's init of a meta tensor imports torch._dynamo (1.5 s of every load), so a load must not import it."""
    import subprocess
    import sys

    code = (
        "import sys, gpt2kit; m = gpt2kit.from_pretrained('builtin'); "
        "assert 'torch._dynamo' not in sys.modules, 'loading imported torch._dynamo'; "
        "assert not any(p.is_meta for p in m.parameters()); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_a_model_built_on_meta_is_empty_and_one_built_anywhere_else_is_initialised():
    with torch.device("meta"):
        empty = gpt2kit.GPT(gpt2kit.GPTConfig(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32))
    assert all(p.is_meta for p in empty.parameters())
    assert empty.lm_head.weight is empty.transformer.wte.weight  # still tied
    torch.manual_seed(0)
    m = gpt2kit.GPT(gpt2kit.GPTConfig(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=32))
    assert abs(m.transformer.wte.weight.std().item() - 0.02) < 0.003  # GPT-2's init, not nn.Embedding's N(0, 1)
    assert abs(m.transformer.wpe.weight.std().item() - 0.02) < 0.003
    assert abs(m.transformer.h[0].attn.c_proj.weight.std().item() - 0.02 / 2) < 0.002  # 0.02 / sqrt(2 L)
