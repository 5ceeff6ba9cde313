"""AdamW with GPT-2's decay rule, and the learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import inspect
import math

import torch

from gpt2kit.train.config import TrainConfig


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay the >=2-D tensors (matmul weights, embeddings); never biases or LayerNorm gains.

    The tied wte/lm_head matrix is one Parameter, so it appears (and is decayed) once."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused on CUDA (one kernel for all parameters) and foreach elsewhere."""
    kw = {}
    if device.type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        kw["fused"] = True
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8, **kw)


def get_lr(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int, schedule: str = "cosine") -> float:
    """The learning rate for optimizer step `step` (0-based).

    Warmup: linear from lr/warmup_steps (never 0, so step 0 already learns) to lr at step warmup_steps-1.
    Then, over the remaining steps to max_steps: cosine or linear decay to min_lr, or constant lr.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    decay_steps = max(1, max_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)  # 0 -> 1
    if schedule == "linear":
        return lr + (min_lr - lr) * progress
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
