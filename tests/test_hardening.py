"""Hardening: numerically safe sampling for every accepted value, and one failing request never hurting its
neighbours (in a batch, in the server, at the HTTP edge). One-line errors for user and environment mistakes:
test_one_line_errors.py.

Models are tiny random GPTs (biases and LayerNorms perturbed); every test runs in about a second.
"""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch

import gpt2kit
from conftest import tiny_gpt
from gpt2kit.cli.__main__ import main
from gpt2kit.generate import Engine, FinishReason, SamplingParams
from gpt2kit.generate.sampling import NO_TOKEN, apply_top_p, draw, process_logits
from test_sampling import allowed_tokens

TOK = gpt2kit.Tokenizer()
TABLE = [TOK.token_bytes(i) for i in range(TOK.n_vocab)]

# Values inside the accepted ranges that once made the logits inf/NaN and `torch.multinomial` raise.
EXTREMES = [
    dict(temperature=1e-40),
    dict(top_p=1e-300),
    dict(repetition_penalty=1e-38),
    dict(repetition_penalty=1e38),
    dict(temperature=1e-5, repetition_penalty=1e-38),
    dict(min_p=1.0, temperature=1e-5),
    dict(temperature=1e-5, top_p=1e-300, repetition_penalty=1e-38, logit_bias={5: 100.0}),
]


@pytest.fixture(scope="module", name="tiny")
def tiny_fixture():
    return tiny_gpt(n_layer=2, n_embd=32, n_head=4, n_positions=64)


@pytest.fixture(scope="module", name="tiny_dir")
def tiny_dir_fixture(tmp_path_factory, tiny):
    return gpt2kit.save_pretrained(tiny, tmp_path_factory.mktemp("tiny"))


# ---- sampling: numerically safe for every accepted value ------------------------------------------


@pytest.mark.parametrize("kw", EXTREMES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_extreme_but_valid_parameters_always_draw_a_token(kw):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(100, generator=g) * 5  # (V,)
    counts = (torch.rand(100, generator=g) < 0.5).float()  # half the tokens "seen": the repetition penalty applies
    p = SamplingParams(seed=0, **kw)
    processed = process_logits(logits, p, counts, counts.clone())
    assert not processed.isnan().any() and not (processed == math.inf).any()
    assert allowed_tokens(logits, p, context_counts=counts, output_counts=counts.clone())
    for _ in range(5):
        tok = int(draw(processed, p, g))
        assert 0 <= tok < 100


def test_temperature_below_the_threshold_is_greedy():
    logits = torch.randn(50)
    for t in (1e-40, 1e-6, 0.0):
        p = SamplingParams(temperature=t)
        assert p.greedy and int(draw(process_logits(logits, p), p, None)) == int(logits.argmax())
    assert not SamplingParams(temperature=1e-4).greedy


def test_top_p_always_keeps_the_most_likely_token():
    logits = torch.tensor([0.0, 3.0, 1.0, 3.0 - 1e-3])
    for top_p in (1e-300, 1e-45, 1e-9):
        kept = torch.isfinite(apply_top_p(logits, top_p))
        assert kept.tolist() == [False, True, False, False], top_p


def test_draw_reports_no_token_instead_of_raising():
    for logits in (torch.full((10,), -math.inf), torch.full((10,), math.nan)):
        for p in (SamplingParams(temperature=0.7, seed=0), SamplingParams(temperature=0, repetition_penalty=2.0)):
            assert int(draw(logits, p, torch.Generator().manual_seed(0))) == NO_TOKEN


# ---- one failing sequence ends alone ---------------------------------------------------------------

NORMAL = [SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True),
          SamplingParams(max_new_tokens=6, temperature=0.9, top_k=20, seed=3, ignore_eos=True),
          SamplingParams(max_new_tokens=6, temperature=1.0, top_p=0.9, seed=4, ignore_eos=True)]  # fmt: skip
PROMPTS = [[464, 3290], [15496, 995, 11], [40, 588]]


def alone(tiny, prompt, params):
    [c] = Engine(tiny, max_batch=4, token_bytes=TABLE, weights="model").generate([prompt], params)
    return c.token_ids, c.finish_reason


