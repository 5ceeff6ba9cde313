"""Flags shared by every command that runs a model (generate, chat, tasks, eval, serve): defined once here.

`add_model_arguments(parser)` adds --model/--device/--dtype/--adapter; `load_model_and_tokenizer(args)` resolves them.
The "no --model given" case is handled in exactly one place, `DEFAULT_MODEL` below: the built-in model that
ships inside the package (see gpt2kit/builtin.py), announced in one line on stderr whenever it is used.
`add_sampling_arguments` / `sampling_params` map the sampling flags to a `SamplingParams`.
"""

from __future__ import annotations

import argparse

# The model used when --model is not given: the small GPT-2 shipped in the package (works offline).
DEFAULT_MODEL = "builtin"


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="'builtin' (the small offline model shipped with gpt2kit), a preset for OpenAI's weights (gpt2, "
                        "gpt2-medium, gpt2-large, gpt2-xl, distilgpt2), a Hugging Face repo id, or a local folder with "
                        "config.json + model.safetensors")  # fmt: skip
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--dtype", default="auto", help="weights/compute dtype: auto (fp32 on CPU), fp32, bf16, fp16")
    p.add_argument("--adapter", action="append", default=[], metavar="[NAME=]DIR",
                   help="a LoRA adapter folder (PEFT format: `gpt2kit finetune --lora-r` checkpoints, peft's save_pretrained) "
                        "merged into --model; serve: repeat it to offer several, chosen per request by NAME in `model` "
                        "(default NAME: the folder's name)")  # fmt: skip


def load_model_and_tokenizer(args: argparse.Namespace, with_adapter: bool = True):
    """(GPT, Tokenizer) for --model/--device/--dtype (+ the one --adapter merged in, unless with_adapter is
    False); the built-in model is announced on stderr."""
    import gc
    import sys

    from gpt2kit.builtin import describe, is_builtin
    from gpt2kit.config import PRESETS
    from gpt2kit.device import bf16_emulation_note
    from gpt2kit.errors import ConfigError, warn
    from gpt2kit.pretrained import from_pretrained
    from gpt2kit.tokenizer import Tokenizer

    if not args.model:
        raise ConfigError(
            "empty --model: leave it out for the built-in model, or pass a preset (" + ", ".join(sorted(PRESETS)) + "), "
            "a Hugging Face repo id, or a local folder holding config.json + model.safetensors (e.g. --model ./my-gpt2)."
        )
    dtype = None if args.dtype == "auto" else args.dtype
    model = from_pretrained(args.model, device=args.device, dtype=dtype)
    param = next(model.parameters())
    if note := bf16_emulation_note(param.device, param.dtype):
        warn(note)
    if is_builtin(args.model):
        print(f"gpt2kit: {describe()}", file=sys.stderr)
    if with_adapter and args.adapter:
        from gpt2kit.adapter import apply_adapter

        if len(args.adapter) > 1:
            raise ConfigError("one --adapter at a time here (only `gpt2kit serve` holds several); merge one into a model "
                              "with `gpt2kit merge` to stack them.")  # fmt: skip
        apply_adapter(model, adapter_specs(args)[0][1])
    tok = Tokenizer()
    # What is loaded now lives as long as the command (torch's modules, the model): frozen out of the cyclic
    # collector, whose full passes over it took 0.1-0.15 s each on a 2-core Zen 3 VM, once while a decode runner
    # was built and once at exit of every `gpt2kit generate`.
    gc.freeze()
    return model, tok


def adapter_specs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """--adapter [NAME=]DIR values -> [(name, folder)]; the name defaults to the folder's own name."""
    from pathlib import Path

    from gpt2kit.errors import ConfigError

    specs = []
    for item in args.adapter:
        name, sep, folder = item.partition("=")
        if not sep or not name or "/" in name or Path(item).exists():
            name, folder = Path(item).resolve().name, item
        if not folder:
            raise ConfigError(f"--adapter {item!r}: expected DIR or NAME=DIR, e.g. --adapter poems=out/checkpoints/step_000300.")
        specs.append((name, folder))
    names = [n for n, _ in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"--adapter names repeat ({names}); give each its own: --adapter NAME=DIR.")
    return specs


