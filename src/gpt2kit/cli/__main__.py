"""`gpt2kit <command>`: a table from command name to a module holding its arguments and one library call.

Each command module defines HELP (one line), `add_arguments(parser)` and `run(args) -> int | None`; it
parses nothing by hand and holds no logic beyond turning flags into a library call. Modules are imported
only when their command runs, so `gpt2kit --help` stays fast. Errors that gpt2kit raises on bad input
(`Gpt2kitError`) print as one line on stderr with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gpt2kit.errors import Gpt2kitError

COMMANDS: dict[str, str] = {
    "info": "gpt2kit.cli.info",
    "generate": "gpt2kit.cli.generate",
    "chat": "gpt2kit.cli.chat",
    "summarize": "gpt2kit.cli.summarize",
    "translate": "gpt2kit.cli.translate",
    "answer": "gpt2kit.cli.answer",
    "prepare": "gpt2kit.cli.prepare",
    "train": "gpt2kit.cli.train",
    "finetune": "gpt2kit.cli.finetune",
    "eval": "gpt2kit.cli.eval",
    "next": "gpt2kit.cli.next",
    "score": "gpt2kit.cli.score",
    "detect": "gpt2kit.cli.detect",
    "serve": "gpt2kit.cli.serve",
    "export": "gpt2kit.cli.export",
}


def build_parser() -> argparse.ArgumentParser:
    from gpt2kit import __version__

    parser = argparse.ArgumentParser(prog="gpt2kit", description="GPT-2, complete and fast: generate, train, evaluate, serve.")
    parser.add_argument("--version", action="version", version=f"gpt2kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.__doc__,
                           formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except Gpt2kitError as e:
        print(f"gpt2kit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt2kit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gpt2kit generate … | head`
        return 0


if __name__ == "__main__":
    sys.exit(main())
