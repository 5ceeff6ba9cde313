"""Training checkpoints: a Hugging Face model folder plus everything an exact resume needs.

    out_dir/checkpoints/step_000200/
        config.json, model.safetensors, tokenizer files   # gpt2kit.save_pretrained: transformers and
                                                          #   gpt2kit.from_pretrained load this folder as-is
        (LoRA runs instead: adapter_config.json, adapter_model.safetensors, a PEFT adapter folder; adapter.py)
        optimizer.pt     # optimizer.state_dict() (AdamW moments, step counts)
        rng.pt           # torch CPU/CUDA, numpy and Python RNG states (loaded with weights_only=True)
        meta.json        # human-readable: step, tokens, losses, loader state, the full TrainConfig, versions

The folder is written under a temporary name, every file fsynced, then renamed into place (and the parent
directory fsynced): a crash or kill -9 leaves either no step_000200 or a complete one, never half of one.
Leftover temporary folders from a killed run are removed at the next save. `prune` keeps the last N
checkpoints plus the best by validation loss.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from gpt2kit.atomic import naming
from gpt2kit.errors import CheckpointError

FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{6,})$")
REQUIRED = ("optimizer.pt", "rng.pt", "meta.json")
# The weights: a full model folder, or (LoRA runs) a PEFT adapter folder whose base is train_config.init_from.
WEIGHTS = (("config.json", "model.safetensors"), ("adapter_config.json", "adapter_model.safetensors"))


def step_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"step_{step:06d}"


def save_checkpoint(root: str | os.PathLike, step: int, model: torch.nn.Module, optimizer_state: dict, meta: dict,
                    model_state: dict | None = None) -> Path:  # fmt: skip
    """Write checkpoint `step` atomically under `root`; returns its folder.

    model: the plain GPT (not the DDP/compile wrapper). model_state: an already-gathered full state dict
    (FSDP), used instead of model.state_dict()."""
    from gpt2kit.model.lora import has_lora
    from gpt2kit.pretrained import save_pretrained

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in [*root.glob(".tmp-step_*"), *root.glob(".tmp-old-step_*")]:  # a killed save's, or a killed swap's
        shutil.rmtree(stale, ignore_errors=True)
    final = step_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    tmp.mkdir()
    try:
        if model_state is not None:
            from gpt2kit.model import GPT

            with torch.device("meta"):
                shell = GPT(model.config)
            shell.load_state_dict(model_state, assign=True)
            model = shell
        if has_lora(model):
            from gpt2kit.adapter import save_adapter

            save_adapter(model, tmp, base_model=meta.get("train_config", {}).get("init_from"))
        else:
            save_pretrained(model, tmp)
        _torch_save(optimizer_state, tmp / "optimizer.pt", final / "optimizer.pt")
        _torch_save(capture_rng(), tmp / "rng.pt", final / "rng.pt")
        meta = {"format_version": FORMAT_VERSION, "step": step, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **meta}
        with naming(final / "meta.json"):
            (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        for f in tmp.iterdir():
            _fsync(f)
        _fsync(tmp)
        if final.exists():  # re-saving a step (e.g. after a resume): swap, then drop the old one
            old = root / f".tmp-old-{final.name}-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync(root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        name = str(getattr(e, "filename", None) or "")
        if isinstance(e, OSError) and name.startswith(str(tmp)):  # name the checkpoint, not its temporary folder
            raise OSError(e.errno, e.strerror, str(final) + name[len(str(tmp)) :]) from e
        raise
    return final


def _torch_save(obj: object, path: Path, shown: Path) -> None:
    """torch.save through a file object: a full disk is then an OSError (torch's own file writer raises a
    RuntimeError), named after the checkpoint file it was writing."""
    with naming(shown), open(path, "wb") as f:
        torch.save(obj, f)


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every checkpoint under root, oldest first (temporary folders are not checkpoints)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def read_meta(folder: str | os.PathLike) -> dict:
    """The meta.json of a checkpoint, after checking the folder is complete."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint {folder} does not exist.")
    missing = [f for f in REQUIRED if not (folder / f).is_file()]
    weights = min(([f for f in files if not (folder / f).is_file()] for files in WEIGHTS), key=len)
    missing += weights
    if missing:
        raise CheckpointError(
            f"checkpoint {folder} is incomplete: missing {missing}. It was not written by `gpt2kit train` (or was damaged); "
            "delete it and resume from an earlier step, or use it with --init-from if it is a plain model folder."
        )
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(
            f"checkpoint {folder}: meta.json is corrupt ({e}). Delete this checkpoint and resume from an earlier one."
        ) from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {folder} has format version {meta.get('format_version')!r}; this gpt2kit reads {FORMAT_VERSION}."
        )
    return meta


def load_training_state(folder: str | os.PathLike) -> tuple[dict, dict]:
    """(optimizer state dict, RNG states) of a checkpoint, loaded on the CPU with weights_only=True."""
    folder = Path(folder)
    try:
        optim = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=True)
        rng = torch.load(folder / "rng.pt", map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch.load raises many types on a damaged file
        raise CheckpointError(
            f"checkpoint {folder}: optimizer.pt or rng.pt is unreadable ({type(e).__name__}: {str(e)[:200]}). "
            "Delete this checkpoint folder and resume from an earlier one."
        ) from None
    return optim, rng


def prune(root: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the last `keep_last` checkpoints and the best by val_loss; returns what was deleted."""
    found = list_checkpoints(root)
    keep = {p for _, p in found[max(len(found) - keep_last, 0) :]}  # not found[-keep_last:]: [-0:] is everything
    scored = []
    for _, p in found:
        try:
            v = json.loads((p / "meta.json").read_text()).get("val_loss")
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(v, (int, float)) and np.isfinite(v):
            scored.append((v, p))
    if scored:
        keep.add(min(scored, key=lambda vp: vp[0])[1])
    deleted = [p for _, p in found if p not in keep]
    for p in deleted:
        shutil.rmtree(p, ignore_errors=True)
    return deleted


def best_checkpoint(root: str | os.PathLike) -> Path | None:
    best = None
    for _, p in list_checkpoints(root):
        try:
            v = json.loads((p / "meta.json").read_text()).get("val_loss")
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(v, (int, float)) and np.isfinite(v) and (best is None or v < best[0]):
            best = (v, p)
    return best[1] if best else None


# ---- RNG -------------------------------------------------------------------------------------------
def capture_rng() -> dict:
    """Every RNG a training step draws from, as tensors/lists that torch.load(weights_only=True) accepts."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    internal, version, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
