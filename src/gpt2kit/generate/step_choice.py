"""Whether a decode step runs with the kernels measured product by product, or with gemv.c's, replayed in C.

kernels.py times each product's candidates and attention_plan.py the attention's, each on its own, and keeps
the fastest of each. A recorded step (model/step_graph.py) replays only gemv.c's and step.c's kernels, so one
product left to MKL or oneDNN, or the attention left to SDPA, makes every step run in Python, op by op. On a
2-core AMD EPYC VM (Zen 3, AVX2 only; torch 2.13; 2026-12-01) MKL won the 124M head by a few per cent a call
and SDPA the attention by ~10 % (105 against 117 us), and the Python step then cost more than both gained. So
where the measured kernels leave the step unrecordable and gemv.c can run all of it, the runner times whole
decode steps both ways, the two taking turns, and keeps the faster (`plan_step`):
  - `measured`: the products' and the attention's own choices (the step runs in Python);
  - `replayed`: in place of each product that gemv.c does not run, its fastest gemv.c kind in that product's own
    measurement, and gemv.c's attention; the step recorded once and replayed.
The choice is cached with the kernel choices (kernels.json) under the model's shapes, dtype, weights, batch and
the kinds it replaces; `gpt2kit info --kernels` shows it and GPT2KIT_DECODE_STEP=measured|replayed forces one.
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
from gpt2kit.model import gemv
from gpt2kit.model.attention_plan import KEYS_TIMED, apply_to_blocks
from gpt2kit.model.gpt import GPT
from gpt2kit.model.kernel_timing import HEAD_ROLE, ROLES, Choice
from gpt2kit.model.kernels import decode_sweep, machine_key, read_choices, role_slots, write_measured
from gpt2kit.model.kv_cache import KVCache
from gpt2kit.model.linear import STEP_KINDS, make_kernel

CANDIDATES = ("measured", "replayed")
ENV = "GPT2KIT_DECODE_STEP"
# turns per candidate, alternating, one decode step timed in each (the first after one untimed, where the replayed
# candidate records): at least TURNS[0], then more, up to TURNS[1] (the 12 steps in all timed before), until every step
# of one candidate was faster than every step of the other (`_apart`: by chance alone at most 1 in 20 at three turns
# each). The median step counts.
# On a 2-core Zen 3 VM the candidates' steps came apart in the first three turns for the built-in model (6.0-6.4
# against 4.5-4.7 ms) and GPT-2 124M (20.8-23.2 against 18.7-20.5 ms), and 124M's step choice took 0.23-0.26 s
# against 0.32-0.34 s with two steps a turn for three turns (two runs each, timed by hand around `plan_step`).
TURNS = (3, 6)
# Where the products' and the attention's own measurements put the measured way's step at most this share ahead of the
# replayed one's (`_lead`), the replayed way is taken untimed: a replayed step saves the Python around every operation,
# which whole steps timed put at 13-18 % of a step on a 2-core Zen 3 VM (124M: 21.4 against 18.6 ms; the built-in model
# 6.1 against 5.0) and the interpreter's ~0.9 ms of a 124M token at 11-16 ms on a 2-core Zen 4 VM.
SURE_LEAD = 0.02


@dataclasses.dataclass
class _Variant:
    """How to switch a runner between the candidates: the measured attention kind, and the products to swap as
    (module, its measured decode kernels, the replayed ones: `decode_kernels`), packed when first needed (`_pack`)."""

    attention: str
    kinds: dict[str, str]  # role -> the gemv.c kind that replaces its measured one
    swaps: list[tuple] = dataclasses.field(default_factory=list)


def step_key(model: GPT, batch: int, weights: str, replaced: list[str]) -> str:
    """The kernels.json key of a model's step choice: its shapes, dtype, weights, batch and what it replaces."""
    c, dtype = model.config, next(model.parameters()).dtype
    return f"{dtype} | {weights} | decode step {c.n_layer}x{c.n_embd}, vocab {c.vocab_size} | {batch} rows | replaces {', '.join(replaced)}"


def cached_step(model: GPT, batch: int, weights: str) -> Choice | None:
    """This machine's cached step choice for `model` at `batch` rows with `weights`, if a run made one."""
    prefix = step_key(model, batch, weights, []).removesuffix(" | replaces ")
    table = read_choices().get(machine_key(), {})
    entry = next((v for k, v in table.items() if k.startswith(prefix + " | replaces ")), None)
    return Choice(**{**entry, "cached": True}) if entry else None


