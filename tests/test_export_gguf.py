"""`gpt2kit export gguf`: the file, read back with llama.cpp's own reader (the gguf package), holds every
tensor under the name, shape and values llama.cpp's GPT-2 loader expects, and GPT-2's tokenizer.

Running the file in llama.cpp itself (perplexity, greedy text, tokenization) is tools/check_gguf.py,
developer-run with a llama.cpp build (tools/llamacpp.sh); its results are in docs/export.md."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gpt2kit
from conftest import tiny_gpt
from gpt2kit.cli.__main__ import main
from gpt2kit.export.gguf import export_gguf, gguf_name

gguf = pytest.importorskip("gguf")

L, C, NPOS = 2, 64, 128  # conftest's tiny_hf_dir: a transformers GPT-2, biases and LayerNorms perturbed


@pytest.fixture(scope="module")
def model(tiny_hf_dir):
    return gpt2kit.from_pretrained(tiny_hf_dir)


@pytest.fixture(scope="module")
def exported(tiny_hf_dir, model, tmp_path_factory):
    """type -> (fields, tensors) of the file read back; q8_0 written through the CLI, the others by export_gguf."""
    folder = tmp_path_factory.mktemp("gguf")
    files = {t: export_gguf(model, folder / f"{t}.gguf", type=t) for t in ("f32", "f16")}
    files["q8_0"] = folder / "q8_0.gguf"
    assert main(["export", "gguf", "--model", str(tiny_hf_dir), "--out", str(files["q8_0"]), "--type", "q8_0"]) == 0
    return {t: _read(path) for t, path in files.items()}


def _read(path):
    r = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in r.fields.items()}
    return fields, {t.name: t for t in r.tensors}


def _dequantized(t) -> np.ndarray:
    """A tensor of the file as float32 in numpy (row-major, our [out, in]) order."""
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(tuple(int(d) for d in reversed(t.shape)))


def test_save_pretrained_writes_n_ctx(tmp_path):
    # llama.cpp's convert_hf_to_gguf.py reads hparams["n_ctx"] for GPT-2, as in OpenAI's own config.json
    gpt2kit.save_pretrained(tiny_gpt(n_layer=1, n_embd=32, n_head=2, n_positions=48, vocab_size=64), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["n_ctx"] == cfg["n_positions"] == 48


def test_tensor_names_are_llama_cpps():
    # the converter's own map from Hugging Face GPT-2 names to GGUF names (our names are GPT-2's)
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GPT2, L)
    for ours in tiny_gpt(n_layer=L, n_embd=32, n_head=4, n_positions=16, vocab_size=64).state_dict():
        if ours == "lm_head.weight":
            continue
        base, suffix = ours.rsplit(".", 1)
        assert gguf_name(ours) == tmap.get_name(base) + "." + suffix, ours


@pytest.mark.parametrize("type", ["f32", "f16", "q8_0"])
def test_gguf_tensors_metadata_and_values(exported, model, type):
    fields, tensors = exported[type]

    assert fields["general.architecture"] == "gpt2"
    assert fields["general.file_type"] == {"f32": 0, "f16": 1, "q8_0": 7}[type]
    assert fields["gpt2.context_length"] == NPOS
    assert fields["gpt2.embedding_length"] == C
    assert fields["gpt2.feed_forward_length"] == 4 * C
    assert fields["gpt2.block_count"] == L
    assert fields["gpt2.attention.head_count"] == 4
    assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    # tokenizer: GPT-2's BPE, tokens in encoder.json's alphabet, merges of vocab.bpe, EOT as bos/eos
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == 50257
    assert tokens[50256] == "<|endoftext|>" and types[50256] == gguf.TokenType.CONTROL
    assert tokens[220] == "\u0120" and tokens[464] == "The" and types[464] == gguf.TokenType.NORMAL
    merges = fields["tokenizer.ggml.merges"]
    assert len(merges) == 50000 and merges[0] == "\u0120 t"
    assert fields["tokenizer.ggml.bos_token_id"] == fields["tokenizer.ggml.eos_token_id"] == 50256
    assert fields.get("tokenizer.ggml.add_bos_token", False) is False  # GPT-2 adds no BOS (llama.cpp's default)

    ours = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    assert set(tensors) == {gguf_name(k) for k in ours}  # no output.weight: tied to token_embd
    for key, w in ours.items():
        t = tensors[gguf_name(key)]
        w = w.float().numpy()
        got = _dequantized(t)
        assert got.shape == w.shape, key
        keep_f32 = w.ndim == 1 or key == "transformer.wpe.weight"
        if type == "f32" or keep_f32:
            assert t.tensor_type == gguf.GGMLQuantizationType.F32, key
            np.testing.assert_array_equal(got, w, err_msg=key)
        elif type == "f16":
            assert t.tensor_type == gguf.GGMLQuantizationType.F16, key
            np.testing.assert_array_equal(got, w.astype(np.float16).astype(np.float32), err_msg=key)
        else:
            assert t.tensor_type == gguf.GGMLQuantizationType.Q8_0, key
            # Q8_0: blocks of 32 along a row, scale d = max|w| / 127 stored as fp16: |error| <= d/2 + 127 d 2^-11
            blocks = np.abs(w).reshape(w.shape[0], -1, 32).max(-1, keepdims=True) / 127
            step = np.broadcast_to(blocks, (*blocks.shape[:2], 32)).reshape(w.shape)
            assert (np.abs(got - w) <= step * (0.5 + 127 * 2.0**-11) + 1e-8).all(), key
            assert np.abs(got - w).max() > 0  # really quantized


def test_gguf_refuses_a_smaller_vocabulary(tmp_path):
    from gpt2kit.errors import ConfigError

    with pytest.raises(ConfigError, match="vocabulary"):
        export_gguf(tiny_gpt(n_layer=1, n_embd=32, n_head=2, n_positions=16, vocab_size=1000), tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
