"""Choose each linear layer's kernel by timing the candidates on this machine, and build the inference copy.

A kernel that won on one CPU loses on the next (oneDNN's packed layout beat `F.linear` 2x for fp32 batch 8
on an AMD AVX-512 box and lost to it at batch 1 on an Intel AMX box), so nothing here is chosen from CPU
flags. The first time a model of a given shape, dtype and batch runs on a machine, every candidate kernel
(linear.py) is timed on the model's real weights and shapes, for two row counts: `batch` (a decode step)
and PREFILL_ROWS (prompt processing, scoring). The fastest candidate whose output matches the float32
`F.linear` reference is kept. Choices are cached per machine (CPU model and flags, torch version,
threads) in `kernel_cache_path()`, so later runs pay nothing; GPT2KIT_KERNEL=<kind> forces one kind.

Candidates, by what the user asked for (`weights`):
  - auto:  the exact kernels (linear, mkl, onednn, gemv, gemv-l2) in the model's dtype; with `--dtype bf16`
           these are the CPU's native bf16 kernels where it has them;
  - bf16 / int8: approximate kernels (linear.py: 16- or 8-bit weights; int8-dynamic also rounds the
           activations to 8 bits), offered only when asked for; prompt processing may still pick an exact
           kernel when that is faster;
  - model: no copy, the model's own nn.Linear modules.
Off the CPU (CUDA, MPS) the only candidate is `linear`. How a decode step attends (SDPA in the model's dtype
or in float32, or gemv.c's one-query kernel) is chosen the same way, in attention_plan.py, and cached in the
same file. The copy's modules are called directly (direct.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2kit import machine
from gpt2kit.atomic import write_text
from gpt2kit.errors import ConfigError
from gpt2kit.model.direct import call_directly
from gpt2kit.model.gpt import GPT
from gpt2kit.model.linear import KERNELS, KernelLinear, make_kernel
from gpt2kit.model.lora import has_lora

WEIGHT_MODES = ("auto", "model", "bf16", "int8")
EXACT = ("linear", "mkl", "onednn", "gemv", "gemv-l2")
APPROX = {"bf16": ("bf16", "bf16-onednn", "bf16-gemv", "bf16-gemv-l2"), "int8": ("int8", "int8-dynamic", "int8-gemv", "int8-gemv-l2")}
# offered only where the kernel it stands in for cannot run (int8 with float32 activations is ~10x slower than
# with bf16 ones wherever both run, and measuring it costs seconds on a 124M model)
FALLBACK = {"int8": "int8-f32"}
ROLES = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "lm_head")
GELU_ROLE = "mlp.c_fc"  # timed with its GELU, which a kernel may fuse (linear.py)
PREFILL_ROWS = 256
WRONG = "output differs from the float32 reference"  # how a rejection for wrong numbers starts
TIME_BUDGET_S = 0.008  # per candidate and row count
SLOW_FIRST_CALL_US = 50_000  # a first call slower than this (and 10x the best) is not timed further
MIN_TIMED_PASSES = 2  # passes through a decode step after its warm-up pass (each pass times every layer)
# At PREFILL_ROWS a product is compute-bound: which kernel wins depends on the kernel's blocking, not on
# the weight's memory traffic, so it is timed on one layer and on at most this many output rows of it.
# That keeps the 50257-row head from dominating the first run (a full 256-row head product is ~10 GFLOP).
PREFILL_OUT_TIMED = 2048
# The inference copy reuses the kernels the decode measurement packed for models of up to this many bytes of
# weights; larger ones pack their winners again rather than hold two packed copies at once while measuring.
KEEP_PACKED_BYTES = 2 << 30


@dataclass
class Choice:
    """The measured choice for one weight shape at one row count."""

    role: str
    rows: int
    kind: str
    us: dict[str, float] = field(default_factory=dict)  # median microseconds per call, per candidate
    rejected: dict[str, str] = field(default_factory=dict)  # candidate -> why it was not considered
    cached: bool = False


def kernel_cache_path() -> Path:
    """kernels.json in the user cache directory (machine.cache_dir: $GPT2KIT_CACHE_DIR, else
    $XDG_CACHE_HOME/gpt2kit, else ~/.cache/gpt2kit)."""
    return machine.cache_dir() / "kernels.json"


def machine_key() -> str:
    """CPU model and a hash of its flags, torch version, threads: choices are reused only on the same."""
    fields = machine.cpu_info()
    name = fields.get("model name") or platform.processor() or platform.machine()
    flags = fields.get("flags", "")
    digest = hashlib.sha256(flags.encode()).hexdigest()[:12]
    return f"{name} | flags {digest} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def plan_kernels(
    model: GPT, batch: int = 1, weights: str = "auto", use_cache: bool = True, remeasure: bool = False, packed: dict | None = None
) -> list[Choice]:
    """One Choice per (role, row count): ROLES x (batch, PREFILL_ROWS). Measures what the cache lacks (all of
    it with `remeasure`, e.g. after a run on a busy machine), and caches what it measured. `packed`, a dict,
    receives the decode winners' kernels the measurement already packed, {(kind, id(weight)): kernel}, for
    the inference copy to use instead of packing them again (only for models of up to KEEP_PACKED_BYTES)."""
    if weights not in WEIGHT_MODES or weights == "model":
        raise ConfigError(f"kernel weights must be one of {[w for w in WEIGHT_MODES if w != 'model']}, got {weights!r}.")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    rows_list = (max(1, batch), PREFILL_ROWS)
    forced = os.environ.get("GPT2KIT_KERNEL")
    store = read_choices() if use_cache and device.type == "cpu" and not forced else {}
    mkey = machine_key()
    table = store.setdefault(mkey, {})
    todo: dict[tuple[str, int], tuple[str, list[nn.Linear], tuple[list[str], dict[str, str]]]] = {}
    choices: dict[tuple[str, int], Choice] = {}
    for role in ROLES:
        linears = _role_linears(model, role)
        out_f, in_f = linears[0].weight.shape
        for rows in rows_list:
            key = f"{dtype} | {weights} | {role} {out_f}x{in_f} | {rows} rows"
            cands = _candidates(weights, rows, device, dtype, in_f, forced)
            if key in table and not remeasure and _covers(table[key], cands):
                choices[(role, rows)] = Choice(**{**table[key], "cached": True})
            else:
                todo[(role, rows)] = (key, linears, cands)
    step_rows = rows_list[0]
    step = {role: todo[(role, step_rows)][1:] for role in ROLES if (role, step_rows) in todo} if step_rows < PREFILL_ROWS else {}
    keep = packed is not None and sum(p.numel() * p.element_size() for p in model.parameters()) <= KEEP_PACKED_BYTES
    kept: dict[str, tuple[str, dict[int, object]]] = {}
    for role, c in _measure_step(step, step_rows, dtype, kept if keep else None).items():
        choices[(role, step_rows)] = c
    for role, (kind, kernels) in kept.items():
        for i, kernel in kernels.items():
            packed[(kind, id(step[role][0][i].weight))] = kernel
    for (role, rows), (key, linears, cands) in todo.items():
        if (role, rows) not in choices:
            choices[(role, rows)] = _measure(role, linears, rows, cands, dtype)
        if use_cache and device.type == "cpu" and not forced:
            table[key] = {k: v for k, v in asdict(choices[(role, rows)]).items() if k != "cached"}
    if todo and use_cache and device.type == "cpu" and not forced:
        write_choices(store)
    return [choices[(role, rows)] for role in ROLES for rows in rows_list]


def inference_copy(model: GPT, batch: int = 1, weights: str = "auto") -> GPT:
    """A copy of `model` for inference that shares its embeddings, LayerNorms and (for `linear`) weights, with
    every nn.Linear replaced by a KernelLinear of the measured kinds, its modules called directly (direct.py).
    'model', and 'auto' for a model with LoRA layers, return the model itself. Packed kernels hold a snapshot of the weights: build the copy after the
    weights are final."""
    if weights == "model" or (weights == "auto" and has_lora(model)):  # LoRA layers run as they are: exact, unpacked
        return model
    if has_lora(model):
        raise ConfigError(f"{weights} weights need the LoRA adapters merged into the model first (adapter.merged_copy, "
                          "or `gpt2kit merge`).")  # fmt: skip
    clone = _copy_sharing_matrices(model)
    packed: dict = {}  # kernels the measurement packed already (from the clone's weights and biases)
    choices = {(c.role, c.rows): c.kind for c in plan_kernels(clone, batch, weights, packed=packed)}
    small = max(1, batch)
    threshold = max(4, 2 * small)  # rows up to this use the decode-measured kernel
    for role in ROLES:
        for parent, name, lin in _role_slots(clone, role):
            kinds = choices[(role, small)], choices[(role, PREFILL_ROWS)]
            setattr(parent, name, KernelLinear(lin, *kinds, threshold, packed, hints=(small, PREFILL_ROWS)))
    return call_directly(clone)


def _copy_sharing_matrices(model: GPT) -> GPT:
    """A copy of `model` in eval mode that shares its matrices (weights, embeddings) and holds its vectors
    (biases, LayerNorms: a few hundred KB that every step reads) side by side in one buffer of their own.
    A safetensors load leaves each vector a view into the mapped file, between the matrices, so a step would
    read them from a page each (a TLB miss each, in a decode step that evicts everything between two reads)."""
    shared = {id(t): t for t in (*model.parameters(), *model.buffers())}
    vectors = [p for p in model.parameters() if p.dim() == 1]
    if vectors and len({(p.dtype, p.device) for p in vectors}) == 1:
        flat = torch.cat([p.detach().reshape(-1) for p in vectors])  # (sum of their sizes,)
        for p, v in zip(vectors, flat.split([p.numel() for p in vectors])):
            shared[id(p)] = nn.Parameter(v, requires_grad=False)
    return copy.deepcopy(model, shared).eval()


def kernels_in_use(model: nn.Module) -> dict[str, tuple[str, str]]:
    """role -> (small, large) kinds of an inference copy (what `gpt2kit info --kernels` and logs show)."""
    out = {}
    for role in ROLES:
        for _, _, mod in _role_slots(model, role):
            if isinstance(mod, KernelLinear):
                out[role] = mod.kinds
    return out


# ---- measuring ---------------------------------------------------------------------------------------


def _candidates(
    weights: str, rows: int, device: torch.device, dtype: torch.dtype, in_f: int, forced: str | None
) -> tuple[list[str], dict[str, str]]:
    """(kinds to time, {kind: why not}) for one shape."""
    if device.type != "cpu":
        return ["linear"], {}
    if forced:
        if forced not in KERNELS:
            raise ConfigError(f"GPT2KIT_KERNEL={forced!r} is not a kernel; use one of {sorted(KERNELS)}.")
        if not (KERNELS[forced].available(device, dtype) and KERNELS[forced].supports(in_f)):
            raise ConfigError(f"GPT2KIT_KERNEL={forced!r} does not run on this machine/shape; unset it to choose by measurement.")
        return [forced], {}
    kinds = list(EXACT) if weights == "auto" else list(APPROX[weights]) + (list(EXACT) if rows > 8 else [])
    ok, rejected = [], {}
    for k in kinds:
        if not KERNELS[k].available(device, dtype):
            rejected[k] = KERNELS[k].why_unavailable(device, dtype)
        elif KERNELS[k].max_rows is not None and rows > KERNELS[k].max_rows:
            rejected[k] = f"for products of up to {KERNELS[k].max_rows} rows"
        elif not KERNELS[k].supports(in_f):
            rejected[k] = f"does not support in_features={in_f}"
        else:
            ok.append(k)
        if k in FALLBACK and k not in ok:
            kinds.append(FALLBACK[k])
    return ok, rejected


def _covers(entry: dict, cands: tuple[list[str], dict[str, str]]) -> bool:
    """A cached choice still stands if it judged every candidate this torch and CPU offer now (a kernel
    added to gpt2kit since then is measured, not ignored) and its kernel is still offered (or is the
    `linear` reference). Judged: timed, or rejected for its numbers; a kernel that could not run then (no
    compiler for gemv.c, GPT2KIT_GEMV=0) and runs now is measured."""
    judged = set(entry.get("us", {})) | {k for k, why in entry.get("rejected", {}).items() if why.startswith(WRONG)}
    return set(cands[0]) <= judged and entry.get("kind") in {*cands[0], "linear"}


def _timed_weights(linears: list[nn.Linear], rows: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """(weight, bias) pairs to time: every layer given at decode; one layer, at most PREFILL_OUT_TIMED output
    rows of it, at prefill (see PREFILL_OUT_TIMED)."""
    if rows < PREFILL_ROWS:
        return [(lin.weight.detach(), None if lin.bias is None else lin.bias.detach()) for lin in linears]
    w, b = linears[0].weight.detach()[:PREFILL_OUT_TIMED], linears[0].bias  # (out', in)
    return [(w, None if b is None else b.detach()[:PREFILL_OUT_TIMED])]


def _measure(
    role: str, linears: list[nn.Linear], rows: int, cands: tuple[list[str], dict[str, str]], dtype: torch.dtype
) -> Choice:
    kinds, rejected = cands
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, linears[0].in_features, generator=g).to(dtype)  # (rows, in)
    timed = _timed_weights(linears, rows)
    w0, b0 = timed[0]
    ref = F.linear(x.float(), w0.float(), None if b0 is None else b0.float())  # (rows, out')
    us = {}
    with torch.inference_mode():
        for kind in kinds:
            ks = [make_kernel(kind, w, b, rows) for w, b in timed]
            t0 = time.perf_counter()
            y = ks[0](x).float()
            first_us = (time.perf_counter() - t0) * 1e6
            wrong = _wrong_numbers(kind, y, ref, dtype)
            if wrong:
                rejected[kind] = wrong
                continue
            best = min(us.values(), default=float("inf"))
            # a first call 10x slower than the best so far and slow in itself is not worth timing: int8 with
            # float32 activations takes seconds at 256 rows where the others take milliseconds (a short first
            # call is timed: it may be a kernel's one-time set-up, as for int8-dynamic)
            us[kind] = first_us if first_us > max(10 * best, SLOW_FIRST_CALL_US) else _time(ks, x, role == GELU_ROLE)
    return _choose(role, rows, us, rejected)


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


def _measure_step(todo: StepTodo, rows: int, dtype: torch.dtype, kept: dict | None = None) -> dict[str, Choice]:
    """The decode products, timed as a step runs them: each candidate kind goes through every layer of every
    role in model order (block by block, the head last), so each weight streams from memory as in a real
    step. Timed one role at a time, its layers can sit in the cache, where a compute-heavy kernel looks faster
    than it is (on a 2-core Xeon: int8 and int8-dynamic equal per call alone, 1.38x apart over a 124M step).
    `kept`, a dict, receives each role's fastest kind so far with its kernels, {role: (kind, {layer: kernel})}:
    at most one packed copy besides the one being timed."""
    g = torch.Generator().manual_seed(0)
    xs, refs, us = {}, {}, {role: {} for role in todo}
    rejected = {role: dict(cands[1]) for role, (_, cands) in todo.items()}
    for role, (linears, _) in todo.items():
        lin = linears[0]
        if lin.in_features not in xs:
            xs[lin.in_features] = torch.randn(rows, lin.in_features, generator=g).to(dtype)  # (rows, in)
        x = xs[lin.in_features]
        refs[role] = F.linear(x.float(), lin.weight.float(), None if lin.bias is None else lin.bias.float())  # (rows, out)
    depth = max((len(linears) for linears, _ in todo.values()), default=0)
    order = sorted(((role, i) for role, (linears, _) in todo.items() for i in range(len(linears))),
                   key=lambda ri: (ri[1] if len(todo[ri[0]][0]) > 1 else depth, ROLES.index(ri[0])))  # fmt: skip
    best_pass = float("inf")
    with torch.inference_mode():
        for kind in dict.fromkeys(k for _, (kinds, _) in todo.values() for k in kinds):
            calls, made = [], {}  # (role, kernel, input) in step order; (role, layer) -> kernel
            for role, i in order:
                lin = todo[role][0][i]
                if kind in todo[role][1][0] and kind not in rejected[role]:
                    kernel = make_kernel(kind, lin.weight.detach(), None if lin.bias is None else lin.bias.detach(), rows)
                    if i == 0 and (wrong := _wrong_numbers(kind, kernel(xs[lin.in_features]).float(), refs[role], dtype)):
                        rejected[role][kind] = wrong
                        continue
                    calls.append((role, kernel, xs[lin.in_features]))  # layer 0 comes first: a rejection skips the rest
                    made[(role, i)] = kernel
            if calls:
                per_role, pass_s = _time_step(calls, best_pass)
                best_pass = min(best_pass, pass_s)
                for role, t in per_role.items():
                    t = round(t, 2)  # as _choose compares them
                    if kept is not None and t < min(us[role].values(), default=float("inf")):  # a tie keeps the first, as _choose
                        kept[role] = (kind, {i: k for (r, i), k in made.items() if r == role})
                    us[role][kind] = t
    return {role: _choose(role, rows, us[role], rejected[role]) for role in todo}


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


def _role_slots(model: nn.Module, role: str) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent module, attribute name, module) for every layer of a role, e.g. ('mlp.c_fc') in each block."""
    if role == "lm_head":
        return [(model, "lm_head", model.lm_head)]
    sub, name = role.split(".")
    return [(getattr(block, sub), name, getattr(getattr(block, sub), name)) for block in model.transformer.h]


def _role_linears(model: GPT, role: str) -> list[nn.Linear]:
    """Every layer of a role: a decode step is timed cycling through all of them, so the weights stream from
    memory as in a real step instead of sitting hot in the cache (which favours compute-heavy kernels)."""
    return [m for _, _, m in _role_slots(model, role)]


def read_choices() -> dict:
    """Every cached choice, {machine_key: {choice key: Choice fields}} ({} when there is none yet)."""
    try:
        data = json.loads(kernel_cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or unreadable: measure again


def write_choices(store: dict) -> None:
    """Replace the cached choices with `store` (atomically)."""
    try:
        write_text(kernel_cache_path(), json.dumps(store, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home: measure again next time rather than fail the run
