"""LoRA: a low-rank update trained beside a frozen nn.Linear (Hu et al. 2021), as PEFT computes it.

    y = base_layer(x) + lora_B(lora_A(dropout(x))) * scaling        scaling = alpha / r  (rsLoRA: alpha / sqrt(r))
    x (..., in) -> lora_A (r, in) -> (..., r) -> lora_B (out, r) -> (..., out)

`inject_lora(model, r, alpha, dropout, targets)` swaps the targeted projections of every block for
`LoRALinear` (replacing the module on its parent, so gpt.py is untouched) and freezes every other
parameter. Module and parameter names are PEFT's (`transformer.h.0.attn.c_attn.lora_A.weight`), and the
shapes are too: PEFT gives Hugging Face's Conv1D layers ([in, out]) the same lora_A (r, in) and lora_B
(out, r) as an nn.Linear, and only transposes B @ A when it merges (fan_in_fan_out). Our weights are
nn.Linear [out, in], so merging is plainly W + scaling * B @ A. File I/O in the PEFT format: adapter.py.

Inference merges first (`merge_lora`): the result is an ordinary GPT, so the engine's packed and
quantised kernels, which read each layer's weight, see the adapted weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from gpt2kit.errors import ConfigError

# The projections of a GPT-2 block, by PEFT's target names: a name matches a module whose qualified
# name equals it or ends with "." + it ("c_proj" is attn.c_proj and mlp.c_proj; "mlp.c_proj" is one).
LORA_TARGETS = ("c_attn", "c_proj", "c_fc")
_BLOCK_LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


class LoRALinear(nn.Module):
    """Stands in for an nn.Linear: the frozen `base_layer` plus a trainable rank-r update.

    It has no `weight` of its own on purpose: code that reads `module.weight` for a fast path would
    silently drop the update, so it fails loudly instead (merge first: `merge_lora`)."""

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False) -> None:
        super().__init__()
        assert r >= 1, r
        self.base_layer = base_layer
        self.in_features, self.out_features = base_layer.in_features, base_layer.out_features
        self.r, self.alpha, self.rslora = r, alpha, rslora
        self.scaling = alpha / math.sqrt(r) if rslora else alpha / r
        w = base_layer.weight
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(self.in_features, r, bias=False, device=w.device, dtype=w.dtype)  # (r, in)
        self.lora_B = nn.Linear(r, self.out_features, bias=False, device=w.device, dtype=w.dtype)  # (out, r)
        # PEFT's default init: A like nn.Linear's own (Kaiming-uniform), B = 0, so training starts at the base.
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    @property
    def dropout(self) -> float:
        return self.lora_dropout.p if isinstance(self.lora_dropout, nn.Dropout) else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x (..., in) -> (..., out); the update in x's dtype (autocast handles bf16 like the base GEMM)
        return self.base_layer(x) + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """scaling * B @ A: (out, r) @ (r, in) -> (out, in), computed in fp32, in the base weight's dtype."""
        w = self.base_layer.weight
        delta = self.lora_B.weight.detach().float() @ self.lora_A.weight.detach().float()
        return (delta * self.scaling).to(w.dtype)

    def merged(self) -> nn.Linear:
        """A new nn.Linear with W + scaling * B @ A (a new weight tensor; the bias is the base's own)."""
        base = self.base_layer
        out = nn.Linear(self.in_features, self.out_features, bias=base.bias is not None, device="meta")
        out.weight = nn.Parameter(base.weight.detach() + self.delta_weight(), requires_grad=base.weight.requires_grad)
        if base.bias is not None:
            out.bias = base.bias
        return out

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, r={self.r}, alpha={self.alpha}, scaling={self.scaling:g}"


def matches(name: str, target: str) -> bool:
    """PEFT's rule for a list of target_modules: the whole name, or its dotted tail."""
    return name == target or name.endswith("." + target)


def target_names(model: nn.Module, targets: tuple[str, ...] | list[str]) -> list[str]:
    """Qualified names of the block projections that `targets` select, in module order."""
    names = [f"transformer.h.{i}.{p}" for i in range(len(model.transformer.h)) for p in _BLOCK_LINEARS]
    return [n for n in names if any(matches(n, t) for t in targets)]


def check_targets(targets: tuple[str, ...] | list[str]) -> None:
    """Each target must select at least one block projection (c_attn, c_proj, c_fc, attn.c_proj, ...)."""
    for t in targets:
        if not any(matches(p, t) for p in _BLOCK_LINEARS):
            raise ConfigError(
                f"LoRA target {t!r} matches no layer of a GPT-2 block; use some of {', '.join(LORA_TARGETS)} "
                "(c_proj = attn.c_proj and mlp.c_proj; attn.c_proj or mlp.c_proj for one of them)."
            )


def add_lora(model: nn.Module, name: str, r: int, alpha: float, dropout: float = 0.0, rslora: bool = False) -> LoRALinear:
    """Replace the nn.Linear `name` (e.g. transformer.h.0.attn.c_attn) by a LoRALinear around it."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    base = getattr(parent, child)
    if not isinstance(base, nn.Linear):
        raise ConfigError(f"{name} is a {type(base).__name__}, not an nn.Linear: it already has an adapter, or cannot take one.")
    module = LoRALinear(base, r, alpha, dropout, rslora)
    setattr(parent, child, module)
    return module


def inject_lora(model: nn.Module, r: int, alpha: float, dropout: float = 0.0, targets=LORA_TARGETS) -> list[str]:
    """Adapters on every targeted projection, everything else frozen; returns the adapted names."""
    check_targets(targets)
    names = target_names(model, targets)
    for name in names:
        add_lora(model, name, r, alpha, dropout)
    freeze_base(model)
    return names


def freeze_base(model: nn.Module) -> None:
    """Only lora_A / lora_B train (the tied wte/lm_head, positions, LayerNorms, biases do not)."""
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_A." in name or ".lora_B." in name)


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def has_lora(model: nn.Module) -> bool:
    return any(isinstance(m, LoRALinear) for m in model.modules())


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors by our (= PEFT's, less its `base_model.model.` prefix) names."""
    return {k: v for k, v in model.state_dict().items() if ".lora_A." in k or ".lora_B." in k}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its layer (W += scaling * B @ A) and put plain nn.Linear modules back,
    in place; the result is an ordinary GPT (all fast paths apply). New weight tensors are made, so a
    base whose other tensors are shared with another model is left unchanged."""
    for name, module in lora_modules(model).items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, module.merged())
    return model