def run_batch_with(tiny, poison_prompt, poison):
    """The three normal requests and `poison` prefilled together, so every step decodes all four."""
    eng = Engine(tiny, max_batch=4, token_bytes=TABLE, weights="model")
    slots = eng.add_many([*PROMPTS, poison_prompt], [*NORMAL, poison], ["a", "b", "c", "poison"])
    done = {}
    while eng.active_slots:
        assert len(eng.active_slots) == 4 or "poison" in done  # the poison is drawn inside the full batch
        for ev in eng.step():
            if ev.finished:
                done[ev.request_id] = ev
    assert sorted(slots) == [0, 1, 2, 3]
    return done


def test_a_poisoned_request_ends_alone_in_its_batch(tiny):
    # every token banned: no token can be drawn for this row (a real input, no patching)
    poison = SamplingParams(max_new_tokens=6, temperature=0.8, seed=1, banned_token_ids=tuple(range(TOK.n_vocab)))
    done = run_batch_with(tiny, [1, 2, 3], poison)
    assert done["poison"].finish_reason is FinishReason.ERROR and "no token can be drawn" in done["poison"].error
    assert done["poison"].completion.error == done["poison"].error
    for rid, prompt, p in zip("abc", PROMPTS, NORMAL):
        c = done[rid].completion
        assert c.error is None and (c.token_ids, c.finish_reason) == alone(tiny, prompt, p)


def test_a_row_whose_sampling_raises_ends_alone(tiny, monkeypatch):
    import gpt2kit.generate.step_draw as engine_mod

    real = engine_mod.process_logits
    poison = SamplingParams(max_new_tokens=6, temperature=0.5, seed=99)

    def process(logits, p, *a):
        if p is poison:
            raise RuntimeError("invalid multinomial distribution")
        return real(logits, p, *a)

    monkeypatch.setattr(engine_mod, "process_logits", process)
    done = run_batch_with(tiny, [7, 8], poison)
    assert done["poison"].finish_reason is FinishReason.ERROR
    assert "RuntimeError: invalid multinomial distribution" in done["poison"].error
    monkeypatch.setattr(engine_mod, "process_logits", real)
    for rid, prompt, p in zip("abc", PROMPTS, NORMAL):
        assert (done[rid].completion.token_ids, done[rid].completion.finish_reason) == alone(tiny, prompt, p)


def test_once_poisonous_values_now_finish_normally_in_a_batch(tiny):
    eng = Engine(tiny, max_batch=8, token_bytes=TABLE, weights="model")
    params = [SamplingParams(max_new_tokens=5, seed=i, ignore_eos=True, **kw) for i, kw in enumerate(EXTREMES)]
    out = eng.generate([[464, 3290]] * len(params), params)
    assert all(c.error is None and c.finish_reason is FinishReason.LENGTH and len(c.token_ids) == 5 for c in out)
    greedy = eng.generate([[464, 3290]], SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True))[0]
    assert out[0].token_ids == greedy.token_ids  # temperature 1e-40 is greedy


