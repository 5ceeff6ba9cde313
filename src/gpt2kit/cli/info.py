"""Show a model's configuration, parameter count and memory footprint (no weights are loaded for presets)."""

from __future__ import annotations

import argparse

HELP = "show a model's config, parameter count and memory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="preset name (gpt2, gpt2-medium, gpt2-large, gpt2-xl, distilgpt2), hub id or local folder")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args: argparse.Namespace) -> None:
    import json

    from gpt2kit.model_info import model_report

    report = model_report(args.model)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k:<16} {v}")
        else:
            print(f"{key:<18} {value}")
