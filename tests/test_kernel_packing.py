"""How the inference copy's kernels are packed: for the rows each one serves (oneDNN's layout depends on the row
count), and once: the copy takes the kernels the decode measurement already packed, of the kinds it runs."""

import pytest
import torch

from conftest import fake_pass
from gpt2kit.model import kernel_timing as KT
from gpt2kit.model import kernels as K
from gpt2kit.model import linear as L
from gpt2kit.model.kernels import KernelLinear
from test_kernel_choice import COST, fixed_times_fixture, model_fixture  # noqa: F401 (fixtures)


@pytest.fixture
def made(monkeypatch) -> list:
    """Every kernel the measurement packs (KT.make_kernel), in order: which of the copy's kernels are the measured ones."""
    kernels = []
    real = KT.make_kernel
    monkeypatch.setattr(KT, "make_kernel", lambda kind, w, b, rows, like=None: kernels.append(real(kind, w, b, rows, like=like)) or kernels[-1])
    return kernels


def test_inference_copy_uses_the_kernels_the_measurement_packed(model, fixed_times, made, monkeypatch):
    """The decode winners the step measurement packed are the copy's own kernels (not packed twice); the best
    kind so far is kept per role, so a kind that lost keeps none. Over KEEP_PACKED_BYTES the copy packs anew."""
    step_cost = {L._Linear: 3.0, L._Mkl: 1.0, L._OneDnn: 2.0, L._OneDnnSplit: 2.5}  # mkl wins at decode; timed after linear, before onednn
    monkeypatch.setattr(KT, "_pass", fake_pass(lambda k: step_cost[type(k)]))
    copy = K.inference_copy(model, batch=2)
    small = [m.small for m in copy.modules() if isinstance(m, KernelLinear)]
    assert len(small) == 4 * 5 + 1 and all(type(k) is L._Mkl for k in small)
    assert all(any(k is m for m in made) for k in small)  # the measured objects themselves
    x = torch.randint(0, 96, (2, 3))
    with torch.no_grad():
        torch.testing.assert_close(copy(x)[0], model(x)[0], atol=1e-5, rtol=1e-5)
    fixed_times.unlink()
    monkeypatch.setattr(K, "KEEP_PACKED_BYTES", 0)
    made.clear()
    again = [m.small for m in K.inference_copy(model, batch=2).modules() if isinstance(m, KernelLinear)]
    assert all(type(k) is L._Mkl for k in again) and not any(k is m for k in again for m in made)


