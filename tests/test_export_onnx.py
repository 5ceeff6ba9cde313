"""`gpt2kit export onnx`: onnxruntime, running the exported graph, gives our logits (|Δ| <= 1e-4 fp32) with
and without a KV cache, at any batch size and length, and examples/onnx_generate.py's greedy loop gives
our greedy tokens."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import gpt2kit
from gpt2kit.cli.__main__ import main
from gpt2kit.generate import SamplingParams, generate

ort = pytest.importorskip("onnxruntime")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "onnx_generate.py"
TOL = 1e-4


@pytest.fixture(scope="module")
def model(tiny_hf_dir):
    return gpt2kit.from_pretrained(tiny_hf_dir)  # 2 x 64, 4 heads, biases and LayerNorms perturbed


@pytest.fixture(scope="module")
def exported(tiny_hf_dir, tmp_path_factory):
    """(session, config) of the folder that `gpt2kit export onnx` wrote."""
    out = tmp_path_factory.mktemp("onnx")
    assert main(["export", "onnx", "--model", str(tiny_hf_dir), "--out", str(out)]) == 0
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    return session, json.loads((out / "config.json").read_text())


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("onnx_generate", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(session, ids: torch.Tensor, past: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    names = [o.name for o in session.get_outputs()]
    results = dict(zip(names, session.run(None, {"input_ids": ids.numpy(), **past})))
    present = {k.replace("present.", "past_key_values."): v for k, v in results.items() if k != "logits"}
    return results["logits"], present


def _ours(model, ids: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(ids)[0].numpy()


def test_graph_signature_is_dynamic(exported, model):
    session, config = exported
    L, nh, hs = model.config.n_layer, model.config.n_head, model.config.head_dim
    inputs = {i.name: i.shape for i in session.get_inputs()}
    assert list(inputs) == ["input_ids"] + [f"past_key_values.{i}.{kv}" for i in range(L) for kv in ("key", "value")]
    b, t = inputs["input_ids"]
    assert isinstance(b, str) and isinstance(t, str)  # symbolic batch and length
    pb, pnh, pt, phs = inputs["past_key_values.0.key"]
    assert (pb, pnh, phs) == (b, nh, hs) and isinstance(pt, str)
    outputs = [o.name for o in session.get_outputs()]
    assert outputs == ["logits"] + [f"present.{i}.{kv}" for i in range(L) for kv in ("key", "value")]
    assert config["n_layer"] == L and config["n_ctx"] == model.config.n_positions


@pytest.mark.parametrize("B,T", [(1, 1), (1, 17), (3, 9)])
def test_logits_without_cache(exported, example, model, B, T):
    session, config = exported
    ids = torch.randint(0, 50257, (B, T), generator=torch.Generator().manual_seed(B * 100 + T))
    logits, present = _run(session, ids, example.empty_past(config, B))
    np.testing.assert_allclose(logits, _ours(model, ids), rtol=0, atol=TOL)
    assert present["past_key_values.1.value"].shape == (B, model.config.n_head, T, model.config.head_dim)


@pytest.mark.parametrize("B", [1, 2])
def test_logits_with_cache(exported, example, model, B):
    """Prefill 6 tokens, then 1, then 4, then 1: each step's logits equal the full forward's at those positions."""
    session, config = exported
    ids = torch.randint(0, 50257, (B, 12), generator=torch.Generator().manual_seed(B))
    full = _ours(model, ids)
    past = example.empty_past(config, B)
    for start, stop in [(0, 6), (6, 7), (7, 11), (11, 12)]:
        logits, past = _run(session, ids[:, start:stop], past)
        np.testing.assert_allclose(logits, full[:, start:stop], rtol=0, atol=TOL, err_msg=f"tokens {start}:{stop}")
    assert past["past_key_values.0.key"].shape[2] == 12


def test_cache_reaches_the_last_position(exported, example, model):
    """Decoding up to n_positions: the position embedding's last row is used and matches."""
    session, config = exported
    n = model.config.n_positions
    ids = torch.randint(0, 50257, (1, n), generator=torch.Generator().manual_seed(7))
    _, past = _run(session, ids[:, : n - 1], example.empty_past(config, 1))
    logits, _ = _run(session, ids[:, n - 1 :], past)
    np.testing.assert_allclose(logits[0, -1], _ours(model, ids)[0, -1], rtol=0, atol=TOL)


def test_example_greedy_loop_equals_ours(exported, example, model):
    session, config = exported
    prompt = gpt2kit.Tokenizer().encode_ordinary("The meaning of life is")
    theirs = example.greedy(session, config, prompt, max_new_tokens=24)
    ours = generate(model, [prompt], SamplingParams(max_new_tokens=24, temperature=0.0))[0].token_ids
    assert theirs == ours and len(ours) > 0


def test_cli_refuses_a_gguf_type_for_onnx(tmp_path, capsys):
    assert main(["export", "onnx", "--model", "builtin", "--out", str(tmp_path / "x"), "--type", "q8_0"]) == 2
    assert "gguf only" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
