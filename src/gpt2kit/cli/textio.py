"""The text commands' input and output: prompts from an argument, a file or stdin; completions to stdout.

The library takes and returns strings (`TextGenerator`, `gpt2kit.generate.tasks`); reading stdin, checking
for a terminal and printing belong here. Files are read through `gpt2kit.textfiles`, so a bad file gets the
same one-line error as in every other command.

In a terminal, `gpt2kit generate` shows each prompt (dimmed, or plain when NO_COLOR is set) before its
continuation, as llama.cpp's CLI does; piped or redirected, it writes the continuation alone.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO

from gpt2kit.errors import ConfigError, DataError
from gpt2kit.generate.engine import Completion
from gpt2kit.generate.params import SamplingParams
from gpt2kit.generate.tasks import parse_examples
from gpt2kit.generate.text import GenerateOptions, TextGenerator, TokenizerLike
from gpt2kit.model.gpt import GPT
from gpt2kit.textfiles import read_jsonl, read_text

PROMPTS_FILE = 'a prompts file (UTF-8 text, one prompt per line, or .jsonl with a "prompt" field)'
EXAMPLES_FILE = "an examples file ('source = target', one pair per line)"
DIM, RESET = "\x1b[2m", "\x1b[0m"  # ANSI faint text, and back to normal


def read_prompts(prompt: str | None, file: str | None, stdin: IO[str] | None = None) -> list[str]:
    """The prompts of a run: the PROMPT argument, or a file (one prompt per line, or JSONL with a
    "prompt" field; '-' is stdin), or stdin when neither is given and stdin is not a terminal."""
    if prompt is not None and file is not None:
        raise ConfigError("give either a PROMPT or --file, not both.")
    if prompt is not None:
        return [prompt]
    stdin = stdin or sys.stdin
    if file is None:
        if stdin.isatty():
            raise ConfigError(
                "no prompt: pass PROMPT, --file prompts.txt, or pipe text on stdin (use --bos with '' for unconditional samples)."
            )
        return [stdin.read().rstrip("\n")]
    if file == "-":
        lines = [ln for ln in stdin.read().splitlines() if ln.strip()]
        if not lines:
            raise DataError(f"stdin holds no prompts; expected {PROMPTS_FILE}.")
        return lines
    if file.endswith(".jsonl"):
        return [r["prompt"] for r in read_jsonl(file, {"prompt": str}, PROMPTS_FILE)]
    return [ln for ln in read_text(file, PROMPTS_FILE).splitlines() if ln.strip()]


def read_document(path: str, what: str, stdin: IO[str] | None = None) -> str:
    """A whole text file, or stdin for '-'."""
    return (stdin or sys.stdin).read() if path == "-" else read_text(path, what)


def read_examples(path: str) -> list[tuple[str, str]]:
    """Few-shot example pairs from a file of 'source = target' lines."""
    return parse_examples(read_text(path, EXAMPLES_FILE), path)


def prompt_style(out: IO[str], environ: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """How `out` shows a prompt before its continuation: None when it is not a terminal (the continuation
    alone), else the (start, end) around the prompt: dim, or nothing when NO_COLOR is set (no-color.org)."""
    isatty = getattr(out, "isatty", None)
    if not (isatty and isatty()):
        return None
    environ = os.environ if environ is None else environ
    return ("", "") if environ.get("NO_COLOR") else (DIM, RESET)


def write_completions(prompts: Sequence[str], completions: Sequence[Completion], out: IO[str], jsonl: bool,
                      style: tuple[str, str] | None = None) -> None:  # fmt: skip
    """Plain: each completion's text (after its prompt, in `style`, when given), completions separated by a
    blank line. JSONL: one object each."""
    for i, c in enumerate(completions):
        if jsonl:
            out.write(json.dumps({
                "prompt_index": c.prompt_index, "index": c.index, "prompt": prompts[c.prompt_index], "text": c.text,
                "token_ids": c.token_ids, "finish_reason": c.finish_reason.value, "stop_reason": c.stop_reason,
            }, ensure_ascii=False) + "\n")  # fmt: skip
        else:
            out.write(("\n" if i else "") + _shown(prompts[c.prompt_index], style) + (c.text or "") + "\n")
    out.flush()


def run_generate(model: GPT, tokenizer: TokenizerLike, prompts: Sequence[str], params: SamplingParams,
                 options: GenerateOptions, out: IO[str], *, stream: bool = False, jsonl: bool = False) -> list[Completion] | None:  # fmt: skip
    """The `gpt2kit generate` command: complete every prompt, write text (or JSONL) to `out`."""
    tg = TextGenerator(model, tokenizer, options)
    style = None if jsonl else prompt_style(out)
    if stream:
        if len(prompts) != 1 or params.n != 1 or jsonl:
            raise ConfigError("--stream prints one completion as it is generated: give one prompt, --n 1 and no --jsonl.")
        out.write(_shown(prompts[0], style))
        out.flush()
        for piece in tg.stream_text(prompts[0], params):
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()
        return None
    completions = tg.complete(prompts, params)
    write_completions(prompts, completions, out, jsonl, style)
    return completions


def _shown(prompt: str, style: tuple[str, str] | None) -> str:
    return "" if style is None else style[0] + prompt + style[1]
