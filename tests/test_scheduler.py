"""One engine, one scheduler: training samples, lm-eval's generate_until and the server generate exactly the
text `gpt2kit generate` does for the same prompt, seed and settings; the scheduler isolates a bad prompt."""

from __future__ import annotations

import json

import httpx
import pytest
import torch

import gpt2kit
from conftest import tiny_gpt
from gpt2kit.cli.__main__ import main
from gpt2kit.errors import InputError
from gpt2kit.generate import Engine, FinishReason, SamplingParams
from gpt2kit.generate.scheduler import Pending, Scheduler

TOK = gpt2kit.Tokenizer()
PROMPT = "The keeper of the lighthouse"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return gpt2kit.save_pretrained(
        tiny_gpt(3, n_layer=2, n_embd=64, n_head=4, n_positions=128), tmp_path_factory.mktemp("one_engine")
    )


@pytest.fixture(scope="module")
def model(folder):
    return gpt2kit.from_pretrained(str(folder), device="cpu")


def cli_generate(folder, capsys, *flags: str, prompt: str = PROMPT) -> str:
    """The text `gpt2kit generate` writes (its --jsonl record), run in this process."""
    capsys.readouterr()
    assert main(["generate", "--model", str(folder), "--device", "cpu", "--jsonl", *flags, prompt]) == 0
    [line] = capsys.readouterr().out.splitlines()
    return json.loads(line)["text"]


def test_training_samples_are_gpt2kit_generate(folder, model, capsys):
    from gpt2kit.train.samples import sample_text

    model.train()
    got = sample_text(model, TOK, PROMPT, 24, seed=3, step=700, device=torch.device("cpu"))
    assert model.training  # left in the mode it was in
    want = cli_generate(folder, capsys, "--bos", "--ignore-eos", "--temperature", "0.8", "--top-k", "40",
                        "--max-new-tokens", "24", "--seed", str(3 * 1_000_003 + 700))  # fmt: skip
    assert got == want and len(TOK.encode_ordinary(got)) >= 12
    assert sample_text(model, TOK, PROMPT, 24, seed=3, step=701) != got  # the step is in the seed


