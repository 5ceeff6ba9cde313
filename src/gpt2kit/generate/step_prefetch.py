"""How a replayed decode step's products prefetch their weights, chosen by timing whole steps.

gemv.c reads a weight with its next bytes asked for into L1, into L2 only, or not at all (gemv.PREFETCH), and which
reads fastest depends on the CPU and on how much of the weights its caches hold. kernels.py's decode sweep times the
three per product, on a slice of the model twice the largest cache, and there they can come out alike where a whole
step's stream does not. On a 2-core AMD EPYC VM (Zen 3, AVX2 alone, 32 MiB L3; torch 2.13; 2026-12-03, by hand),
GPT-2 124M's products read at ~40 GB/s with each of the three over the sweep's 73 MB, and over a whole step's 494 MB
at 32.4 GB/s with no prefetch against 28.8-29.5 with either; the sweep had given three of the five products a hint,
and that step ran 3.5 % slower than one without (either hint on every product: 8 %).
So where a runner's step replays from a recording (model/step_graph.py), its first generation times the ways on its
own steps as they run: one recording's replays take turns (step_choice.Turns), each with one way written into the
tape for every product, or with each product's own measured way ("measured", where those differ), and the fastest
is kept once the turns end (12-24 steps; the tokens are the same either way, only the reading differs). Its products
then use that way, so every later recording does too. The choice is cached with the kernel choices (kernels.json)
under the model's shapes, dtype, weights, batch and the products' measured kinds, so later runs take it from the
start; `gpt2kit info --kernels` shows it and GPT2KIT_DECODE_PREFETCH=measured|l1|l2|none forces one.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from collections.abc import Callable

import torch

from gpt2kit import machine
from gpt2kit.errors import ConfigError
from gpt2kit.generate.step_choice import Turns, set_decode_kernels, with_decode_kernel
from gpt2kit.model import gemv
from gpt2kit.model.gpt import GPT
from gpt2kit.model.kernel_timing import ROLES, Choice
from gpt2kit.model.kernels import machine_key, read_choices, role_slots, write_measured
from gpt2kit.model.linear import KERNELS, STEP_KINDS, make_kernel, packing
from gpt2kit.model.step_graph import StepGraph

CANDIDATES = ("measured", *gemv.PREFETCH)  # each product as its own measurement chose, or one way for every product
ENV = "GPT2KIT_DECODE_PREFETCH"


def prefetch_key(model: GPT, batch: int, weights: str, kinds: dict[str, str]) -> str:
    """The kernels.json key of a model's prefetch choice: its shapes, dtype, weights, batch and products' kinds."""
    c, dtype = model.config, next(model.parameters()).dtype
    products = ", ".join(f"{role} {kind}" for role, kind in kinds.items())
    return f"{dtype} | {weights} | decode prefetch {c.n_layer}x{c.n_embd}, vocab {c.vocab_size} | {batch} rows | {products}"


def cached_prefetch(model: GPT, batch: int, weights: str) -> Choice | None:
    """This machine's cached prefetch choice for `model` at `batch` rows with `weights`, if a run made one."""
    prefix = prefetch_key(model, batch, weights, {})
    table = read_choices().get(machine_key(), {})
    entry = next((v for k, v in table.items() if k.startswith(prefix)), None)
    return Choice(**{**entry, "cached": True}) if entry else None


def plan_prefetch(runner, model: GPT, batch: int, weights: str, forced: str | None = None) -> Choice | Trial | None:
    """How `runner` (a DecodeRunner over an inference copy of `model`, its step chosen) prefetches its decode steps'
    weights: `forced`, else GPT2KIT_DECODE_PREFETCH, else cached (each applied now), else a Trial that its replayed
    steps run (`Trial.run`); None where the step does not replay gemv.c's products alone."""
    kinds = _step_kinds(runner)
    if kinds is None:
        return None
    if forced := forced or os.environ.get(ENV):
        if forced not in CANDIDATES:
            raise ConfigError(f"{ENV}={forced!r} is not a way to prefetch a decode step's weights; use one of {list(CANDIDATES)}.")
        choice = Choice("decode prefetch", batch, forced)
    else:
        key = prefetch_key(model, batch, weights, kinds)
        entry = read_choices().get(machine_key(), {}).get(key)
        if entry is None or entry.get("kind") not in CANDIDATES:
            return Trial(runner, model, batch, key)
        choice = Choice(**{**entry, "cached": True})
    _apply(runner, model, choice.kind)
    return choice


