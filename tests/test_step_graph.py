"""A decode step recorded from the model's own forward and replayed in C (model/step_graph.py, step.c).

The reference is always the model's own uncached float32 forward (or torch's op for step.c's kernels), on a model
whose biases and LayerNorms are perturbed, never an earlier output of the replay."""

import copy
import ctypes
import gc
import json
import re
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

from conftest import bf16_in_build, gemv_buildable, tiny_gpt
from gpt2kit.errors import InputError
from gpt2kit.generate import Engine, SamplingParams
from gpt2kit.generate.decode import DecodeRunner
from gpt2kit.model import gemv, step_graph
from gpt2kit.model.kv_cache import KVCache
from gpt2kit.model.step_graph import StepGraph

pytestmark = gemv_buildable()  # skipped only where gemv.c cannot be built: a failed build fails these tests
KINDS = {"auto": "gemv", "int8": "int8-gemv", "bf16": "bf16-gemv"}  # the gemv.c product each weights mode forces


def _so():
    return gemv._build()[0]


@pytest.fixture(scope="module")
def tiny():
    return tiny_gpt(n_layer=3, n_embd=64, n_head=4, n_positions=64)


def _runner(tiny, weights, batch, monkeypatch) -> DecodeRunner:
    """A runner whose every product is gemv.c's and whose decode attention is attend.c's: a step it can record."""
    bf16 = weights == "bf16" or next(tiny.parameters()).dtype == torch.bfloat16
    if bf16 and not bf16_in_build(""):  # the CPU's flags decide, never the build's own result
        pytest.skip("gemv.c's bf16 kernels need AVX-512 BF16")
    monkeypatch.setenv("GPT2KIT_KERNEL", KINDS[weights])
    monkeypatch.setenv("GPT2KIT_ATTENTION", "gemv")
    return DecodeRunner(tiny, weights, batch=batch)


def _graphs(runner):
    return [g for g in runner.graphs.values() if isinstance(g, StepGraph)]


def _decoded(runner, model, seq, start, cache=None):
    """Prefill seq[:, :start], then decode the rest a token a step -> (each step's logits, the uncached forward's
    for the same positions), both (steps, B, V)."""
    cache = cache or KVCache(model.config, seq.shape[0], 64, dtype=runner.cache_dtype)
    with torch.inference_mode():
        runner.prefill(seq[:, :start], cache, None)
        steps = [runner.decode(seq[:, t : t + 1], cache, None) for t in range(start, seq.shape[1])]
        full = model(seq)[0]  # (B, T, V)
    return torch.stack(steps), full[:, start:].transpose(0, 1)


# ---- step.c's kernels against torch ----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_layer_norm_add_and_embedding_kernels_equal_torch(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(3, 96, generator=g) * 4 + 1.5).to(dtype)  # an offset mean: a LayerNorm that skips it is wrong
    w, b = (1 + torch.randn(96, generator=g) * 0.3).to(dtype), (torch.randn(96, generator=g) * 0.2).to(dtype)
    y = torch.empty_like(x)
    _so().gk_layer_norm(x.data_ptr(), w.data_ptr(), b.data_ptr(), y.data_ptr(), 3, 96, 1e-5, int(dtype == torch.bfloat16))
    want = F.layer_norm(x.float(), (96,), w.float(), b.float(), 1e-5)
    tol = 1e-5 if dtype == torch.float32 else 8e-3  # bf16: one rounding of the output, as torch's
    assert (y.float() - want).abs().max().item() <= tol * want.abs().max().item()
    assert (F.layer_norm(x, (96,), w, b, 1e-5).float() - y.float()).abs().max().item() <= tol * want.abs().max().item()

    a = torch.randn(3, 96, generator=g).to(dtype)
    _so().gk_add(x.data_ptr(), a.data_ptr(), y.data_ptr(), x.numel(), int(dtype == torch.bfloat16))
    assert torch.equal(y, x + a)  # one float32 sum, rounded once: torch's own

    table, idx = torch.randn(10, 96, generator=g).to(dtype), torch.tensor([7, 0, 9])
    assert _so().gk_embed(table.data_ptr(), 10, idx.data_ptr(), y.data_ptr(), 3, 96 * table.element_size()) == 0
    assert torch.equal(y, F.embedding(idx, table))
    back = torch.empty(3, 96, dtype=torch.float32 if dtype == torch.bfloat16 else torch.bfloat16)
    _so().gk_convert(x.data_ptr(), back.data_ptr(), x.numel(), int(back.dtype == torch.bfloat16))
    assert torch.equal(back, x.to(back.dtype))  # rounded to nearest even, as torch does
    bad = torch.tensor([3, 10, 1])
    assert _so().gk_embed(table.data_ptr(), 10, bad.data_ptr(), y.data_ptr(), 3, 96 * table.element_size()) == -1