def test_cli_generate_with_a_tiny_temperature_is_greedy(tiny_dir, capsys):
    base = ["generate", "hi", "--model", str(tiny_dir), "--max-new-tokens", "5", "--jsonl", "--ignore-eos", "--weights", "model"]
    assert main([*base, "--temperature", "1e-40"]) == 0
    tiny_t = json.loads(capsys.readouterr().out)["token_ids"]
    assert main([*base, "--temperature", "0"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == tiny_t and len(tiny_t) == 5


def test_the_server_fails_only_the_poisoned_request(tiny, monkeypatch):
    """Through the HTTP app: a poisoned request and three normal ones in the same batch; the poisoned one
    gets a 500 (or an error event when streaming), the three get exactly what they get alone."""
    from fastapi.testclient import TestClient

    import gpt2kit.generate.step_draw as engine_mod
    from gpt2kit.serve.app import create_app
    from gpt2kit.serve.config import ServeConfig
    from gpt2kit.serve.worker import build_worker, running

    real = engine_mod.process_logits
    seen_batches = []

    def process(logits, p, *a):
        if p.seed == 666:  # the poisoned request
            seen_batches.append(len(worker.engine.active_slots))
            if seen_batches[-1] == 4:  # fail only once it shares a step with the three others
                raise RuntimeError("poisoned row")
        return real(logits, p, *a)

    cfg = ServeConfig(port=0, api_key=None, model_name="tiny", max_batch_size=8, max_tokens_limit=64)
    worker = build_worker(tiny, TABLE, max_batch_size=8)
    step = worker.engine.step

    def slow_step(emit=None):  # give the four requests time to meet in one batch
        threading.Event().wait(0.01)
        return step(emit)

    worker.engine.step = slow_step
    normal = [{"prompt": "Hello", "max_tokens": 12, "temperature": 0},
              {"prompt": "The cat", "max_tokens": 12, "temperature": 0.8, "seed": 5},
              {"prompt": "One two", "max_tokens": 12, "temperature": 1e-40, "top_p": 1e-300, "repetition_penalty": 1e-38}]  # fmt: skip
    poisoned = {"prompt": "x y z", "max_tokens": 12, "temperature": 0.7, "seed": 666}
    for body in (*normal, poisoned):
        body.update(model="tiny", stop=None, logit_bias={"50256": -100})
    with running(worker), TestClient(create_app(worker, cfg, TOK), base_url="http://127.0.0.1") as client:
        expected = [client.post("/v1/completions", json=b).json()["choices"][0]["text"] for b in normal]
        monkeypatch.setattr(engine_mod, "process_logits", process)
        for stream in (False, True):
            seen_batches.clear()
            results: dict[int, object] = {}

            def call(i, body, stream=stream, results=results):
                if i == 3 and stream:
                    with client.stream("POST", "/v1/completions", json={**body, "stream": True}) as r:
                        results[i] = (r.status_code, "".join(r.iter_lines()))
                else:
                    results[i] = client.post("/v1/completions", json=body)

            threads = [threading.Thread(target=call, args=(i, b)) for i, b in enumerate([*normal, poisoned])]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert 4 in seen_batches, seen_batches  # the poison was drawn in a step shared by all four
            for i in range(3):
                r = results[i]
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["text"] == expected[i]
            if stream:
                status, body = results[3]
                assert status == 200 and '"error"' in body and "poisoned row" in body
            else:
                assert results[3].status_code == 500 and "poisoned row" in results[3].json()["error"]["message"]
        assert client.get("/health").json() == {"status": "ok"}
        assert worker.stats.running == 0


# ---- the HTTP edge: logit_bias keys ----------------------------------------------------------------


@pytest.fixture(scope="module")
def http(tiny):
    from fastapi.testclient import TestClient

    from gpt2kit.serve.app import create_app
    from gpt2kit.serve.config import ServeConfig
    from gpt2kit.serve.worker import build_worker, running

    cfg = ServeConfig(port=0, api_key=None, model_name="tiny", max_batch_size=4, max_tokens_limit=16)
    worker = build_worker(tiny, TABLE, max_batch_size=4)
    with running(worker), TestClient(create_app(worker, cfg, TOK), base_url="http://127.0.0.1") as client:
        yield client


@pytest.mark.parametrize("key", ["²", "٣", "３", "-1", "+3", " 3", "3 ", "3.0", "", "50257", "1e3", "0x10", "0" * 40 + "1"])
def test_logit_bias_keys_must_be_ascii_token_ids(http, key):
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 1, "logit_bias": {key: 1}})
    assert r.status_code == 400, (key, r.status_code, r.text)
    err = r.json()["error"]
    assert err["param"] == "logit_bias" and "token id" in err["message"]


def test_logit_bias_ascii_keys_work(http):
    r = http.post("/v1/completions", json={"model": "tiny", "prompt": "a", "max_tokens": 3, "temperature": 0,
                                          "logit_bias": {"318": 100, "00042": 0}})  # fmt: skip
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == TOK.decode([318] * 3)