def test_lm_eval_generate_until_is_gpt2kit_generate(folder, capsys):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from gpt2kit.eval.lm_eval_adapter import register

    free = cli_generate(folder, capsys, "--temperature", "0", "--max-new-tokens", "20")
    stop = next(free[i : i + 2] for i in range(len(free) // 3, len(free)) if free[i : i + 2].strip())  # occurs mid-text
    want = cli_generate(folder, capsys, "--temperature", "0", "--max-new-tokens", "20", "--stop", stop)
    assert want == free[: free.index(stop)]  # the stop string cut it
    lm = register()(pretrained=str(folder), device="cpu", batch_size=2)
    args = [(PROMPT, {"until": [stop], "max_gen_toks": 20}), (PROMPT, {"until": ["\u2603"], "max_gen_toks": 20}),
            ("Another prompt", {"until": "\n\n", "max_gen_toks": 5})]  # fmt: skip
    got = lm.generate_until([Instance("generate_until", {}, a, i) for i, a in enumerate(args)], disable_tqdm=True)
    assert got[:2] == [want, free]
    assert got[2] == cli_generate(folder, capsys, "--temperature", "0", "--max-new-tokens", "5", "--stop", "\n\n",
                                  prompt="Another prompt")  # fmt: skip


def test_server_completions_are_gpt2kit_generate(folder, model, capsys):
    from gpt2kit.serve.background import BackgroundServer
    from gpt2kit.serve.config import ServeConfig

    flags = ["--temperature", "0.8", "--top-k", "40", "--max-new-tokens", "16", "--logit-bias", "50256=-100"]
    want = {seed: cli_generate(folder, capsys, *flags, "--seed", str(seed)) for seed in (5, 6)}
    assert want[5] != want[6]
    body = {"prompt": PROMPT, "max_tokens": 16, "temperature": 0.8, "top_k": 40, "logit_bias": {"50256": -100}}
    with BackgroundServer(model, ServeConfig(port=0, api_key=None, max_batch_size=3), TOK) as server:
        r = httpx.post(server.url + "/v1/completions", json={**body, "seed": 5, "n": 2}, timeout=60)
        assert [c["text"] for c in r.json()["choices"]] == [want[5], want[6]]  # choice i samples with seed + i
        with httpx.stream("POST", server.url + "/v1/completions", json={**body, "seed": 6, "stream": True}, timeout=60) as s:
            chunks = [json.loads(ln[6:]) for ln in s.iter_lines() if ln.startswith("data: {")]
        assert "".join(c["choices"][0]["text"] for c in chunks) == want[6]


def test_a_prompt_that_cannot_be_admitted_fails_alone(model):
    """With on_reject, a sequence whose prefill fails is handed back and its neighbours are admitted."""
    engine = Engine(model, max_batch=3, max_len=16, token_bytes=TOK.token_bytes_table, weights="model")
    rejected = []
    sched = Scheduler(engine, on_reject=lambda p, e: rejected.append((p.request_id, e)))
    params = SamplingParams(max_new_tokens=4, temperature=0)
    sched.submit([Pending([1, 2, 3], params, "a"), Pending(list(range(40)), params, "too long"), Pending([4, 5], params, "b")])
    done = {}
    while sched.has_work:
        done.update({ev.request_id: ev.completion for ev in sched.step() if ev.finished})
    assert [rid for rid, _ in rejected] == ["too long"] and isinstance(rejected[0][1], InputError)
    assert sorted(done) == ["a", "b"] and all(c.finish_reason is FinishReason.LENGTH for c in done.values())
    assert sched.prompt_tokens == 5 and not engine.active_slots
    # without on_reject the error reaches the caller, as `generate` callers expect
    with pytest.raises(InputError):
        engine.generate([[1, 2], list(range(40))], params)
    assert not engine.active_slots


def test_drop_frees_waiting_and_running_sequences(model):
    engine = Engine(model, max_batch=1, max_len=32, weights="model")
    sched = Scheduler(engine)
    params = SamplingParams(max_new_tokens=8, temperature=0, ignore_eos=True)
    sched.submit([Pending([1, 2], params, ("x", 0)), Pending([3], params, ("y", 0)), Pending([4], params, ("x", 1))])
    sched.step()  # ("x", 0) runs, the others wait for the one slot
    assert [p.request_id for p in sched.running.values()] == [("x", 0)] and sched.waiting == 2
    sched.drop(lambda rid: rid[0] == "x")
    assert not sched.running and sched.waiting == 1 and engine.free_slots == [0]
    ids = set()
    for _ in range(20):  # ("y", 0) takes the freed slot and finishes in 8 steps
        ids |= {ev.request_id for ev in sched.step()}
    assert ids == {("y", 0)} and not sched.has_work


def test_a_steps_events_go_out_before_its_decode_forward(model, monkeypatch):
    """Scheduler.step(emit) hands each step's events over before the step's decode forward, and the server's
    worker pushes them to their requests then: a first token leaves right after its prompt's prefill."""
    import asyncio

    from gpt2kit.serve.worker import EngineLoop, Job, Worker

    engine = Engine(model, max_batch=2, max_len=32, weights="model")
    order, real_decode, real_push = [], engine._decode, Job._push
    monkeypatch.setattr(engine, "_decode", lambda go_on: (order.append("decode"), real_decode(go_on))[1])
    sched = Scheduler(engine)
    params = SamplingParams(max_new_tokens=3, temperature=0, ignore_eos=True)
    sched.submit([Pending([1, 2], params, "a"), Pending([3], params, "b")])
    while sched.has_work:
        returned = sched.step(emit=lambda evs: order.append([ev.request_id for ev in evs]))
        assert order[-1] == "decode" or order[-1] == [ev.request_id for ev in returned]
    assert order == [["a", "b"], "decode", ["a", "b"], "decode", ["a", "b"]]  # the last step has nothing to decode

    order.clear()
    monkeypatch.setattr(Job, "_push", lambda job, items: (order.append([d.token for d in items]), real_push(job, items))[1])
    worker = Worker(Engine(model, max_batch=1, max_len=32, weights="model", token_bytes=TOK.token_bytes_table))
    monkeypatch.setattr(worker.engine, "_decode", lambda go_on, d=worker.engine._decode: (order.append("decode"), d(go_on))[1])
    EngineLoop([worker]).open()

    async def one_request() -> list[int]:
        job = worker.submit([[5, 6, 7]], params)
        while not job.done:
            worker._tick()
        return [d.token async for d in job.deltas()]

    tokens = asyncio.run(one_request())
    assert order == [tokens[:1], "decode", tokens[1:2], "decode", tokens[2:]] and len(tokens) == 3


def test_one_failed_choice_fails_its_request_and_frees_the_others_slots(model, monkeypatch):
    """A request of two choices whose first fails inside a step (its sampling raises): the request gets the
    error, its other choice's slot is freed after the step (never from inside it), and the worker goes on."""
    import asyncio
    import threading

    import gpt2kit.generate.step_draw as step_draw
    from gpt2kit.serve.worker import EngineLoop, Worker, WorkerError

    calls, real = [0], step_draw.process_logits

    def fails_once(*a, **k):
        calls[0] += 1
        if calls[0] == 3:  # the first choice, at the second step
            raise RuntimeError("poisoned row")
        return real(*a, **k)

    monkeypatch.setattr(step_draw, "process_logits", fails_once)
    worker = Worker(Engine(model, max_batch=2, max_len=32, weights="model", token_bytes=TOK.token_bytes_table))
    EngineLoop([worker]).open()
    params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=3, ignore_eos=True, n=2)

    async def run() -> tuple[str, list[int]]:
        job = worker.submit([[5, 6, 7]], params)
        while not job.done:
            worker._tick()
        try:
            [d async for d in job.deltas()]
        except WorkerError as e:
            why = str(e)
        job = worker.submit([[8, 9]], SamplingParams(max_new_tokens=3, temperature=0, ignore_eos=True))
        while not job.done:
            worker._tick()
        return why, [d.token async for d in job.deltas()]

    result: list = []
    t = threading.Thread(target=lambda: result.append(asyncio.run(run())), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "the worker hung failing a request from inside an engine step"
    why, tokens = result[0]
    assert "poisoned row" in why and len(tokens) == 3 and not worker.engine.active_slots