def test_the_kinds_are_tape_h_s():
    """step_graph.py names step.c's kinds by number: the same numbers as tape.h's enum."""
    text = gemv.SOURCE.with_name("tape.h").read_text()
    names = re.findall(r"^  GK_([A-Z0-9_]+)", text[text.index("enum gk_kind") :], re.M)
    assert {name: i + 1 for i, name in enumerate(names)} == {n: getattr(step_graph, n) for n in names}


# ---- replayed steps against the uncached forward ---------------------------------------------------


@pytest.mark.parametrize("weights, dtype", [("auto", torch.float32), ("int8", torch.float32), ("bf16", torch.float32),
                                            ("auto", torch.bfloat16)])  # fmt: skip
@pytest.mark.parametrize("batch", [1, 3])
def test_replayed_steps_equal_the_uncached_forward(tiny, weights, dtype, batch, monkeypatch):
    """Every step after the first is a replay (new ids, new positions, one more key each): the logits are the
    uncached float32 forward's, to float32 rounding (auto) or to the weights' and activations' rounding."""
    model = copy.deepcopy(tiny).to(dtype)  # a bf16 model decodes in bf16: LayerNorms and adds too
    runner = _runner(model, weights, batch, monkeypatch)
    steps, want = _decoded(runner, tiny, torch.randint(0, 50257, (batch, 24), generator=torch.Generator().manual_seed(1)), 6)
    assert len(_graphs(runner)) == 1, runner.graphs
    tol = {torch.float32: {"auto": 1e-4, "int8": 1e-2, "bf16": 5e-2}[weights], torch.bfloat16: 0.2}[dtype]
    errs = (steps.float() - want).abs().amax(dim=(1, 2)).tolist()  # each step's
    assert max(errs) <= tol, errs


@pytest.mark.parametrize("weights", ["auto", "int8"])
def test_replayed_steps_on_every_build_equal_the_uncached_forward(tiny, weights, build, monkeypatch):
    """The same on the AVX2 build where the CPU has AVX-512 (the `build` fixture): its kernels record too."""
    runner = _runner(tiny, weights, 2, monkeypatch)
    steps, want = _decoded(runner, tiny, torch.randint(0, 50257, (2, 12), generator=torch.Generator().manual_seed(6)), 4)
    assert len(_graphs(runner)) == 1, runner.graphs
    err = (steps - want).abs().max().item()
    assert err <= (1e-4 if weights == "auto" else 1e-2), err


@pytest.mark.parametrize("replayed, narrower", [(True, 0), (True, 5), (False, 5)])
@pytest.mark.parametrize("weights", ["auto", "int8"])
def test_a_step_decoded_into_a_buffer_writes_its_logits_there(tiny, replayed, narrower, weights, monkeypatch):
    """decode(..., out=) (an engine's own logits rows, as wide as the head or narrower): the recording step, the
    replays (whose head product writes into `out` itself where it is as wide) and a step run in Python each write
    the first columns of their logits into `out` and return it."""
    if not replayed:
        monkeypatch.setenv(step_graph.SWITCH, "0")
    runner = _runner(tiny, weights, 2, monkeypatch)
    seq = torch.randint(0, 50257, (2, 10), generator=torch.Generator().manual_seed(3))
    cache = KVCache(tiny.config, 2, 64, dtype=runner.cache_dtype)
    V = tiny.config.vocab_size - narrower
    with torch.inference_mode():
        runner.prefill(seq[:, :4], cache, None)
        for t in range(4, 10):
            out = torch.full((2, V), float("nan"))
            assert runner.decode(seq[:, t : t + 1], cache, None, out=out) is out
            want = tiny(seq[:, : t + 1])[0][:, -1, :V]  # (2, V) the uncached forward's
            assert (out - want).abs().max().item() <= (1e-4 if weights == "auto" else 1e-2)
    assert len(_graphs(runner)) == int(replayed), runner.graphs
    assert all(g.direct for g in _graphs(runner))  # the head's product is the tape's last op


