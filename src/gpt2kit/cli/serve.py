"""Serve a model over an OpenAI-compatible HTTP API (completions, chat, streaming) with a web playground at /.

Binds 127.0.0.1 by default. With --api-key (or $GPT2KIT_API_KEY) every request but / and /health needs
`Authorization: Bearer KEY`. Try it: open http://127.0.0.1:8000/ or point any OpenAI client at
http://127.0.0.1:8000/v1. With --adapter NAME=DIR (repeatable) it also serves each LoRA adapter merged
into the base, as model NAME. See docs/serving.md.
"""

from __future__ import annotations

import argparse
import dataclasses

from gpt2kit.cli.common import add_model_arguments, load_model_and_tokenizer
from gpt2kit.serve.config import ServeConfig


def add_arguments(p: argparse.ArgumentParser) -> None:
    from gpt2kit.cli.flags import Flag, add_config_flags
    from gpt2kit.hugepages import HUGE_PAGE_MODES

    add_model_arguments(p)
    repeat = " (repeat the flag for several)"
    add_config_flags(p, ServeConfig, flags={  # the config's fields and their help are the flags and their help
        "banned_phrases": Flag(name="--banned-phrase", metavar="TEXT", help_suffix=repeat),
        "cors_origins": Flag(name="--cors-origin", metavar="ORIGIN", help_suffix=repeat),
        "model_name": Flag(default=None, help_suffix=" (default: the --model value; a local folder's own name)"),
        "huge_pages": Flag(choices=HUGE_PAGE_MODES),
    })  # fmt: skip
    p.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="uvicorn's log level"
    )


def run(args: argparse.Namespace) -> None:
    from gpt2kit.adapter import merged_copy
    from gpt2kit.cli.common import adapter_specs
    from gpt2kit.errors import ConfigError
    from gpt2kit.serve.app import serve

    fields = {f.name for f in dataclasses.fields(ServeConfig)}
    config = ServeConfig(**{k: v for k, v in vars(args).items() if k in fields and k != "model_name"},
                         model_name=args.model_name or served_name(args.model))  # fmt: skip
    model, tokenizer = load_model_and_tokenizer(args, with_adapter=False)
    models = {config.model_name: model}  # the base first: the default for requests that name no model
    for name, folder in adapter_specs(args):  # each adapter merged into its own copy of the base (serve/models.py)
        if name in models:
            raise ConfigError(f"--adapter name {name!r} is the base model's name; pick another: --adapter NAME=DIR.")
        models[name] = merged_copy(model, folder)
    serve(models, config, tokenizer, log_level=args.log_level)


def served_name(model: str) -> str:
    """The default model id: --model as given (a preset, a Hub repo id), but for a local folder only its own
    name, so that /v1/models and the playground never show a filesystem path."""
    from pathlib import Path

    path = Path(model).expanduser()
    return path.resolve().name if path.exists() else str(model)