def test_the_prompt_kind_takes_the_kernels_the_decode_measurement_packed_where_its_layout_ignores_the_rows(model, fixed_times, made, monkeypatch):
    """linear wins at decode and mkl at prompts (COST): the copy's prompt kernels are the decode measurement's mkl
    ones (an (in, out) copy, whatever the rows), not packed again; the measured kernels of kinds the copy does not run
    (onednn's) are not handed to its layers. oneDNN's layout depends on the rows: see the test after this one."""
    step_cost = {L._Linear: 1.0, L._Mkl: 2.0, L._OneDnn: 3.0, L._OneDnnSplit: 3.0}
    monkeypatch.setattr(KT, "_pass", fake_pass(lambda k: step_cost[type(k)]))
    offered = []
    real = KernelLinear.__init__
    monkeypatch.setattr(KernelLinear, "__init__", lambda self, lin, small, large, rows, packed=None, **k: offered.append(
        {key[0] for key in packed}) or real(self, lin, small, large, rows, packed, **k))  # fmt: skip
    copy = K.inference_copy(model, batch=1)
    layers = [m for m in copy.modules() if isinstance(m, KernelLinear)]
    assert {m.kinds for m in layers} == {("linear", "mkl")} and len(layers) == 21
    assert all(any(m.large is k for k in made) for m in layers)  # the measured objects themselves
    assert any(isinstance(k, L._OneDnn) for k in made) and offered and all(kinds == {"linear", "mkl"} for kinds in offered)
    x = torch.randint(0, 96, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(copy(x)[0], model(x)[0], atol=1e-5, rtol=1e-5)
    assert K.pack_key("mkl", model.lm_head.weight, 1) == K.pack_key("mkl", model.lm_head.weight, K.PREFILL_ROWS)
    assert K.pack_key("onednn", model.lm_head.weight, 1) != K.pack_key("onednn", model.lm_head.weight, K.PREFILL_ROWS)


def test_kernels_are_packed_for_the_rows_they_serve(model, fixed_times, monkeypatch):
    """oneDNN's layout depends on the row count it is packed for: the measurement packs each candidate for the
    rows it times, and the copy packs its decode kernels for the batch and its prefill kernels for PREFILL_ROWS
    (on their first call, not before)."""
    packed_for = []

    class Spy(L._OneDnn):
        def __init__(self, weight, bias, rows=1):
            packed_for.append(rows)
            super().__init__(weight, bias, rows)

    monkeypatch.setitem(L.KERNELS, "onednn", Spy)
    monkeypatch.setitem(COST, Spy, 0.5)  # onednn wins both row counts
    copy = K.inference_copy(model, batch=3, weights="auto")
    assert set(packed_for) == {3, K.SHORT_ROWS, K.PREFILL_ROWS}  # measured at every row count
    assert all(m.kinds == ("onednn", "onednn") for m in copy.modules() if isinstance(m, KernelLinear))
    packed_for.clear()
    monkeypatch.setattr(K, "KEEP_PACKED_BYTES", 0)
    fixed_times.unlink()
    step_cost = {**COST, L._Mkl: 0.1}  # mkl wins at decode now; prefill still goes to onednn
    monkeypatch.setattr(KT, "_pass", fake_pass(lambda k: step_cost.get(type(k), 5.0)))
    copy = K.inference_copy(model, batch=3, weights="auto")
    kl = copy.transformer.h[0].mlp.c_fc
    assert kl.kinds == ("mkl", "onednn") and kl.large is None
    measured = len(packed_for)
    x = torch.randint(0, 96, (1, 7))  # 7 rows: over the decode kernels' (threshold 6 for a batch of 3)
    with torch.no_grad():
        torch.testing.assert_close(copy(x)[0], model(x)[0], atol=1e-5, rtol=1e-5)
        copy(x)
    assert packed_for[measured:] == [K.PREFILL_ROWS] * 21  # the copy's prefill kernels, once: 4 roles x 5 blocks + the head
    assert type(kl.large) is Spy
    fixed_times.unlink()
    step_cost[Spy] = 0.01  # onednn wins at decode too, and nothing measured is kept: the copy packs for the batch
    packed_for.clear()
    K.inference_copy(model, batch=3, weights="auto")
    assert packed_for[-21:] == [3] * 21  # one kernel for both row counts (the same kind), packed for the decode rows


def test_packed_kernels_are_kept_up_to_exactly_keep_packed_bytes_and_for_the_first_of_equals(model, fixed_times, made, monkeypatch):
    """A model of exactly KEEP_PACKED_BYTES keeps the measured kernels, one byte more does not; when two kinds
    time the same, the first is chosen (as _choose does) and its kernels are the ones kept."""
    monkeypatch.setattr(KT, "_pass", fake_pass(lambda k: 1.0))  # all equal
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    for limit, reused in ((size, True), (size - 1, False)):
        fixed_times.unlink(missing_ok=True)
        monkeypatch.setattr(K, "KEEP_PACKED_BYTES", limit)
        made.clear()
        copy = K.inference_copy(model, batch=2)
        small = [m.small for m in copy.modules() if isinstance(m, KernelLinear)]
        assert {m.kinds[0] for m in copy.modules() if isinstance(m, KernelLinear)} == {K.EXACT[1]}  # the first timed (EXACT[0], float32, is for bf16 models)
        assert all(any(k is m for m in made) for k in small) == reused, limit  # made by the measurement (KT.make_kernel), not the copy


def test_an_engine_of_many_rows_decodes_one_row_with_the_one_row_kind(model, fixed_times, monkeypatch):
    """Measured for 2 rows mkl wins, for 1 row linear (its timed rows tell them apart): an engine's copy (`one_row`)
    routes one row to linear and gives the model's logits; the eval copy (no `one_row`) keeps mkl. Over
    KEEP_PACKED_BYTES the one-row kind is taken only where the prompts' kind (mkl here: COST) is it."""
    from gpt2kit.generate.decode import DecodeRunner

    def step(calls):  # seconds a pass: linear fastest on one row, mkl on two
        return fake_pass(lambda k: {L._Linear: 1.0, L._Mkl: 2.0}.get(type(k), 9.0) if rows[0] == 1 else COST.get(type(k), 5.0))(calls)

    rows = [0]
    monkeypatch.setattr(KT, "_pass", lambda calls: rows.__setitem__(0, calls[0][2].shape[0]) or step(calls))
    copy = DecodeRunner(model, batch=2).model
    heads = [m for m in copy.modules() if isinstance(m, KernelLinear)]
    assert {(m.one_kind, m.kinds) for m in heads} == {("linear", ("mkl", "mkl"))} and all(isinstance(m.one, L._Linear) for m in heads)
    x = torch.randint(0, 96, (1, 3))
    with torch.no_grad():
        torch.testing.assert_close(copy(x)[0], model(x)[0], atol=1e-5, rtol=1e-5)
    assert {m.one_kind for m in K.inference_copy(model, batch=2).modules() if isinstance(m, KernelLinear)} == {"mkl"}
    monkeypatch.setattr(K, "KEEP_PACKED_BYTES", 0)
    assert {m.one_kind for m in K.inference_copy(model, 2, one_row=True).modules() if isinstance(m, KernelLinear)} == {"mkl"}


def _one_row_wins(monkeypatch, one: dict, many: dict):
    """Decode passes timed from `one` ({kernel class: us}) for one row and from `many` for more."""
    rows = [0]

    def step(calls):
        rows[0] = calls[0][2].shape[0]
        return fake_pass(lambda k: (one if rows[0] == 1 else many).get(type(k), 9.0))(calls)

    monkeypatch.setattr(KT, "_pass", step)


def test_the_one_row_kind_needs_room_for_a_third_copy_unless_it_is_the_prompts_kind(model, fixed_times, monkeypatch):
    """One row's kind (linear) differs from the batch's (mkl): taken up to exactly KEEP_PACKED_BYTES of weights, and
    over it only when the prompts run that kind too (then it is their kernel, not a third copy)."""
    _one_row_wins(monkeypatch, {L._Linear: 1.0, L._Mkl: 2.0}, dict(COST))  # a copy: COST changes below
    size = sum(p.numel() * p.element_size() for p in model.parameters())

    def one_kinds(limit):
        fixed_times.unlink(missing_ok=True)
        monkeypatch.setattr(K, "KEEP_PACKED_BYTES", limit)
        return {m.one_kind for m in K.inference_copy(model, 2, one_row=True).modules() if isinstance(m, KernelLinear)}

    assert one_kinds(size) == {"linear"} and one_kinds(size - 1) == {"mkl"}
    monkeypatch.setitem(COST, L._Linear, 0.5)  # the prompts' kind is linear now
    monkeypatch.setattr(KT, "_time", lambda ks, x, gelu=False, best=None, first=None: COST.get(type(ks[0]), 5.0))
    fixed_times.unlink()
    copy = K.inference_copy(model, 2, one_row=True)
    heads = [m for m in copy.modules() if isinstance(m, KernelLinear)]
    assert {(m.one_kind, m.kinds) for m in heads} == {("linear", ("mkl", "linear"))} and all(m.one is m.large for m in heads)
    monkeypatch.setattr(K, "KEEP_PACKED_BYTES", 0)
    fixed_times.unlink()
    assert {m.one_kind for m in K.inference_copy(model, 2, one_row=True).modules() if isinstance(m, KernelLinear)} == {"linear"}


def test_the_one_row_kind_is_measured_for_the_weights_asked_for_and_its_kernels_reused(model, fixed_times, made, monkeypatch):
    """An int8 engine's one-row kind is an int8 kind; the kernels its measurement packed are the copy's (not packed
    again), and past the swept layers the copy packs that kind for one row."""
    _one_row_wins(monkeypatch, {L._Int8Dynamic: 1.0, L._Int8: 2.0, L._Linear: 0.1}, {L._Int8: 1.0, L._Int8Dynamic: 2.0, L._Linear: 0.1})
    heads = [m for m in K.inference_copy(model, 2, "int8", one_row=True).modules() if isinstance(m, KernelLinear)]
    assert {(m.one_kind, m.kinds[0]) for m in heads} == {("int8-dynamic", "int8")}
    assert all(any(m.one is k for k in made) for m in heads)  # the measurement's own kernels

    class Spy(L._OneDnn):
        def __init__(self, weight, bias, rows=1):
            self.packed_for = rows
            super().__init__(weight, bias, rows)

    monkeypatch.setitem(L.KERNELS, "onednn", Spy)
    _one_row_wins(monkeypatch, {Spy: 1.0, L._Mkl: 2.0}, COST)
    monkeypatch.setattr(K.kernel_timing.machine, "largest_cache_bytes", lambda: 1)  # the sweep: one block, 64 head rows
    fixed_times.unlink()
    heads = [m for m in K.inference_copy(model, 2, one_row=True).modules() if isinstance(m, KernelLinear)]
    assert {m.one_kind for m in heads} == {"onednn"} and {m.one.packed_for for m in heads} == {1}
    assert sum(any(m.one is k for k in made) for m in heads) == 4  # block 0's four products measured; the others packed anew


def test_a_decode_runner_never_packs_its_heads_prompt_kernel(model, fixed_times, monkeypatch):
    """The runner's prefill runs the head on the last position only (one row): a prompt packs the layers' prompt
    kernels, and the head's, never called, is never packed (none reused from the measurement here)."""
    from gpt2kit.generate.decode import DecodeRunner
    from gpt2kit.model.kv_cache import KVCache

    monkeypatch.setattr(KT, "_pass", fake_pass(lambda k: {L._Linear: 1.0}.get(type(k), 3.0)))  # linear at decode; mkl at prompts (COST)
    monkeypatch.setattr(K, "KEEP_PACKED_BYTES", 0)
    runner = DecodeRunner(model)
    layers = [m for m in runner.model.modules() if isinstance(m, KernelLinear)]
    assert {m.kinds for m in layers} == {("linear", "mkl")} and all(m.large is None for m in layers)
    cache = KVCache(model.config, 1, 8)
    x = torch.randint(0, 96, (1, 7))  # over the decode kernels' 4 rows
    logits = runner.prefill(x, cache, None)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x)[0][:, -1], atol=1e-5, rtol=1e-5)
    head = runner.model.lm_head
    assert head.large is None and all(type(m.large) is L._Mkl for m in layers if m is not head)
