"""A gpt2kit model -> an ONNX graph with a KV cache, for onnxruntime.

The graph is the model's own forward, traced (torch.onnx.export, the dynamo exporter): `GPT.forward` takes
any cache object with KVCache's `plan`/`update` interface, and `_ConcatCache` below is one whose state
is plain tensors, so the past keys/values become graph inputs and the updated ones graph outputs.

Inputs and outputs (B batch, T new tokens, P = T_past cached tokens, L layers, nh heads, hs head width):

    input_ids                  int64  (B, T)
    past_key_values.{l}.key    float  (B, nh, P, hs)   for l in 0..L-1; P may be 0 (no cache yet)
    past_key_values.{l}.value  float  (B, nh, P, hs)
    -> logits                  float  (B, T, V)
    -> present.{l}.key         float  (B, nh, P + T, hs)   the past with this step's keys appended
    -> present.{l}.value       float  (B, nh, P + T, hs)

B, T and P are dynamic. New tokens take positions P..P+T-1 and attend causally to the P cached ones and
to each other; every row of a batch has the same length (no padding mask). P + T <= n_positions.
`examples/onnx_generate.py` is a greedy generation loop over this graph in onnxruntime.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from gpt2kit.atomic import write_text
from gpt2kit.errors import ConfigError
from gpt2kit.model.gpt import GPT
from gpt2kit.model.kv_cache import StepPlan
from gpt2kit.model.vocab_pad import unpadded

ONNX_FILE = "model.onnx"
OPSET = 18


def input_names(n_layer: int) -> list[str]:
    return ["input_ids"] + [f"past_key_values.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


def output_names(n_layer: int) -> list[str]:
    return ["logits"] + [f"present.{i}.{kv}" for i in range(n_layer) for kv in ("key", "value")]


class _ConcatCache:
    """KVCache's interface over tensors: the past (B, nh, P, hs) of each layer in, past + new out.

    `plan` gives the new tokens positions P..P+T-1 and a causal mask over the P + T keys; `update` appends
    a layer's new keys/values to its past and keeps the result as that layer's `present`."""

    def __init__(self, past: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.past = past
        self.present: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def seq_len(self) -> int:
        return self.past[0][0].shape[2]

    def plan(self, T: int, attention_mask: torch.Tensor | None = None) -> StepPlan:
        assert attention_mask is None, "the ONNX graph takes no padding mask: rows share one length"
        k0 = self.past[0][0]
        B, P, device = k0.shape[0], k0.shape[2], k0.device
        query_pos = torch.arange(T, device=device) + P  # (T,)
        keys = torch.arange(P + T, device=device)  # (K,)
        causal = keys[None, :] <= query_pos[:, None]  # (T, K)
        position_ids = query_pos[None].expand(B, T)  # (B, T)
        return StepPlan(cols=position_ids, position_ids=position_ids, attn_mask=causal[None, None].expand(B, 1, T, P + T),
                        n_keys=P + T)  # fmt: skip

    def update(self, layer: int, kv: torch.Tensor, plan: StepPlan) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = kv.unbind(0)  # (2, B, nh, T, hs) -> keys, values
        past_k, past_v = self.past[layer]
        k = torch.cat([past_k, k.to(past_k.dtype)], dim=2)  # (B, nh, P + T, hs)
        v = torch.cat([past_v, v.to(past_v.dtype)], dim=2)
        self.present.append((k, v))
        return k, v


class OnnxGPT(nn.Module):
    """The traced module: (input_ids, *past) -> (logits, *present), through `GPT.forward` itself."""

    def __init__(self, model: GPT) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = _ConcatCache([(past[2 * i], past[2 * i + 1]) for i in range(len(past) // 2)])
        logits, _ = self.model(input_ids, kv_cache=cache)  # (B, T, V)
        return (logits, *[t for kv in cache.present for t in kv])


def export_onnx(model: GPT, out: str | os.PathLike) -> Path:
    """Write `model` (fp32) as `out/model.onnx` plus `out/config.json` (its Hugging Face config); returns `out`."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401  (torch's ONNX exporter builds the graph with it)
    except ImportError:
        raise ConfigError('ONNX export needs onnx and onnxscript: pip install "gpt2kit[export]".') from None

    model = unpadded(model)
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)  # never convert the caller's model
    cfg = model.config
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    L, nh, hs = cfg.n_layer, cfg.n_head, cfg.head_dim
    B, T, P = 2, 3, 4  # example sizes: >= 2, so the exporter keeps every dimension symbolic
    ids = torch.zeros(B, T, dtype=torch.long)
    past = [torch.zeros(B, nh, P, hs) for _ in range(2 * L)]
    batch, new, cached = torch.export.Dim("batch"), torch.export.Dim("new_tokens"), torch.export.Dim("past_tokens")
    shapes = ({0: batch, 1: new}, tuple({0: batch, 2: cached} for _ in range(2 * L)))  # (input_ids, *past)
    wrapper, was_training = OnnxGPT(model), model.training
    torch_log = logging.getLogger("torch.onnx")
    level = torch_log.level
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # the exporter's notes (axis names, deprecations, optional torchvision ops) are not the user's business
            warnings.simplefilter("ignore")
            torch_log.setLevel(logging.ERROR)
            program = torch.onnx.export(
                wrapper.eval(), (ids, *past), dynamo=True, dynamic_shapes=shapes, opset_version=OPSET,
                input_names=input_names(L), output_names=output_names(L), optimize=True, verbose=False,
            )  # fmt: skip
    finally:
        torch_log.setLevel(level)
        model.train(was_training)
    program.save(str(out / ONNX_FILE))
    write_text(out / "config.json", json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
    return out
