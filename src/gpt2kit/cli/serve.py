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

HELP = "serve a model over an OpenAI-compatible HTTP API, with a web playground"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    for f in dataclasses.fields(ServeConfig):  # the config's fields and docstrings are the flags and their help
        flag = "--" + f.name.replace("_", "-")
        kind = str(f.type)
        if f.name == "banned_phrases":
            p.add_argument("--banned-phrase", dest="banned_phrases", action="append", default=[], metavar="TEXT",
                           help=f.metadata["help"] + " (repeat the flag for several)")  # fmt: skip
        elif f.name == "cors_origins":
            p.add_argument("--cors-origin", dest="cors_origins", action="append", default=[], metavar="ORIGIN",
                           help=f.metadata["help"] + " (repeat the flag for several)")  # fmt: skip
        elif f.name == "model_name":
            p.add_argument(flag, default=None, help=f.metadata["help"] + " (default: the --model value; a local folder's own name)")
        else:
            conv = int if kind.startswith("int") else float if kind.startswith("float") else str
            p.add_argument(flag, type=conv, default=f.default, help=f.metadata["help"])
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"], help="uvicorn's log level")


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
