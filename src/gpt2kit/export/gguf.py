"""A gpt2kit model -> one GGUF file that llama.cpp runs as GPT-2 (architecture "gpt2").

The file is what llama.cpp's own `convert_hf_to_gguf.py` writes for a Hugging Face GPT-2 folder
(its `GPT2Model`; tools/check_gguf.py finds the two files' tensors bit-identical and their tokenizer and
model metadata equal), written with the same library (the `gguf` package) from the model in memory:

  - hyper-parameters under `gpt2.*`: context_length (n_positions), embedding_length, feed_forward_length,
    block_count, attention.head_count, attention.layer_norm_epsilon;
  - GPT-2's tokenizer: model "gpt2", pre-tokenizer "gpt-2", the 50,257 tokens in the byte-to-unicode
    alphabet of encoder.json (<|endoftext|> a CONTROL token), the 50,000 merges of vocab.bpe, and
    <|endoftext|> (50256) as bos and eos, with no BOS added on tokenization (GPT-2 adds none);
  - tensors under llama.cpp's names, weights [out, in] as nn.Linear keeps them (numpy row-major; GGUF
    stores the dims reversed). No `output.weight`: GPT-2 ties the head to `token_embd`, and llama.cpp
    reuses `token_embd` when `output` is absent, as it does for converted Hugging Face GPT-2s.

Quantisation follows the converter: 1-D tensors (biases, norms) and `position_embd` stay F32; the other
matrices become the file type (F16, or Q8_0 through `gguf.quants`, blocks of 32 along a row, falling
back to F16 for a row length that is not a multiple of 32).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from gpt2kit.atomic import atomic_path
from gpt2kit.config import GPT2_EOT_ID, GPT2_VOCAB_SIZE
from gpt2kit.errors import ConfigError
from gpt2kit.export import GGUF_TYPES
from gpt2kit.model.gpt import GPT
from gpt2kit.model.vocab_pad import unpadded

# Our parameter name (after "transformer.h.{i}.") -> llama.cpp's (after "blk.{i}.").
BLOCK_NAMES = {
    "ln_1.weight": "attn_norm.weight", "ln_1.bias": "attn_norm.bias",
    "attn.c_attn.weight": "attn_qkv.weight", "attn.c_attn.bias": "attn_qkv.bias",
    "attn.c_proj.weight": "attn_output.weight", "attn.c_proj.bias": "attn_output.bias",
    "ln_2.weight": "ffn_norm.weight", "ln_2.bias": "ffn_norm.bias",
    "mlp.c_fc.weight": "ffn_up.weight", "mlp.c_fc.bias": "ffn_up.bias",
    "mlp.c_proj.weight": "ffn_down.weight", "mlp.c_proj.bias": "ffn_down.bias",
}  # fmt: skip
TOP_NAMES = {
    "transformer.wte.weight": "token_embd.weight",
    "transformer.wpe.weight": "position_embd.weight",
    "transformer.ln_f.weight": "output_norm.weight",
    "transformer.ln_f.bias": "output_norm.bias",
}


def gguf_name(name: str) -> str:
    """Our parameter name -> llama.cpp's tensor name, e.g. transformer.h.3.mlp.c_fc.weight -> blk.3.ffn_up.weight."""
    if name in TOP_NAMES:
        return TOP_NAMES[name]
    prefix, _, rest = name.partition(".h.")
    block, _, param = rest.partition(".")
    if prefix != "transformer" or not block.isdigit() or param not in BLOCK_NAMES:
        raise ConfigError(f"parameter {name!r} has no GGUF name: only plain GPT-2 models export (merge adapters first).")
    return f"blk.{block}.{BLOCK_NAMES[param]}"


def export_gguf(model: GPT, out: str | os.PathLike, type: str = "f32", name: str = "gpt2kit") -> Path:
    """Write `model` to the GGUF file `out` with matrices in `type` (f32, f16 or q8_0); returns the path."""
    gguf = _gguf()

    if type not in GGUF_TYPES:
        raise ConfigError(f"GGUF type must be one of {', '.join(GGUF_TYPES)}, got {type!r}.")
    model = unpadded(model)
    cfg = model.config
    if cfg.vocab_size < GPT2_VOCAB_SIZE:
        raise ConfigError(
            f"the model has {cfg.vocab_size} token rows, fewer than GPT-2's {GPT2_VOCAB_SIZE}: GGUF carries GPT-2's "
            "tokenizer, so only models with its vocabulary export."
        )
    file_type = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                 "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[type]  # fmt: skip
    out = Path(out)
    with atomic_path(out) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch="gpt2")
        writer.add_name(name)
        writer.add_context_length(cfg.n_positions)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_feed_forward_length(cfg.mlp_dim)
        writer.add_block_count(cfg.n_layer)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(cfg.layer_norm_eps)
        writer.add_file_type(int(file_type))
        _add_tokenizer(writer, cfg.vocab_size)
        for key, tensor in model.state_dict().items():
            if key == "lm_head.weight":
                continue  # tied to token_embd (see the module docstring)
            tname = gguf_name(key)
            data, qtype = _encode(tensor, tname, type)
            writer.add_tensor(tname, data, raw_dtype=qtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out


def _gguf():
    try:
        import gguf
    except ImportError:
        raise ConfigError('GGUF export needs the gguf package (llama.cpp\'s writer): pip install "gpt2kit[export]".') from None
    return gguf


def _encode(tensor: torch.Tensor, tname: str, type: str):
    """A parameter -> (numpy data, GGML type), by the converter's rules (module docstring)."""
    gguf = _gguf()

    Q = gguf.GGMLQuantizationType
    data = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous().numpy()
    if type == "f32" or data.ndim <= 1 or tname.endswith("_norm.weight") or tname == "position_embd.weight":
        return data, Q.F32
    if type == "q8_0":
        try:
            return gguf.quants.quantize(data, Q.Q8_0), Q.Q8_0
        except gguf.QuantError:  # a row length that is not a multiple of the 32-wide block
            pass
    return data.astype(np.float16), Q.F16


def _add_tokenizer(writer, vocab_size: int) -> None:
    """GPT-2's BPE tokenizer as llama.cpp reads it; rows beyond 50,257 (a padded head) are UNUSED tokens."""
    gguf = _gguf()

    from gpt2kit.tokenizer.gpt2_vocab import encoder_and_merges

    encoder, merges = encoder_and_merges()
    by_id = {i: token for token, i in encoder.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if i == GPT2_EOT_ID else gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([f"{a} {b}" for a, b in merges])
    writer.add_bos_token_id(GPT2_EOT_ID)
    writer.add_eos_token_id(GPT2_EOT_ID)
    # No add_bos_token key: for the "gpt-2" pre-tokenizer llama.cpp adds no BOS by default, as GPT-2 does.
