import json

import pytest
import torch

from gpt2kit import GPT, PRESETS, GPTConfig
from gpt2kit.errors import ConfigError

# The parameter counts of OpenAI's released checkpoints (head tied to wte, biases included).
OFFICIAL_SIZES = {
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_SIZES))
def test_exact_parameter_counts(name):
    cfg = PRESETS[name]
    with torch.device("meta"):  # shapes only: no 6 GB allocation for gpt2-xl
        model = GPT(cfg)
    assert model.num_params() == OFFICIAL_SIZES[name]
    assert cfg.num_params() == OFFICIAL_SIZES[name]
    assert model.lm_head.weight is model.transformer.wte.weight


def test_distilgpt2_matches_transformers_count():
    import transformers

    with torch.device("meta"):
        ours = GPT(PRESETS["distilgpt2"])
        theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=6))
    assert ours.num_params() == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(n_embd=100, n_head=12), ["not divisible", "n_head"]),
        (dict(n_layer=0), ["n_layer", "positive"]),
        (dict(vocab_size=-5), ["vocab_size"]),
        (dict(dropout=1.5), ["dropout"]),
        (dict(n_inner=0), ["n_inner"]),
        (dict(layer_norm_eps=0.0), ["layer_norm_eps"]),
    ],
)
def test_invalid_configs_say_what_is_wrong(kwargs, words):
    with pytest.raises(ConfigError) as e:
        GPTConfig(**kwargs)
    for w in words:
        assert w in str(e.value)


def test_json_round_trips(tmp_path):
    cfg = GPTConfig(n_layer=3, n_embd=96, n_head=3, n_inner=200, dropout=0.1)
    assert GPTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    (tmp_path / "ours.json").write_text(json.dumps(cfg.to_dict()))
    (tmp_path / "hf.json").write_text(json.dumps(cfg.to_hf_dict()))
    assert GPTConfig.from_json_file(tmp_path / "ours.json") == cfg
    assert GPTConfig.from_json_file(tmp_path / "hf.json") == cfg


def test_hf_config_is_read_by_transformers(tmp_path):
    import transformers

    cfg = GPTConfig(n_layer=3, n_embd=96, n_head=3)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_hf_dict()))
    hf = transformers.GPT2Config.from_pretrained(tmp_path)
    assert (hf.n_layer, hf.n_embd, hf.n_head, hf.n_positions, hf.vocab_size) == (3, 96, 3, 1024, 50257)
    assert hf.activation_function == "gelu_new"


def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        GPTConfig.from_json_file(bad)
    bad.write_text(json.dumps({"n_layr": 2}))
    with pytest.raises(ConfigError, match="unknown GPTConfig field"):
        GPTConfig.from_json_file(bad)
    bad.write_text(json.dumps({"model_type": "llama", "n_embd": 8, "n_layer": 1, "n_head": 1}))
    with pytest.raises(ConfigError, match="GPT-2"):
        GPTConfig.from_json_file(bad)
    bad.write_text(json.dumps({"model_type": "gpt2", "n_embd": 8, "n_layer": 1, "n_head": 1, "activation_function": "relu"}))
    with pytest.raises(ConfigError, match="tanh GELU"):
        GPTConfig.from_json_file(bad)


def test_auto_device_is_gpt2kit_device_where_set_else_the_best_present(monkeypatch):
    from gpt2kit.device import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("GPT2KIT_DEVICE", "cpu")  # as the suite runs: auto is the CPU even with a GPU present
    assert resolve_device("auto") == resolve_device(None) == torch.device("cpu")
    monkeypatch.setenv("GPT2KIT_DEVICE", "auto")
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.delenv("GPT2KIT_DEVICE")
    assert resolve_device(None) == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")  # a named device is taken as named
    with pytest.raises(ConfigError, match="^device 'cuda' was asked for, but this torch build sees no CUDA GPU; use --device cpu.$"):
        resolve_device("cuda")
    monkeypatch.setenv("GPT2KIT_DEVICE", "gpu0")
    with pytest.raises(ConfigError, match="^GPT2KIT_DEVICE: unknown device 'gpu0'; use cpu, cuda, cuda:N, mps or auto.$"):
        resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")  # the variable only says what auto means
