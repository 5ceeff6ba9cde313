"""Logprobs: the engine's per-token records and the server's OpenAI shapes, checked against an independent
reference (log_softmax of a full uncached forward of the tiny model over prompt + output so far).

The tiny random model gets a wider embedding (std 0.2, tied to the head) so its next-token distributions are
peaked: top-k comparisons then have clear gaps instead of near-ties at -10.8.
"""

from __future__ import annotations

import httpx
import pytest
import torch

from conftest import tiny_gpt
from gpt2kit import GPT, Tokenizer
from gpt2kit.errors import ConfigError
from gpt2kit.generate import Engine, SamplingParams
from gpt2kit.generate.chat_template import DEFAULT_TEMPLATE, ChatTurn
from gpt2kit.serve.background import BackgroundServer
from gpt2kit.serve.config import ServeConfig

openai = pytest.importorskip("openai")

TOK = Tokenizer()
TABLE = [TOK.token_bytes(i) for i in range(TOK.n_vocab)]
V = TOK.n_vocab
MODEL = "tiny-gpt2"
ATOL = 1e-4
BY_BYTES = {b: i for i, b in enumerate(TABLE)}


@pytest.fixture(scope="module")
def model() -> GPT:
    torch.manual_seed(0)
    m = tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=128)
    with torch.no_grad():
        m.transformer.wte.weight.normal_(0.0, 0.2)  # peaked distributions (the head is tied to wte)
    return m


@torch.no_grad()
def reference(model: GPT, ids: list[int]) -> torch.Tensor:
    """(T,) ids -> (T, V) log-softmax of the raw logits at every position: uncached, independent of the engine."""
    logits, _ = model(torch.tensor([ids]))
    return torch.log_softmax(logits[0, :, :V].float(), dim=-1)


@torch.no_grad()
def greedy_ids(model: GPT, ids: list[int], n: int) -> list[int]:
    """Uncached greedy decoding (argmax of each full forward), stopping at <|endoftext|>."""
    out: list[int] = []
    for _ in range(n):
        nxt = int(reference(model, ids + out)[-1].argmax())
        if nxt == TOK.eot_token:
            break
        out.append(nxt)
    return out


def check_record(rec, ref_row: torch.Tensor, k: int) -> None:
    assert rec.logprob == pytest.approx(ref_row[rec.token].item(), abs=ATOL)
    assert len(rec.top) == k
    want_lp, want_ids = torch.topk(ref_row, k)
    assert {t for t, _ in rec.top} == set(want_ids.tolist())
    assert [lp for _, lp in rec.top] == pytest.approx(want_lp.tolist(), abs=ATOL)  # most likely first


# ---- engine -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_new_tokens=8, temperature=0, logprobs=5, ignore_eos=True),
        # sampling with temperature/top-k/penalty still reports the RAW distribution's logprobs
        SamplingParams(max_new_tokens=8, temperature=0.5, top_k=3, repetition_penalty=1.3, seed=7, logprobs=4, ignore_eos=True),
    ],
)
def test_engine_logprobs_equal_uncached_log_softmax(model, params):
    prompt = TOK.encode_ordinary("The quick brown fox")
    [c] = Engine(model, max_batch=2, token_bytes=TABLE).generate([prompt], params)
    assert len(c.logprobs) == len(c.token_ids) == 8
    ref = reference(model, prompt + c.token_ids)
    for t, (tok, rec) in enumerate(zip(c.token_ids, c.logprobs)):
        assert rec.token == tok
        check_record(rec, ref[len(prompt) - 1 + t], params.logprobs)
    if not params.greedy:  # the reported numbers are not those of the tempered distribution
        logits, _ = model(torch.tensor([prompt]))
        tempered = torch.log_softmax(logits[0, -1, :V].float() / params.temperature, -1)
        assert abs(c.logprobs[0].logprob - tempered[c.token_ids[0]].item()) > 1e-2


def test_engine_logprobs_only_for_rows_that_ask_in_a_mixed_batch(model):
    """Left-padded prefill of 3 rows, a 4th joining mid-flight; only rows with logprobs get records."""
    eng = Engine(model, max_batch=4, token_bytes=TABLE)
    prompts = [TOK.encode_ordinary(t) for t in ("Hello there, my friend", "A", "In the beginning", "Once upon")]
    params = [SamplingParams(max_new_tokens=6, temperature=0, logprobs=2, ignore_eos=True),
              SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True),
              SamplingParams(max_new_tokens=6, temperature=0.8, seed=1, logprobs=0, ignore_eos=True),
              SamplingParams(max_new_tokens=4, temperature=0, logprobs=3, ignore_eos=True)]  # fmt: skip
    slots = eng.add_many(prompts[:3], params[:3], request_ids=[0, 1, 2])
    events: dict[int, list] = {i: [] for i in range(4)}
    for ev in eng.step():
        events[ev.request_id].append(ev)
    slots.append(eng.add(prompts[3], params[3], request_id=3))
    while eng.active_slots:
        for ev in eng.step():
            events[ev.request_id].append(ev)
    for i in range(4):
        c = events[i][-1].completion
        if params[i].logprobs is None:
            assert c.logprobs is None and all(ev.logprob is None for ev in events[i])
            continue
        assert [ev.logprob for ev in events[i] if ev.token is not None] == c.logprobs
        ref = reference(model, prompts[i] + c.token_ids)
        for t, rec in enumerate(c.logprobs):
            check_record(rec, ref[len(prompts[i]) - 1 + t], params[i].logprobs)


