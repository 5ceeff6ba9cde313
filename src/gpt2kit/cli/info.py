"""Show a model's configuration, parameter count and memory footprint (no weights are loaded for presets),
or with --kernels the linear kernels this machine runs fastest for it (measured once, then cached)."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", default=None,
                   help="preset name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2), hub id or local folder "
                        "(--kernels: default the built-in model)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--kernels", action="store_true",
                   help="time the candidate linear kernels on this machine for MODEL (or read the cached choice) and show them")  # fmt: skip
    p.add_argument("--batch", type=int, default=1, help="--kernels: decode batch size to measure for")
    p.add_argument("--dtype", default="fp32", help="--kernels: the model's dtype (fp32, bf16)")
    p.add_argument("--weights", default="auto", choices=["auto", "bf16", "int8"], help="--kernels: exact (auto) or approximate (bf16, int8) kernels")
    p.add_argument("--remeasure", action="store_true", help="--kernels: measure again and replace the cached choice")


def run(args: argparse.Namespace) -> None:
    import json

    from gpt2kit.errors import ConfigError
    from gpt2kit.model_info import kernel_report, model_report

    if args.kernels:
        report = kernel_report(args.model or "builtin", args.batch, args.dtype, args.weights, args.remeasure)
    elif args.model is None:
        raise ConfigError("give a model: `gpt2kit info gpt2` (or a hub id / folder), or `gpt2kit info --kernels`.")
    else:
        report = model_report(args.model)
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.kernels:
        print(f"machine:    {report['machine']}\ncache:      {report['cache']}\nhuge pages: {report['huge_pages']}\ngemv.c:     {report['gemv']}"
              f"\npacked weights: {report['packed_store']}"
              f"\ndecode step: {report['decode_step']}\ndecode prefetch: {report['decode_prefetch']}")
        sw = report["decode_sweep"]
        print(f"decode products timed on the first {sw['blocks']} of {sw['n_layer']} blocks and {sw['head_rows']:,} of the head's "
              f"{sw['vocab']:,} rows ({sw['bytes'] >> 20} MiB, twice the largest cache, at {sw['weight_bytes']} bytes a weight)")
        for c in report["choices"]:
            times = "  ".join(f"{k} {v:.0f}us" for k, v in sorted(c["us"].items(), key=lambda kv: kv[1]))
            left = "; ".join(f"{k}: {why}" for k, why in c["rejected"].items())
            paired = ", ".join(f"{k} {r:.2f}x" for k, r in sorted(c["paired"].items(), key=lambda kv: kv[1]))
            print(f"  {c['role']:<16} {c['rows']:>4} rows -> {c['chosen']:<12} {times}{'  (cached)' if c['cached'] else ''}"
                  + (f"\n{'':25}round for round, over the chosen: {paired}" if paired else "") + (f"\n{'':25}not considered: {left}" if left else ""))  # fmt: skip
        print("prompts (one kind for every length; its time over the best at each row count measured):")
        for p in report["prompts"]:
            over = ", ".join(f"{r:.2f}x at {rows} rows" for rows, r in p["over_best"].items())
            print(f"  {p['role']:<16} -> {p['chosen']:<12} {over}")
    else:
        for key, value in report.items():
            if isinstance(value, dict):
                print(f"{key}:")
                for k, v in value.items():
                    print(f"  {k:<16} {v}")
            else:
                print(f"{key:<18} {value}")
