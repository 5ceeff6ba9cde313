"""TrainConfig: every knob of a training or fine-tuning run, typed, validated and saved with each checkpoint.

A run is fully described by this dataclass (plus the data on disk): the CLI builds one from flags or a
JSON file in configs/, the loop writes it into every checkpoint's meta.json, and `--resume` rebuilds it.
Field help strings double as the CLI help.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from gpt2kit.config import PRESETS, DictConfig, GPTConfig, read_json_object
from gpt2kit.config import help_field as _help
from gpt2kit.errors import ConfigError
from gpt2kit.fields import check_types

# Small shapes for training from scratch on a CPU or a small GPU (GPT-2's vocabulary and architecture).
SMALL_PRESETS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(n_layer=2, n_head=2, n_embd=64, n_positions=256),  # 3.3M, for tests and smoke runs
    "cpu-small": GPTConfig(n_layer=4, n_head=4, n_embd=256, n_positions=256),  # 16M (12.9M of it embeddings)
    "cpu-medium": GPTConfig(n_layer=6, n_head=6, n_embd=384, n_positions=512),  # 30M
}


@dataclass
class TrainConfig(DictConfig):
    """One training run. Defaults: a sensible small run; sizes are in tokens where that is what matters."""

    _NOUN = "training option"

    # ---- what to train, on what
    data: str = _help("shards folder from `gpt2kit prepare`, or (fine-tuning) a prompt/completion .jsonl", default="")
    out_dir: str = _help("run folder: checkpoints, metrics.jsonl, loss.png", default="out")
    model: str = _help(
        "from scratch: a preset (tiny, cpu-small, cpu-medium, gpt2, gpt2-medium, ...) or a GPTConfig JSON file",
        default="cpu-small",
    )
    init_from: str | None = _help(
        "start from these weights: a preset/hub id/HF folder (from_pretrained) or one of our checkpoint folders", default=None
    )
    resume: bool = _help(
        "continue the latest checkpoint in out_dir exactly (weights, optimizer, data position, RNG)", default=False
    )
    dropout: float | None = _help(
        "override the model's dropout (None keeps it; 0.0 for pretraining big data, ~0.1 for small data)", default=None
    )
    # ---- batch
    block_size: int = _help("T: tokens per sequence (<= the model's n_positions; 0 = n_positions)", default=0)
    micro_batch: int = _help("B: sequences per forward/backward on each process", default=8)
    batch_tokens: int = _help(
        "tokens per optimizer step across all processes; gradient accumulation = batch_tokens / (B*T*world), must divide (0 = B*T*world)",
        default=0,
    )
    data_order: str = _help("random (uniform windows, nanoGPT) or sequential (llm.c) training batches", default="random")
    # ---- optimisation
    max_steps: int = _help("optimizer steps to train (the schedule's length)", default=1000)
    max_minutes: float = _help("stop (with a checkpoint) after this many minutes of training; 0 = no time limit", default=0.0)
    fit_to_time: bool = _help(
        "with max_minutes: after 25 warm-up steps, and again at each eval, set max_steps (the schedule, at most the given max_steps) to what fits in the time budget at the measured rate, so the lr still decays to min_lr; saved, so a resume keeps it",
        default=False,
    )
    lr: float = _help("peak learning rate", default=6e-4)
    min_lr: float = _help("learning rate at the end of the decay", default=6e-5)
    warmup_steps: int = _help("linear warmup from ~0 to lr over this many steps", default=100)
    schedule: str = _help("after warmup: cosine, linear or constant", default="cosine")
    weight_decay: float = _help("AdamW weight decay, applied to >=2-D weights only (not biases, LayerNorms)", default=0.1)
    beta1: float = _help("AdamW beta1", default=0.9)
    beta2: float = _help("AdamW beta2", default=0.95)
    grad_clip: float = _help("clip the global gradient norm to this (0 = off)", default=1.0)
    # ---- numerics and hardware
    device: str = _help("auto, cpu, cuda, cuda:N, mps", default="auto")
    dtype: str = _help(
        "auto (bf16 autocast on GPUs that have it, fp16+GradScaler on older GPUs, fp32 on CPU), fp32, bf16, fp16", default="auto"
    )
    compile: str = _help(
        "torch.compile the model: auto (on for CUDA; on the CPU, for runs of 200+ steps without a time limit under "
        "10 minutes, the first steps are timed eager and compiled and the faster is kept), on, off",
        default="auto",
    )
    pad_vocab: int = _help(
        "round the token embedding/head rows up to a multiple of this for evenly tiled GPU matmuls (64: 50257 -> 50304); "
        "the padded rows start at zero, are left out of the softmax and dropped from checkpoints, so the loss is the "
        "unpadded model's; 0 = off",
        default=0,
    )
    fsdp: bool = _help(
        "shard parameters/optimizer state with FSDP2 fully_shard (torchrun, CUDA) for models that don't fit", default=False
    )
    seed: int = _help("seed for init, dropout and data order", default=1337)
    threads: int = _help("CPU threads for torch (0 = torch's default, one per core); 1 is faster on a busy machine", default=0)
    # ---- watching the run
    log_interval: int = _help("print and log train loss every this many steps (each log is a host sync on GPU)", default=10)
    eval_interval: int = _help("validation loss, sample and checkpoint every this many steps (and at the end)", default=200)
    eval_batches: int = _help("validation batches per evaluation (the same fixed batches every time)", default=20)
    sample_tokens: int = _help("tokens to sample from sample_prompt at each eval (0 = no samples)", default=64)
    sample_prompt: str = _help("prompt for the periodic samples", default="\n")
    keep_last: int = _help("keep the last N checkpoints (plus the best by val loss)", default=2)
    early_stop: int = _help("stop when val loss has not improved for this many evals (0 = never)", default=0)
    eval_hellaswag: str = _help("a hellaswag_val.jsonl file: also score HellaSwag acc/acc_norm at each eval", default="")
    eval_hellaswag_limit: int = _help("HellaSwag examples scored at each eval (the first N of the file)", default=200)
    tensorboard: bool = _help("also log to TensorBoard (out_dir/tb) when it is installed", default=False)
    wandb_project: str | None = _help("also log to this Weights & Biases project when wandb is installed", default=None)
    # ---- fine-tuning data (prompt/completion JSONL)
    val_fraction: float = _help("fine-tuning JSONL: fraction of examples held out for validation", default=0.05)
    prompt_field: str = _help("fine-tuning JSONL: the prompt field", default="prompt")
    completion_field: str = _help("fine-tuning JSONL: the completion field", default="completion")
    # ---- LoRA: train low-rank adapters beside frozen weights; checkpoints are PEFT adapter folders
    lora_r: int = _help("LoRA rank: train only rank-r adapters on lora_targets, every base weight frozen (0 = full fine-tuning)", default=0)
    lora_alpha: float = _help("LoRA: the adapters' update is scaled by lora_alpha / lora_r", default=16.0)
    lora_dropout: float = _help("LoRA: dropout on the adapters' input", default=0.05)
    lora_targets: str = _help(
        "LoRA: comma-separated layers that get adapters (c_attn; c_proj = attn.c_proj and mlp.c_proj; c_fc; or attn.c_proj, mlp.c_proj)",
        default="c_attn,c_proj,c_fc",
    )

    def __post_init__(self) -> None:
        check_types(self)  # "lr": "3e-3" or "seed": "abc" in a JSON file: one line naming the field
        positive = ("micro_batch", "max_steps", "log_interval", "eval_interval", "eval_batches", "keep_last")
        for name in positive:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"TrainConfig.{name} must be a positive integer, got {v!r}.")
        for name in ("block_size", "batch_tokens", "warmup_steps", "sample_tokens", "early_stop", "threads", "eval_hellaswag_limit",
                     "pad_vocab"):  # fmt: skip
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"TrainConfig.{name} must be a non-negative integer, got {v!r}.")
        if not (self.lr > 0 and 0 <= self.min_lr <= self.lr):
            raise ConfigError(f"need lr > 0 and 0 <= min_lr <= lr; got lr={self.lr}, min_lr={self.min_lr}.")
        if self.schedule not in ("cosine", "linear", "constant"):
            raise ConfigError(f"schedule must be cosine, linear or constant, got {self.schedule!r}.")
        if self.dtype not in ("auto", "fp32", "float32", "bf16", "bfloat16", "fp16", "float16"):
            raise ConfigError(f"dtype must be auto, fp32, bf16 or fp16, got {self.dtype!r}.")
        if self.compile not in ("auto", "on", "off"):
            raise ConfigError(f"compile must be auto, on or off, got {self.compile!r}.")
        if self.data_order not in ("random", "sequential"):
            raise ConfigError(f"data_order must be random or sequential, got {self.data_order!r}.")
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.weight_decay < 0 or self.grad_clip < 0 or self.max_minutes < 0:
            raise ConfigError("weight_decay, grad_clip and max_minutes must be >= 0.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in [0, 1), got {self.val_fraction}.")
        if self.lora_r:
            self._check_lora()
        if not self.data:
            raise ConfigError("no training data: pass --data DIR (from `gpt2kit prepare`) or a prompt/completion .jsonl.")

    def _check_lora(self) -> None:
        from gpt2kit.model.lora import check_targets

        if not isinstance(self.lora_r, int) or isinstance(self.lora_r, bool) or self.lora_r < 0:
            raise ConfigError(f"lora_r must be an integer >= 0 (0 = full fine-tuning), got {self.lora_r!r}.")
        if not self.lora_alpha > 0 or not 0.0 <= self.lora_dropout < 1.0:
            raise ConfigError(f"need lora_alpha > 0 and 0 <= lora_dropout < 1; got {self.lora_alpha}, {self.lora_dropout}.")
        if not self.lora_target_list:
            raise ConfigError("lora_targets is empty: name the layers to adapt, e.g. --lora-targets c_attn,c_proj,c_fc.")
        check_targets(self.lora_target_list)
        if not self.init_from:
            raise ConfigError("LoRA adapts pretrained weights: use `gpt2kit finetune --model BASE --lora-r N` (or --init-from).")
        if self.fsdp:
            raise ConfigError("LoRA and --fsdp do not combine; LoRA's point is that the frozen model fits without sharding.")

    def use_compile(self, device_type: str) -> bool:
        """Whether the training forward may be compiled. On the CPU whether compiling makes a step faster
        depends on the machine, so `auto` then measures it in the run's first steps (compile_trial.py) and only
        where the tens of seconds of compiling can pay back; a short run (the tests, a smoke run, a tight time
        budget) trains eagerly."""
        if self.compile != "auto":
            return self.compile == "on"
        if device_type == "cuda":
            return True
        long_run = self.max_steps >= 200 and not (0 < self.max_minutes < 10)
        return device_type == "cpu" and long_run and _cpp_compiler_found()

    def measures_compile(self, device_type: str) -> bool:
        """Whether `auto` times eager and compiled steps before it compiles for good (on the CPU)."""
        return self.compile == "auto" and device_type == "cpu" and self.use_compile(device_type)

    @property
    def lora_target_list(self) -> tuple[str, ...]:
        return tuple(t.strip() for t in self.lora_targets.split(",") if t.strip())

    # ---- model -----------------------------------------------------------------------------------
    def model_config(self) -> GPTConfig:
        """The architecture to train from scratch (dropout override applied)."""
        if self.model in SMALL_PRESETS:
            cfg = dataclasses.replace(SMALL_PRESETS[self.model])
        elif self.model in PRESETS:
            cfg = dataclasses.replace(PRESETS[self.model])
        elif os.path.isfile(self.model):
            cfg = GPTConfig.from_json_file(self.model)
        else:
            raise ConfigError(
                f"unknown model {self.model!r}: use a preset ({', '.join([*SMALL_PRESETS, *PRESETS])}) or a GPTConfig JSON file."
            )
        return cfg if self.dropout is None else cfg.replace(dropout=self.dropout)

    def resolved(self) -> TrainConfig:
        """A copy whose local paths are absolute (data, and model / init_from / eval_hellaswag when they name
        files or folders here), as saved in checkpoints: `--resume` then works from any working directory."""
        changes = {"data": os.path.abspath(os.path.expanduser(self.data))}
        for name in ("model", "init_from", "eval_hellaswag"):
            value = getattr(self, name)
            if value and os.path.exists(os.path.expanduser(value)):
                changes[name] = os.path.abspath(os.path.expanduser(value))
        return dataclasses.replace(self, **changes)

    # ---- JSON (to_dict / from_dict: DictConfig) ----------------------------------------------------
    @classmethod
    def from_json_file(cls, path: str | os.PathLike, **overrides) -> TrainConfig:
        return cls.from_dict({**read_config_file(path), **overrides})


def _cpp_compiler_found() -> bool:
    """inductor builds its CPU kernels with a C++ compiler ($CXX, else g++ or clang++): without one, `auto`
    trains eagerly instead of failing at the first step."""
    import shutil

    return any(shutil.which(c) for c in (os.environ.get("CXX") or "g++", "clang++"))


def read_config_file(path: str | os.PathLike) -> dict:
    """The fields of a JSON config file (keys starting with '_' are comments), unknown keys refused."""
    try:
        d = read_json_object(path, "a JSON config of training options")
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist (presets live in configs/).") from None
    d = {k: v for k, v in d.items() if not k.startswith("_")}
    unknown = sorted(set(d) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise ConfigError(f"{path}: unknown training option(s) {unknown}; see `gpt2kit train --help`.")
    return d


# Fine-tuning starts from trained weights: a gentler learning rate, short warmup, frequent evals, early stopping.
FINETUNE_DEFAULTS: dict = {
    "lr": 1e-4, "min_lr": 1e-5, "warmup_steps": 20, "max_steps": 500, "eval_interval": 50, "weight_decay": 0.0,
    "micro_batch": 4, "block_size": 512, "early_stop": 3, "dropout": 0.1, "sample_tokens": 48, "data_order": "random",
}  # fmt: skip


def build_config(overrides: dict, config_file: str | None = None, defaults: dict | None = None) -> TrainConfig:
    """The run's TrainConfig: dataclass defaults <- `defaults` (e.g. FINETUNE_DEFAULTS) <- `config_file` <- `overrides`.

    With overrides["resume"], the base is instead the config saved in the latest checkpoint of out_dir, so
    `gpt2kit train --resume --out-dir X` needs no other flag; flags given explicitly still override it
    (e.g. a longer --max-steps or a new --max-minutes)."""
    d = dict(defaults or {})
    if config_file:
        d.update(read_config_file(config_file))
    if overrides.get("resume"):
        from gpt2kit.train.checkpoint import latest_checkpoint, read_meta

        out_dir = overrides.get("out_dir") or d.get("out_dir") or "out"
        latest = latest_checkpoint(os.path.join(out_dir, "checkpoints"))
        if latest is None:
            raise ConfigError(f"--resume: no checkpoint in {out_dir}/checkpoints. Start the run without --resume first.")
        d = dict(read_meta(latest)["train_config"])
    d.update(overrides)
    return TrainConfig.from_dict(d)