def test_prompt_logprobs_equal_direct_computation(model):
    prompt = TOK.encode_ordinary("It was the best of times, it was the worst of times")
    eng = Engine(model, max_batch=2, token_bytes=TABLE)
    [c] = eng.generate([prompt], SamplingParams(max_new_tokens=0, prompt_logprobs=3))
    assert c.token_ids == [] and len(c.prompt_logprobs) == len(prompt) and c.prompt_logprobs[0] is None
    ref = reference(model, prompt)
    for t in range(1, len(prompt)):
        assert c.prompt_logprobs[t].token == prompt[t]
        check_record(c.prompt_logprobs[t], ref[t - 1], 3)


def test_one_host_transfer_per_step_with_logprobs(model, monkeypatch):
    eng = Engine(model, max_batch=3, token_bytes=TABLE)
    prompts = [TOK.encode_ordinary(t) for t in ("a b c", "d e", "f")]
    sp = [SamplingParams(max_new_tokens=5, temperature=0, logprobs=5, ignore_eos=True),
          SamplingParams(max_new_tokens=5, temperature=1.0, seed=0, logprobs=2, ignore_eos=True),
          SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True)]  # fmt: skip
    eng.add_many(prompts, sp)
    calls = []
    for name in ("tolist", "item", "cpu"):  # not numpy(): it takes CPU tensors only, as a view (the greedy rows' argmax)
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _o=orig, _n=name, **k: (calls.append(_n), _o(self, *a, **k))[1])
    for _ in range(3):
        calls.clear()
        events = eng.step()
        assert calls == ["tolist"], calls
        assert [ev.logprob is not None for ev in events] == [True, True, False]


@pytest.mark.gpu
def test_engine_logprobs_on_cuda_match_cpu(model):
    import copy

    prompt = TOK.encode_ordinary("On a GPU")
    sp = SamplingParams(max_new_tokens=6, temperature=0, logprobs=5, prompt_logprobs=2, ignore_eos=True)
    [cpu] = Engine(model, max_batch=2, token_bytes=TABLE).generate([prompt], sp)
    [gpu] = Engine(copy.deepcopy(model).cuda(), max_batch=2, token_bytes=TABLE).generate([prompt], sp)
    assert gpu.token_ids == cpu.token_ids
    for a, b in zip(gpu.logprobs + gpu.prompt_logprobs[1:], cpu.logprobs + cpu.prompt_logprobs[1:]):
        assert a.token == b.token and a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]


def test_logprobs_parameter_is_validated():
    for bad in (-1, 21, True, 2.0):
        with pytest.raises(ConfigError, match="logprobs"):
            SamplingParams(logprobs=bad)
        with pytest.raises(ConfigError, match="prompt_logprobs"):
            SamplingParams(prompt_logprobs=bad)
    SamplingParams(logprobs=0)
    SamplingParams(logprobs=20, prompt_logprobs=20)


# ---- server: the official client --------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model):
    cfg = ServeConfig(port=0, model_name=MODEL, max_batch_size=8, max_n=4, max_tokens_limit=64)
    with BackgroundServer(model, cfg, TOK) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def test_completions_logprobs(client, model):
    prompt = "The meaning of life is"
    ids = TOK.encode_ordinary(prompt)
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text
    gen = greedy_ids(model, ids, 8)
    assert TOK.decode(gen) == r.choices[0].text
    ref = reference(model, ids + gen)
    assert len(lp.tokens) == len(gen)
    for t, (tok_id, logprob, top) in enumerate(zip(gen, lp.token_logprobs, lp.top_logprobs)):
        row = ref[len(ids) - 1 + t]
        assert logprob == pytest.approx(row[tok_id].item(), abs=ATOL)
        want = {TOK.decode([i]): v for v, i in zip(*[x.tolist() for x in torch.topk(row, 3)])}
        assert set(want) <= set(top) and len(top) <= 4  # the top 3 plus the chosen token
        assert all(top[k] == pytest.approx(v, abs=ATOL) for k, v in want.items())
    assert lp.text_offset == [sum(len(s) for s in lp.tokens[:i]) for i in range(len(lp.tokens))]


