"""Load and save GPT-2 weights in the Hugging Face format: our checkpoints *are* Hugging Face checkpoints.

`from_pretrained(name_or_path)` accepts
  - "builtin": the small GPT-2 that ships inside the package (see builtin.py),
  - a local folder with `config.json` and `model.safetensors` (or sharded safetensors with an index,
    or `pytorch_model.bin`, read with `weights_only=True`),
  - a preset name (`gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`, `distilgpt2`) or any Hugging Face
    repo id holding GPT-2 weights, downloaded (or read from the local cache) with huggingface_hub.
`save_pretrained(model, folder)` writes `config.json` + `model.safetensors` (+ the tokenizer files),
which `transformers.GPT2LMHeadModel.from_pretrained(folder)` loads with the same logits.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from pathlib import Path

import torch

from gpt2kit.atomic import atomic_path, write_text
from gpt2kit.builtin import builtin_folder, is_builtin
from gpt2kit.config import HUB_IDS, GPTConfig
from gpt2kit.device import resolve_device, resolve_dtype
from gpt2kit.errors import CheckpointError, ModelNotFoundError
from gpt2kit.model.convert import from_hf_state_dict, to_hf_state_dict
from gpt2kit.model.gpt import GPT
from gpt2kit.model.vocab_pad import unpadded

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def from_pretrained(
    name_or_path: str | os.PathLike,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
) -> GPT:
    """A GPT with the weights of a local folder, a preset or a Hugging Face repo id, in eval mode."""
    folder = resolve_model_folder(name_or_path)
    config = GPTConfig.from_json_file(folder / "config.json")
    raw = load_weights(folder)
    check_weight_values(raw, folder)
    state = from_hf_state_dict(raw, config, source=str(folder))
    with torch.device("meta"):  # no random init: the weights are assigned straight from the file
        model = GPT(config)
    model.load_state_dict(state, assign=True)
    model.lm_head.weight = model.transformer.wte.weight  # re-tie: assign gave the head its own Parameter
    model.to(device=resolve_device(device), dtype=resolve_dtype(dtype, default=torch.float32))
    return model.eval()


def resolve_model_folder(name_or_path: str | os.PathLike) -> Path:
    """A local folder holding config.json and weights: the path itself, or a hub download/cache."""
    text = str(name_or_path)
    if is_builtin(text):
        return builtin_folder()
    path = Path(text).expanduser()
    if path.is_dir():
        _check_folder(path)
        return path
    if path.exists():
        raise ModelNotFoundError(f"{text} is a file; pass the folder that holds config.json and model.safetensors.")
    if text.startswith((".", "/", "~")) or os.sep in text.replace("/", "") or not _REPO_ID.match(text):
        raise ModelNotFoundError(f"no such model folder: {text}. Check the path, or pass a preset such as 'gpt2'.")
    return _download(HUB_IDS.get(text, text))


def _check_folder(folder: Path) -> None:
    if not (folder / "config.json").is_file() and (folder / "adapter_config.json").is_file():
        raise ModelNotFoundError(
            f"{folder} is a LoRA adapter, not a model: pass its base model as --model and this folder as --adapter "
            "(or make a plain model folder with `gpt2kit merge --model BASE --adapter DIR --out OUT`)."
        )
    if not (folder / "config.json").is_file():
        raise ModelNotFoundError(
            f"{folder} has no config.json: a model folder needs config.json and model.safetensors "
            "(write one with gpt2kit.save_pretrained or transformers' save_pretrained)."
        )
    if not any((folder / f).is_file() for f in WEIGHT_FILES):
        raise ModelNotFoundError(f"{folder} has config.json but no weights: expected one of {list(WEIGHT_FILES)}.")


def _download(repo_id: str) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    def fetch(filename: str) -> Path:
        return Path(hf_hub_download(repo_id, filename))

    try:
        config = fetch("config.json")
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"{repo_id!r} is neither a local folder nor a model on the Hugging Face hub. "
            f"Presets: {sorted(HUB_IDS)}; or pass the path of a folder with config.json + model.safetensors."
        ) from None
    except (LocalEntryNotFoundError, OSError, EntryNotFoundError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false")
        why = "HF_HUB_OFFLINE is set" if offline else f"the hub could not be reached ({type(e).__name__})"
        raise ModelNotFoundError(
            f"cannot load model {repo_id!r}: it is not a local folder, {why}, and there is no cached copy. "
            f"On a machine with network run `hf download {repo_id}` (or gpt2kit once, online) to cache it, "
            "or pass a local folder holding config.json + model.safetensors, e.g. --model ./my-gpt2."
        ) from None
    for filename in WEIGHT_FILES:
        try:
            weights = fetch(filename)
        except (EntryNotFoundError, LocalEntryNotFoundError):
            continue
        if filename.endswith(".index.json"):
            for shard in sorted(set(json.loads(weights.read_text())["weight_map"].values())):
                fetch(shard)
        return config.parent
    raise ModelNotFoundError(f"model {repo_id!r} on the hub has no GPT-2 weights ({', '.join(WEIGHT_FILES)}).")


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The raw state dict of a folder (Hugging Face names and layout), from whichever weight file it has.
    `pytorch_model.bin` is read with weights_only=True: a file that needs more than tensors is refused."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if (folder / "model.safetensors").is_file():
            return load_file(folder / "model.safetensors")
        if (folder / "model.safetensors.index.json").is_file():
            index = json.loads((folder / "model.safetensors.index.json").read_text(encoding="utf-8"))
            state: dict[str, torch.Tensor] = {}
            for shard in sorted(set(index["weight_map"].values())):
                state.update(load_file(folder / shard))
            return state
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # (torch's own message suggests weights_only=False: never do that for a model file)
        raise CheckpointError(
            f"{folder / 'pytorch_model.bin'} is not a plain tensor file: it holds pickled Python objects besides tensors "
            "(or is damaged), and gpt2kit never unpickles code. Use the model's model.safetensors, or convert the weights "
            "to safetensors where you trust their source."
        ) from None
    except (SafetensorError, RuntimeError, EOFError, OSError, KeyError, TypeError, AttributeError, ValueError) as e:
        detail = "" if "weights_only" in str(e) else f": {str(e)[:200]}"
        raise CheckpointError(
            f"{folder}: the weights file is unreadable or corrupt ({type(e).__name__}{detail}). Re-download or re-save it."
        ) from None


# No trained GPT-2 weight comes near this (and fp16 files cannot hold more than 65504): a larger value is a
# flipped exponent bit, which would overflow the forward pass to inf and NaN.
MAX_ABS_WEIGHT = 1e5


def check_weight_values(state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """CheckpointError if any floating-point tensor holds NaN, inf or a value beyond MAX_ABS_WEIGHT."""
    for name, t in state.items():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        lo, hi = (float(v) for v in torch.aminmax(t))  # one pass, no copy
        if not (-MAX_ABS_WEIGHT <= lo and hi <= MAX_ABS_WEIGHT):  # (NaN fails both comparisons)
            bad = "NaN" if math.isnan(lo) or math.isnan(hi) else f"values in [{lo:.3g}, {hi:.3g}]"
            raise CheckpointError(
                f"{source}: weight {name} holds {bad}, which no trained GPT-2 has: the file is corrupt (a damaged "
                "download or disk, a flipped bit). Re-download or re-save it."
            )


def save_pretrained(
    model: GPT, folder: str | os.PathLike, dtype: str | torch.dtype | None = None, tokenizer_files: bool = True
) -> Path:
    """Write `model` as a Hugging Face GPT-2 folder; every file is written atomically. A model trained with a
    padded vocabulary is written at its real size (config.n_vocab rows)."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    model = unpadded(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = to_hf_state_dict(model.state_dict())
    if dtype is not None:
        target = resolve_dtype(dtype)
        state = {k: v.to(target) for k, v in state.items()}
    state = {k: v.cpu() for k, v in state.items()}
    with atomic_path(folder / "model.safetensors") as tmp:
        try:
            save_file(state, str(tmp), metadata={"format": "pt"})
        except SafetensorError as e:  # its I/O errors (a full disk) as the OSError they are
            m = re.search(r"os error (\d+)", str(e))
            if m is None:
                raise
            raise OSError(int(m.group(1)), os.strerror(int(m.group(1))), str(folder / "model.safetensors")) from None
    hf = model.config.to_hf_dict()
    hf["torch_dtype"] = str(next(iter(state.values())).dtype).removeprefix("torch.")
    write_text(folder / "config.json", json.dumps(hf, indent=2) + "\n")
    if tokenizer_files:
        from gpt2kit.tokenizer.gpt2_vocab import write_hf_tokenizer_files

        write_hf_tokenizer_files(folder)
    return folder

