"""Train candidate shapes of the built-in model side by side on one device, then rank them on the held-out split.

    python runs/builtin_sweep.py DATA OUT [--config configs/builtin_gpu.json] [--minutes 7]
                                 [--candidate 12x320:5:0.2 ...] [--export DIR] [-- extra `gpt2kit train` flags]

Every candidate is one `gpt2kit train` process (the base config plus the candidate's shape and dropout), all
started at once with the same time budget: a ~30M-parameter model leaves most of an H100 idle, so sharing it
costs each run less than a third of its speed. fit_to_time fits each run's lr schedule to the budget at the
rate it actually gets on the shared device. A run that fails while compiled (torch.compile) is rerun once
uncompiled with the time that is left.

Afterwards each run's best checkpoint is rounded to bf16 (what ships) and scored on the whole validation
split, every token once in windows of the model's context (`shards_loss`, the model card's protocol).
OUT/sweep.json and a table rank them; --export writes the winner as a run folder that runs/ship_builtin.py
takes (checkpoints/step_N/ with bf16 weights and meta.json, plus metrics.jsonl, loss.png, sweep.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

import gpt2kit
from gpt2kit.config import GPTConfig
from gpt2kit.eval.perplexity import shards_loss
from gpt2kit.train.checkpoint import best_checkpoint, list_checkpoints, read_meta

MAX_BYTES = 64_000_000  # the limit on the shipped bf16 weights (at most 64 MB in the package)
# name: "LAYERSxWIDTH:HEADS:DROPOUT". Each fits in 64 MB as bf16 at 1024 context (checked below).
CANDIDATES = ["6x384:6:0.2", "12x320:5:0.2", "12x320:5:0.3"]


def parse_candidate(spec: str, n_positions: int) -> GPTConfig:
    try:
        shape, heads, dropout = spec.split(":")
        n_layer, n_embd = (int(v) for v in shape.split("x"))
        cfg = GPTConfig(n_layer=n_layer, n_embd=n_embd, n_head=int(heads), n_positions=n_positions, dropout=float(dropout))
    except ValueError as e:
        sys.exit(f"bad --candidate {spec!r} ({e}); write LAYERSxWIDTH:HEADS:DROPOUT, e.g. 12x320:5:0.2")
    return cfg


def bf16_bytes(cfg: GPTConfig) -> int:
    with torch.device("meta"):
        return 2 * gpt2kit.GPT(cfg).num_params()


def train_command(args, model_json: Path, run_dir: Path, minutes: float, compile_: str, extra) -> list[str]:
    return [sys.executable, "-m", "gpt2kit.cli", "train", "--config", str(args.config), "--data", str(args.data),
            "--model", str(model_json), "--out-dir", str(run_dir), "--max-minutes", f"{minutes:.3f}", *extra,
            "--compile", compile_]  # fmt: skip


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)


def train_all(args, specs: list[str], extra: list[str]) -> dict[str, Path]:
    """Run every candidate at once; returns name -> run folder (the uncompiled rerun's, if there was one)."""
    t0 = time.time()
    runs, procs = {}, {}
    for spec in specs:
        if (args.out / spec.replace(":", "_") / "checkpoints").exists():
            sys.exit(f"{args.out} already holds a run of {spec}: choose a new OUT, or score those runs with --score-only.")
    for spec in specs:
        name = spec.replace(":", "_")
        cfg = parse_candidate(spec, args.n_positions)
        run_dir = args.out / name
        run_dir.mkdir(parents=True, exist_ok=True)
        model_json = run_dir / "model.json"
        model_json.write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        runs[name] = run_dir
        procs[name] = (
            launch(train_command(args, model_json, run_dir, args.minutes, "auto", extra), run_dir / "train.log"),
            model_json,
        )
        print(f"[sweep] started {name}: {cfg.n_layer} x {cfg.n_embd}, {cfg.n_head} heads, dropout {cfg.dropout}", flush=True)
    while procs:
        time.sleep(2)
        for name, (proc, model_json) in list(procs.items()):
            rc = proc.poll()
            if rc is None:
                continue
            del procs[name]
            left = args.minutes - (time.time() - t0) / 60
            print(f"[sweep] {name} exited with {rc} after {(time.time() - t0) / 60:.1f} min", flush=True)
            # exit status 2 is gpt2kit's own clear error (bad flag, data, out-dir): rerunning would not help
            if rc not in (0, 2) and not name.endswith("-eager") and left > 1.5:
                eager = f"{name}-eager"
                run_dir = args.out / eager
                run_dir.mkdir(parents=True, exist_ok=True)
                runs[name] = run_dir
                cmd = train_command(args, model_json, run_dir, left - 0.5, "off", extra)
                procs[eager] = (launch(cmd, run_dir / "train.log"), model_json)
                print(f"[sweep] rerunning {name} uncompiled for {left - 0.5:.1f} min in {run_dir}", flush=True)
    return runs


def score(args, runs: dict[str, Path]) -> list[dict]:
    device = torch.device(args.device)
    train_tokens = json.loads((args.data / "meta.json").read_text())["train"]["tokens"]  # written by `gpt2kit prepare`
    rows = []
    for name, run_dir in runs.items():
        best = best_checkpoint(run_dir / "checkpoints")
        if best is None:
            rows.append({"name": name, "run": str(run_dir), "error": "no checkpoint with a val loss"})
            continue
        meta = read_meta(best)
        last = read_meta(list_checkpoints(run_dir / "checkpoints")[-1][1])
        model = gpt2kit.from_pretrained(best)
        model = model.to(torch.bfloat16).to(torch.float32).to(device).eval()  # score exactly what would ship
        loss, n = shards_loss(model, args.data, "val", batch_size=16)
        c = model.config
        rows.append({
            "name": name, "run": str(run_dir), "checkpoint": best.name, "n_layer": c.n_layer, "n_embd": c.n_embd,
            "n_head": c.n_head, "n_positions": c.n_positions, "dropout": GPTConfig.from_json_file(meta["train_config"]["model"]).dropout,
            "params": model.num_params(), "bf16_bytes": 2 * model.num_params(), "best_step": meta["step"],
            "tokens_at_best": meta["tokens"], "epochs_at_best": meta["tokens"] / train_tokens,
            "last_step": last["step"], "tokens_seen": last["tokens"], "train_loss_at_best": meta["train_loss"],
            "loop_val_loss": meta["val_loss"], "val_loss": loss, "val_tokens": n,
            "compiled": not run_dir.name.endswith("-eager"),
        })  # fmt: skip
        del model
    return rows


def table(rows: list[dict]) -> str:
    """Markdown, best first; the winner (what --export writes) in bold."""
    lines = ["| candidate | params | bf16 MB | tokens seen | best checkpoint (epochs) | train loss there | val loss (full split) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    ranked = sorted(rows, key=lambda r: r.get("val_loss", float("inf")))
    for i, r in enumerate(ranked):
        if "error" in r:
            lines.append(f"| {r['name']} | | | | | | {r['error']} |")
            continue
        b = "**" if i == 0 else ""
        cells = [f"{r['n_layer']} × {r['n_embd']}, {r['n_head']} heads, dropout {r['dropout']}", f"{r['params'] / 1e6:.1f}M",
                 f"{r['bf16_bytes'] / 1e6:.1f}", f"{r['tokens_seen'] / 1e6:.0f}M", f"step {r['best_step']} ({r['epochs_at_best']:.1f})",
                 f"{r['train_loss_at_best']:.3f}", f"{r['val_loss']:.3f}"]  # fmt: skip
        lines.append("| " + " | ".join(f"{b}{c}{b}" for c in cells) + " |")
    return "\n".join(lines)


def export(rows: list[dict], dest: Path) -> None:
    """The winner as a run folder for runs/ship_builtin.py: bf16 weights + meta.json, its metrics and plot."""
    ok = [r for r in rows if "error" not in r]
    win = min(ok, key=lambda r: r["val_loss"])
    run_dir = Path(win["run"])
    src = run_dir / "checkpoints" / win["checkpoint"]
    ckpt = dest / "checkpoints" / src.name
    if dest.exists():
        shutil.rmtree(dest)
    gpt2kit.save_pretrained(gpt2kit.from_pretrained(src), ckpt, dtype="bfloat16", tokenizer_files=False)
    shutil.copyfile(src / "meta.json", ckpt / "meta.json")
    for f in ("metrics.jsonl", "loss.png", "train.log"):
        if (run_dir / f).is_file():
            shutil.copyfile(run_dir / f, dest / f)
    (dest / "sweep.json").write_text(json.dumps({"winner": win["name"], "candidates": rows}, indent=2) + "\n")
    print(f"[sweep] exported {win['name']} ({src}) to {dest}", flush=True)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--config", type=Path, default=Path(__file__).resolve().parents[1] / "configs" / "builtin_gpu.json")
    ap.add_argument("--minutes", type=float, default=7.0, help="training time of every candidate (they run at once)")
    ap.add_argument("--candidate", action="append", help=f"LAYERSxWIDTH:HEADS:DROPOUT, repeatable (default {CANDIDATES})")
    ap.add_argument("--n-positions", type=int, default=1024)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="device for the final scoring")
    ap.add_argument("--export", type=Path, help="write the winner here as a run folder for runs/ship_builtin.py")
    ap.add_argument("--score-only", action="store_true", help="skip training: score the runs already in OUT")
    args = ap.parse_args(argv)
    specs = args.candidate or CANDIDATES
    for spec in specs:
        size = bf16_bytes(parse_candidate(spec, args.n_positions))
        if size > MAX_BYTES:
            sys.exit(f"candidate {spec} has {size / 1e6:.1f} MB of bf16 weights, over the {MAX_BYTES / 1e6:.0f} MB limit.")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.score_only:
        runs = {p.name: p for p in sorted(args.out.iterdir()) if (p / "checkpoints").is_dir()}
    else:
        runs = train_all(args, specs, extra)
    rows = score(args, runs)
    (args.out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(table(rows), flush=True)
    if args.export and any("error" not in r for r in rows):
        export(rows, args.export)


if __name__ == "__main__":
    main()
