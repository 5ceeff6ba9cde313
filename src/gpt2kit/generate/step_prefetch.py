"""How a replayed decode step's products prefetch their weights, chosen by timing whole steps.

gemv.c reads a weight with its next bytes asked for into L1, into L2 only, or not at all (gemv.PREFETCH), and which
reads fastest depends on the CPU and on how much of the weights its caches hold. kernels.py's decode sweep times the
three per product, on a slice of the model twice the largest cache, and there they can come out alike where a whole
step's stream does not. On a 2-core AMD EPYC VM (Zen 3, AVX2 alone, 32 MiB L3; torch 2.13; 2026-12-03, by hand),
GPT-2 124M's products read at ~40 GB/s with each of the three over the sweep's 73 MB, and over a whole step's 494 MB
at 32.4 GB/s with no prefetch against 28.8-29.5 with either; the sweep had given three of the five products a hint,
and that step ran 3.5 % slower than one without (either hint on every product: 8 %).
So once the step replays from a recording (model/step_graph.py), the runner records it once, then replays it with
each way on every product and with each product's own measured way ("measured"), one step a turn, taking turns
(step_choice.turns), and keeps the fastest: its products then use that way, so every later recording does too. The
choice is cached with the kernel choices (kernels.json) under the model's shapes, dtype, weights, batch and the
products' measured kinds; `gpt2kit info --kernels` shows it and GPT2KIT_DECODE_PREFETCH=measured|l1|l2|none forces one.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time

import torch

from gpt2kit import machine
from gpt2kit.errors import ConfigError
from gpt2kit.generate.step_choice import TURNS, set_decode_kernels, turns, with_decode_kernel
from gpt2kit.model import gemv
from gpt2kit.model.gpt import GPT
from gpt2kit.model.kernel_timing import ROLES, Choice
from gpt2kit.model.kernels import machine_key, read_choices, role_slots, write_measured
from gpt2kit.model.kv_cache import KVCache
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


def plan_prefetch(runner, model: GPT, batch: int, weights: str, forced: str | None = None) -> Choice | None:
    """Choose, and apply to `runner` (a DecodeRunner over an inference copy of `model`, its step chosen), how its
    decode steps' products prefetch their weights (`forced`, else GPT2KIT_DECODE_PREFETCH, else cached or timed now);
    None where the step does not replay gemv.c's products alone."""
    kinds = _step_kinds(runner)
    if kinds is None:
        return None
    if forced := forced or os.environ.get(ENV):
        if forced not in CANDIDATES:
            raise ConfigError(f"{ENV}={forced!r} is not a way to prefetch a decode step's weights; use one of {list(CANDIDATES)}.")
        choice = Choice("decode prefetch", batch, forced)
    else:
        key = prefetch_key(model, batch, weights, kinds)
        store = read_choices()
        table = store.setdefault(machine_key(), {})
        if key in table and table[key].get("kind") in CANDIDATES:
            choice = Choice(**{**table[key], "cached": True})
        else:
            meter = machine.busy_meter()
            seconds = _time(runner, batch)
            if seconds is None:  # the step did not record: nothing replays, nothing to choose
                return None
            us = {way: round(s * 1e6, 1) for way, s in seconds.items()}
            choice = Choice("decode prefetch", batch, min(us, key=us.get), us=us)
            table[key] = {k: v for k, v in dataclasses.asdict(choice).items() if k != "cached"}
            write_measured(store, meter, "decode prefetches")
    _apply(runner, model, choice.kind)
    return choice


def _step_kinds(runner) -> dict[str, str] | None:
    """{role: the gemv.c kind its products run} where a step of the runner can replay them (gemv.c's attention too), else None."""
    if runner.no_graphs or runner.attention is None or runner.attention.kind != "gemv":
        return None
    kinds = {role: role_slots(runner.model, role)[0][2].kinds[0] for role in ROLES}
    return kinds if all(kind in STEP_KINDS for kind in kinds.values()) else None


def _time(runner, batch: int) -> dict[str, float] | None:
    """Median seconds of one decode step with each way (`turns`): one step recorded into an empty cache of the runner's
    batch, then replayed with each way's prefetches written into it, each step extending the cache; None where the step
    did not record."""
    tokens = torch.zeros(batch, 1, dtype=torch.long)  # (B, 1)
    steps = 1 + TURNS[1] * len(CANDIDATES)
    if steps > runner.model.config.n_positions:
        return None
    cache = KVCache(runner.model.config, batch, steps, dtype=runner.cache_dtype)
    try:
        runner.decode(tokens, cache, None)  # the first column, recorded (the runner's only recording for this cache)
        graph = next((g for g in runner.graphs.values() if isinstance(g, StepGraph)), None)
        if graph is None:
            return None
        own = graph.prefetches()
        ways = {how: [pf] * len(own) for how, pf in gemv.PREFETCH.items()}
        if own not in ways.values():  # a mix: the products' own measured ways are a candidate of their own
            ways = {"measured": own, **ways}

        def step(way: str) -> float:
            graph.set_prefetches(ways[way])
            t0 = time.perf_counter()
            runner.decode(tokens, cache, None)
            return time.perf_counter() - t0

        timed = turns(list(ways), step)
    finally:
        runner.graphs.clear()  # they point into this function's cache
    return {way: statistics.median(t) for way, t in timed.items()}


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
