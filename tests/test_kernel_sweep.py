"""What the kernel measurement packs and calls, so that its cost does not grow with the model: how much of a model
the decode sweep times (kernel_timing.swept: head rows for a quarter of twice the largest cache, the first blocks
for the rest) and the inference copy built from it; the kinds that share a packed weight in the sweep
(linear.packing); a prompt kind far slower than the best, judged on a slice (kernel_timing._scout)."""

import copy
from types import SimpleNamespace

import pytest
import torch

from conftest import fake_pass, needs_gemv
from gpt2kit.model import kernel_timing as KT
from gpt2kit.model import kernels as K
from test_kernel_choice import model_fixture  # noqa: F401 (fixture)
from test_kernel_timing import _step_todo


def test_the_sweep_times_head_rows_for_a_quarter_of_twice_the_largest_cache_and_blocks_for_the_rest(model, monkeypatch):
    """A block of the tiny model is 3072 weights (c_attn 768, attn.c_proj 256, c_fc and mlp.c_proj 1024 each); the
    head is 96 rows of 16. A pass holds 2 caches' bytes: HEAD_SHARE of them in the head's rows (in 64s), whole blocks
    for the rest."""
    todo = _step_todo(model)
    monkeypatch.setattr(KT.machine, "largest_cache_bytes", lambda: 2048)  # a pass of at least 4096 bytes
    layers, whole = KT.swept(todo, 4)  # float32: 64 head rows (4096 bytes, at least one 64), then one block (12288)
    assert {role: len(ws) for role, ws in layers.items()} == dict.fromkeys(K.ROLES, 1)
    ((w, b),) = layers["lm_head"]
    assert w.shape == (64, 16) and b is None and w.data_ptr() == model.lm_head.weight.data_ptr()
    assert whole == set(K.ROLES) - {"lm_head"}  # a slice of the head: not a layer to keep
    monkeypatch.setattr(KT.machine, "largest_cache_bytes", lambda: 4096)  # 8192 bytes, 2048 of them the head's
    layers, whole = KT.swept(todo, 1)  # int8 weights: the head whole (1536 bytes), and 3 blocks of 3072 for the 6656 left
    assert len(layers["mlp.c_fc"]) == 3 and layers["lm_head"][0][0].shape == (96, 16) and whole == set(K.ROLES)
    for (w, b), lin in zip(layers["mlp.c_fc"], todo["mlp.c_fc"][0]):
        assert w.data_ptr() == lin.weight.data_ptr() and b.data_ptr() == lin.bias.data_ptr() and not w.requires_grad
    monkeypatch.setattr(KT.machine, "largest_cache_bytes", lambda: 2304)  # 4608 bytes: the head whole, one block for the
    layers, _ = KT.swept(todo, 1)  # 3072 left (the whole pass would take two)
    assert len(layers["mlp.c_fc"]) == 1 and layers["lm_head"][0][0].shape == (96, 16)
    monkeypatch.setattr(KT.machine, "largest_cache_bytes", lambda: 4096)
    layers, _ = KT.swept(todo, 4)  # float32: 64 head rows (4096 bytes: 2048 rounded up to 64 rows), one block for the rest
    assert len(layers["mlp.c_fc"]) == 1 and layers["lm_head"][0][0].shape == (64, 16) and KT.HEAD_SHARE == 0.25
    monkeypatch.setattr(KT.machine, "largest_cache_bytes", lambda: 32 << 20)  # a model that fits: swept whole
    layers, whole = KT.swept(todo, 4)
    assert {role: len(ws) for role, ws in layers.items()} == {**dict.fromkeys(K.ROLES, 5), "lm_head": 1} and whole == set(K.ROLES)


def test_the_sweep_counts_the_candidates_weight_bytes(model, monkeypatch):
    """The sweep holds its bytes in the candidates' weights: 4 a weight for float32 kinds, 2 for bf16 ones, 1 for
    int8, never more than the model's own; plan_kernels sweeps at that width."""
    monkeypatch.setattr(KT.machine, "largest_cache_bytes", lambda: 4096)
    widths = {w: K.decode_sweep(model, w)["weight_bytes"] for w in ("auto", "bf16", "int8")}
    bf16 = {w: K.decode_sweep(copy.deepcopy(model).to(torch.bfloat16), w)["weight_bytes"] for w in ("auto", "bf16", "int8")}
    assert widths == {"auto": 4, "bf16": 2, "int8": 1} and bf16 == {"auto": 2, "bf16": 2, "int8": 1}
    assert [K.decode_sweep(model, w)["blocks"] for w in ("auto", "int8")] == [1, 3]  # 8192 bytes: 12288 or 3072 a block
    seen = []
    monkeypatch.setattr(K, "measure_step", lambda step, rows, dtype, kept, weight_bytes: seen.append(weight_bytes) or {})
    monkeypatch.setattr(K, "measure_prompts", lambda todo, dtype: {rc: KT.Choice(rc[0], rc[1], "linear") for rc in todo})
    for weights in ("auto", "bf16", "int8"):
        K.plan_kernels(model, 1, weights, use_cache=False)
    assert seen == [4, 2, 1]