def test_completions_echo_logprobs_score_the_prompt(client, model):
    prompt = "It was the best of times, it was the worst of times"
    ids = TOK.encode_ordinary(prompt)
    ref = reference(model, ids)
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=0, echo=True, logprobs=1)  # lm-eval's way
    lp = r.choices[0].logprobs
    assert r.choices[0].text == prompt and "".join(lp.tokens) == prompt
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    want = [ref[t - 1, ids[t]].item() for t in range(1, len(ids))]
    assert lp.token_logprobs[1:] == pytest.approx(want, abs=ATOL)
    # echo + generation: the prompt's entries, then the generated ones, offsets over the whole text
    both = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4, echo=True, logprobs=0, temperature=0)
    lp2 = both.choices[0].logprobs
    assert lp2.token_logprobs[: len(ids)] == pytest.approx([None] + want, abs=ATOL)
    assert len(lp2.tokens) > len(ids) and "".join(lp2.tokens) == both.choices[0].text
    assert lp2.text_offset[len(ids)] == len(prompt)


def test_completions_streaming_logprobs_equal_non_streaming(client):
    kw = dict(model=MODEL, prompt=["Hello world", "Numbers: 1, 2,"], max_tokens=10, temperature=0, logprobs=2, echo=True)
    whole = client.completions.create(**kw)
    got: dict[int, dict] = {}
    for chunk in client.completions.create(stream=True, **kw):
        for ch in chunk.choices:
            acc = got.setdefault(ch.index, {"text": "", "tokens": [], "lps": [], "offsets": []})
            acc["text"] += ch.text
            if ch.logprobs is not None:
                acc["tokens"] += ch.logprobs.tokens
                acc["lps"] += ch.logprobs.token_logprobs
                acc["offsets"] += ch.logprobs.text_offset
    for c in whole.choices:
        acc = got[c.index]
        assert acc["text"] == c.text
        assert acc["tokens"] == c.logprobs.tokens and acc["offsets"] == c.logprobs.text_offset
        assert acc["lps"] == pytest.approx(c.logprobs.token_logprobs, abs=ATOL)


def test_chat_logprobs(client, model):
    messages = [{"role": "user", "content": "Say hi."}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0.7, seed=3,
                                       logprobs=True, top_logprobs=2)  # fmt: skip
    content = r.choices[0].logprobs.content
    prompt = TOK.encode_ordinary(DEFAULT_TEMPLATE.render([ChatTurn("user", "Say hi.")]))
    gen = [BY_BYTES[bytes(e.bytes)] for e in content]  # a token's bytes name it uniquely
    ref = reference(model, prompt + gen)
    for t, e in enumerate(content):
        row = ref[len(prompt) - 1 + t]
        assert e.token == TABLE[gen[t]].decode("utf-8", "replace") and e.logprob == pytest.approx(row[gen[t]].item(), abs=ATOL)
        assert [a.logprob for a in e.top_logprobs] == pytest.approx(torch.topk(row, 2).values.tolist(), abs=ATOL)
        assert all(bytes(a.bytes) == a.token.encode() for a in e.top_logprobs if "\ufffd" not in a.token)
    text = b"".join(bytes(e.bytes) for e in content).decode("utf-8", "replace")
    assert len(content) == r.usage.completion_tokens > 0 and r.choices[0].message.content  # a real, non-empty reply
    assert text.strip() == r.choices[0].message.content  # the entries spell the reply (chat strips its edges)
    # streaming: the same entries (same seed), spread over the chunks
    streamed = []
    for chunk in client.chat.completions.create(model=MODEL, messages=messages, max_tokens=8, temperature=0.7, seed=3,
                                                logprobs=True, top_logprobs=2, stream=True):  # fmt: skip
        for ch in chunk.choices:
            if ch.logprobs is not None:
                streamed += ch.logprobs.content
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=ATOL)
    # without logprobs nothing changes
    plain = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    assert plain.choices[0].logprobs is None


def test_bad_logprobs_values_get_openai_400s(server, client):
    cases = [
        (lambda: client.completions.create(model=MODEL, prompt="hi", max_tokens=2, logprobs=6), "logprobs"),
        (
            lambda: client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2, logprobs=True, top_logprobs=21
            ),
            "top_logprobs",
        ),  # fmt: skip
        (
            lambda: client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=2, top_logprobs=2
            ),
            "top_logprobs",
        ),  # fmt: skip
    ]
    for call, param in cases:
        with pytest.raises(openai.BadRequestError) as e:
            call()
        assert e.value.status_code == 400
        body = e.value.body
        assert body["param"] == param and body["type"] == "invalid_request_error" and param in body["message"]
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "x", "logprobs": -1})
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
