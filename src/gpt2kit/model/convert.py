"""Hugging Face / OpenAI GPT-2 state dicts <-> ours: a checked, name-preserving copy.

The only real difference is layout: Hugging Face keeps OpenAI's TF-era `Conv1D`, whose weight is
[in, out]; we use `nn.Linear`, whose weight is [out, in]. The four Conv1D weights per block are
transposed once here, by *name* (attn.c_proj is square, so its shape cannot tell us), never at run time.
"""

from __future__ import annotations

import torch

from gpt2kit.config import GPTConfig
from gpt2kit.errors import CheckpointError

# Per-block weights stored as Conv1D ([in, out]) in Hugging Face checkpoints.
CONV1D_SUFFIXES = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Non-parameter buffers some checkpoints carry (the causal mask); matched as a whole name suffix, so
# `attn.c_attn.bias` (a real parameter) is never dropped by accident.
BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")


def expected_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Our parameter names and shapes for a config (tied head listed once, as transformer.wte)."""
    C, V, H = config.n_embd, config.vocab_size, config.mlp_dim
    shapes: dict[str, tuple[int, ...]] = {
        "transformer.wte.weight": (V, C),
        "transformer.wpe.weight": (config.n_positions, C),
        "transformer.ln_f.weight": (C,),
        "transformer.ln_f.bias": (C,),
    }
    for i in range(config.n_layer):
        p = f"transformer.h.{i}."
        shapes.update({
            p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
            p + "attn.c_attn.weight": (3 * C, C), p + "attn.c_attn.bias": (3 * C,),
            p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
            p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
            p + "mlp.c_fc.weight": (H, C), p + "mlp.c_fc.bias": (H,),
            p + "mlp.c_proj.weight": (C, H), p + "mlp.c_proj.bias": (C,),
        })  # fmt: skip
    return shapes


def from_hf_state_dict(hf: dict[str, torch.Tensor], config: GPTConfig, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """A Hugging Face GPT2LMHeadModel / GPT2Model state dict -> ours (checked, Conv1D transposed)."""
    out: dict[str, torch.Tensor] = {}
    head = None
    for name, tensor in hf.items():
        if name.endswith(BUFFER_SUFFIXES):
            continue
        if name == "lm_head.weight":
            head = tensor
            continue
        key = name if name.startswith("transformer.") else "transformer." + name  # GPT2Model has no prefix
        if key.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        out[key] = tensor
    shapes = expected_shapes(config)
    missing = sorted(set(shapes) - set(out))
    unexpected = sorted(set(out) - set(shapes))
    if missing or unexpected:
        raise CheckpointError(
            f"{source}: weights do not match the GPT-2 config (n_layer={config.n_layer}, n_embd={config.n_embd}). "
            f"missing: {missing[:5]}{' …' if len(missing) > 5 else ''}; "
            f"unexpected: {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}. "
            "Is config.json from the same model as the weights?"
        )
    for key, shape in shapes.items():
        if tuple(out[key].shape) != shape:
            raise CheckpointError(f"{source}: {key} has shape {tuple(out[key].shape)}, the config implies {shape}.")
    if head is not None and not torch.equal(head, out["transformer.wte.weight"]):
        raise CheckpointError(
            f"{source}: lm_head.weight differs from wte: GPT-2 ties the output head to the token embedding, "
            "and this checkpoint does not, so gpt2kit cannot run it exactly."
        )
    out["lm_head.weight"] = out["transformer.wte.weight"]
    return out


def to_hf_state_dict(ours: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> Hugging Face GPT2LMHeadModel layout (Conv1D weights, tied head left out)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in ours.items():
        if key == "lm_head.weight":
            continue  # tied to transformer.wte.weight; transformers re-ties it on load
        if key.endswith(CONV1D_SUFFIXES):
            tensor = tensor.t()
        out[key] = tensor.detach().contiguous()
    return out
