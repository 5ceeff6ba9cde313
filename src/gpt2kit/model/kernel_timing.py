"""How kernels.py times the candidate kernels for a layer: on the model's real weights and shapes, each candidate's
output first checked against the float32 `F.linear` reference.

A decode step (a few rows) streams every weight from memory once, so its products are timed as a step runs
them: each candidate through the layers of every role in model order (`measure_step`, the sweep), as many blocks
as read SWEEP_CACHES times the largest cache (`swept`), so the weights stream from memory pass after pass. Prompt
processing (SHORT_ROWS and PREFILL_ROWS rows) is compute-bound and timed on one layer (`measure`).

The sweep times the candidates one after the other, so on a machine whose memory speed changes while it runs,
each candidate's figure is the speed of the phase it met. A 2-core Zen 4 VM's memory reads at 34-36 GB/s and
at 60-65 by turns, switching every few seconds to minutes; there, gemv.c's two prefetch variants (`gemv`,
`gemv-l2`) were 5 % apart in the slow phase and 18 % in the fast one, while one sweep put them 0.4 % apart and
the next put `gemv` 1.4x ahead: with it, 124M decode steps were 7-24 % slower. So every decode kind the sweep timed within
RUNOFF_MARGIN of a role's best meets it in a runoff (`_settle`, `_runoff`): the two called back to back on each
layer from emptied caches, pass after pass, and the median of those pairs decides, as both met the same phase.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2kit import machine
from gpt2kit.model.linear import KERNELS, make_kernel, packing

ROLES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "lm_head")
HEAD_ROLE = "lm_head"  # one matrix, after the blocks
GELU_ROLE = "mlp.c_fc"  # timed with its GELU, which a kernel may fuse (linear.py)
PREFILL_ROWS = 256
# A short prompt's rows (a chat turn, a served request), timed too: the best kind differs there. On a 2-core Zen 3 VM,
# GPT-2 124M's products of 16-128 rows ran 1.1-1.6x faster with oneDNN's packed weights than with MKL's sgemm, which
# packs the weight again on every call, while at 256 and 512 rows the two were within 12 % either way.
SHORT_ROWS = 32
WRONG = "output differs from the float32 reference"  # how a rejection for wrong numbers starts
TIME_BUDGET_S = 0.008  # per candidate and row count
SLOW_FIRST_CALL_US = 50_000  # a first call slower than this (and 10x the best) is not timed further
SCOUT_OUT = 64  # output rows of a prompt product's first call, which tells whether a kind is worth calling whole
MIN_TIMED_PASSES = 2  # passes through a decode step after its warm-up pass (each pass times every swept layer)
# At SHORT_ROWS and more a product is compute-bound: which kernel wins depends on the kernel's blocking, not on
# the weight's memory traffic, so it is timed on one layer and on at most this many output rows of it.
# That keeps the 50257-row head from dominating the first run (a full 256-row head product is ~10 GFLOP).
PREFILL_OUT_TIMED = 2048
# a decode kind the sweep timed within this factor of the best one's time meets it in a runoff: the memory
# phases of the Zen 4 VM above (34 and 62-65 GB/s) alone put 1.9x between two figures of one kernel
RUNOFF_MARGIN = 2.0
RUNOFF_PASSES = (5, 20)  # timed passes of a runoff (after a warm-up pass): at least, and at most while the budget lasts
RUNOFF_BUDGET_S = 0.05  # per contested role, after its first passes
# ... and only while in doubt: a runoff whose median ratio is past this factor either way after its first passes
# has its answer (on a 2-core Zen 3 VM gemv.c's prefetch variants met at 1.0-1.12, MKL, oneDNN and F.linear at 1.3-2.3)
RUNOFF_CLEAR = 1.25
# A decode sweep's pass reads this many times the largest cache (in its weights' bytes): it times that many of the
# first blocks and as many bytes of the head's rows (`swept`), not every layer, so that packing and timing each
# candidate costs the same for any model size. Over every layer, choosing GPT-2 124M's float32 kernels took 11.4 s
# on a 2-core Zen 3 VM (32 MiB L3), most of it packing each candidate's 494 MB; a 1.5B model packed 6.2 GB a candidate.
SWEEP_CACHES = 2

Weights = list[tuple[torch.Tensor, torch.Tensor | None]]  # (weight (out, in), bias (out,) or None) per layer


@dataclass
class Choice:
    """The measured choice for one weight shape at one row count."""

    role: str
    rows: int
    kind: str
    us: dict[str, float] = field(default_factory=dict)  # median microseconds per call, per candidate
    rejected: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not considered
    # from the runoffs (_settle): each runoff's loser -> its time over the winner's, call for call (the median)
    paired: dict[str, float] = field(default_factory=dict)
    cached: bool = False


def timed_weights(linears: list[nn.Linear], rows: int) -> Weights:
    """(weight, bias) pairs to time: every layer given at decode; one layer, at most PREFILL_OUT_TIMED output
    rows of it, for a prompt's rows, SHORT_ROWS or more (see PREFILL_OUT_TIMED)."""
    if rows < SHORT_ROWS:
        return [_weight_bias(lin) for lin in linears]
    return [_weight_bias(linears[0], PREFILL_OUT_TIMED)]