def plan_step(runner, model: GPT, batch: int, weights: str, forced: str | None = None) -> Choice | None:
    """Choose, and apply to `runner` (a DecodeRunner over an inference copy of `model`), how its decode steps run
    (`forced`, else GPT2KIT_DECODE_STEP, else cached or timed now); None where there is nothing to choose (the
    step replays as measured, or cannot be replayed either way)."""
    variant, replaced = _variant(runner)
    if variant is None:
        return None
    key = step_key(model, batch, weights, replaced)
    if forced := forced or os.environ.get(ENV):
        if forced not in CANDIDATES:
            raise ConfigError(f"{ENV}={forced!r} is not a way to run a decode step; use one of {list(CANDIDATES)}.")
        choice = Choice("decode step", batch, forced)
    else:
        store = read_choices()
        table = store.setdefault(machine_key(), {})
        if key in table and table[key].get("kind") in CANDIDATES:
            choice = Choice(**{**table[key], "cached": True})
        else:
            choice, meter = _choose(runner, model, batch, variant)
            table[key] = {k: v for k, v in dataclasses.asdict(choice).items() if k != "cached"}
            write_measured(store, meter, "decode steps")
    _apply(runner, model, variant, choice.kind)
    variant.swaps.clear()  # the kernels of the candidate not kept
    return choice


def _choose(runner, model: GPT, batch: int, variant: _Variant) -> tuple[Choice, Callable[[], float | None]]:
    """The step's Choice made now, with the busy meter over its timing (write_measured's): replayed untimed where
    `_lead` is within SURE_LEAD (nothing timed: no meter), else whole steps timed both ways (`_time`)."""
    if (lead := _lead(runner, model, variant)) is not None and lead <= SURE_LEAD:
        why = f"at most {lead:.1%} faster by the products' and the attention's own measurements, not timed"
        return Choice("decode step", batch, "replayed", rejected={"measured": why}), lambda: None
    meter = machine.busy_meter()
    us = {kind: round(s * 1e6, 1) for kind, s in _time(runner, model, batch, variant).items()}
    return Choice("decode step", batch, min(us, key=us.get), us=us), meter


def _variant(runner) -> tuple[_Variant | None, list[str]]:
    """What makes the runner's step recordable, with what it replaces; None where it is recordable as measured,
    where gemv.c cannot run some product or the attention, or where the kernels or the attention were forced."""
    att = runner.attention
    if runner.no_graphs or att is None or os.environ.get("GPT2KIT_KERNEL") or gemv.unavailable(torch.float32):
        return None, []
    if att.kind != "gemv" and (os.environ.get("GPT2KIT_ATTENTION") or "gemv" in att.rejected):
        return None, []
    kinds, replaced = {}, [] if att.kind == "gemv" else [f"attention {att.kind}"]
    for role in ROLES:
        mod = role_slots(runner.model, role)[0][2]
        if mod.kinds[0] in STEP_KINDS:
            continue
        timed = {kind: t for kind, t in mod.timed.items() if kind in STEP_KINDS}
        if not timed:
            return None, []
        kinds[role] = min(timed, key=timed.get)
        replaced.append(f"{role} {mod.kinds[0]}")
    return (_Variant(att.kind, kinds), replaced) if replaced else (None, [])


def _lead(runner, model: GPT, variant: _Variant) -> float | None:
    """How far ahead of the replayed way's step the measured way's can be, as a share of the measured step, from the
    products' decode measurements (each replaced kind's time over its replacement's, per call) and the attention's
    (per call, over KEYS_TIMED), weighted by the calls a step makes: every block's, and the head's (timed on a slice of
    its rows: scaled up to all of them). None where a figure is missing (a forced or cached choice without them)."""
    n, att = model.config.n_layer, runner.attention
    head = decode_sweep(model, runner.weights)
    step = lead = 0.0
    for role in ROLES:
        mod = role_slots(runner.model, role)[0][2]
        calls = head["vocab"] / head["head_rows"] if role == HEAD_ROLE else n
        measured, other = mod.timed.get(mod.kinds[0]), mod.timed.get(variant.kinds.get(role, mod.kinds[0]))
        if measured is None or other is None:
            return None
        step, lead = step + calls * measured, lead + calls * (other - measured)
    if att.kind not in att.us or "gemv" not in att.us:
        return None
    step += n * att.us[att.kind] / len(KEYS_TIMED)
    lead += n * (att.us["gemv"] - att.us[att.kind]) / len(KEYS_TIMED)
    return lead / step if step > 0 else None


def _pack(runner, model: GPT, variant: _Variant) -> None:
    """The replayed candidate's kernels, packed from `model`'s weights (once)."""
    if variant.swaps or not variant.kinds:
        return
    rows = max(1, runner.attention.rows)
    for role, kind in variant.kinds.items():
        for (_, _, lin), (_, _, mod) in zip(role_slots(model, role), role_slots(runner.model, role)):
            bias = None if lin.bias is None else lin.bias.detach()
            new = make_kernel(kind, lin.weight.detach(), bias, rows)
            variant.swaps.append((mod, decode_kernels(mod), with_decode_kernel(mod, kind, new)))


