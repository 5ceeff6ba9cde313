"""Text in, text out, on top of the token-level Engine: encode prompts, stream text, write plain or JSONL.

The tokenizer is passed in (anything with `encode_ordinary`, `token_bytes`, `n_vocab`, `eot_token`, e.g.
`gpt2kit.Tokenizer()`), so `generate/` still never imports `tokenizer/`; the CLI wires them together.

    tg = TextGenerator(model, gpt2kit.Tokenizer())
    [c] = tg.complete(["The meaning of life is"], SamplingParams(max_new_tokens=40, top_k=40, seed=0))
    for piece in tg.stream_text("Once upon a time", SamplingParams(max_new_tokens=40)): print(piece, end="")
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Protocol

from gpt2kit.errors import ConfigError, DataError, GenerationError
from gpt2kit.fields import check_types
from gpt2kit.generate.engine import Completion, Engine
from gpt2kit.generate.sampling import SamplingParams
from gpt2kit.model.gpt import GPT


class TokenizerLike(Protocol):
    n_vocab: int
    eot_token: int

    def encode_ordinary(self, text: str) -> list[int]: ...
    def token_bytes(self, token_id: int) -> bytes: ...


_TABLES: dict[int, list[bytes]] = {}


def token_bytes_table(tokenizer: TokenizerLike) -> list[bytes]:
    """`table[id] -> bytes` for every id of the tokenizer (built once per tokenizer object)."""
    key = id(tokenizer)
    if key not in _TABLES:
        _TABLES[key] = [tokenizer.token_bytes(i) for i in range(tokenizer.n_vocab)]
    return _TABLES[key]


@dataclass
class GenerateOptions:
    """Engine-level options (per run, not per request)."""

    max_batch: int = 8  # sequences decoded together
    weights: str = "auto"  # decode weights: auto (exact), model (the model's own modules), int8 (weight-only)
    bos: bool = False  # prepend <|endoftext|> to every prompt (allows empty prompts: unconditional samples)
    window_keep: int | None = None  # sliding window: tokens kept when the context is full (default: half)

    def __post_init__(self) -> None:
        check_types(self)


class TextGenerator:
    """A model + tokenizer + one Engine; text prompts in, Completions (with text) out."""

    def __init__(self, model: GPT, tokenizer: TokenizerLike, options: GenerateOptions | None = None) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.options = options or GenerateOptions()
        self.table = token_bytes_table(tokenizer)
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            o = self.options
            self._engine = Engine(self.model, max_batch=o.max_batch, token_bytes=self.table, eot_id=self.tokenizer.eot_token,
                                  window_keep=o.window_keep, weights=o.weights)  # fmt: skip
        return self._engine

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode_ordinary(text)

    def complete(self, prompts: Sequence[str], params: SamplingParams | Sequence[SamplingParams]) -> list[Completion]:
        ids = [self.encode(p) for p in prompts]
        completions = self.engine.generate(ids, params, bos=self.options.bos)
        for c in completions:
            if c.error is not None:
                raise GenerationError(f"prompt {c.prompt_index + 1}, sample {c.index + 1}: {c.error}")
        return completions

    def stream_text(self, prompt: str, params: SamplingParams, cancel=None) -> Iterator[str]:
        """Text pieces of ONE completion as they are generated (their concatenation is the final text)."""
        if params.n != 1:
            raise ConfigError(f"streaming text needs n=1 (got n={params.n}); use complete() or JSONL output for several samples.")
        for ev in self.engine.stream([self.encode(prompt)], params, bos=self.options.bos, cancel=cancel):
            if ev.error is not None:
                raise GenerationError(ev.error)
            if ev.text:
                yield ev.text


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
    try:
        if file == "-":
            text = stdin.read()
        else:
            with open(file, "rb") as f:
                data = f.read()
            if b"\0" in data[:8192]:
                raise DataError(f"{file} looks binary (it contains NUL bytes), not a prompts file (text, one prompt per line).")
            text = data.decode("utf-8")
    except OSError as e:
        raise DataError(f"cannot read prompts from {file}: {e.strerror}.") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{file} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); prompts files must be UTF-8.") from None
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if file.endswith(".jsonl"):
        prompts = []
        for n, ln in enumerate(lines, 1):
            try:
                obj = json.loads(ln)
                prompts.append(obj["prompt"] if isinstance(obj, dict) else obj)
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f'{file}:{n}: expected a JSON object with a "prompt" string, got {ln[:80]!r}.') from None
            if not isinstance(prompts[-1], str):
                raise DataError(f'{file}:{n}: "prompt" must be a string.')
        lines = prompts
    if not lines:
        raise DataError(f'{file} holds no prompts (one per line, or JSONL with a "prompt" field).')
    return lines


def write_completions(prompts: Sequence[str], completions: Sequence[Completion], out: IO[str], jsonl: bool) -> None:
    """Plain: each completion's text, completions separated by a blank line. JSONL: one object each."""
    for i, c in enumerate(completions):
        if jsonl:
            out.write(json.dumps({
                "prompt_index": c.prompt_index, "index": c.index, "prompt": prompts[c.prompt_index], "text": c.text,
                "token_ids": c.token_ids, "finish_reason": c.finish_reason.value, "stop_reason": c.stop_reason,
            }, ensure_ascii=False) + "\n")  # fmt: skip
        else:
            out.write(("\n" if i else "") + (c.text or "") + "\n")
    out.flush()


def run_generate(model: GPT, tokenizer: TokenizerLike, prompts: Sequence[str], params: SamplingParams,
                 options: GenerateOptions, out: IO[str], *, stream: bool = False, jsonl: bool = False) -> list[Completion] | None:  # fmt: skip
    """The `gpt2kit generate` command: complete every prompt, write text (or JSONL) to `out`."""
    tg = TextGenerator(model, tokenizer, options)
    if stream:
        if len(prompts) != 1 or params.n != 1 or jsonl:
            raise ConfigError("--stream prints one completion as it is generated: give one prompt, --n 1 and no --jsonl.")
        for piece in tg.stream_text(prompts[0], params):
            out.write(piece)
            out.flush()
        out.write("\n")
        out.flush()
        return None
    completions = tg.complete(prompts, params)
    write_completions(prompts, completions, out, jsonl)
    return completions
