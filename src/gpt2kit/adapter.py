"""LoRA adapters in PEFT's file format: what `gpt2kit finetune --lora-r` writes, and what PEFT itself reads.

    adapter_dir/
        adapter_config.json          # PEFT's LoraConfig: peft_type LORA, r, lora_alpha, target_modules, ...
        adapter_model.safetensors    # base_model.model.transformer.h.{i}.attn.c_attn.lora_A.weight  (r, in)
                                     # base_model.model.transformer.h.{i}.attn.c_attn.lora_B.weight  (out, r)

`peft.PeftModel.from_pretrained(GPT2LMHeadModel.from_pretrained(base), adapter_dir)` loads our adapters, and
`load_adapter` loads PEFT's: the tensors are the same (see model/lora.py on Conv1D vs nn.Linear).

    load_adapter(model, folder)   # adapters added unmerged (training, resume)
    apply_adapter(model, folder)  # merged in place: an ordinary GPT, every fast path applies
    merged_copy(base, folder)     # a new GPT = base + adapter that shares every untouched tensor with base
    save_adapter(model, folder, base_model="gpt2")

Supported: plain LoRA and rsLoRA on the block projections (c_attn, c_proj, c_fc), any rank per layer
(rank_pattern) and alpha per layer (alpha_pattern). Refused with a message: DoRA, trained biases,
modules_to_save and other PEFT extensions, which change more than lora_A/lora_B.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import torch

from gpt2kit.atomic import atomic_path, write_text
from gpt2kit.errors import CheckpointError, ModelNotFoundError
from gpt2kit.model.gpt import GPT
from gpt2kit.model.lora import LORA_TARGETS, add_lora, freeze_base, lora_modules, merge_lora, target_names

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel -> LoraModel -> GPT2LMHeadModel
_KEY = re.compile(r"^(?P<module>.+)\.(?P<which>lora_A|lora_B)\.weight$")
# PEFT options that change more than lora_A/lora_B (value when off); an adapter using one is refused.
_UNSUPPORTED = {
    "use_dora": False, "lora_bias": False, "bias": "none", "modules_to_save": None, "trainable_token_indices": None,
    "layer_replication": None, "target_parameters": None, "use_qalora": False, "alora_invocation_tokens": None,
}  # fmt: skip


def is_adapter_folder(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


# ---- reading ---------------------------------------------------------------------------------------
def read_adapter_config(folder: str | os.PathLike) -> dict:
    """adapter_config.json of a PEFT LoRA adapter, checked for what gpt2kit can apply."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelNotFoundError(f"no such adapter folder: {folder}.")
    if not (folder / ADAPTER_CONFIG).is_file():
        hint = " It is a full model folder: pass it as --model." if (folder / "config.json").is_file() else ""
        raise ModelNotFoundError(f"{folder} has no {ADAPTER_CONFIG}: an adapter is a PEFT LoRA folder "
                                 f"(from `gpt2kit finetune --lora-r N` or peft's save_pretrained).{hint}")  # fmt: skip
    try:
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder / ADAPTER_CONFIG} is not valid JSON ({e}).") from None
    if cfg.get("peft_type") != "LORA":
        raise CheckpointError(f"{folder} holds a {cfg.get('peft_type')!r} adapter; gpt2kit applies LoRA adapters only.")
    used = [k for k, off in _UNSUPPORTED.items() if cfg.get(k, off) not in (off, [], {}, False)]
    if used:
        raise CheckpointError(f"{folder}: the adapter uses PEFT option(s) {used}, which gpt2kit does not apply "
                              "(only lora_A/lora_B on c_attn, c_proj, c_fc). Merge it with peft's merge_and_unload() "
                              "and pass the merged folder as --model instead.")  # fmt: skip
    return cfg


def _read_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        if (folder / ADAPTER_WEIGHTS).is_file():
            return load_file(folder / ADAPTER_WEIGHTS)
        if (folder / "adapter_model.bin").is_file():  # PEFT before safetensors
            return torch.load(folder / "adapter_model.bin", map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, OSError, EOFError) as e:
        raise CheckpointError(f"{folder}: the adapter weights are unreadable ({type(e).__name__}: {str(e)[:200]}).") from None
    raise CheckpointError(f"{folder} has {ADAPTER_CONFIG} but no {ADAPTER_WEIGHTS}.")


def _pattern_value(pattern: dict, name: str, default):
    """PEFT's rank_pattern / alpha_pattern lookup: the first key that matches the tail of the module name."""
    for key in pattern or {}:
        if re.match(rf"(.*\.)?({key})$", name):
            return pattern[key]
    return default


