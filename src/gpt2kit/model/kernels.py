"""Choose each linear layer's kernel by timing the candidates on this machine, and build the inference copy.

A kernel that won on one CPU loses on the next (oneDNN's packed layout beat `F.linear` 2x for fp32 batch 8
on an AMD AVX-512 box and lost to it at batch 1 on an Intel AMX box), so nothing here is chosen from CPU
flags. The first time a model of a given shape, dtype and batch runs on a machine, every candidate kernel
(linear.py) is timed on the model's real weights and shapes, for the row counts it will run: `batch` (a decode
step), SHORT_ROWS (a short prompt) and PREFILL_ROWS (a long prompt, scoring). Only candidates whose output matches
the float32 `F.linear` reference count. A decode step takes the fastest; prompts of every length take one kind
(`prompt_kind`: the nearest the best at both prompt row counts), so the copy holds at most two packed copies of
each weight; an engine of many rows adds one row's fastest kind (`one_row_kinds`: a third copy, for models of up to
KEEP_PACKED_BYTES). Choices are cached per machine (CPU model and flags, torch version, threads) in
`kernel_cache_path()`, so later runs pay nothing, unless other processes kept the CPU busy while they were measured
(`write_measured`); GPT2KIT_KERNEL=<kind> forces one kind.

Candidates, by what the user asked for (`weights`):
  - auto:  the exact kernels (float32, linear, mkl, onednn, onednn-split, gemv, gemv-l2, gemv-hw) in the model's dtype; with
           `--dtype bf16` these are the CPU's native bf16 kernels where it has them, and float32 products on
           float32 copies of the bf16 weights for many rows (where torch would emulate bf16 they are ~10x faster);
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
import logging
import os
import platform
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from gpt2kit import machine
from gpt2kit.atomic import write_text
from gpt2kit.errors import ConfigError
from gpt2kit.model import int8, kernel_timing
from gpt2kit.model.direct import call_directly
from gpt2kit.model.gpt import GPT
from gpt2kit.model.kernel_timing import GELU_ROLE, PREFILL_ROWS, ROLES, SHORT_ROWS, WRONG, Choice, measure_prompts, measure_step
from gpt2kit.model.linear import KERNELS, make_kernel
from gpt2kit.model.lora import has_lora

WEIGHT_MODES = ("auto", "model", "bf16", "int8")
# float32 first: where torch emulates bf16 it is ~10-100x faster, so the slow kinds are judged against it (kernel_timing)
EXACT = ("float32", "linear", "mkl", "onednn", "onednn-split", "gemv", "gemv-l2", "gemv-hw")
APPROX = {"bf16": ("bf16", "bf16-onednn", "bf16-gemv", "bf16-gemv-l2", "bf16-gemv-hw"),
          "int8": ("int8", "int8-dynamic", "int8-gemv", "int8-gemv-l2", "int8-gemv-hw")}
# offered only where the kernel it stands in for cannot run (int8 with float32 activations is ~10x slower)
FALLBACK = {"int8": "int8-f32"}
# the copy reuses the decode measurement's packed kernels for models of up to this many bytes (larger: packed again)
KEEP_PACKED_BYTES = 2 << 30
log = logging.getLogger("gpt2kit.kernels")  # INFO: a measurement is about to run (the CLI shows it; a library user opts in)


class KernelLinear(nn.Module):
    """An nn.Linear's x W^T + b through chosen kernels: `small` for up to `rows` rows (decode), `large` above
    (prefill, scoring), packed for hints[0] and hints[1] rows, and `one` (default: `small`) for one row (an engine of
    many rows decoding one). Each kind is packed once, for the first of those it serves; `large`, unless another serves
    it or the measurement packed it, on its first call (a decode runner's head runs one row: its prompt kind packed for
    nothing cost 124M's runner 0.55 s with int8 weights on a 2-core Zen 3 VM). timed: the decode measurement's
    microseconds per call of each kind whose output matched (what another choice for the decode rows can be made from)."""

    def __init__(self, linear: nn.Linear, small: str, large: str, rows: int, packed: dict | None = None,
                 hints: tuple[int, int] = (1, 1), timed: dict[str, float] | None = None, one: str | None = None) -> None:  # fmt: skip
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.kinds, self.rows, self.timed, self.one_kind = (small, large), rows, timed or {}, one or small
        self.small_numel = rows * self.in_features  # inputs of up to `rows` rows go to `small`
        bias = None if linear.bias is None else linear.bias.detach()

        def kernel(kind: str, hint: int, now: bool = True):  # packed already (by the measurement: {pack_key: kernel}), else now
            made = (packed or {}).get(pack_key(kind, linear.weight, hint))
            return made if made is not None or not now else make_kernel(kind, linear.weight.detach(), bias, hint)

        self.small = kernel(small, hints[0])
        self.large = self.small if large == small else kernel(large, hints[1], now=large == self.one_kind)
        self.one = {small: self.small, large: self.large}.get(self.one_kind) or kernel(self.one_kind, 1)
        self._pack_large = None if self.large is not None else (large, linear.weight.detach(), bias, hints[1])  # its first call's

    def _kernel(self, x: torch.Tensor):
        n = x.numel()
        return self.one if n <= self.in_features else self.small if n <= self.small_numel else self.prompt_kernel()

    def prompt_kernel(self):  # `large`, packed now where it was not yet (from the weight the copy shares)
        if self.large is None:
            self.large, self._pack_large = make_kernel(*self._pack_large), None
        return self.large

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (..., in) -> (..., out); every kernel takes the leading dimensions as they are (no reshapes here)
        return self._kernel(x)(x)

    def gelu(self, x: torch.Tensor) -> torch.Tensor:
        """GELU (tanh) of the product, fused where the kernel can (MLP.forward calls it for c_fc)."""
        return self._kernel(x).gelu(x)

    # An inference-only stand-in runs no module hooks, so a call goes straight to forward: in a memory-bound decode step
    # nn.Module's call machinery (three frames, eight hook-dict lookups) cost ~5 us a call, ~0.25 ms of a 124M token.
    __call__ = forward

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, one={self.one_kind}, small={self.kinds[0]} (<= {self.rows} rows), large={self.kinds[1]}"


def pack_key(kind: str, weight: torch.Tensor, rows: int) -> tuple:
    """How `packed` (plan_kernels) finds a `kind` kernel of `weight` packed for `rows` rows: by the rows only for
    a kind whose layout depends on them (oneDNN's), so that, say, int8-dynamic's measured at decode serves prompts."""
    return kind, id(weight), rows if KERNELS[kind].row_layout else None


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


@int8.once()  # the int8 kinds of a weight share its quantization
def plan_kernels(
    model: GPT, batch: int = 1, weights: str = "auto", use_cache: bool = True, remeasure: bool = False, packed: dict | None = None
) -> list[Choice]:
    """One Choice per (role, row count): ROLES x `measured_rows(batch)`. Measures what the cache lacks (all of
    it with `remeasure`, e.g. after a run on a busy machine), and caches what it measured. `packed`, a dict,
    receives every kernel the decode measurement packed for whole layers, {pack_key: kernel}, for the inference
    copy to use those of the kinds it runs instead of packing them again (only for models of up to KEEP_PACKED_BYTES).
    Off the CPU nothing is measured: every product is `linear` (F.linear, the device's own library)."""
    if weights not in WEIGHT_MODES or weights == "model":
        raise ConfigError(f"kernel weights must be one of {[w for w in WEIGHT_MODES if w != 'model']}, got {weights!r}.")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    rows_list = measured_rows(batch)
    if device.type != "cpu":  # the candidates are CPU kernels: off the CPU every product is F.linear, and nothing is timed
        return [Choice(role, rows, "linear") for role in ROLES for rows in rows_list]
    forced = os.environ.get("GPT2KIT_KERNEL")
    store = read_choices() if use_cache and not forced else {}
    mkey = machine_key()
    table = store.setdefault(mkey, {})
    todo: dict[tuple[str, int], tuple[str, list[nn.Linear], tuple[list[str], dict[str, str]]]] = {}
    choices: dict[tuple[str, int], Choice] = {}
    for role in ROLES:
        linears = _role_linears(model, role)
        out_f, in_f = linears[0].weight.shape
        for rows in rows_list:
            # a decode step's products (timed streaming, measure_step) apart from a prompt's of as many rows (one layer)
            step = " | decode" if rows == rows_list[0] < PREFILL_ROWS else ""
            key = f"{dtype} | {weights} | {role} {out_f}x{in_f} | {rows} rows{step}"
            cands = _candidates(weights, rows, device, dtype, in_f, forced, gelu=role == GELU_ROLE)
            if key in table and not remeasure and _covers(table[key], cands):
                choices[(role, rows)] = Choice(**{**table[key], "cached": True})
            else:
                todo[(role, rows)] = (key, linears, cands)
    meter = machine.busy_meter() if todo else None  # how busy the machine was while measuring (write_measured)
    if todo:
        log.info("timing this CPU's kernels for this model (%s, %s weights, batch %d), once: later runs read the choice "
                 "from %s", str(dtype).removeprefix("torch."), weights, batch, kernel_cache_path() if use_cache and not forced else "nowhere (not cached)")  # fmt: skip
    step_rows = rows_list[0]
    step = {role: todo[(role, step_rows)][1:] for role in ROLES if (role, step_rows) in todo} if step_rows < PREFILL_ROWS else {}
    keep = packed is not None and sum(p.numel() * p.element_size() for p in model.parameters()) <= KEEP_PACKED_BYTES
    kept: dict[str, dict[str, dict[int, object]]] = {}
    for role, c in measure_step(step, step_rows, dtype, kept if keep else None, _weight_bytes(weights, dtype)).items():
        choices[(role, step_rows)] = c
    for role, kinds in kept.items():
        for kind, kernels in kinds.items():
            for i, kernel in kernels.items():
                packed[pack_key(kind, step[role][0][i].weight, step_rows)] = kernel
    choices.update(measure_prompts({rc: (linears, cands) for rc, (_, linears, cands) in todo.items() if rc not in choices}, dtype))
    if todo and use_cache and not forced:
        for role_rows, (key, _, _) in todo.items():
            table[key] = {k: v for k, v in asdict(choices[role_rows]).items() if k != "cached"}
        write_measured(store, meter, "kernels")
    return [choices[(role, rows)] for role in ROLES for rows in rows_list]


def _weight_bytes(weights: str, dtype: torch.dtype) -> int:
    """Bytes a weight of the decode candidates for `weights` on a `dtype` model."""
    return min(dtype.itemsize, {"bf16": 2, "int8": 1}.get(weights, dtype.itemsize))


def decode_sweep(model: GPT, weights: str = "auto") -> dict[str, int]:
    """How much of `model` the decode measurement times (kernel_timing.swept): its first `blocks` of `n_layer` blocks
    and `head_rows` of the head's `vocab` rows, SWEEP_CACHES times the largest cache (`bytes`) at `weight_bytes`."""
    dtype = next(model.parameters()).dtype
    todo = {role: (_role_linears(model, role), ([], {})) for role in ROLES}
    layers, _ = kernel_timing.swept(todo, _weight_bytes(weights, dtype))
    return {"blocks": len(layers[ROLES[0]]), "n_layer": model.config.n_layer, "head_rows": len(layers["lm_head"][0][0]),
            "vocab": model.lm_head.weight.shape[0], "bytes": kernel_timing.sweep_bytes(),
            "weight_bytes": _weight_bytes(weights, dtype)}  # fmt: skip


@int8.once()  # its int8 kinds share each weight's quantization with the measurement's and each other
def inference_copy(model: GPT, batch: int = 1, weights: str = "auto", one_row: bool = False, long_rows: int = 0) -> GPT:
    """A copy of `model` for inference that shares its embeddings, LayerNorms and (for `linear`) weights, with
    every nn.Linear replaced by a KernelLinear of the measured kinds, its modules called directly (direct.py).
    `one_row` (an engine of `batch` rows that may decode fewer): one row's products go to the kind measured for one
    row where it differs from the batch's (`one_row_kinds`). `long_rows` (scoring's windows): products over twice
    `batch` rows run the kind measured for `long_rows` rows, not the prompts'. 'model', and 'auto' for a model with LoRA
    layers, return the model itself. Packed kernels hold a snapshot of the weights: build it once they are final."""
    if weights == "model" or (weights == "auto" and has_lora(model)):  # LoRA layers run as they are: exact, unpacked
        return model
    if has_lora(model):
        raise ConfigError(f"{weights} weights need the LoRA adapters merged into the model first (adapter.merged_copy, "
                          "or `gpt2kit merge`).")  # fmt: skip
    clone = _copy_sharing_matrices(model)
    packed: dict = {}  # kernels the measurement packed already (from the clone's weights and biases)
    choices = {(c.role, c.rows): c for c in plan_kernels(clone, batch, weights, packed=packed)}
    small = max(1, batch)
    threshold = max(4, 2 * small)  # rows up to this use the decode-measured kernel
    prompts = prompt_kinds(choices, batch)
    if long_rows:
        prompts = {c.role: (c.kind, {long_rows: 1.0}) for c in plan_kernels(clone, long_rows, weights) if c.rows == long_rows}
    ones = one_row_kinds(clone, choices, prompts, small, weights, packed) if one_row and small > 1 else {}
    used = {c.kind for c in choices.values()} | {kind for kind, _ in prompts.values()} | set(ones.values())
    for key in [key for key in packed if key[0] not in used]:
        del packed[key]  # the measurement's kernels of kinds the copy does not run, freed before it packs its own
    for role in ROLES:
        decode = choices[(role, small)]
        timed = {kind: t for kind, t in decode.us.items() if kind not in decode.rejected}
        for parent, name, lin in role_slots(clone, role):
            kinds = decode.kind, prompts[role][0]
            hints = (small, long_rows or PREFILL_ROWS)
            setattr(parent, name, KernelLinear(lin, *kinds, threshold, packed, hints=hints, timed=timed, one=ones.get(role)))
    return call_directly(clone)


def one_row_kinds(model: GPT, choices: dict, prompts: dict, batch: int, weights: str, packed: dict) -> dict[str, str]:
    """{role: the decode kind measured for one row}, for an engine of `batch` rows decoding one (a server with one
    client): a 32-row engine's kinds were oneDNN's on a 2-core Zen 3 VM, gemv.c's for one row. With one row's kinds,
    one GPT-2 124M prompt decoded at 48.1 tok/s in an engine of 32 rows against 49.1 in one of a row (float32;
    benchmarks/generate.py --engine-rows 32, RESULTS.md). Where that kind is neither the batch's nor the prompts', it is a third packed copy of
    the weights: taken for models of up to KEEP_PACKED_BYTES of weights only."""
    room = sum(p.numel() * p.element_size() for p in model.parameters()) <= KEEP_PACKED_BYTES
    ones = {}
    for c in plan_kernels(model, 1, weights, packed=packed):
        if c.rows == 1 and c.kind != choices[(c.role, batch)].kind and (room or c.kind == prompts[c.role][0]):
            ones[c.role] = c.kind
    return ones


def measured_rows(batch: int) -> tuple[int, ...]:
    """The row counts measured for a model decoding `batch` rows: the batch, then SHORT_ROWS and PREFILL_ROWS where it
    is smaller (a larger batch, scoring's windows, stands for all its products: eval/loglikelihood.py)."""
    b = max(1, batch)
    return (b, *(rows for rows in (SHORT_ROWS, PREFILL_ROWS) if b < rows))


def prompt_counts(batch: int) -> tuple[int, ...]:
    """The measured row counts that a prompt's products have: SHORT_ROWS or more (a batch of 32 decodes 32-row products,
    as a 32-token prompt does)."""
    return tuple(rows for rows in measured_rows(batch) if rows >= SHORT_ROWS)


def prompt_kinds(choices: dict[tuple[str, int], Choice], batch: int) -> dict[str, tuple[str, dict[int, float]]]:
    """{role: `prompt_kind` of its Choices at the prompt row counts} from plan_kernels' Choices by (role, rows)."""
    return {role: prompt_kind([choices[(role, rows)] for rows in prompt_counts(batch)]) for role in ROLES}


def prompt_kind(choices: list[Choice]) -> tuple[str, dict[int, float]]:
    """One role's kind for every prompt, from its Choices at the prompt row counts, and that kind's time over the best
    at each. One kind rather than one per row count: a third packed copy of the weights would cost as much memory as
    the model (gpt2-xl: 6 GB in float32). The kind taken is the one whose worst ratio to the best is the smallest; on a
    Zen 3 VM oneDNN's packed weights, 1.1-1.5x ahead at 32 rows and 0-10 % behind MKL at 256."""
    last = choices[-1]
    ratios: dict[str, dict[int, float]] = {}
    for kind in last.us:
        times = [(c.rows, c.us.get(kind, float("nan")), min((t for t in c.us.values() if t == t), default=0.0)) for c in choices]
        if all(t == t and best > 0 and kind not in c.rejected for (_, t, best), c in zip(times, choices)):  # timed at every count
            ratios[kind] = {rows: round(t / best, 3) for rows, t, best in times}
    if not ratios:
        return last.kind, {last.rows: 1.0}
    kind = min(ratios, key=lambda k: (max(ratios[k].values()), k != last.kind))  # a tie keeps the long prompts' choice
    return kind, ratios[kind]


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
        for _, _, mod in role_slots(model, role):
            if isinstance(mod, KernelLinear):
                out[role] = mod.kinds
    return out


# ---- what to measure (kernel_timing.py measures it) ----------------------------------------------------


def _candidates(
    weights: str, rows: int, device: torch.device, dtype: torch.dtype, in_f: int, forced: str | None, gelu: bool = False
) -> tuple[list[str], dict[str, str]]:
    """(kinds to time, {kind: why not}) for one shape; `gelu`: c_fc's, whose GELU a kernel may fuse."""
    if forced:
        if forced not in KERNELS:
            raise ConfigError(f"GPT2KIT_KERNEL={forced!r} is not a kernel; use one of {sorted(KERNELS)}.")
        if not (KERNELS[forced].available(device, dtype) and KERNELS[forced].supports(in_f)):
            raise ConfigError(f"GPT2KIT_KERNEL={forced!r} does not run on this machine/shape; unset it to choose by measurement.")
        return [forced], {}
    kinds = list(EXACT) if weights == "auto" else list(APPROX[weights]) + (list(EXACT) if rows > 8 else [])
    ok, rejected = [], {}
    for k in kinds:
        if KERNELS[k].gelu_only and not gelu:
            rejected[k] = KERNELS[k].gelu_only
        elif not KERNELS[k].available(device, dtype):
            rejected[k] = KERNELS[k].why_unavailable(device, dtype)
        elif KERNELS[k].max_rows is not None and rows > KERNELS[k].max_rows:
            rejected[k] = f"for products of up to {KERNELS[k].max_rows} rows"
        elif rows < KERNELS[k].min_rows:
            rejected[k] = f"for products of {KERNELS[k].min_rows} rows or more"
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


def role_slots(model: nn.Module, role: str) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent module, attribute name, module) for every layer of a role, e.g. ('mlp.c_fc') in each block."""
    if role == "lm_head":
        return [(model, "lm_head", model.lm_head)]
    sub, name = role.split(".")
    return [(getattr(block, sub), name, getattr(getattr(block, sub), name)) for block in model.transformer.h]


def _role_linears(model: GPT, role: str) -> list[nn.Linear]:
    """Every layer of a role: a decode step is timed cycling through all of them, so the weights stream from
    memory as in a real step instead of sitting hot in the cache (which favours compute-heavy kernels)."""
    return [m for _, _, m in role_slots(model, role)]


def read_choices() -> dict:
    """Every cached choice, {machine_key: {choice key: Choice fields}} ({} when there is none yet)."""
    try:
        data = json.loads(kernel_cache_path().read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or unreadable: measure again


# other processes' share of the CPU time over which a measurement is not cached (one busy core of two: 0.5; an idle VM
# ~0.01): beside a test run, gemv.c's products were timed many times slower than F.linear's on a 2-core Zen 3 VM.
BUSY_SHARE = 0.25


def write_measured(store: dict, meter, what: str) -> None:
    """Cache `store` (write_choices), choices measured while `meter` (machine.busy_meter()'s) ran, unless other
    processes took over BUSY_SHARE of the CPU time then: such a choice holds for this run and is measured again."""
    if (busy := meter()) is not None and busy > BUSY_SHARE:
        log.info("this machine was busy while its %s were timed (other processes took %d %% of its CPU time): the choice "
                 "holds for this run only, and is timed again next time", what, round(100 * busy))  # fmt: skip
        return
    write_choices(store)


def write_choices(store: dict) -> None:
    """Replace the cached choices with `store` (atomically)."""
    try:
        write_text(kernel_cache_path(), json.dumps(store, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only home: measure again next time rather than fail the run