def _step_kinds(runner) -> dict[str, str] | None:
    """{role: the gemv.c kind its products run} where a step of the runner can replay them (gemv.c's attention too), else None."""
    if runner.no_graphs or runner.attention is None or runner.attention.kind != "gemv":
        return None
    kinds = {role: role_slots(runner.model, role)[0][2].kinds[0] for role in ROLES}
    return kinds if all(kind in STEP_KINDS for kind in kinds.values()) else None


class Trial:
    """The ways timed on a runner's own replayed steps: the first recording replayed (`run`) takes them in turns
    (step_choice.Turns), its tape rewritten for each; other recordings replay as recorded meanwhile. When the turns end,
    `choice` holds the fastest, cached (unless other processes kept the CPU busy meanwhile: write_measured) and applied:
    the runner's products, and every recording it holds."""

    def __init__(self, runner, model: GPT, batch: int, key: str) -> None:
        self.runner, self.model, self.batch, self.key = runner, model, batch, key
        self.graph: StepGraph | None = None
        self.ways: dict[str, list[int]] = {}
        self.turns: Turns | None = None
        self.choice: Choice | None = None
        self.meter = None  # how busy the machine was from the trial's first step (write_measured)

    def run(self, graph: StepGraph, step: Callable[[], torch.Tensor]) -> torch.Tensor:
        """`step()`'s logits: graph's replay, timed with the next way where graph is the trial's (the first it sees)."""
        if self.graph is None:
            self.graph, own = graph, graph.prefetches()
            self.ways = {how: [pf] * len(own) for how, pf in gemv.PREFETCH.items()}
            if own not in self.ways.values():  # a mix: the products' own measured ways are a candidate of their own
                self.ways = {"measured": own, **self.ways}
            self.turns, self.meter = Turns(list(self.ways)), machine.busy_meter()
        if graph is not self.graph or self.choice is not None:
            return step()
        way = self.turns.next()
        graph.set_prefetches(self.ways[way])
        t0 = time.perf_counter()
        logits = step()
        self.turns.add(time.perf_counter() - t0)
        if self.turns.next() is None:
            self._finish()
        return logits

    def _finish(self) -> None:
        us = {way: round(statistics.median(t) * 1e6, 1) for way, t in self.turns.steps.items()}
        self.choice = Choice("decode prefetch", self.batch, min(us, key=us.get), us=us)
        store = read_choices()
        store.setdefault(machine_key(), {})[self.key] = {k: v for k, v in dataclasses.asdict(self.choice).items() if k != "cached"}
        write_measured(store, self.meter, "decode prefetches")
        _apply(self.runner, self.model, self.choice.kind)
        self.graph.set_prefetches(self.ways[self.choice.kind])
        if self.choice.kind != "measured":  # the recordings made meanwhile, with the products' own ways: each as chosen
            pf = gemv.PREFETCH[self.choice.kind]
            for graph in self.runner.graphs.values():
                if isinstance(graph, StepGraph):
                    graph.set_prefetches([pf] * len(graph.prefetches()))


def _apply(runner, model: GPT, how: str) -> None:
    """Every product of the runner's decode steps on its gemv.c kind that prefetches as `how` says (its packed weight
    shared); "measured" leaves each as it is."""
    if how == "measured":
        return
    for role in ROLES:
        for (_, _, lin), (_, _, mod) in zip(role_slots(model, role), role_slots(runner.model, role)):
            kind = _prefetching(mod.kinds[0], how)
            if kind != mod.kinds[0]:
                bias = None if lin.bias is None else lin.bias.detach()
                kernel = make_kernel(kind, lin.weight.detach(), bias, max(1, runner.attention.rows), like=mod.small)
                set_decode_kernels(mod, with_decode_kernel(mod, kind, kernel))


def _prefetching(kind: str, how: str) -> str:
    """The gemv.c kind that calls `kind`'s packed weight and prefetches it as `how` says (gemv.PREFETCH)."""
    base = packing(KERNELS[kind])
    return next(k for k in STEP_KINDS if packing(KERNELS[k]) is base and KERNELS[k].prefetch == gemv.PREFETCH[how])