def load_adapter(model: GPT, folder: str | os.PathLike, dropout: float = 0.0) -> list[str]:
    """Add the adapters of a PEFT LoRA folder to `model`, unmerged, base frozen; returns the adapted names."""
    folder = Path(folder)
    cfg = read_adapter_config(folder)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in _read_tensors(folder).items():
        m = _KEY.match(key.removeprefix(PEFT_PREFIX))
        if not key.startswith(PEFT_PREFIX) or m is None:
            raise CheckpointError(f"{folder}: unexpected tensor {key!r} in the adapter; a GPT-2 LoRA adapter holds "
                                  f"{PEFT_PREFIX}transformer.h.N.<layer>.lora_A.weight / lora_B.weight only.")  # fmt: skip
        pairs.setdefault(m["module"], {})[m["which"]] = tensor
    if not pairs:
        raise CheckpointError(f"{folder}: the adapter holds no LoRA tensors.")
    known = set(target_names(model, LORA_TARGETS))
    for name in sorted(pairs, key=_layer_order):
        ab = pairs[name]
        if name not in known:
            raise CheckpointError(f"{folder}: the adapter targets {name}, which this model does not have "
                                  f"(n_layer={model.config.n_layer}); was it trained on another base model?")  # fmt: skip
        if set(ab) != {"lora_A", "lora_B"}:
            raise CheckpointError(f"{folder}: {name} has {sorted(ab)} but needs both lora_A and lora_B.")
        A, B = ab["lora_A"], ab["lora_B"]  # (r, in), (out, r)
        base = model.get_submodule(name)
        want = (A.shape[0], base.in_features), (base.out_features, A.shape[0])
        if (tuple(A.shape), tuple(B.shape)) != want:
            raise CheckpointError(f"{folder}: {name} lora_A {tuple(A.shape)} / lora_B {tuple(B.shape)} do not fit this model's "
                                  f"layer ({base.out_features} x {base.in_features}): the adapter was trained on another base model "
                                  f"({cfg.get('base_model_name_or_path')}).")  # fmt: skip
        alpha = _pattern_value(cfg.get("alpha_pattern"), name, cfg.get("lora_alpha", 8))
        module = add_lora(model, name, A.shape[0], alpha, dropout, rslora=bool(cfg.get("use_rslora")))
        with torch.no_grad():
            module.lora_A.weight.copy_(A)
            module.lora_B.weight.copy_(B)
    freeze_base(model)
    return sorted(pairs, key=_layer_order)


def _layer_order(name: str) -> tuple[int, str]:
    return int(name.split(".")[2]), name


def apply_adapter(model: GPT, folder: str | os.PathLike) -> GPT:
    """`model` with the adapter merged into its weights, in place (an ordinary GPT afterwards)."""
    load_adapter(model, folder)
    return merge_lora(model)


def merged_copy(base: GPT, folder: str | os.PathLike) -> GPT:
    """A new GPT = base + adapter. Every tensor the adapter does not change (embeddings, LayerNorms,
    biases, untargeted layers) is the base's own, so the copy costs only its merged layers."""
    with torch.device("meta"):
        copy = GPT(base.config)
    copy.load_state_dict(base.state_dict(), assign=True)  # the same storage as base, nothing copied
    copy.lm_head.weight = copy.transformer.wte.weight
    copy.train(base.training)
    return apply_adapter(copy, folder)


# ---- writing ---------------------------------------------------------------------------------------
def base_model_name(source: str | os.PathLike | None) -> str | None:
    """What adapter_config.json records as the base: a hub id for presets, an absolute path for folders."""
    if source is None:
        return None
    from gpt2kit.builtin import builtin_folder, is_builtin
    from gpt2kit.config import HUB_IDS

    text = str(source)
    if is_builtin(text):
        return str(builtin_folder())
    if text in HUB_IDS:
        return HUB_IDS[text]
    return str(Path(text).expanduser().resolve()) if Path(text).expanduser().exists() else text


def peft_config(model: GPT, base_model: str | None = None) -> dict:
    """PEFT's LoraConfig for the adapters of `model` (shared r/alpha, per-layer exceptions as patterns)."""
    mods = lora_modules(model)
    assert mods, "the model has no LoRA adapters"
    r = Counter(m.r for m in mods.values()).most_common(1)[0][0]
    alpha = Counter(m.alpha for m in mods.values()).most_common(1)[0][0]
    rslora = {m.rslora for m in mods.values()}
    assert len(rslora) == 1, "mixed rsLoRA and LoRA scaling cannot be written as one PEFT config"
    short = sorted({n.rsplit(".", 1)[1] for n in mods})
    targets = short if target_names(model, short) == list(mods) else list(mods)
    dropout = max(m.dropout for m in mods.values())
    return {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name(base_model),
        "r": r, "lora_alpha": _num(alpha), "lora_dropout": dropout, "target_modules": targets,
        "fan_in_fan_out": True,  # Hugging Face's GPT-2 holds these layers as Conv1D ([in, out])
        "bias": "none", "use_rslora": rslora.pop(), "use_dora": False, "lora_bias": False, "modules_to_save": None,
        "init_lora_weights": True, "inference_mode": True, "layers_to_transform": None, "layers_pattern": None,
        "rank_pattern": {re.escape(n): m.r for n, m in mods.items() if m.r != r},
        "alpha_pattern": {re.escape(n): _num(m.alpha) for n, m in mods.items() if m.alpha != alpha},
    }  # fmt: skip


def _num(x: float) -> float | int:
    return int(x) if float(x).is_integer() else float(x)


def save_adapter(model: GPT, folder: str | os.PathLike, base_model: str | None = None) -> Path:
    """Write the adapters of `model` as a PEFT LoRA folder (each file atomically); returns the folder."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = peft_config(model, base_model)
    state = {PEFT_PREFIX + name + ".lora_" + ab + ".weight": getattr(m, "lora_" + ab).weight.detach().cpu().contiguous()
             for name, m in lora_modules(model).items() for ab in ("A", "B")}  # fmt: skip
    with atomic_path(folder / ADAPTER_WEIGHTS) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    write_text(folder / ADAPTER_CONFIG, json.dumps(config, indent=2) + "\n")
    return folder
