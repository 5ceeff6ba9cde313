"""Watching a run: metrics.jsonl (one JSON object per event), loss.png, a console line, TensorBoard/W&B.

metrics.jsonl records, appended as they happen (a resumed run first drops the records past its checkpoint's
step, then appends; readers keep the last record per step and kind):
    {"kind": "train", "step": 120, "loss": 4.81, "lr": 0.00059, "grad_norm": 0.91, "tok_per_s": 5400.0, "ms": 95.1, ...}
    {"kind": "val", "step": 200, "loss": 4.95}
    {"kind": "sample", "step": 200, "text": "..."}
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from gpt2kit.atomic import atomic_path
from gpt2kit.errors import warn


class MetricsLog:
    """Appends records to out_dir/metrics.jsonl and forwards scalars to TensorBoard / W&B when asked."""

    def __init__(self, out_dir: str | os.PathLike, tensorboard: bool = False, wandb_project: str | None = None,
                 run_config: dict | None = None) -> None:  # fmt: skip
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.out_dir / "metrics.jsonl"
        self._tb = self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tb"))
            except ImportError:
                warn("TensorBoard is not installed (pip install tensorboard); not logging to it.", once=True)
        if wandb_project:
            try:
                import wandb

                self._wandb = wandb.init(project=wandb_project, config=run_config, dir=str(self.out_dir))
            except ImportError:
                warn("wandb is not installed (pip install wandb); not logging to it.", once=True)

    def log(self, kind: str, step: int, **values) -> None:
        record = {"kind": kind, "step": step, **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        scalars = {k: v for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"{kind}/{k}", v, step)
            if kind == "sample":
                self._tb.add_text("sample", values.get("text", ""), step)
        if self._wandb is not None and scalars:
            self._wandb.log({f"{kind}/{k}": v for k, v in scalars.items()}, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop the records of steps after `step` (what a killed run logged past the checkpoint it resumes
        from, which the resumed run logs again), and any line a kill cut short. Atomic."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                keep.append(line + "\n")
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(keep), encoding="utf-8")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: str | os.PathLike, kind: str) -> list[dict]:
    """The records of one kind, the last one per step (a resumed run may repeat steps), sorted by step."""
    by_step: dict[int, dict] = {}
    p = Path(path)
    if not p.is_file():
        return []
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill -9
        if r.get("kind") == kind:
            by_step[r["step"]] = r
    return [by_step[s] for s in sorted(by_step)]


def plot_losses(out_dir: str | os.PathLike) -> Path | None:
    """Draw train and val loss from metrics.jsonl into out_dir/loss.png (atomically). None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warn("matplotlib is not installed (pip install gpt2kit[plot]); skipping loss.png.", once=True)
        return None
    out_dir = Path(out_dir)
    train = read_metrics(out_dir / "metrics.jsonl", "train")
    val = read_metrics(out_dir / "metrics.jsonl", "val")
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        ax.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=1, alpha=0.8)
    if val:
        ax.plot([r["step"] for r in val], [r["loss"] for r in val], "o-", label="val", lw=1.5, ms=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    target = out_dir / "loss.png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return target


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def flops_per_token(n_params: int, n_layer: int, n_embd: int, T: int) -> float:
    """A training step's FLOPs per token (forward and backward): 6 N through the weights plus 12 L C T for the
    attention scores and their weighted sum, for blocks of T tokens."""
    return 6 * n_params + 12 * n_layer * n_embd * T


def estimate_mfu(flops_per_token: float, tokens_per_s: float, device) -> float | None:
    """Model FLOPs utilisation against the GPU's bf16 dense peak (None off-GPU or for an unknown GPU)."""
    if getattr(device, "type", "") != "cuda":
        return None
    import torch

    name = torch.cuda.get_device_name(device)
    peaks = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12, "4090": 165e12, "3090": 71e12}
    peak = next((v for k, v in peaks.items() if k in name), None)
    return None if peak is None else flops_per_token * tokens_per_s / peak