def add_sampling_arguments(p: argparse.ArgumentParser, *, max_new_tokens: int = 100, top_k: int | None = 40) -> None:
    """The sampling flags (SamplingParams' fields) and the engine flags (GenerateOptions'), via cli/flags.py."""
    from gpt2kit.cli.flags import Flag, add_config_flags
    from gpt2kit.generate.params import GenerateOptions, SamplingParams
    from gpt2kit.hugepages import HUGE_PAGE_MODES, LONG_RUN_STEPS

    g = p.add_argument_group("sampling")
    repeat = " (repeatable)"
    add_config_flags(g, SamplingParams, exclude=("stop_token_ids", "logprobs", "prompt_logprobs"),
                     defaults={"max_new_tokens": max_new_tokens, "top_k": top_k}, flags={
        "top_k": Flag(help="keep only the k most likely tokens (GPT-2's samples used 40)"),
        "stop": Flag(metavar="TEXT", help_suffix="; repeatable"),
        "logit_bias": Flag(type=str, metavar="ID=BIAS", help="add BIAS to token ID's logit" + repeat),
        "banned_token_ids": Flag(name="--ban-token", metavar="ID", help_suffix=repeat),
        "banned_phrases": Flag(name="--ban", metavar="PHRASE", help_suffix=repeat),
    })  # fmt: skip
    g.add_argument("--ban-file", default=None, help="content filter: a file of banned words/phrases, one per line")
    e = p.add_argument_group("engine")
    add_config_flags(e, GenerateOptions, exclude=("window_keep",), flags={  # (GenerateOptions' fields carry no help)
        "max_batch": Flag(help="sequences decoded together"),
        "weights": Flag(choices=("auto", "model", "bf16", "int8"), help="decode weights: auto (exact, packed for speed), model "
                        "(the model's own modules), bf16 or int8 (8-bit weights; faster on CPU, approximate)"),
        "bos": Flag(help="prepend <|endoftext|> to each prompt (allows an empty prompt)"),
        "huge_pages": Flag(choices=HUGE_PAGE_MODES, help="move the memory a decode step reads into 2 MiB pages before "
                           f"decoding (a one-time cost); auto: for {LONG_RUN_STEPS}+ new tokens and for chat"),
    })  # fmt: skip


def banned_phrases(args: argparse.Namespace) -> tuple[str, ...]:
    from gpt2kit.errors import DataError

    phrases = list(args.banned_phrases)
    if args.ban_file:
        try:
            with open(args.ban_file, encoding="utf-8") as f:
                phrases += [ln.rstrip("\n") for ln in f if ln.strip() and not ln.startswith("#")]
        except OSError as e:
            raise DataError(f"cannot read --ban-file {args.ban_file}: {e.strerror}.") from None
    return tuple(phrases)


def logit_bias(args: argparse.Namespace) -> dict[int, float]:
    from gpt2kit.errors import ConfigError

    bias = {}
    for item in args.logit_bias:
        try:
            tid, value = item.split("=", 1)
            bias[int(tid)] = float(value)
        except ValueError:
            raise ConfigError(f"--logit-bias {item!r}: expected TOKEN_ID=BIAS, e.g. --logit-bias 50256=-100.") from None
        check_token_id(int(tid), f"--logit-bias {item}")
    return bias


def check_token_id(token: int, flag: str) -> int:
    """A token id given on the command line must be one of GPT-2's (an id beyond would be ignored silently)."""
    from gpt2kit.config import GPT2_VOCAB_SIZE
    from gpt2kit.errors import ConfigError

    if not 0 <= token < GPT2_VOCAB_SIZE:
        raise ConfigError(f"{flag}: token id {token} is not in GPT-2's vocabulary (0..{GPT2_VOCAB_SIZE - 1}).")
    return token


def sampling_params(args: argparse.Namespace):
    from gpt2kit.cli.flags import config_values
    from gpt2kit.generate import SamplingParams

    banned = tuple(check_token_id(t, f"--ban-token {t}") for t in args.banned_token_ids)
    return SamplingParams(**{**config_values(args, SamplingParams), "banned_phrases": banned_phrases(args),
                             "logit_bias": logit_bias(args), "banned_token_ids": banned})  # fmt: skip


def generate_options(args: argparse.Namespace):
    from gpt2kit.cli.flags import config_values
    from gpt2kit.generate.text import GenerateOptions

    return GenerateOptions(**config_values(args, GenerateOptions))
