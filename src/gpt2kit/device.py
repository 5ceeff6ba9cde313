"""The one place that picks devices and dtypes, sets seeds and the matmul precision."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from gpt2kit.errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}  # fmt: skip


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto'/None -> GPT2KIT_DEVICE where it is set, else cuda if available, else mps, else cpu; anything else
    is checked."""
    if device is None or str(device) == "auto":
        if (chosen := os.environ.get("GPT2KIT_DEVICE", "auto")) != "auto":
            try:
                return resolve_device(chosen)
            except ConfigError as e:
                raise ConfigError(f"GPT2KIT_DEVICE: {e}") from None
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N, mps or auto.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} was asked for, but this torch build sees no CUDA GPU; use --device cpu.")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None, default: torch.dtype = torch.float32) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return default
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {sorted(DTYPES)}.")
    return DTYPES[dtype]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def enable_tf32() -> None:
    """TF32 matmuls on Ampere+ GPUs: ~8x faster than fp32 for training, the precision GPT-2 training tolerates."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def cpu_has_bf16() -> bool:
    """Whether this CPU runs oneDNN's bf16 kernels natively (AVX-512 BW/VL/DQ, AVX-NE-CONVERT or AMX). On an
    AVX2-only CPU bf16 matmuls are emulated (slower than fp32) and oneDNN's packed bf16 linear refuses to run."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check is not None and torch.backends.mkldnn.is_available() and check())


def bf16_emulation_note(device: torch.device, dtype: torch.dtype) -> str | None:
    """One line to show when bf16 on this CPU would be emulated (AVX2-only: no native bf16 kernels), else None. gemv.c
    decodes bf16 weights in float32 FMAs there (about twice fp32's speed, half the bytes); products of many rows run
    in float32 on float32 copies of the weights where measured faster (the `float32` kernel); training's are emulated."""
    if device.type != "cpu" or dtype != torch.bfloat16 or cpu_has_bf16():
        return None
    return ("this CPU has no native bf16 (AVX2 only): gpt2kit decodes bf16 with its own kernels and runs prompts and "
            "evaluation on float32 copies of the weights, but training is emulated here and slower than fp32; use --dtype "
            "fp32 to train")  # fmt: skip