def test_replay_writes_the_cache_column_and_reads_the_steps_keys(tiny, monkeypatch):
    """A replay's keys and values land in the step's column, as the Python step writes them."""
    runner = _runner(tiny, "auto", 1, monkeypatch)
    seq = torch.randint(0, 50257, (1, 12), generator=torch.Generator().manual_seed(2))
    ours, ref = KVCache(tiny.config, 1, 64), KVCache(tiny.config, 1, 64)
    with torch.inference_mode():
        runner.prefill(seq[:, :4], ours, None)
        tiny.hidden_states(seq[:, :4], ref)
        for t in range(4, 12):
            runner.decode(seq[:, t : t + 1], ours, None)
            tiny.hidden_states(seq[:, t : t + 1], ref)
    assert _graphs(runner)
    torch.testing.assert_close(ours.kv[..., :12, :], ref.kv[..., :12, :], atol=1e-5, rtol=1e-5)
    assert not ours.kv[..., 12:, :].any()  # nothing written past the step's column


def test_generation_with_replays_equals_generation_without(tiny, monkeypatch):
    """Greedy tokens through the engine, aligned rows and rows that join, leave and pad: the same with the
    replay as with every step in Python."""
    prompts = [torch.randint(0, 50257, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (5, 5, 9, 2)]
    params = [SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True) for n in (12, 20, 7, 15)]

    def run(switch: str) -> tuple[list, DecodeRunner]:
        monkeypatch.setenv(step_graph.SWITCH, switch)
        eng = Engine(tiny, max_batch=2, max_len=64)
        return [c.token_ids for c in eng.generate(prompts, params)], eng.runner

    monkeypatch.setenv("GPT2KIT_KERNEL", "gemv")
    monkeypatch.setenv("GPT2KIT_ATTENTION", "gemv")
    off, runner_off = run("0")
    on, runner_on = run("1")
    assert on == off
    assert runner_off.graphs == {} and runner_off.no_graphs == f"turned off ({step_graph.SWITCH}=0)"
    assert _graphs(runner_on)  # the aligned pair of 5-token prompts was replayed


