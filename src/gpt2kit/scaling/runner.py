"""Run a ladder: train every size with `gpt2kit train`, measure it, fit the law, predict the largest size.

    report = run_ladder(LADDER_PRESETS["cpu"], data="data/corpora", out="runs/scaling", predict=1,
                        on_progress=print_bar, log=print)

Each size trains in its own folder, out/<name>/ (L2-C32-H2/: model.json, checkpoints/, metrics.jsonl),
through the same `train()` the CLI calls, with the TrainConfig that `Rung.train_config` builds. Running the
ladder again skips the sizes whose last checkpoint is at their final step and resumes the others from
their latest checkpoint (an exact resume: weights, optimizer, data position, RNG). A folder that holds a
run trained with other settings is refused rather than mixed in.

The loss a size is judged by is measured after training, on the whole val split (`eval.perplexity.shards_loss`:
every val token scored once, windows of the model's context), so every size is scored on the same tokens.

With predict=k, the law is fitted on all sizes but the k largest before those are trained; the prediction
(with its interval) is written to out/prediction.json first, and compared with the measured losses after.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2kit.atomic import write_text
from gpt2kit.errors import ConfigError, DataError, warn
from gpt2kit.scaling import report as R
from gpt2kit.scaling.fit import bootstrap
from gpt2kit.scaling.ladder import LadderConfig, Rung, plan_ladder
from gpt2kit.train import checkpoint as ckpt
from gpt2kit.train.metrics import read_metrics

# The TrainConfig fields that define a run: a folder whose checkpoint disagrees on one of them holds another run.
_DEFINING = ("max_steps", "batch_tokens", "micro_batch", "block_size", "lr", "min_lr", "warmup_steps", "schedule",
             "weight_decay", "seed", "data_order", "dropout")  # fmt: skip


@dataclass(frozen=True)
class Progress:
    """Where the ladder is, for a caller's progress bar; flops count every run's planned training FLOPs."""

    run: int  # 0-based index of the current size
    n_runs: int
    name: str
    step: int
    max_steps: int
    done_flops: float
    total_flops: float
    phase: str  # "train", "skip", "eval", "predict", "fit"


@dataclass(frozen=True)
class RunResult:
    rung: Rung
    out_dir: Path
    val_loss: float  # nats/token over the whole val split
    val_tokens: int
    train_loss: float | None  # the loop's last logged train loss
    tokens: int  # tokens trained (the checkpoint's count)
    train_seconds: float  # summed step times from metrics.jsonl, over every process that worked on it (a resumed run has several)
    trained_now: bool  # False when an earlier invocation had already finished it

    def to_dict(self) -> dict:
        return {**self.rung.to_dict(), "out_dir": str(self.out_dir), "val_loss": self.val_loss, "val_tokens": self.val_tokens,
                "train_loss": self.train_loss, "tokens_trained": self.tokens, "compute": 6.0 * self.rung.n_params * self.tokens,
                "train_seconds": round(self.train_seconds, 1)}  # fmt: skip


def run_ladder(cfg: LadderConfig, data: str | Path, out: str | Path, predict: int = 0, n_boot: int = 1000,
               level: float = 0.9, on_progress: Callable[[Progress], None] | None = None,
               log: Callable[[str], None] | None = None, train_log: Callable[[str], None] | None = None) -> dict:  # fmt: skip
    """Train the ladder (resuming where it stopped), fit, predict, write out/scaling.{json,md,png}; returns the
    report dict (the JSON). log receives the ladder's notes, train_log the training loop's lines; nothing is
    printed here."""
    data, out = Path(data), Path(out)
    rungs = plan_ladder(cfg)
    if predict < 0 or (predict and len(rungs) - predict < 4):
        raise ConfigError(
            f"--predict {predict} leaves {len(rungs) - predict} sizes to fit; a prediction needs at least 4 (3 parameters + 1): add sizes."
        )
    train_tokens = check_data(data)
    say = log or (lambda _: None)
    for r in rungs:
        if r.tokens > train_tokens:
            warn(f"{r.name} trains on {r.tokens:,} tokens, {r.tokens / train_tokens:.1f} epochs of {data}'s {train_tokens:,}")
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "ladder.json", json.dumps({"ladder": cfg.to_dict(), "data": str(data), "predict": predict}, indent=2) + "\n")
    total = sum(r.flops for r in rungs)
    done = 0.0

    def progress(i: int, step: int, phase: str) -> None:
        if on_progress is not None:
            r = rungs[i]
            on_progress(Progress(i, len(rungs), r.name, step, r.steps, done + r.flops * step / r.steps, total, phase))

    results: list[RunResult] = []
    n_fit = len(rungs) - predict
    prediction = None
    for i, rung in enumerate(rungs):
        if i == n_fit and predict:
            progress(i, 0, "predict")
            prediction = _predict(out, results, rungs[n_fit:], n_boot, level)
        results.append(_run_rung(rung, cfg, data, out, lambda step, _n, i=i: progress(i, step, "train"),
                                 lambda phase, i=i: progress(i, rungs[i].steps, phase), say,
                                 train_log or (lambda _: None)))  # fmt: skip
        done += rung.flops
    done -= rungs[-1].flops  # progress() adds the current size's share
    progress(len(rungs) - 1, rungs[-1].steps, "fit")
    return R.write_report(out, cfg, results, prediction, n_boot, level)


def check_data(data: Path) -> int:
    """The number of train tokens in a `gpt2kit prepare` folder that also has a val split."""
    meta = data / "meta.json"
    if not meta.is_file():
        raise DataError(
            f"{data} is not a folder from `gpt2kit prepare` (no meta.json). ---> HINT: `gpt2kit prepare TEXT... --out {data} --val-tail 0.01`."
        )
    info = json.loads(meta.read_text(encoding="utf-8"))
    if not info.get("val", {}).get("tokens"):
        raise DataError(
            f"{data} has no val split, and the ladder is judged on val loss. ---> HINT: prepare it again with --val-tail 0.01."
        )
    return int(info["train"]["tokens"])


def _run_rung(rung: Rung, cfg: LadderConfig, data: Path, out: Path, on_step, on_phase, say, train_log) -> RunResult:
    from gpt2kit.train import train

    run_dir = out / rung.name
    model_file = run_dir / "model.json"
    run_dir.mkdir(parents=True, exist_ok=True)
    model_json = json.dumps(rung.model.to_dict(), indent=2) + "\n"
    if model_file.is_file() and json.loads(model_file.read_text()) != rung.model.to_dict():
        raise ConfigError(f"{model_file} describes another model than {rung.name}; use another --out or delete {run_dir}.")
    write_text(model_file, model_json)
    tc = rung.train_config(str(data), str(run_dir), str(model_file), cfg)
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    step = 0
    if latest is not None:
        meta = ckpt.read_meta(latest)
        saved = meta["train_config"]
        for k in _DEFINING:
            if saved.get(k) != getattr(tc, k):
                raise ConfigError(
                    f"{run_dir} holds a run of {rung.name} with {k}={saved.get(k)!r}, but this ladder trains it with "
                    f"{k}={getattr(tc, k)!r}. Use another --out, or delete {run_dir} to train it again."
                )
        step = meta["step"]
    trained_now = step < tc.max_steps
    if trained_now:
        say(
            f"== {rung.name}: N={rung.n_params:,}, D={rung.tokens:,} tokens, {rung.steps} steps"
            + (f", resuming at step {step}" if step else "")
        )
        train(dataclasses.replace(tc, resume=step > 0), log=train_log, on_step=on_step)
        latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    else:
        on_phase("skip")
    return _measure(rung, cfg, data, run_dir, latest, trained_now, on_phase)


def _measure(rung: Rung, cfg: LadderConfig, data: Path, run_dir: Path, latest: Path, trained_now: bool, on_phase) -> RunResult:
    """Val loss of the final checkpoint over the whole val split, cached in run_dir/final_eval.json."""
    from gpt2kit.eval.perplexity import shards_loss
    from gpt2kit.pretrained import from_pretrained

    meta = ckpt.read_meta(latest)
    cache = run_dir / "final_eval.json"
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    if cached.get("step") != meta["step"]:
        on_phase("eval")
        threads = torch.get_num_threads()
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        try:
            model = from_pretrained(latest, device=cfg.device)
            loss, n = shards_loss(model, data, "val", batch_size=cfg.micro_batch)
        finally:
            torch.set_num_threads(threads)
        cached = {"step": meta["step"], "val_loss": loss, "val_tokens": n, "checkpoint": str(latest)}
        write_text(cache, json.dumps(cached, indent=2) + "\n")
    return RunResult(rung=rung, out_dir=run_dir, val_loss=cached["val_loss"], val_tokens=cached["val_tokens"],
                     train_loss=meta.get("train_loss"), tokens=meta["tokens"], train_seconds=train_seconds(run_dir),
                     trained_now=trained_now)  # fmt: skip


def train_seconds(run_dir: Path) -> float:
    """Seconds spent in training steps, from the loop's own log: each record's ms/step x the steps it covers."""
    total, prev = 0.0, 0
    for r in read_metrics(run_dir / "metrics.jsonl", "train"):
        total += r.get("ms", 0.0) / 1000 * (r["step"] - prev)
        prev = r["step"]
    return total


def _predict(out: Path, fitted: list[RunResult], held: list[Rung], n_boot: int, level: float) -> dict:
    """Fit L(N) on the sizes trained so far; predict each held-out size (written before it trains)."""
    path = out / "prediction.json"
    names = [r.rung.name for r in fitted]
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("fit_on") == names and [p["name"] for p in old["predictions"]] == [r.name for r in held]:
            return old  # made by an earlier invocation, before the held-out sizes trained: keep it
    already = [r.name for r in held if _finished(out / r.name)]
    boot = bootstrap([r.rung.n_params for r in fitted], [r.val_loss for r in fitted], n_boot=n_boot, level=level)
    preds = []
    for r in held:
        lo, hi = boot.prediction_interval(r.n_params)
        preds.append({"name": r.name, "n_params": r.n_params, "predicted": float(boot.fit.predict(r.n_params)),
                      "interval": [lo, hi]})  # fmt: skip
    pred = {"fit_on": names, "fit": boot.fit.to_dict(), "bootstrap": boot.to_dict(), "level": level, "predictions": preds,
            "made_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "made_after_training": already}  # fmt: skip
    write_text(path, json.dumps(pred, indent=2) + "\n")
    return pred


def _finished(run_dir: Path) -> bool:
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints")
    if latest is None:
        return False
    meta = ckpt.read_meta(latest)
    return meta["step"] >= meta["train_config"]["max_steps"]