def test_a_copy_measured_on_part_of_the_model_runs_every_layer_exactly(model, monkeypatch, tmp_path):
    """Measured on one block and part of the head, the copy keeps the measured whole layers' kernels, packs the rest,
    and gives the model's logits (the sliced head's kernel would give 64 columns, not 96)."""
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(KT.machine, "largest_cache_bytes", lambda: 2048)
    made = []
    real = KT.make_kernel
    monkeypatch.setattr(KT, "make_kernel", lambda kind, w, b, rows, like=None: made.append(real(kind, w, b, rows, like=like)) or made[-1])
    copy = K.inference_copy(model, 1)
    idx = torch.randint(0, 96, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(copy(idx)[0], model(idx)[0], atol=1e-5, rtol=1e-5)
    small = [m.small for m in copy.modules() if isinstance(m, K.KernelLinear)]
    reused = [any(k is m for m in made) for k in small]  # in model order: 4 per block, the head last
    assert reused[:4] == [True] * 4 and not any(reused[4:])


@needs_gemv(torch.float32)
def test_the_sweep_makes_a_variant_from_a_kind_before_it_on_the_same_layer(model, monkeypatch):
    """gemv-l2 calls gemv's packed weight: each of its kernels is made like gemv's kernel of the same layer (sharing
    it), with mkl packed between them; mkl is packed anew."""
    made = []  # (kind, the weight's storage, like, the kernel made)
    real = KT.make_kernel

    def spy(kind, w, b, rows, like=None):
        made.append((kind, w.data_ptr(), like, real(kind, w, b, rows, like=like)))
        return made[-1][-1]

    monkeypatch.setattr(KT, "make_kernel", spy)
    monkeypatch.setattr(KT, "_pass", fake_pass(lambda k: 1.0))  # a tie
    KT.measure_step(_step_todo(model, ("gemv", "mkl", "gemv-l2")), 1, torch.float32)
    gemv = {ptr: kernel for kind, ptr, like, kernel in made if kind == "gemv" and like is None}
    l2 = [(ptr, like, kernel) for kind, ptr, like, kernel in made if kind == "gemv-l2"]
    assert len(gemv) == len(l2) == 5 * 4 + 1  # every layer of the tiny model, and the head
    assert all(like is gemv[ptr] and kernel.packed is like.packed for ptr, like, kernel in l2)
    assert all(like is None for kind, _, like, _ in made if kind == "mkl")


def test_a_prompt_kind_far_slower_than_the_best_is_scouted_on_a_slice_not_packed_whole(monkeypatch):
    """On a fake clock (a call takes its kind's fixed cost and its cost a row of output): mkl at 100x linear's cost is
    estimated from calls on SCOUT_OUT rows (16, then 64: on the line through the two), recorded, and never packed on the
    whole PREFILL_OUT_TIMED (512) rows; onednn at 5x, under the limit already at 16 rows, is timed; so is a kind whose
    16-row call is mostly a fixed cost, which scaled up would be over the limit."""
    cost = {"linear": 1.0, "mkl": 100.0, "onednn": 5.0}  # microseconds per output row
    fixed = {"linear": 0.0, "mkl": 0.0, "onednn": 0.0}  # ... and per call
    clock, made = {"t": 0.0}, []
    monkeypatch.setattr(KT, "time", SimpleNamespace(perf_counter=lambda: clock["t"]))

    class Fake:
        def __init__(self, kind, w, b):
            self.kind, self.w, self.b = kind, w, b

        def __call__(self, x):
            clock["t"] += (fixed[self.kind] + cost[self.kind] * len(self.w)) / 1e6
            return torch.nn.functional.linear(x, self.w, self.b)

    monkeypatch.setattr(KT, "make_kernel", lambda kind, w, b, rows, like=None: made.append((kind, len(w))) or Fake(kind, w, b))
    lins = [torch.nn.Linear(16, 5000)]
    kinds = (["linear", "mkl", "onednn"], {})
    c = KT.measure("attn.c_proj", lins, K.PREFILL_ROWS, kinds, torch.float32)
    n, (few, more) = KT.PREFILL_OUT_TIMED, KT.SCOUT_OUT
    assert c.kind == "linear" and c.us["mkl"] == pytest.approx(100.0 * n) and c.us["onednn"] == 5.0 * n and c.us["linear"] == float(n)
    assert made == [("linear", n), ("mkl", few), ("mkl", more), ("onednn", few), ("onednn", n)]
    cost.update(linear=64.0, mkl=10.5 * 64, onednn=1000.0)  # mkl 10.5x linear's 32.8 ms: scouted, as onednn
    made.clear()
    c = KT.measure("attn.c_proj", lins, K.PREFILL_ROWS, kinds, torch.float32)
    assert ("mkl", n) not in made and c.us["mkl"] == pytest.approx(10.5 * 64 * n)
    cost.update(linear=0.3, mkl=3.5)  # ~1.8 ms estimated, 12x linear's: under SCOUT_FLOOR_US, packed and timed
    made.clear()
    c = KT.measure("attn.c_proj", lins, K.PREFILL_ROWS, (["linear", "mkl"], {}), torch.float32)
    assert ("mkl", n) in made and c.us["mkl"] == pytest.approx(3.5 * n)
    cost.update(linear=0.4, onednn=0.1)
    fixed.update(onednn=400.0)  # 16 and 64 rows: 12.9 and 3.3 ms scaled up (over 10x linear's 205 us); on the line: 451 us
    made.clear()
    c = KT.measure("attn.c_proj", lins, K.PREFILL_ROWS, (["linear", "onednn"], {}), torch.float32)
    assert made == [("linear", n), ("onednn", few), ("onednn", more), ("onednn", n)]
    assert c.kind == "linear" and c.us["onednn"] == pytest.approx(400.0 + 0.1 * n)
    assert KT.SCOUT_FLOOR_US == 2_000
