"""The ladder: which GPT-2 shapes to train, on how many tokens, with which batch and learning rate.

    cfg = LADDER_PRESETS["cpu"]                     # or LadderConfig(sizes=(...), ...)
    rungs = plan_ladder(cfg)                        # smallest first
    rungs[0].train_config(data="data/corpora", out_dir="runs/scaling/L2-C12-H1")   # a TrainConfig for `gpt2kit train`

Everything a run needs is derived here, from its shape, by three documented rules:

- **Parameters.** N counts the non-embedding parameters (Kaplan et al. 2020): the blocks and the final
  LayerNorm. The token embedding (V x C, V = 50257: GPT-2's full vocabulary stays, so the model is exact GPT-2)
  and the position embedding (T x C) are counted separately as `n_embedding`; the tied output head reuses
  the token embedding, so it adds compute but no parameters.
- **Tokens.** D = tokens_per_param x N (Hoffmann et al. 2022: ~20 tokens per parameter is compute-optimal),
  or the same fixed `tokens` for every size.
- **Batch and learning rate.** batch (tokens) = sqrt(batch_scale x D), rounded to a whole number of
  micro-batches and capped at max_batch_tokens, so steps = D / batch grow as sqrt(D): bigger
  budgets reach lower losses, where the critical batch is larger (Kaplan 2020 section 5.1, B_crit grows as
  the loss falls), and small budgets still get enough steps. Peak lr = lr_scale x (0.003239 - 0.0001395 ln N),
  Kaplan 2020's fit of the best learning rate against N (their eq. D.1); cosine decay to lr/10 (Hoffmann
  2022: a cycle as long as the run, down 10x), linear warmup over warmup_frac of the steps.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from gpt2kit.config import GPT2_VOCAB_SIZE, DictConfig, GPTConfig
from gpt2kit.config import help_field as _help
from gpt2kit.errors import ConfigError
from gpt2kit.train.config import TrainConfig

Shape = tuple[int, int, int]  # (n_layer, n_embd, n_head)


@dataclass(frozen=True)
class LadderConfig(DictConfig):
    """A ladder of GPT-2 sizes and how each is trained. The presets below fit a machine each."""

    sizes: tuple[Shape, ...] = _help("(n_layer, n_embd, n_head) of each size", default=())
    head_dim: int = _help("head width for sizes given as LAYERSxWIDTH (GPT-2: 64; narrow models: 8-16)", default=16)
    block_size: int = _help("T: context length of every size (short on a CPU: the loss is per token either way)", default=64)
    micro_batch: int = _help(
        "B: sequences per forward/backward; the same for every size, so all see the same val windows", default=8
    )
    tokens_per_param: float = _help("D = this x N non-embedding parameters (Chinchilla: 20)", default=20.0)
    tokens: int = _help("a fixed token budget for every size instead (0 = tokens_per_param)", default=0)
    batch_scale: float = _help("batch tokens = sqrt(batch_scale x D), so steps = sqrt(D / batch_scale)", default=4.0)
    max_batch_tokens: int = _help("cap on the batch in tokens", default=65536)
    lr_scale: float = _help("multiplies Kaplan's lr(N) = 0.003239 - 0.0001395 ln N", default=1.0)
    warmup_frac: float = _help("linear warmup over this fraction of the steps", default=0.05)
    checkpoints: int = _help("evals + checkpoints per run (resume points)", default=3)
    eval_batches: int = _help("val batches of each in-run eval (the final loss is on the whole val split)", default=8)
    device: str = _help("auto, cpu, cuda, ...", default="auto")
    dtype: str = _help("auto, fp32, bf16", default="auto")
    compile: str = _help("torch.compile each run: auto, on, off", default="off")
    threads: int = _help("CPU threads (0 = torch's default)", default=0)
    seed: int = _help("seed of every run (init, data order)", default=1337)

    def __post_init__(self) -> None:
        if len(self.sizes) < 3:
            raise ConfigError(
                f"a ladder needs at least 3 sizes (the law has 3 parameters), got {len(self.sizes)}; pass more to --sizes (e.g. 1x16 2x32 2x64)."
            )
        for s in self.sizes:
            GPTConfig(n_layer=s[0], n_embd=s[1], n_head=s[2], n_positions=max(self.block_size, 1))  # validates the shape
        if len(set(self.sizes)) != len(self.sizes):
            raise ConfigError(f"the ladder lists a size twice: {self.sizes}.")
        for name in ("head_dim", "block_size", "micro_batch", "max_batch_tokens", "checkpoints", "eval_batches"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"LadderConfig.{name} must be positive, got {getattr(self, name)}.")
        if self.tokens < 0 or (self.tokens == 0 and not self.tokens_per_param > 0):
            raise ConfigError("give a token budget: --tokens-per-param > 0 (e.g. 20), or a fixed --tokens > 0.")
        if not (self.batch_scale > 0 and self.lr_scale > 0 and 0 <= self.warmup_frac < 1):
            raise ConfigError("need batch_scale > 0, lr_scale > 0 and 0 <= warmup_frac < 1.")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "sizes": [list(s) for s in self.sizes]}


def heads_for(n_embd: int, head_dim: int) -> int:
    """GPT-2 keeps the head width fixed as the model widens (64); small ladders use narrower heads."""
    heads = max(1, n_embd // head_dim)
    while n_embd % heads:
        heads -= 1
    return heads


def _shapes(spec: list[tuple[int, int]], head_dim: int) -> tuple[Shape, ...]:
    return tuple((L, C, heads_for(C, head_dim)) for L, C in spec)


# cpu-tiny: a smoke ladder (a fixed 8k tokens each, one checkpoint): every code path, no science.
# cpu: 3.8k..119k non-embedding parameters (31x) at 20 tokens/param = 4.8M tokens, ~30 min measured on 2 cores;
#   depth grows with width (C/L 6-9, no 1-layer sizes: they fall off the trend), micro-batch 4 keeps steps ~ sqrt(D).
# gpu: 1.8M..85M (GPT-2 124M itself at the top), 1 token/param, sized for one large GPU.
# (Measured run times, and what is not measured yet: docs/scaling.md.)
LADDER_PRESETS: dict[str, LadderConfig] = {
    "cpu-tiny": LadderConfig(
        sizes=_shapes([(1, 8), (1, 12), (1, 16), (2, 16), (2, 24), (3, 32)], head_dim=8), head_dim=8,
        block_size=32, micro_batch=8, tokens=8192, batch_scale=8.0, checkpoints=1, eval_batches=2,
        device="cpu", dtype="fp32", lr_scale=3.0,
    ),
    "cpu": LadderConfig(
        sizes=_shapes([(2, 12), (2, 16), (3, 20), (3, 28), (4, 36), (5, 44)], head_dim=16), head_dim=16,
        block_size=64, micro_batch=4, tokens_per_param=20.0, batch_scale=4.0, max_batch_tokens=8192,
        device="cpu", dtype="fp32", lr_scale=3.0,  # val loss on the earlier ladder's L1-C16: 7.82 at 1x Kaplan's lr, 7.14 at 3x, 7.13 at 6x; L2-C24: 6.61 at 3x, 6.64 at 6x
    ),
    "gpu": LadderConfig(
        sizes=_shapes([(4, 192), (4, 256), (6, 320), (6, 448), (8, 576), (12, 768)], head_dim=64), head_dim=64,
        block_size=512, micro_batch=16, tokens_per_param=1.0, batch_scale=64.0, max_batch_tokens=524288,
        checkpoints=2, eval_batches=16, device="cuda", dtype="auto",
    ),
}  # fmt: skip


def parse_size(text: str, head_dim: int = 16) -> Shape:
    """'2x32' -> (2, 32, 2) (heads of head_dim), '2x32x4' -> (2, 32, 4): LAYERSxWIDTH[xHEADS]."""
    m = re.fullmatch(r"(\d+)x(\d+)(?:x(\d+))?", text.strip().lower())
    if not m:
        raise ConfigError(f"size {text!r} is not LAYERSxWIDTH[xHEADS], e.g. 2x32 or 2x32x4.")
    L, C = int(m.group(1)), int(m.group(2))
    return (L, C, int(m.group(3)) if m.group(3) else heads_for(C, head_dim))


@dataclass(frozen=True)
class Rung:
    """One size of the ladder with everything its training run needs."""

    name: str
    model: GPTConfig
    n_params: int  # N: non-embedding parameters
    n_embedding: int  # token + position embedding parameters (counted separately)
    tokens: int  # D actually trained = steps x batch_tokens
    batch_tokens: int
    steps: int
    lr: float
    warmup_steps: int
    eval_interval: int

    @property
    def compute(self) -> float:
        """C = 6 N D (Kaplan's training FLOPs, non-embedding parameters)."""
        return 6.0 * self.n_params * self.tokens

    @property
    def flops(self) -> float:
        """The FLOPs the run really does: 6 per parameter of the blocks and of the tied output head, per
        token, plus attention's 12 L C T (the scaling fits use `compute`; this sizes the progress bar)."""
        c = self.model
        return (
            6.0 * (self.n_params + c.vocab_size * c.n_embd) * self.tokens
            + 12.0 * c.n_layer * c.n_embd * c.n_positions * self.tokens
        )

    def train_config(self, data: str, out_dir: str, model_file: str, cfg: LadderConfig, resume: bool = False) -> TrainConfig:
        """The `gpt2kit train` config of this run (model_file: where self.model is saved as JSON)."""
        return TrainConfig(
            data=data, out_dir=out_dir, model=model_file, resume=resume, dropout=0.0, block_size=cfg.block_size,
            micro_batch=cfg.micro_batch, batch_tokens=self.batch_tokens, data_order="random", max_steps=self.steps,
            lr=self.lr, min_lr=self.lr / 10, warmup_steps=self.warmup_steps, schedule="cosine", weight_decay=0.1,
            grad_clip=1.0, device=cfg.device, dtype=cfg.dtype, compile=cfg.compile, seed=cfg.seed, threads=cfg.threads,
            log_interval=max(1, self.steps // 20), eval_interval=self.eval_interval, eval_batches=cfg.eval_batches,
            sample_tokens=0, keep_last=1,
        )  # fmt: skip

    def to_dict(self) -> dict:
        c = self.model
        return {"name": self.name, "n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head, "n_params": self.n_params,
                "n_embedding": self.n_embedding, "tokens": self.tokens, "batch_tokens": self.batch_tokens, "steps": self.steps,
                "lr": self.lr, "warmup_steps": self.warmup_steps, "compute": self.compute, "flops": self.flops}  # fmt: skip


def non_embedding_params(model: GPTConfig) -> int:
    """N of Kaplan et al. 2020: every parameter but the token and position embeddings."""
    return model.num_params() - model.vocab_size * model.n_embd - model.n_positions * model.n_embd


def kaplan_lr(n_params: int) -> float:
    """Kaplan et al. 2020, eq. D.1: the learning rate that trained their models best, as a function of N."""
    return max(1e-5, 0.003239 - 0.0001395 * math.log(n_params))


def batch_for(tokens: float, cfg: LadderConfig) -> int:
    """sqrt(batch_scale x D) tokens, rounded to a whole number of micro-batches (at least one), capped."""
    micro = cfg.micro_batch * cfg.block_size
    k = max(1, round(math.sqrt(cfg.batch_scale * tokens) / micro))
    return micro * max(1, min(k, cfg.max_batch_tokens // micro))


def plan_rung(shape: Shape, cfg: LadderConfig) -> Rung:
    L, C, H = shape
    model = GPTConfig(n_layer=L, n_embd=C, n_head=H, n_positions=cfg.block_size, vocab_size=GPT2_VOCAB_SIZE, dropout=0.0)
    n = non_embedding_params(model)
    target = cfg.tokens or cfg.tokens_per_param * n
    batch = batch_for(target, cfg)
    steps = max(1, round(target / batch))
    return Rung(
        name=f"L{L}-C{C}-H{H}", model=model, n_params=n, n_embedding=model.num_params() - n, tokens=steps * batch,
        batch_tokens=batch, steps=steps, lr=cfg.lr_scale * kaplan_lr(n), warmup_steps=round(cfg.warmup_frac * steps),
        eval_interval=max(1, math.ceil(steps / cfg.checkpoints)),
    )  # fmt: skip


def plan_ladder(cfg: LadderConfig) -> list[Rung]:
    """The rungs of the ladder, smallest N first."""
    return sorted((plan_rung(s, cfg) for s in cfg.sizes), key=lambda r: r.n_params)
