"""CLI flags come from the config dataclasses (cli/flags.py): a new field is a new flag, with its help."""

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import pytest

from gpt2kit.cli.__main__ import build_parser
from gpt2kit.cli.flags import Flag, add_config_flags, config_values


@dataclass
class Knobs:
    steps: int = field(default=3, metadata={"help": "how many steps"})
    rate: float | None = field(default=None, metadata={"help": "a rate"})
    name: str = field(default="x", metadata={"help": "a name"})
    fast: bool = field(default=False, metadata={"help": "go fast"})
    mode: Literal["a", "b"] = field(default="a", metadata={"help": "the mode"})
    tags: tuple[str, ...] = field(default=(), metadata={"help": "a tag"})
    sizes: list[int] = field(default_factory=list, metadata={"help": "sizes"})


def _parser(**kw):
    p = argparse.ArgumentParser(prog="t")
    add_config_flags(p, Knobs, **kw)
    return p


def test_each_annotation_gets_its_kind_of_flag():
    p = _parser(flags={"tags": Flag(name="--tag")})
    args = p.parse_args(["--steps", "5", "--rate", "0.5", "--fast", "--mode", "b", "--tag", "u", "--tag", "v", "--sizes", "2"])
    assert config_values(args, Knobs) == {"steps": 5, "rate": 0.5, "name": "x", "fast": True, "mode": "b", "tags": ("u", "v"),
                                          "sizes": [2]}  # fmt: skip
    assert Knobs(**config_values(p.parse_args([]), Knobs)) == Knobs()  # defaults are the fields'
    assert p.parse_args(["--fast", "--no-fast"]).fast is False
    for bad in (["--steps", "1.5"], ["--mode", "c"], ["--steps"]):
        with pytest.raises(SystemExit):
            p.parse_args(bad)
    text = p.format_help()
    assert "how many steps" in text and "{a,b}" in text and "--tag TAG" in text


def test_unset_flags_stay_out_of_the_arguments_and_the_help_names_the_default():
    p = _parser(unset=True, defaults={"steps": 7})
    assert config_values(p.parse_args(["--name", "y"]), Knobs) == {"name": "y"}
    assert "(default: 7)" in p.format_help()


def _subcommand_help(name: str) -> str:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name].format_help()


def _with_new_field(cls):
    new = ("new_knob", int, field(default=3, metadata={"help": "a knob added to the config"}))
    return dataclasses.make_dataclass(cls.__name__, [new], bases=(cls,), frozen=cls.__dataclass_params__.frozen)


@pytest.mark.parametrize(
    "command, module, name",
    [
        ("train", "gpt2kit.train.config", "TrainConfig"),
        ("finetune", "gpt2kit.train.config", "TrainConfig"),
        ("serve", "gpt2kit.cli.serve", "ServeConfig"),
        ("eval", "gpt2kit.eval.runner", "EvalConfig"),
        ("scaling", "gpt2kit.scaling.ladder", "LadderConfig"),
        ("generate", "gpt2kit.generate.params", "SamplingParams"),
    ],
)
def test_a_new_config_field_shows_up_in_help_by_itself(monkeypatch, command, module, name):
    import importlib

    mod = importlib.import_module(module)
    assert "--new-knob" not in _subcommand_help(command)
    monkeypatch.setattr(mod, name, _with_new_field(getattr(mod, name)))
    text = _subcommand_help(command)
    assert "--new-knob NEW_KNOB" in text and "a knob added to the config" in text


def test_special_flags_keep_their_names_and_destinations():
    p = build_parser()
    serve = p.parse_args(["serve", "--banned-phrase", "a", "--banned-phrase", "b", "--cors-origin", "http://x"])
    assert serve.banned_phrases == ["a", "b"] and serve.cors_origins == ["http://x"] and serve.model_name is None
    ev = p.parse_args(
        ["eval", "lambada", "--data", "f1", "f2", "--no-bos", "--no-progress", "-o", "r.json", "--protocol", "lm-eval"]
    )
    assert (ev.data, ev.bos, ev.progress, ev.output, ev.protocols) == (["f1", "f2"], False, False, "r.json", ["lm-eval"])
    ft = p.parse_args(["finetune", "--model", "gpt2", "--lr", "1e-3"])
    assert (ft.init_from, ft.lr) == ("gpt2", 1e-3) and "model" not in vars(ft) and "max_steps" not in vars(ft)
    gen = p.parse_args(["generate", "hi", "--ban", "x", "--ban-token", "5", "--logit-bias", "5=-1", "--stop", "."])
    assert (gen.banned_phrases, gen.banned_token_ids, gen.logit_bias, gen.stop) == (["x"], [5], ["5=-1"], ["."])
    assert (gen.max_new_tokens, gen.top_k) == (100, 40)
    from gpt2kit.cli.scaling import ladder_config
    from gpt2kit.scaling.ladder import LADDER_PRESETS

    cfg = ladder_config(p.parse_args(["scaling", "--data", "d", "--out", "o", "--sizes", "1x16", "2x32", "2x48", "--seed", "3"]))
    preset = LADDER_PRESETS["cpu"]
    assert (cfg.seed, len(cfg.sizes), cfg.tokens, cfg.device) == (3, 3, preset.tokens, preset.device)
    cfg = ladder_config(p.parse_args(["scaling", "--data", "d", "--out", "o", "--preset", "cpu-tiny", "--tokens-per-param", "5"]))
    assert (cfg.tokens_per_param, cfg.tokens) == (5.0, 0)  # a per-parameter budget replaces the preset's fixed one
