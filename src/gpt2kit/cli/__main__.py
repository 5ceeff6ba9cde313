"""`gpt2kit <command>`: a table from command name to a module holding its arguments and one library call.

Each command module defines `add_arguments(parser)` and `run(args) -> int | None` (its one line of help is in
COMMANDS); it parses nothing by hand and holds no logic beyond turning flags into a library call. Options that a
config dataclass describes are declared from it (cli/flags.py). Building the parser imports the module of the
command given, not the others', and no torch: the config dataclasses live in modules that import none, and the
packages above them import their heavy modules on first use (lazy.py), so `gpt2kit <command> --help` answers at once.
What only running needs (the server, matplotlib, transformers, model weights) is imported inside `run`. Errors
that gpt2kit raises on bad input (`Gpt2kitError`) print as one line on stderr with exit status 2, never as a
traceback; so do the environment's (`OSError`: a full disk, a read-only folder, a file in a folder's place),
naming the path.
Warnings print as one line each too: `gpt2kit: warning: ...` (`show_warning`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import io
import logging
import os
import sys
import warnings

from gpt2kit import hugepages
from gpt2kit.errors import Gpt2kitError, Gpt2kitWarning

# command -> (its module, its one line of help): the help is here so that `gpt2kit --help` imports no command module
COMMANDS: dict[str, tuple[str, str]] = {
    "info": ("gpt2kit.cli.info", "show a model's config, parameter count and memory, or the measured kernels (--kernels)"),
    "generate": ("gpt2kit.cli.generate", "generate text from prompts (sampling, stop strings, streaming, JSONL)"),
    "chat": ("gpt2kit.cli.chat", "interactive multi-turn chat (the conversation stays in the context)"),
    "summarize": ("gpt2kit.cli.summarize", "zero-shot summary (GPT-2 paper: 'TL;DR:', top-k 2, first 3 sentences)"),
    "translate": ("gpt2kit.cli.translate", "zero-shot translation (GPT-2 paper: 'english = french' pairs, greedy)"),
    "answer": ("gpt2kit.cli.answer", "zero-shot question answering ('Q: ... A:' prompt, optional context)"),
    "prepare": ("gpt2kit.cli.prepare", "tokenize text/JSONL into train/val token shards"),
    "train": ("gpt2kit.cli.train", "train a GPT-2 from scratch on prepared shards"),
    "finetune": ("gpt2kit.cli.finetune", "fine-tune pretrained GPT-2 weights on text shards or prompt/completion JSONL"),
    "merge": ("gpt2kit.cli.merge", "merge a LoRA adapter into its base model and write a plain model folder"),
    "eval": ("gpt2kit.cli.eval", "evaluate: perplexity, lambada, hellaswag, wikitext"),
    "next": ("gpt2kit.cli.next", "the most likely next tokens after a text (and what the sampler keeps)"),
    "score": ("gpt2kit.cli.score", "per-token surprisal of a text: bits, rank, alternatives; perplexity and GLTR buckets"),
    "detect": ("gpt2kit.cli.detect", "is this text machine-written? Fast-DetectGPT score, probability, verdict, GLTR evidence"),
    "attention": ("gpt2kit.cli.attention", "draw attention maps (one head, the mean over heads, or a grid of all layers) to a PNG"),
    "serve": ("gpt2kit.cli.serve", "serve a model over an OpenAI-compatible HTTP API, with a web playground"),
    "export": ("gpt2kit.cli.export", "export a model to GGUF (llama.cpp) or ONNX (onnxruntime)"),
    "scaling": ("gpt2kit.cli.scaling", "train a ladder of sizes, fit the scaling law, predict the largest size"),
}  # fmt: skip


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or with `command` (a name, or "" for none) of that one alone: the other
    commands are listed with their help but their modules stay unloaded."""
    from gpt2kit import __version__

    parser = argparse.ArgumentParser(prog="gpt2kit", description="GPT-2, complete and fast: generate, train, evaluate, serve.")
    parser.add_argument("--version", action="version", version=f"gpt2kit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module_name, help_line) in COMMANDS.items():
        p = sub.add_parser(name, help=help_line, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        if command is None or name == command:
            module = importlib.import_module(module_name)
            p.description = module.__doc__
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def command_in(argv: list[str]) -> str:
    """The command `argv` names: its first argument that is not an option ("" where there is none; argparse then
    says what is missing or wrong)."""
    return next((a for a in argv if not a.startswith("-")), "")


def console() -> None:
    """The `gpt2kit` command (and `python -m gpt2kit`): `main`, in a process started again with huge pages for
    the weights first when GPT2KIT_HUGEPAGES=1 asks for them (hugepages.py), before torch is imported."""
    hugepages.relaunch()
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(command_in(argv)).parse_args(argv)
    stdout, sys.stdout = sys.stdout, _NamedStream(sys.stdout, STDOUT)
    showwarning, warnings.showwarning = warnings.showwarning, show_warning
    notes, logger = _Notes(), logging.getLogger(NOTES)
    level = logger.level
    logger.addHandler(notes)
    logger.setLevel(logging.INFO)
    try:
        status = int(args._run(args) or 0)
        sys.stdout.flush()  # inside the try: `gpt2kit generate … > /dev/full` fails here, not at exit
        return status
    except Gpt2kitError as e:
        print(f"gpt2kit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt2kit {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `gpt2kit generate … | head`
        _silence(stdout)
        return 0
    except OSError as e:  # the environment: a full disk, a read-only folder, a file where a folder should be
        if e.filename == STDOUT:
            _silence(stdout)
        print(f"gpt2kit {args.command}: error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    finally:
        sys.stdout, warnings.showwarning = stdout, showwarning
        logger.removeHandler(notes)
        logger.setLevel(level)


NOTES = "gpt2kit.kernels"  # the library's logger whose INFO lines a command shows: a first run's kernel measurement


class _Notes(logging.Handler):
    """The library's notes (logger NOTES, INFO and up) as one line each on stderr: `gpt2kit: ...`."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)

    def emit(self, record: logging.LogRecord) -> None:
        print(f"gpt2kit: {record.getMessage()}", file=sys.stderr)


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning (gpt2kit.errors.warn, or a library's) as one line on stderr, without Python's file:line
    and source echo: `gpt2kit: warning: ...`."""
    kind = "" if issubclass(category, Gpt2kitWarning) else f"{category.__name__}: "
    text = " ".join(str(message).split())
    print(f"gpt2kit: warning: {kind}{text}", file=file or sys.stderr)


_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space or write somewhere else",
    errno.EDQUOT: "the disk quota is used up: free some space or write somewhere else",
    errno.EACCES: "you may not access it: choose another location or change its permissions",
    errno.EPERM: "you may not access it: choose another location or change its permissions",
    errno.EROFS: "that file system is read-only: choose another location",
    errno.EEXIST: "something is already there, perhaps a file where a folder is needed: choose another path",
    errno.ENOTDIR: "a part of the path is a file, not a folder: choose another path",
    errno.EISDIR: "it is a folder, where a file is needed",
    errno.ENOENT: "it does not exist: check the path",
}


def describe_os_error(e: OSError) -> str:
    """One line for an OSError: which path, what went wrong, and the usual fix."""
    path = None if e.filename is None else f"{e.filename}" + (f" -> {e.filename2}" if e.filename2 else "")
    why = e.strerror or str(e)
    hint = _OS_HINTS.get(e.errno)
    return f"{path + ': ' if path else ''}{why}{' (' + hint + ')' if hint else ''}."


STDOUT = "standard output"


class _NamedStream:
    """A text stream whose OSErrors name it (a write to `> /dev/full` says "standard output: No space left")."""

    def __init__(self, stream, name: str) -> None:
        self._stream, self._name = stream, name

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OSError(e.errno, e.strerror, self._name) from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise
        except OSError as e:
            raise OSError(e.errno, e.strerror, self._name) from None

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _silence(stream) -> None:
    """Point a stream that can no longer be written at /dev/null, so that Python's own flush at exit does
    not print a traceback after our one line (Python's documented way for SIGPIPE)."""
    with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())


if __name__ == "__main__":
    console()
