"""How kernels.py times the candidate kernels for a layer: on the model's real weights and shapes, each candidate's
output first checked against the float32 `F.linear` reference.

A decode step (a few rows) streams every weight from memory once, so its products are timed as a step runs
them (`measure_step`): each candidate packed for the first blocks and head rows that hold SWEEP_CACHES times the
largest cache (`swept`), then rounds in which each kind in turn passes through those layers in model order, so the
weights stream from memory pass after pass, and the kinds are compared round by round (`_rounds`). Prompt processing
(SHORT_ROWS and PREFILL_ROWS rows) is compute-bound and timed on one layer, once for alike roles (`measure_prompts`).
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2kit import machine
from gpt2kit.model.linear import KERNELS, make_kernel, packing

ROLES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "lm_head")
HEAD_ROLE = "lm_head"  # one matrix, after the blocks
GELU_ROLE = "mlp.c_fc"  # timed with its GELU, which a kernel may fuse (linear.py)
PREFILL_ROWS = 256
# A short prompt's rows (a chat turn, a served request), timed too: on a 2-core Zen 3 VM 124M's products of 16-128 rows
# ran 1.1-1.6x faster with oneDNN's packed weights than with MKL's sgemm; at 256 and 512 rows within 12 % either way.
SHORT_ROWS = 32
WRONG = "output differs from the float32 reference"  # how a rejection for wrong numbers starts
# per candidate and row count (at least 3 calls): on a 2-core Zen 3 VM the lower quartile of 124M's prompt products came
# out 0-6 % apart with 3 and 8 ms of calls, where the kinds lie 10-60 % apart at 32 rows and ~10 % at 256
TIME_BUDGET_S = 0.003
SLOW_FIRST_CALL_US = 50_000  # a first call slower than this (and 10x the best) is not timed further
# a prompt kind whose check call and first timed call are each over this times the best so far is timed no further
FAR_BEHIND = 2.0
# output rows of a prompt product's two trial calls: a kind is not packed and called whole where its estimate (`_scout`)
# is over 10x the best so far and over SCOUT_FLOOR_US. From 16 rows alone, oneDNN's 110-150 us calls scaled up to ~4.7 ms
# at 512 rows on a 2-core Zen 3 VM (0.3 ms in truth); with a 50 ms floor, a bf16 model's emulated products (20-100x the
# float32 copy's time) were called whole, ~0.6 s of the built-in model's first run.
SCOUT_OUT = (16, 64)
SCOUT_FLOOR_US = 2_000
# At SHORT_ROWS and more a product is compute-bound, so it is timed on one layer and on at most this many output rows
# of it (a full 256-row head product is ~10 GFLOP). On a 2-core Zen 3 VM, 124M's prompt measurements took ~0.9 s on
# 2048 rows, ~0.65 s on 1024 and ~0.5 s on 512, and ranked the kinds alike on each (oneDNN 1.1-1.7x ahead at 32 rows;
# MKL, oneDNN and F.linear within ~10 % at 256, in any order). Alike timed slices are timed once (`measure_prompts`).
PREFILL_OUT_TIMED = 512
# ... but at SHORT_ROWS the speed depends on the whole weight (MKL's sgemm and F.linear pack it again each call: 124M's
# whole c_fc took them 2.3-3.6 ms at 32 rows against oneDNN's 1.9-2.0, its 512-row slice all four within 15 %), so one
# whole layer is timed, at most SHORT_OUT_TIMED output rows: ~0.15 s more of 124M's choice. Not the head: its prompt
# kernel runs only where a copy's logits are asked for every position (not a decode runner's), and costs the most.
SHORT_OUT_TIMED = 4096
# timed rounds of a decode measurement (after a warm-up round): at least, and at most while a role is contested and
# ROUNDS_BUDGET_S (from the end of the first ones) lasts; 124M float32 on a 2-core Zen 3 VM: 3-7 ms a kind a round
ROUNDS = (5, 20)
ROUNDS_BUDGET_S = 0.05
# ... but after FAR_ROUNDS rounds a kind over FAR times its role's leader is out of it already: on that VM MKL and
# F.linear were 1.5-3.2x behind gemv.c on most of 124M's roles, round after round
FAR_ROUNDS = 2
FAR = 1.5
# a kind over this factor of its role's leader, round for round, is out of that role: on a 2-core Zen 3 VM MKL, oneDNN
# and F.linear were 1.3-2.3x behind gemv.c at decode, and gemv.c's prefetch variants within 1.0-1.12x of each other
CLEAR = 1.25
# ... and so is one the leader beat in so many rounds that a fair coin would come up so one-sided at most SURE of the
# time (a sign test: 5 of 5 rounds, 7 of 8, ...), and, after TIE_ROUNDS rounds, one within TIE of it (after 5, noise
# left gemv-hw 1.0x gemv-l2 on a role that 20 rounds put 0.96x). Before, 124M's decode rounds took ~0.6 s.
TIE = 1.02
TIE_ROUNDS = 10
SURE = 0.05
# A decode sweep's pass reads this many times the largest cache (in its weights' bytes): the first blocks and a slice of
# the head's rows (`swept`), so packing and timing each candidate costs the same for any model size. Over every layer,
# 124M's float32 choice took 11.4 s on a 2-core Zen 3 VM (32 MiB L3), most of it packing each candidate's 494 MB.
SWEEP_CACHES = 2
# the head's slice holds this share of a pass's bytes (whole blocks of 64 rows), the blocks the rest, so each weight is
# read from memory as in a step. On that VM, 124M float32: 2 blocks and 5,504 head rows, 74 MB a kind, where the blocks
# and the head each took the whole budget before (152 MB): packing and timing the candidates took half as long.
HEAD_SHARE = 0.25

Weights = list[tuple[torch.Tensor, torch.Tensor | None]]  # (weight (out, in), bias (out,) or None) per layer


@dataclass
class Choice:
    """The measured choice for one weight shape at one row count."""

    role: str
    rows: int
    kind: str
    us: dict[str, float] = field(default_factory=dict)  # median microseconds per call, per candidate
    rejected: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not considered
    # decode (measure_step's rounds): each other kind -> its time over the chosen one's, round for round (the median)
    paired: dict[str, float] = field(default_factory=dict)
    cached: bool = False


def timed_weights(linears: list[nn.Linear], rows: int, role: str = "") -> Weights:
    """(weight, bias) pairs to time: every layer given at decode; one layer for a prompt's rows, at most
    SHORT_OUT_TIMED output rows of it at SHORT_ROWS (but the head's) and PREFILL_OUT_TIMED otherwise (see those)."""
    if rows < SHORT_ROWS:
        return [_weight_bias(lin) for lin in linears]
    whole = rows == SHORT_ROWS and role != HEAD_ROLE
    return [_weight_bias(linears[0], SHORT_OUT_TIMED if whole else PREFILL_OUT_TIMED)]


def _weight_bias(lin: nn.Linear, out: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """lin's (weight, bias), detached; with `out`, their first `out` output rows."""
    w, b = lin.weight.detach()[:out], None if lin.bias is None else lin.bias.detach()[:out]  # (out', in), (out',)
    return w, b


def sweep_bytes() -> int:
    """The bytes a decode sweep's pass reads at least: SWEEP_CACHES times the largest cache."""
    return SWEEP_CACHES * machine.largest_cache_bytes()


def swept(todo: StepTodo, weight_bytes: int) -> tuple[dict[str, Weights], set[str]]:
    """(the weights a decode sweep times, per role; the roles whose weights are whole layers): HEAD_SHARE of
    SWEEP_CACHES times the largest cache's bytes in the head's first rows (whole blocks of 64), the rest in the first
    blocks (at `weight_bytes` a weight: the candidates'). GPT-2 124M in float32 with a 32 MiB cache: 2 of 12 blocks
    and 5,504 of 50,257 rows. A model no larger is swept whole."""
    budget = sweep_bytes()
    weights, whole, head = {}, set(), 0
    if HEAD_ROLE in todo:
        (lin, *_), _ = todo[HEAD_ROLE]
        out, k = lin.weight.shape
        rows = min(out, 64 * max(1, -(-int(budget * HEAD_SHARE) // (64 * k * weight_bytes))))
        weights[HEAD_ROLE], head = [_weight_bias(lin, rows)], rows * k * weight_bytes
        if rows == out:
            whole.add(HEAD_ROLE)
    block = weight_bytes * sum(linears[0].weight.numel() for role, (linears, _) in todo.items() if role != HEAD_ROLE)
    blocks = max(1, -(-(budget - head) // block)) if block else 0
    for role, (linears, _) in todo.items():
        if role != HEAD_ROLE:
            weights[role] = [_weight_bias(lin) for lin in linears[:blocks]]
            whole.add(role)
    return weights, whole


def measure(
    role: str, linears: list[nn.Linear], rows: int, cands: tuple[list[str], dict[str, str]], dtype: torch.dtype
) -> Choice:
    kinds, rejected = cands
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, linears[0].in_features, generator=g).to(dtype)  # (rows, in)
    timed = timed_weights(linears, rows, role)
    w0, b0 = timed[0]
    ref = F.linear(x.float(), w0.float(), None if b0 is None else b0.float())  # (rows, out')
    gelu = role == GELU_ROLE  # c_fc's product is timed and checked with its GELU, which a kernel may fuse
    if gelu:
        ref = F.gelu(ref, approximate="tanh")
    us = {}
    with torch.inference_mode():
        for kind in kinds:
            best = min(us.values(), default=float("inf"))
            if (scouted := _scout(kind, w0, b0, x, best)) is not None:  # far slower than the best: not packed whole
                us[kind] = scouted
                continue
            ks = [make_kernel(kind, w, b, rows) for w, b in timed]
            t0 = time.perf_counter()
            y = (ks[0].gelu(x) if gelu else ks[0](x)).float()  # the first call, as timed: `_time`'s warm-up
            first_us = (time.perf_counter() - t0) * 1e6
            wrong = _wrong_numbers(kind, y, ref, dtype)
            if wrong:
                rejected[kind] = wrong
                continue
            # a first call 10x slower than the best so far and slow in itself is not worth timing: int8 with
            # float32 activations takes seconds at 256 rows where the others take milliseconds (a short first
            # call is timed: it may be a kernel's one-time set-up, as for int8-dynamic)
            us[kind] = first_us if first_us > max(10 * best, SLOW_FIRST_CALL_US) else _time(ks, x, gelu, best, first_us)
    return _choose(role, rows, us, rejected)


PromptTodo = dict[tuple[str, int], tuple[list[nn.Linear], tuple[list[str], dict[str, str]]]]  # (role, rows) -> (layers, (kinds, rejected))


def measure_prompts(todo: PromptTodo, dtype: torch.dtype) -> dict[tuple[str, int], Choice]:
    """`measure` for each (role, rows), once for the roles whose timed slices at a prompt's rows (SHORT_ROWS or more)
    are alike: the same shape, the GELU (c_fc's) or not, the same candidates; a bias or none (adding one took 1-2 %
    of a 512 x 768 slice's product at 32 and 256 rows on a 2-core Zen 3 VM). At PREFILL_ROWS GPT-2's attn.c_attn,
    attn.c_proj and lm_head are all timed on the first's 512 x 768 slice. Fewer rows: each role alone."""
    done: dict[tuple, Choice] = {}
    out = {}
    for (role, rows), (linears, cands) in todo.items():
        w, _ = timed_weights(linears, rows, role)[0]
        alike = (rows, tuple(w.shape), role == GELU_ROLE, tuple(cands[0]), None if rows >= SHORT_ROWS else role)
        if alike not in done:
            done[alike] = measure(role, linears, rows, cands, dtype)
        out[(role, rows)] = replace(done[alike], role=role)
    return out


def _scout(kind: str, w: torch.Tensor, b: torch.Tensor | None, x: torch.Tensor, best: float) -> float | None:
    """`kind`'s microseconds per call on all of w's rows where that is over 10x the best so far and over SCOUT_FLOOR_US
    (None: not so slow, or nothing to compare with), estimated on the line through its calls on SCOUT_OUT rows (the faster
    of two each, after one for its set-up), so a call's fixed cost is not scaled up; the second only where the first,
    scaled up fixed cost and all, is over the limit. A hiccup in the smaller call only lowers the estimate."""
    if best == float("inf") or len(w) <= SCOUT_OUT[1]:
        return None
    secs: list[float] = []
    for out in SCOUT_OUT:
        k = make_kernel(kind, w[:out], None if b is None else b[:out], len(x))
        k(x)  # its one-time set-up, if any
        secs.append(min(_timed_call(k, x) for _ in range(2)))
        if len(secs) == 1:  # scaled up with the rows, fixed cost and all: over the time, so under the limit is enough
            est = secs[0] * 1e6 * len(w) / out
        else:
            per_row = max(0.0, (secs[1] - secs[0]) / (SCOUT_OUT[1] - SCOUT_OUT[0]))
            est = (secs[1] + per_row * (len(w) - out)) * 1e6
        if est <= max(10 * best, SCOUT_FLOOR_US):
            return None
    return est


def _timed_call(kernel, x: torch.Tensor) -> float:
    """Seconds of one call of `kernel` on x."""
    t0 = time.perf_counter()
    kernel(x)
    return time.perf_counter() - t0


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
    """The decode products, timed as a step runs them: every candidate kind packed once for the swept layers
    (`swept`, for `weight_bytes`-byte weights; a kind that calls the packed weight of a kind before it,
    `linear.packing`, shares it) and checked on each role's first layer, then rounds of passes, one per kind, each
    through its layers of every role in model order (block by block, the head last), so each weight streams from
    memory as in a real step (`_rounds`). Timed one role at a time, its layers can sit in the cache, where a
    compute-heavy kernel looks faster than it is (on a 2-core Xeon: int8 and int8-dynamic equal per call alone,
    1.38x apart over a 124M step). `kept`, a dict, receives every kind's kernels of each role whose swept layers are
    whole layers, {role: {kind: {layer: kernel}}}: the inference copy takes those of the kinds it runs."""
    layers, whole = swept(todo, weight_bytes)
    g = torch.Generator().manual_seed(0)
    xs, refs = {}, {}
    rejected = {role: dict(cands[1]) for role, (_, cands) in todo.items()}
    for role in todo:
        w, b = layers[role][0]
        if w.shape[1] not in xs:
            xs[w.shape[1]] = torch.randn(rows, w.shape[1], generator=g).to(dtype)  # (rows, in)
        refs[role] = F.linear(xs[w.shape[1]].float(), w.float(), None if b is None else b.float())  # (rows, out)
    depth = max((len(ws) for ws in layers.values()), default=0)
    order = sorted(((role, i) for role, ws in layers.items() for i in range(len(ws))),
                   key=lambda ri: (depth if ri[0] == HEAD_ROLE else ri[1], ROLES.index(ri[0])))  # fmt: skip
    made: dict[str, dict[tuple[str, int], object]] = {}  # kind -> {(role, layer): kernel}, in step order
    with torch.inference_mode():
        for kind in dict.fromkeys(k for _, (kinds, _) in todo.values() for k in kinds):
            like = next((ks for k, ks in made.items() if packing(KERNELS[k]) is packing(KERNELS[kind])), {})
            ks = {}
            for role, i in order:
                w, b = layers[role][i]
                if kind in todo[role][1][0] and kind not in rejected[role]:
                    kernel = make_kernel(kind, w, b, rows, like=like.get((role, i)))
                    if i == 0 and (wrong := _wrong_numbers(kind, kernel(xs[w.shape[1]]).float(), refs[role], dtype)):
                        rejected[role][kind] = wrong
                        continue
                    ks[(role, i)] = kernel  # layer 0 comes first: a rejection skips the rest
            if ks:
                made[kind] = ks
        # kind -> (role, kernel, input) in step order
        entrants = {kind: [(r, k, xs[layers[r][i][0].shape[1]]) for (r, i), k in ks.items()] for kind, ks in made.items()}
        times, live = _rounds(entrants) if entrants else ({}, {})
    choices = {}
    for role in todo:
        timed = {kind: ts[role] for kind, ts in times.items() if role in ts}
        choices[role] = _standing(role, rows, timed, {k for k in live if role in live[k]}, len(layers[role]), rejected[role])
        if kept is not None and role in whole:
            kept[role] = {kind: {i: k for (r, i), k in ks.items() if r == role} for kind, ks in made.items() if (role, 0) in ks}
    return choices


def _rounds(entrants: dict[str, list[tuple[str, object, torch.Tensor]]]) -> tuple[dict[str, dict[str, list[float]]], dict[str, set[str]]]:
    """Rounds of passes through a decode step's products, one pass per kind (`_pass`: all its calls, so between two
    reads of a weight the others stream from memory), the kinds' order rotating round by round. A memory speed that
    changes every few seconds (a 2-core Zen 4 VM read at 34-36 GB/s and at 60-65 by turns) meets every kind within
    a round, so kinds are compared round by round (`_over`): timed one after the other, gemv.c's prefetch variants
    came out 0.4 % apart in one sweep and 1.4x in the next. After a warm-up round (a kind whose warm-up pass is over
    10x the best and over SLOW_FIRST_CALL_US keeps that figure and runs no more: int8-f32), FAR_ROUNDS timed rounds,
    then more while a role is still contested, up to ROUNDS[0] and then while ROUNDS_BUDGET_S lasts: after each
    round, a kind over FAR (from ROUNDS[0] rounds on, CLEAR) times its role's leader (`_leader`) is out of that role,
    and a kind out of every role runs no more.
    Returns ({kind: {role: [seconds of its calls in a pass, round by round]}}, {kind: the roles it is still in})."""
    kinds = list(entrants)
    warm = {kind: _pass(calls) for kind, calls in entrants.items()}
    best = min((sum(t.values()) for t in warm.values()), default=0.0)
    times, live = {}, {}
    for kind, t in warm.items():
        slow = sum(t.values()) > max(10 * best, SLOW_FIRST_CALL_US / 1e6)
        times[kind] = {role: [s] if slow else [] for role, s in t.items()}
        live[kind] = set() if slow else set(t)
    deadline, r = float("inf"), 0
    while r < FAR_ROUNDS or (r < ROUNDS[1] and _contested(live) and (r < ROUNDS[0] or time.perf_counter() < deadline)):
        for kind in kinds[r % len(kinds):] + kinds[: r % len(kinds)]:
            if live[kind]:
                for role, s in _pass(entrants[kind]).items():
                    times[kind][role].append(s)
        r += 1
        if r >= FAR_ROUNDS:
            _drop(times, live, FAR if r < ROUNDS[0] else CLEAR, tie=r >= TIE_ROUNDS)
        if r == ROUNDS[0]:
            deadline = time.perf_counter() + ROUNDS_BUDGET_S
    return times, live


def _pass(calls: list[tuple[str, object, torch.Tensor]]) -> dict[str, float]:
    """One kind's calls in step order, timed: {role: seconds of its calls}; c_fc's with its GELU (which a kernel may fuse)."""
    spent: dict[str, float] = {}
    for role, kernel, x in calls:
        t0 = time.perf_counter()
        kernel.gelu(x) if role == GELU_ROLE else kernel(x)
        spent[role] = spent.get(role, 0.0) + time.perf_counter() - t0
    return spent


def _leader(times: dict[str, list[float]], kinds: list[str]) -> str:
    """The fastest of `kinds` on one role ({kind: [seconds a pass, round by round]}): the lowest median of its time
    over each round's best of them, so a memory phase that slows a whole round weighs nothing; a tie keeps the
    kind first in `kinds`. Of two kinds, the one faster in most rounds."""
    best = [min(round_) for round_ in zip(*(times[k] for k in kinds))]  # each round's best
    return min(kinds, key=lambda k: _over(times[k], best))


def _drop(times: dict[str, dict[str, list[float]]], live: dict[str, set[str]], clear: float, tie: bool) -> None:
    """Take out of each role (in `live`) every kind but its leader that is over `clear` times the leader, round for
    round, or that the leader beat in a one-sided share of the rounds (`_beaten`), or, with `tie`, within TIE of it."""
    for role in {role for roles in live.values() for role in roles}:
        rivals = [k for k in times if role in live[k]]
        leader = _leader({k: times[k][role] for k in rivals}, rivals)
        for kind in rivals:
            over = _over(times[kind][role], times[leader][role])
            if kind != leader and (over > clear or (tie and 1 / TIE <= over <= TIE) or _beaten(times[leader][role], times[kind][role])):
                live[kind].discard(role)


def _beaten(lead: list[float], other: list[float]) -> bool:
    """Whether `lead` took less time than `other` in so many of the rounds that a fair coin would come up that
    one-sided at most SURE of the time (a one-sided sign test)."""
    n, wins = len(lead), sum(a < b for a, b in zip(lead, other))
    return sum(math.comb(n, i) for i in range(wins, n + 1)) <= SURE * 2**n


def _contested(live: dict[str, set[str]]) -> bool:
    """Whether some role still has two kinds in it."""
    roles = [role for roles in live.values() for role in roles]
    return len(roles) > len(set(roles))


def _standing(role: str, rows: int, timed: dict[str, list[float]], still: set[str], n_layers: int, rejected: dict[str, str]) -> Choice:
    """A role's decode Choice from its rounds ({kind: [seconds of its n_layers calls a pass]}): the leader of the
    kinds `still` in it (of all, where none is); `us`, each kind's median per call; `paired`, each other kind's time
    over the chosen one's, round for round."""
    if not timed:
        return _choose(role, rows, {}, rejected)
    kind = _leader(timed, [k for k in timed if k in still] or list(timed))
    us = {k: round(statistics.median(ts) / n_layers * 1e6, 2) for k, ts in timed.items()}
    paired = {k: round(_over(ts, timed[kind]), 3) for k, ts in timed.items() if k != kind}
    return Choice(role, rows, kind, us, rejected, paired)


def _time(kernels: list, x: torch.Tensor, gelu: bool = False, best: float = float("inf"), first: float = float("inf")) -> float:
    """Microseconds per call (the lower quartile: a busy machine's preemptions only lengthen calls, so the
    low end is the kernel's own speed), cycling through the layers' kernels, after one warm-up call of each but the
    first (the caller's check called it, as timed, in `first` microseconds: a second warm-up call cost ~40 ms of a
    124M model's choice); with `gelu`, each call is the product and its GELU (c_fc's work, which a kernel may fuse).
    Where the check call and the first timed one are each over FAR_BEHIND times `best` (microseconds, the best kind's
    so far), the faster is the figure (a bf16 124M's emulated F.linear, 3-8x the float32 copy's time, up to 37 ms)."""
    calls = [k.gelu if gelu else k for k in kernels]
    for k in calls[1:]:
        k(x)
    times, deadline, i = [], time.perf_counter() + TIME_BUDGET_S, 0
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 200):
        times.append(_timed_call(calls[i % len(calls)], x))
        i += 1
        if len(times) == 1 and min(times[0] * 1e6, first) > FAR_BEHIND * best:
            return min(times[0] * 1e6, first)
    return statistics.quantiles(times, n=4)[0] * 1e6


def _over(times: list[float], other: list[float]) -> float:
    """A kind's time over another's, round by round: the median of the ratios (two of no time: 1)."""
    return statistics.median((t + 1e-12) / (u + 1e-12) for t, u in zip(times, other))