def test_recording_a_step_leaves_torch_dynamo_unimported():
    """torch wraps a dispatch mode's __torch_dispatch__ in dynamo's `disable` unless the mode opts out, and the
    wrapper's first call imports torch._dynamo: 3 s of a `gpt2kit generate` run's first decode step on a 2-core VM.
    In a fresh process (this one may have imported it for other tests), a recorded step imports no dynamo."""
    code = """
import os, sys, torch
os.environ.update(GPT2KIT_KERNEL="gemv", GPT2KIT_ATTENTION="gemv")
from gpt2kit import GPT, GPTConfig
from gpt2kit.generate import Engine, SamplingParams
from gpt2kit.model.step_graph import StepGraph
eng = Engine(GPT(GPTConfig(n_layer=1, n_embd=64, n_head=4, n_positions=16, vocab_size=96)).eval(), max_batch=1, max_len=16)
eng.generate([[1, 2, 3]], SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True))
print(any(isinstance(g, StepGraph) for g in eng.runner.graphs.values()), "torch._dynamo" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]


# ---- what is not recorded, and what a replay refuses -------------------------------------------------


def test_a_step_with_an_op_step_c_lacks_runs_in_python(tiny, monkeypatch):
    monkeypatch.setenv("GPT2KIT_KERNEL", "gemv")
    monkeypatch.setenv("GPT2KIT_ATTENTION", "model")  # SDPA: no kernel in step.c
    runner = DecodeRunner(tiny, "auto")
    steps, want = _decoded(runner, tiny, torch.randint(0, 50257, (1, 10), generator=torch.Generator().manual_seed(3)), 8)
    [why] = runner.graphs.values()
    assert isinstance(why, str) and why.endswith("which step.c has no kernel for"), why  # split_heads, then SDPA
    torch.testing.assert_close(steps, want, atol=1e-5, rtol=1e-5)


def test_a_replay_that_differs_from_its_recording_is_not_used(tiny, monkeypatch):
    runner = _runner(tiny, "auto", 1, monkeypatch)
    monkeypatch.setitem(step_graph.TOLERANCE, torch.float32, -1.0)  # nothing passes
    steps, want = _decoded(runner, tiny, torch.randint(0, 50257, (1, 8), generator=torch.Generator().manual_seed(4)), 6)
    [why] = runner.graphs.values()
    assert why.startswith("its replay differs: logits"), why
    torch.testing.assert_close(steps, want, atol=1e-5, rtol=1e-5)


def test_an_id_outside_the_vocabulary_is_refused_in_one_line(tiny, monkeypatch):
    runner = _runner(tiny, "auto", 1, monkeypatch)
    cache = KVCache(tiny.config, 1, 64)
    with torch.inference_mode():
        runner.prefill(torch.tensor([[1, 2]]), cache, None)
        runner.decode(torch.tensor([[3]]), cache, None)  # recorded
        with pytest.raises(InputError, match="outside the vocabulary"):
            runner.decode(torch.tensor([[50257]]), cache, None)


def test_only_the_recording_thread_s_kernel_calls_are_recorded():
    so = _so()
    tape = so.gk_tape_new()
    w, x = torch.randn(16, 16), torch.randn(1, 16)
    packed = gemv.Packed(w, None, torch.float32)
    so.gk_tape_record_on(tape)
    try:
        other = threading.Thread(target=packed, args=(x,))
        other.start()
        other.join()
        packed(x)
    finally:
        so.gk_tape_record_on(None)
    args = (ctypes.c_int64 * step_graph.MAX_ARGS)()
    assert so.gk_tape_length(tape) == 1 and so.gk_tape_op(tape, 0, args) == step_graph.GEMV_F32
    assert (args[2], args[3], args[6]) == (16, 16, 1)  # N, K, M as called
    so.gk_tape_free(tape)


def test_info_says_whether_the_decode_step_replays_and_why_not(tiny, monkeypatch):
    from gpt2kit.model_info import decode_step_status

    monkeypatch.setenv("GPT2KIT_KERNEL", "gemv")
    monkeypatch.setenv("GPT2KIT_ATTENTION", "gemv")
    assert decode_step_status(tiny, 2, "auto") == "replayed in C from a recording of its first step"
    monkeypatch.setenv("GPT2KIT_ATTENTION", "model")
    assert decode_step_status(tiny, 1, "auto").startswith("runs in Python: the step calls aten.")
    monkeypatch.setenv(step_graph.SWITCH, "0")
    assert decode_step_status(tiny, 1, "auto") == f"runs in Python: turned off ({step_graph.SWITCH}=0)"
    monkeypatch.delenv(step_graph.SWITCH)
    monkeypatch.setattr(step_graph, "TorchDispatchMode", None)  # a torch without it
    assert decode_step_status(tiny, 1, "auto").startswith(f"runs in Python: torch {torch.__version__} has no TorchDispatchMode")


def test_one_runner_over_caches_of_other_shapes_records_each(tiny, monkeypatch):
    """A recording points into its cache: a cache of another shape (other strides) gets its own, and each
    cache's steps are the uncached forward's, whichever was made first or freed."""
    runner = _runner(tiny, "auto", 1, monkeypatch)
    seq = torch.randint(0, 50257, (1, 14), generator=torch.Generator().manual_seed(5))
    for max_len in (32, 64, 32):
        steps, want = _decoded(runner, tiny, seq, 8, KVCache(tiny.config, 1, max_len))
        torch.testing.assert_close(steps, want, atol=1e-5, rtol=1e-5)
    assert len(_graphs(runner)) == 3  # the first 32-column cache is kept by its recording: the third is another


def test_the_recordings_used_last_are_kept(tiny, monkeypatch):
    from gpt2kit.generate import decode

    monkeypatch.setattr(decode, "GRAPHS_KEPT", 2)
    runner = _runner(tiny, "auto", 1, monkeypatch)
    caches = [KVCache(tiny.config, 1, n) for n in (16, 24, 32)]
    with torch.inference_mode():
        def step(cache):
            if cache.seq_len == 0:
                runner.prefill(torch.tensor([[1, 2]]), cache, None)
            runner.decode(torch.tensor([[3]]), cache, None)

        for i in (0, 1, 0, 2):  # the first used again after the second: the second is dropped for the third
            step(caches[i])
    assert [key[1][4] for key in runner.graphs] == [16, 32]  # T_max of each kept recording's cache


def test_a_dropped_recording_frees_its_tape_and_one_that_failed_keeps_none(tiny, monkeypatch):
    alive = _so().gk_tapes_alive
    gc.collect()  # runners earlier tests dropped, their tapes with them
    before = alive()
    runner = _runner(tiny, "auto", 1, monkeypatch)
    cache = KVCache(tiny.config, 1, 64)
    with torch.inference_mode():
        runner.prefill(torch.tensor([[1, 2]]), cache, None)
        runner.decode(torch.tensor([[3]]), cache, None)
    assert _graphs(runner) and alive() == before + 1
    del runner
    gc.collect()
    assert alive() == before
    monkeypatch.setenv("GPT2KIT_ATTENTION", "model")  # not recordable: its tape is freed at once
    runner = DecodeRunner(tiny, "auto")
    cache = KVCache(tiny.config, 1, 64)
    with torch.inference_mode():
        runner.prefill(torch.tensor([[1, 2]]), cache, None)
        runner.decode(torch.tensor([[3]]), cache, None)
    assert isinstance(next(iter(runner.graphs.values())), str) and alive() == before


def test_a_server_s_steps_replay_in_its_worker_thread(tiny, monkeypatch):
    """The server's engine decodes in a worker thread: its steps record and replay there, and a greedy completion
    is the uncached forward's argmax, streamed or not."""
    httpx = pytest.importorskip("httpx")
    from gpt2kit import Tokenizer
    from gpt2kit.serve.background import BackgroundServer
    from gpt2kit.serve.config import ServeConfig

    monkeypatch.setenv("GPT2KIT_KERNEL", "gemv")
    monkeypatch.setenv("GPT2KIT_ATTENTION", "gemv")
    replays, run = [], StepGraph.run
    monkeypatch.setattr(StepGraph, "run", lambda self, *a: replays.append(1) or run(self, *a))
    tok = Tokenizer()
    ids = tok.encode_ordinary("The quick brown fox")
    want = []
    with torch.inference_mode():
        while len(want) < 10 and (not want or want[-1] != tok.eot_token):
            want.append(int(tiny(torch.tensor([ids + want]))[0][0, -1, : tok.n_vocab].argmax()))
    want = [t for t in want if t != tok.eot_token]
    assert len(want) >= 6  # enough steps to replay (this model does not end the text early)
    with BackgroundServer(tiny, ServeConfig(port=0, model_name="tiny"), tok) as server:
        body = {"prompt": "The quick brown fox", "max_tokens": 10, "temperature": 0}
        plain = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
        assert "choices" in plain, plain
        streamed = httpx.post(server.url + "/v1/completions", json={**body, "stream": True}, timeout=60).text
    assert plain["choices"][0]["text"] == tok.decode(want)
    chunks = [json.loads(line[6:]) for line in streamed.splitlines() if line.startswith("data: {")]
    assert "".join(c["choices"][0]["text"] for c in chunks) == tok.decode(want)
    assert len(replays) >= 2 * (len(want) - 2)  # each request's steps after its first