def decode_kernels(mod) -> tuple:
    """What a KernelLinear's decode steps run: (its kinds, its kernel for the batch's rows, one row's kind, one row's)."""
    return mod.kinds, mod.small, mod.one_kind, mod.one


def with_decode_kernel(mod, kind: str, kernel) -> tuple:
    """mod's `decode_kernels` with `kernel` (a `kind`) for its batch's rows, and for one row where one row ran the
    batch's kernel (an engine of one row: its steps call `one`)."""
    one = (kind, kernel) if mod.one is mod.small else (mod.one_kind, mod.one)
    return (kind, mod.kinds[1]), kernel, *one


def set_decode_kernels(mod, kernels: tuple) -> None:
    mod.kinds, mod.small, mod.one_kind, mod.one = kernels


def _apply(runner, model: GPT, variant: _Variant, kind: str) -> None:
    """Switch the runner's products and attention to the candidate `kind`, and the cache dtype its engine makes."""
    replayed = kind == "replayed"
    if replayed:
        _pack(runner, model, variant)
    for mod, measured, swapped in variant.swaps:
        set_decode_kernels(mod, swapped if replayed else measured)
    attention = "gemv" if replayed else variant.attention
    apply_to_blocks(runner.model, attention)
    dtype = next(model.parameters()).dtype
    runner.cache_dtype = torch.float32 if attention == "float32" and runner.float32_cache else dtype
    runner.attention = dataclasses.replace(runner.attention, kind=attention)


def _time(runner, model: GPT, batch: int, variant: _Variant) -> dict[str, float]:
    """Median seconds of one decode step per candidate (`turns`), on a cache of the runner's batch, one per candidate,
    that its first turn fills with a one-token prefill and one untimed step (the replayed candidate's recording, once,
    as an engine's) and each turn extends."""
    tokens = torch.zeros(batch, 1, dtype=torch.long)  # (B, 1)
    caches: dict[str, KVCache] = {}

    def step(kind: str) -> float:
        _apply(runner, model, variant, kind)
        if kind not in caches:
            caches[kind] = cache = KVCache(model.config, batch, 2 + TURNS[1], dtype=runner.cache_dtype)
            runner.prefill(tokens, cache, None, logits=False)
            runner.decode(tokens, cache, None)
        t0 = time.perf_counter()
        runner.decode(tokens, caches[kind], None)
        return time.perf_counter() - t0

    try:
        steps = turns(list(CANDIDATES), step)
    finally:
        runner.graphs.clear()  # they point into this function's caches
    return {kind: statistics.median(t) for kind, t in steps.items()}


def turns(candidates: list[str], step: Callable[[str], float]) -> dict[str, list[float]]:
    """{candidate: the seconds of each of its steps}: `Turns` driven to the end, `step(candidate)` running one step and
    saying how long it took."""
    t = Turns(candidates)
    while (kind := t.next()) is not None:
        t.add(step(kind))
    return t.steps


class Turns:
    """Turns of one step each, the candidates' order rotating turn by turn: at least TURNS[0] turns, then more, up to
    TURNS[1], while a candidate's steps are not all apart from those of the lowest median (`_apart`); one apart from it
    runs no more. Driven a step at a time: `next()` names the candidate whose step runs next (None: done), `add` takes
    that step's seconds; `steps` holds them, {candidate: [seconds]}."""

    def __init__(self, candidates: list[str]) -> None:
        self.steps: dict[str, list[float]] = {kind: [] for kind in candidates}
        self.live, self.turn, self.order = list(candidates), 0, list(candidates)

    def next(self) -> str | None:
        if not self.order:
            self.turn += 1
            if self.turn >= TURNS[0]:
                lead = self.leader()
                self.live = [kind for kind in self.live if kind == lead or not _apart(self.steps[lead], self.steps[kind])]
            if self.turn >= TURNS[1] or len(self.live) == 1:
                return None
            first = self.turn % len(self.live)
            self.order = self.live[first:] + self.live[:first]
        return self.order[0]

    def add(self, seconds: float) -> None:
        self.steps[self.order.pop(0)].append(seconds)

    def leader(self) -> str:
        """The live candidate of the lowest median step."""
        return min(self.live, key=lambda kind: statistics.median(self.steps[kind]))


def _apart(a: list[float], b: list[float]) -> bool:
    """Whether every time in one list is below every time in the other."""
    return max(a) < min(b) or max(b) < min(a)