def _weight_bias(lin: nn.Linear, out: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """lin's (weight, bias), detached; with `out`, their first `out` output rows."""
    w, b = lin.weight.detach()[:out], None if lin.bias is None else lin.bias.detach()[:out]  # (out', in), (out',)
    return w, b


def sweep_bytes() -> int:
    """The bytes a decode sweep's pass reads at least: SWEEP_CACHES times the largest cache."""
    return SWEEP_CACHES * machine.largest_cache_bytes()


def swept(todo: StepTodo, weight_bytes: int) -> tuple[dict[str, Weights], set[str]]:
    """(the weights a decode sweep times, per role; the roles whose weights are whole layers): the layers of the first
    blocks that hold SWEEP_CACHES times the largest cache's bytes (at `weight_bytes` a weight: the candidates'), and
    as many bytes of the head's first rows (whole blocks of 64). GPT-2 124M in float32 with a 32 MiB cache: 3 of
    12 blocks and 21,888 of 50,257 rows. A model no larger is swept whole."""
    budget = sweep_bytes()
    block = weight_bytes * sum(linears[0].weight.numel() for role, (linears, _) in todo.items() if role != HEAD_ROLE)
    blocks = max(1, -(-budget // block)) if block else 0
    weights, whole = {}, set()
    for role, (linears, _) in todo.items():
        if role != HEAD_ROLE:
            weights[role] = [_weight_bias(lin) for lin in linears[:blocks]]
        else:
            out, k = linears[0].weight.shape
            weights[role] = [_weight_bias(linears[0], min(out, 64 * max(1, -(-budget // (64 * k * weight_bytes)))))]
        if role != HEAD_ROLE or len(weights[role][0][0]) == out:
            whole.add(role)
    return weights, whole


def measure(
    role: str, linears: list[nn.Linear], rows: int, cands: tuple[list[str], dict[str, str]], dtype: torch.dtype
) -> Choice:
    kinds, rejected = cands
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, linears[0].in_features, generator=g).to(dtype)  # (rows, in)
    timed = timed_weights(linears, rows)
    w0, b0 = timed[0]
    ref = F.linear(x.float(), w0.float(), None if b0 is None else b0.float())  # (rows, out')
    us = {}
    with torch.inference_mode():
        for kind in kinds:
            best = min(us.values(), default=float("inf"))
            if (scouted := _scout(kind, w0, b0, x, best)) is not None:  # far slower than the best: not packed whole
                us[kind] = scouted
                continue
            ks = [make_kernel(kind, w, b, rows) for w, b in timed]
            t0 = time.perf_counter()
            y = ks[0](x).float()
            first_us = (time.perf_counter() - t0) * 1e6
            wrong = _wrong_numbers(kind, y, ref, dtype)
            if wrong:
                rejected[kind] = wrong
                continue
            # a first call 10x slower than the best so far and slow in itself is not worth timing: int8 with
            # float32 activations takes seconds at 256 rows where the others take milliseconds (a short first
            # call is timed: it may be a kernel's one-time set-up, as for int8-dynamic)
            us[kind] = first_us if first_us > max(10 * best, SLOW_FIRST_CALL_US) else _time(ks, x, role == GELU_ROLE)
    return _choose(role, rows, us, rejected)


def _scout(kind: str, w: torch.Tensor, b: torch.Tensor | None, x: torch.Tensor, best: float) -> float | None:
    """`kind`'s microseconds per call on all of w's rows, estimated from its second call on SCOUT_OUT of them, where
    that is over 10x the best so far and over SLOW_FIRST_CALL_US (None: not so slow, or nothing to compare with):
    such a kind is not worth packing and calling whole. bf16 through MKL on a CPU without bf16 products took 1.7 s a
    call at 256 rows (124M c_fc, 2-core Zen 3 VM), against 7 ms for the float32 copy."""
    if best == float("inf") or len(w) <= SCOUT_OUT:
        return None
    k = make_kernel(kind, w[:SCOUT_OUT], None if b is None else b[:SCOUT_OUT], len(x))
    k(x)  # its one-time set-up, if any
    t0 = time.perf_counter()
    k(x)
    est = (time.perf_counter() - t0) * 1e6 * len(w) / SCOUT_OUT
    return est if est > max(10 * best, SLOW_FIRST_CALL_US) else None


def _wrong_numbers(kind: str, y: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> str | None:
    """Why `kind`'s output y is not the float32 reference's (None: it is, within the kernel's tolerance)."""
    tol = 1e-4 if (KERNELS[kind].exact and dtype == torch.float32) else 0.05
    err = float((y - ref).abs().max()) / (1 + float(ref.abs().max()))
    return None if err <= tol else f"{WRONG} by {err:.2e} (tolerance {tol:g})"  # NaN: wrong


def _choose(role: str, rows: int, us: dict[str, float], rejected: dict[str, str]) -> Choice:
    if not us:  # nothing passed: the reference itself always works
        us["linear"] = float("nan")
    us = {k: round(v, 2) for k, v in us.items()}  # chosen from the figures it records: a tie there keeps the first
    best = min(us, key=lambda k: (us[k] != us[k], us[k]))
    return Choice(role, rows, best, us, rejected)


StepTodo = dict[str, tuple[list[nn.Linear], tuple[list[str], dict[str, str]]]]  # role -> (layers, (kinds, rejected))


def measure_step(todo: StepTodo, rows: int, dtype: torch.dtype, kept: dict | None = None, weight_bytes: int = 4) -> dict[str, Choice]:
    """The decode products, timed as a step runs them: each candidate kind goes through the swept layers of every
    role in model order (block by block, the head last; `swept`, for `weight_bytes`-byte weights), so each weight
    streams from memory as in a real step. Timed one role at a time, its layers can sit in the cache, where a
    compute-heavy kernel looks faster than it is (on a 2-core Xeon: int8 and int8-dynamic equal per call alone,
    1.38x apart over a 124M step). `kept`, a dict, receives each role's fastest kind so far with its kernels, {role:
    (kind, {layer: kernel})}, where they are whole layers: at most one packed copy besides the one being timed. A
    kind that calls the packed weight of the kind timed before it (`linear.packing`) shares it. The kinds close to a
    role's best then meet it in runoffs (_settle)."""
    layers, whole = swept(todo, weight_bytes)
    g = torch.Generator().manual_seed(0)
    xs, refs, us = {}, {}, {role: {} for role in todo}
    rejected = {role: dict(cands[1]) for role, (_, cands) in todo.items()}
    for role in todo:
        w, b = layers[role][0]
        if w.shape[1] not in xs:
            xs[w.shape[1]] = torch.randn(rows, w.shape[1], generator=g).to(dtype)  # (rows, in)
        refs[role] = F.linear(xs[w.shape[1]].float(), w.float(), None if b is None else b.float())  # (rows, out)
    depth = max((len(ws) for ws in layers.values()), default=0)
    order = sorted(((role, i) for role, ws in layers.items() for i in range(len(ws))),
                   key=lambda ri: (depth if ri[0] == HEAD_ROLE else ri[1], ROLES.index(ri[0])))  # fmt: skip
    best_pass, last, made = float("inf"), None, {}
    with torch.inference_mode():
        for kind in dict.fromkeys(k for _, (kinds, _) in todo.values() for k in kinds):
            like = made if last and packing(KERNELS[last]) is packing(KERNELS[kind]) else {}  # else freed now
            calls, made, last = [], {}, kind  # (role, kernel, input) in step order; (role, layer) -> kernel
            for role, i in order:
                w, b = layers[role][i]
                if kind in todo[role][1][0] and kind not in rejected[role]:
                    kernel = make_kernel(kind, w, b, rows, like=like.get((role, i)))
                    if i == 0 and (wrong := _wrong_numbers(kind, kernel(xs[w.shape[1]]).float(), refs[role], dtype)):
                        rejected[role][kind] = wrong
                        continue
                    calls.append((role, kernel, xs[w.shape[1]]))  # layer 0 comes first: a rejection skips the rest
                    made[(role, i)] = kernel
            like = None
            if calls:
                per_role, pass_s = _time_step(calls, best_pass)
                best_pass = min(best_pass, pass_s)
                for role, t in per_role.items():
                    t = round(t, 2)  # as _choose compares them
                    if kept is not None and role in whole and t < min(us[role].values(), default=float("inf")):  # a tie keeps the first
                        kept[role] = (kind, {i: k for (r, i), k in made.items() if r == role})
                    us[role][kind] = t
    calls = made = None  # the last kind's kernels: not held through the runoffs
    choices = {role: _choose(role, rows, us[role], rejected[role]) for role in todo}
    empty_caches = _cache_sweeper() if any(_rivals(c) for c in choices.values()) else None  # one buffer for them all
    for role, c in choices.items():
        _settle(c, layers[role], xs[layers[role][0][0].shape[1]], kept if role in whole else None, rows, empty_caches)
    return choices


def _settle(c: Choice, layers: Weights, x: torch.Tensor, kept: dict | None, rows: int, empty_caches: Callable[[], object] | None) -> None:
    """Runoffs for a decode choice: each kind the sweep timed within RUNOFF_MARGIN of the chosen one, fastest first,
    meets the kind chosen so far (_runoff), and the faster call for call is chosen (c.kind; `kept` follows). c.paired
    records each runoff's loser with its time over the winner's. Two kinds at a time, so at most two packed copies."""
    held = kept.get(c.role) if kept is not None else None
    for rival in _rivals(c):
        times, kernels = _runoff(c.role, layers, x, (c.kind, rival), held, rows, empty_caches)
        ratio = round(_over(times, rival, c.kind), 3)
        if ratio < 1:  # the rival took less time, call for call
            c.paired[c.kind] = round(1 / ratio, 3)
            c.kind, held = rival, (rival, kernels[rival])
            if kept is not None:
                kept[c.role] = held
        else:
            c.paired[rival] = ratio


def _time_step(calls: list[tuple[str, object, torch.Tensor]], best_pass: float) -> tuple[dict[str, float], float]:
    """({role: microseconds per call}, seconds per pass) over passes through `calls` in order: the lower
    quartile of each role's calls (as in _time), after a warm-up pass, over MIN_TIMED_PASSES passes and more while
    TIME_BUDGET_S per role lasts (20 at most). A warm-up pass over 10x the best pass so far and over
    SLOW_FIRST_CALL_US is the figure itself (int8-f32: not worth more time)."""
    n_roles = len({role for role, _, _ in calls})
    passes: list[tuple[float, dict[str, list[float]]]] = []  # (seconds, {role: [seconds per call]})
    deadline = float("inf")
    while len(passes) < 1 + MIN_TIMED_PASSES or (time.perf_counter() < deadline and len(passes) < 21):
        per_role: dict[str, list[float]] = {}
        start = time.perf_counter()
        for role, kernel, x in calls:
            t0 = time.perf_counter()
            kernel.gelu(x) if role == GELU_ROLE else kernel(x)
            per_role.setdefault(role, []).append(time.perf_counter() - t0)
        passes.append((time.perf_counter() - start, per_role))
        if len(passes) == 1:  # the warm-up pass
            if passes[0][0] > max(10 * best_pass, SLOW_FIRST_CALL_US / 1e6):
                return {role: statistics.median(ts) * 1e6 for role, ts in per_role.items()}, passes[0][0]
            deadline = time.perf_counter() + TIME_BUDGET_S * n_roles
    timed = passes[1:]
    pooled = {role: [t for _, p in timed for t in p[role]] for role in timed[0][1]}
    return {role: statistics.quantiles(ts, n=4)[0] * 1e6 for role, ts in pooled.items()}, min(s for s, _ in timed)


def _time(kernels: list, x: torch.Tensor, gelu: bool = False) -> float:
    """Microseconds per call (the lower quartile: a busy machine's preemptions only lengthen calls, so the
    low end is the kernel's own speed), cycling through the layers' kernels, after one warm-up round; with
    `gelu`, each call is the product and its GELU (c_fc's work, which a kernel may fuse)."""
    calls = [k.gelu if gelu else k for k in kernels]
    for k in calls:
        k(x)
    times, deadline, i = [], time.perf_counter() + TIME_BUDGET_S, 0
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        t0 = time.perf_counter()
        calls[i % len(calls)](x)
        times.append(time.perf_counter() - t0)
        i += 1
    return statistics.quantiles(times, n=4)[0] * 1e6


def _rivals(c: Choice) -> list[str]:
    """The kinds a decode choice's sweep timed within RUNOFF_MARGIN of the chosen kind's time, fastest first."""
    best = c.us[c.kind]
    if not best > 0:  # NaN: nothing was timed
        return []
    return sorted((k for k, t in c.us.items() if k != c.kind and t <= RUNOFF_MARGIN * best), key=c.us.get)  # NaN: out


def _runoff(
    role: str,
    layers: Weights,
    x: torch.Tensor,
    kinds: tuple[str, ...],
    held: tuple[str, dict] | None,
    rows: int,
    empty_caches: Callable[[], object],
) -> tuple[dict[str, list[float]], dict[str, dict[int, object]]]:
    """`kinds` timed on the swept layers of `role` once more, their calls on a layer back to back (the order rotating
    pass by pass), every pass starting from emptied caches, as a decode step's products do, so all of them meet the
    same memory phases, past RUNOFF_PASSES[0] passes only while a kind's time over the first's is in doubt
    (`_in_doubt`): ({kind: seconds per call}, the calls of all kinds on one layer in one pass at the same index;
    {kind: {layer: kernel}}). `held`: (kind, {layer: kernel}) already packed (measure_step's `kept`);
    `empty_caches`: _cache_sweeper's reader. Every other kind packs its own weights, even one that could call another's
    (`linear.packing`): the calls on a layer each read their weight from memory, not the one before's from the cache."""
    kernels = {kind: held[1] if held is not None and held[0] == kind else
               {i: make_kernel(kind, w, b, rows) for i, (w, b) in enumerate(layers)} for kind in kinds}  # fmt: skip
    calls = {kind: [k.gelu if role == GELU_ROLE else k for _, k in sorted(ks.items())] for kind, ks in kernels.items()}
    times: dict[str, list[float]] = {kind: [] for kind in kinds}
    deadline, passes = float("inf"), 0
    with torch.inference_mode():
        while passes <= RUNOFF_PASSES[0] or (passes <= RUNOFF_PASSES[1] and time.perf_counter() < deadline and _in_doubt(times, kinds)):
            empty_caches()
            order = kinds[passes % len(kinds):] + kinds[: passes % len(kinds)]
            for i in range(len(layers)):
                for kind in order:
                    t0 = time.perf_counter()
                    calls[kind][i](x)
                    if passes:  # the first pass warms up
                        times[kind].append(time.perf_counter() - t0)
            passes += 1
            if passes == 1:
                deadline = time.perf_counter() + RUNOFF_BUDGET_S
    return times, kernels


def _over(times: dict[str, list[float]], kind: str, other: str) -> float:
    """kind's time over other's in a runoff, call group by call group: the median (two calls of no time: 1)."""
    return statistics.median((t + 1e-12) / (u + 1e-12) for t, u in zip(times[kind], times[other]))


def _in_doubt(times: dict[str, list[float]], kinds: tuple[str, ...]) -> bool:
    """Whether a kind's time over the first kind's is still within RUNOFF_CLEAR of 1 (either way)."""
    return any(1 / RUNOFF_CLEAR < _over(times, k, kinds[0]) < RUNOFF_CLEAR for k in kinds[1:])


def _cache_sweeper() -> Callable[[], object]:
    """A function that empties the caches before a runoff pass, so its products read their weights from memory
    as a decode step's do: it reads twice the largest cache's bytes."""
    return torch.ones(2 * machine.largest_cache_bytes() // 4).sum
