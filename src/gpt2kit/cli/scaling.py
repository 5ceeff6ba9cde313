"""Train a ladder of GPT-2 sizes on your data, fit the scaling law, and predict a size before training it.

  gpt2kit prepare my_texts/ --out data/corpora --val-tail 0.01
  gpt2kit scaling --data data/corpora --out runs/scaling --preset cpu --predict   # ~30-40 min on 2 cores
  gpt2kit scaling --data data/corpora --out runs/scaling --preset cpu --plan      # show the ladder only
  gpt2kit scaling --data data/corpora --out runs/s2 --sizes 1x16 2x32 2x64 3x96 4x128 6x192 --tokens-per-param 10

Each size is a `gpt2kit train` run in OUT/<size>/; run the same command again to resume an interrupted
ladder (finished sizes are skipped). Writes OUT/scaling.json, OUT/scaling.md and OUT/scaling.png.
See docs/scaling.md.
"""

from __future__ import annotations

import argparse
import sys
import time


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gpt2kit.cli.flags import Flag, add_config_flags
    from gpt2kit.scaling.ladder import LADDER_PRESETS, LadderConfig

    p.add_argument("--data", required=True, help="shards from `gpt2kit prepare ... --val-tail 0.01` (needs a val split)")
    p.add_argument("--out", required=True, help="folder for the runs and the report")
    p.add_argument("--preset", choices=list(LADDER_PRESETS), default="cpu",
                   help="cpu-tiny: smoke test; cpu: ~30-40 min on 2 cores; gpu: up to GPT-2 124M (see docs/scaling.md)")  # fmt: skip
    # LadderConfig's fields override the preset's; the ones below are the preset's own business
    fixed = ("head_dim", "block_size", "micro_batch", "batch_scale", "max_batch_tokens", "warmup_frac", "checkpoints",
             "eval_batches", "dtype", "compile")  # fmt: skip
    sizes = Flag(type=str, nargs="+", metavar="LxC[xH]", help="replace the preset's sizes: layers x width [x heads], e.g. 2x32")
    add_config_flags(p, LadderConfig, exclude=fixed, flags={"sizes": sizes}, unset=True, default_note="the preset's")
    p.add_argument("--predict", type=int, nargs="?", const=1, default=0, metavar="K",
                   help="fit without the K largest sizes (default 1), predict their loss, then train them and compare")  # fmt: skip
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap refits for the intervals")
    p.add_argument("--level", type=float, default=0.9, help="interval level")
    p.add_argument("--plan", action="store_true", help="print the ladder (sizes, tokens, batch, lr, steps) and exit")
    p.add_argument("--verbose", action="store_true", help="show the training loop's log lines")


def ladder_config(args: argparse.Namespace):
    """The preset, with the LadderConfig flags that were given."""
    from gpt2kit.cli.flags import config_values
    from gpt2kit.scaling.ladder import LADDER_PRESETS, LadderConfig, parse_size

    cfg = LADDER_PRESETS[args.preset]
    changes = config_values(args, LadderConfig)  # (flags not given are not in args)
    if "sizes" in changes:
        changes["sizes"] = tuple(parse_size(s, cfg.head_dim) for s in changes["sizes"])
    if "tokens_per_param" in changes:  # a budget per parameter replaces the preset's fixed budget, unless --tokens is given
        changes.setdefault("tokens", 0)
    return cfg.replace(**changes)


def print_plan(cfg) -> None:
    from gpt2kit.scaling.ladder import plan_ladder

    rungs = plan_ladder(cfg)
    print(f"{'size':<14}{'N':>10}{'embedding':>11}{'D tokens':>12}{'batch':>8}{'steps':>7}{'lr':>10}{'FLOPs':>10}")
    for r in rungs:
        print(
            f"{r.name:<14}{r.n_params:>10,}{r.n_embedding:>11,}{r.tokens:>12,}{r.batch_tokens:>8,}{r.steps:>7}{r.lr:>10.2e}{r.flops:>10.2e}"
        )
    print(f"{len(rungs)} sizes, {rungs[-1].n_params / rungs[0].n_params:.1f}x in N, {sum(r.tokens for r in rungs):,} tokens, "
          f"{sum(r.flops for r in rungs):.2e} FLOPs in all")  # fmt: skip


class ProgressBar:
    """One line on stderr: the whole ladder by FLOPs, the current size by steps, an ETA from this run's rate."""

    def __init__(self, stream=None) -> None:
        stream = stream or sys.stderr  # read at each call: a default bound at import outlives a redirected stderr
        self.stream, self.tty = stream, stream.isatty()
        self.t0, self.done0, self.last, self.width = time.perf_counter(), None, 0.0, 0

    def __call__(self, p) -> None:
        now = time.perf_counter()
        if p.phase == "train" and self.done0 is None:
            self.done0, self.t0 = p.done_flops, now
        if not self.tty or (now - self.last < 0.2 and p.step not in (1, p.max_steps)):
            return
        self.last = now
        frac = p.done_flops / p.total_flops
        eta = "?"
        if self.done0 is not None and p.done_flops > self.done0 and now - self.t0 > 2:
            secs = (p.total_flops - p.done_flops) * (now - self.t0) / (p.done_flops - self.done0)
            eta = f"{int(secs // 60)}:{int(secs % 60):02d}"
        bar = "#" * int(25 * frac)
        what = {"train": f"step {p.step}/{p.max_steps}", "skip": "done earlier", "eval": "val loss", "predict": "predicting",
                "fit": "fitting"}[p.phase]  # fmt: skip
        line = f"scaling [{bar:<25}] {100 * frac:3.0f}% | size {p.run + 1}/{p.n_runs} {p.name} {what} | ETA {eta}"
        self.stream.write("\r" + line.ljust(self.width))
        self.stream.flush()
        self.width = len(line)

    def say(self, text: str) -> None:
        """A log line above the bar."""
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.width = 0
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.tty and self.width:
            self.stream.write("\n")


def run(args: argparse.Namespace) -> int:
    from gpt2kit.scaling.runner import run_ladder

    cfg = ladder_config(args)
    if args.plan:
        print_plan(cfg)
        return 0
    bar = ProgressBar()
    try:
        report = run_ladder(cfg, args.data, args.out, predict=args.predict, n_boot=args.n_boot, level=args.level,
                            on_progress=bar, log=bar.say, train_log=bar.say if args.verbose else None)  # fmt: skip
    finally:
        bar.close()
    print_summary(report, args.out)
    return 0


def print_summary(report: dict, out: str) -> None:
    for r in report["runs"]:
        print(
            f"{r['name']:<14} N={r['n_params']:>9,}  D={r['tokens_trained']:>11,}  val loss {r['val_loss']:.4f}  ({r['train_seconds']:.0f} s)"
        )
    for name, f in report["fits"].items():
        lo, hi = f["alpha_interval"]
        print(f"{name:<10} E={f['E']:.3f} A={f['A']:.4g} alpha={f['alpha']:.3f} [{lo:.3f}, {hi:.3f}]  R²={f['r2']:.4f}")
    for p in (report.get("prediction") or {}).get("predictions", []):
        lo, hi = p["interval"]
        print(f"predicted {p['name']}: {p['predicted']:.4f} [{lo:.4f}, {hi:.4f}], measured {p['measured']:.4f} "
              f"({100 * p['error_rel']:+.2f} %, {'inside' if p['inside_interval'] else 'OUTSIDE'} the interval)")  # fmt: skip
    print(
        f"wrote {out}/scaling.json, {out}/scaling.md"
        + (f", {report['plot']}" if report.get("plot") else " (no plot: pip install matplotlib)")
    )
