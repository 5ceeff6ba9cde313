"""Shared fixtures: tiny random GPT-2s saved by transformers, paths to the shared corpora."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# GPT2KIT_CORPORA points elsewhere where ../shared does not travel (the lent GPU machine gets the repo alone)
CORPORA = Path(os.environ.get("GPT2KIT_CORPORA", SHARED / "corpora"))


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def corpora_dir() -> Path:
    if not CORPORA.is_dir():
        pytest.fail(f"the shared corpora are missing: expected {CORPORA} (beside the repo root, or set GPT2KIT_CORPORA)")
    return CORPORA


def save_hf_gpt2(folder: Path, seed: int = 0, **config) -> Path:
    """A random-weight transformers GPT2LMHeadModel (with tokenizer files) saved to `folder`."""
    import transformers

    from gpt2kit.tokenizer.gpt2_vocab import write_hf_tokenizer_files

    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(**{"n_layer": 2, "n_embd": 64, "n_head": 4, "n_positions": 128, **config})
    model = transformers.GPT2LMHeadModel(cfg).eval()
    perturb_(model)
    model.save_pretrained(folder)
    write_hf_tokenizer_files(Path(folder))
    return Path(folder)


def perturb_(model: torch.nn.Module, scale: float = 0.1, seed: int = 1234) -> torch.nn.Module:
    """Give every bias a non-zero value and every LayerNorm a non-identity scale, in place.

    Fresh GPT-2 inits (ours and transformers') have zero biases and identity LayerNorms, and then a kernel
    that drops a bias or a LayerNorm that is skipped computes the same numbers: test models must not."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.add_(torch.randn(p.shape, generator=g) * scale)
            elif ("ln_" in name or "ln_f" in name) and name.endswith(".weight"):
                p.mul_(1 + torch.randn(p.shape, generator=g) * scale)
    return model


def tiny_gpt(seed: int = 0, **config):
    """A random-weight GPT (ours) in eval mode, biases and LayerNorms perturbed (see perturb_)."""
    from gpt2kit import GPT, GPTConfig

    torch.manual_seed(seed)
    return perturb_(GPT(GPTConfig(**config)), seed=seed + 1234).eval()


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory) -> Path:
    """A 2-layer, 64-wide random GPT-2 in Hugging Face format (model.safetensors + config.json + vocab)."""
    return save_hf_gpt2(tmp_path_factory.mktemp("tiny_hf"))