def test_a_one_token_prompt_is_a_replayed_decode_step(tiny, monkeypatch):
    """A one-token prompt with logits asked for runs as a decode step: recorded, then replayed by the next such prompt
    on the same cache, its logits the uncached forward's; a masked one, or one that only fills the cache, runs in Python."""
    runner = _runner(tiny, "auto", 2, monkeypatch)
    seq = torch.randint(0, tiny.config.vocab_size, (2, 4), generator=torch.Generator().manual_seed(3))
    cache = KVCache(tiny.config, 2, 16, dtype=runner.cache_dtype)
    with torch.inference_mode():
        want = tiny(seq[:, :1])[0][:, -1]  # (B, V)
        first = runner.prefill(seq[:, :1], cache, None)
        [graph] = _graphs(runner)
        replays = []
        monkeypatch.setattr(StepGraph, "run", lambda self, *a, _r=StepGraph.run: replays.append(1) or _r(self, *a))
        cache.reset()
        again = runner.prefill(seq[:, :1], cache, None)
        assert replays == [1] and _graphs(runner) == [graph]
        cache.reset()
        assert runner.prefill(seq[:, :1], cache, None, logits=False) is None and replays == [1]
        cache.reset()
        masked = runner.prefill(seq[:, :1], cache, torch.ones(2, 1, dtype=torch.long))
        assert replays == [1]
    for logits in (first, again, masked):
        torch.testing.assert_close(logits, want, atol=1e-5, rtol=1e-5)
