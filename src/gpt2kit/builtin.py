"""The built-in model: a small GPT-2 that ships inside the package, so gpt2kit works offline out of the box.

It is *not* OpenAI's GPT-2: it is the exact GPT-2 architecture and tokenizer at a small size, trained by
gpt2kit's own `prepare`/`train` on public-domain English (see builtin_model/MODEL_CARD.md and
`runs/builtin.sh`). Pass `--model gpt2` (or any other model) for OpenAI's weights.

`builtin_model/builtin.json` records what the model is (shape, data, tokens seen, validation loss) and the
sha256 of its weights; the weights are checked against it before they are loaded, so a corrupted install
fails with a clear message instead of generating garbage.
"""

from __future__ import annotations

import functools
import hashlib
import json
from importlib import resources
from pathlib import Path

from gpt2kit.errors import CheckpointError, ModelNotFoundError

NAMES = ("builtin", "gpt2kit-builtin")
WEIGHTS_FILE = "model.safetensors"
META_FILE = "builtin.json"


def builtin_dir() -> Path:
    return Path(str(resources.files("gpt2kit") / "builtin_model"))


def is_builtin(name: str) -> bool:
    return str(name) in NAMES


@functools.cache
def builtin_folder() -> Path:
    """The verified folder of the built-in model (sha256 checked once per process)."""
    folder = builtin_dir()
    weights = folder / WEIGHTS_FILE
    if not (folder / META_FILE).is_file() or not weights.is_file():
        raise ModelNotFoundError(
            "the built-in model is missing from this installation (its files are made by runs/builtin.sh). "
            "Pass --model gpt2 (OpenAI's GPT-2, downloaded once) or --model PATH to a local model folder."
        )
    h = hashlib.sha256()
    with open(weights, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    pinned = metadata()["sha256"]
    if h.hexdigest() != pinned:
        raise CheckpointError(
            f"the built-in model's weights ({weights}) are corrupt: sha256 {h.hexdigest()[:16]}… differs from the "
            f"pinned {pinned[:16]}…. Reinstall gpt2kit (pip install --force-reinstall gpt2kit)."
        )
    return folder


def metadata() -> dict:
    return json.loads((builtin_dir() / META_FILE).read_text(encoding="utf-8"))


def describe() -> str:
    """One line for stderr: which model this is, its size, what it was trained on."""
    meta = metadata()
    return (
        f"using the built-in model {meta['name']} ({meta['params_millions']:.0f}M parameters, {meta['shape']}, "
        f"trained by gpt2kit on {meta['data']}; val loss {meta['val_loss']:.2f}) - not OpenAI's GPT-2: pass --model gpt2 for that"
    )
