"""The server end to end: the official `openai` client against a live server on 127.0.0.1, concurrency with
continuous batching, metrics, the playground page and the detector route. Malformed requests and engine
failures: test_serve_robustness.py; disconnects, queue overflow and timeouts on a slowed server:
test_serve_capacity.py.

A tiny random-weight GPT-2 (2 layers, 64 wide, 128 context): its text is gibberish, but greedy decoding
is deterministic, so outputs can be compared with an independent reference (an uncached forward + argmax)
and between single and concurrent requests.
"""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
import torch

from conftest import ScriptedRunner, tiny_gpt
from gpt2kit import GPT, Tokenizer
from gpt2kit.generate.chat_template import DEFAULT_TEMPLATE, ChatTurn
from gpt2kit.serve.background import BackgroundServer
from gpt2kit.serve.config import ServeConfig

openai = pytest.importorskip("openai")

KEY = "sk-test-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "tiny-gpt2"


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=128)


@pytest.fixture(scope="module", name="tok")
def tok_fixture() -> Tokenizer:
    return Tokenizer()


@pytest.fixture(scope="module", name="model")
def model_fixture() -> GPT:
    return tiny_model()


@pytest.fixture(scope="module", name="server")
def server_fixture(model, tok):
    cfg = ServeConfig(port=0, api_key=KEY, model_name=MODEL, max_batch_size=32, max_n=8, max_body_bytes=64 * 1024,
                      max_tokens_limit=100)  # fmt: skip
    with BackgroundServer(model, cfg, tok) as s:
        yield s


@pytest.fixture(scope="module", name="client")
def client_fixture(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def metric(server, name: str) -> float:
    text = httpx.get(server.url + "/metrics", headers=AUTH, timeout=10).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} missing from /metrics"
    return float(m.group(1))


@torch.no_grad()
def greedy_reference(model: GPT, tok: Tokenizer, prompt: str, max_tokens: int) -> str:
    """Independent of the engine: full uncached forward each step, argmax, stop at <|endoftext|>."""
    return tok.decode(greedy_reference_ids(model, tok, prompt, max_tokens))


@torch.no_grad()
def greedy_reference_ids(model: GPT, tok: Tokenizer, prompt: str, max_tokens: int) -> list[int]:
    ids = tok.encode_ordinary(prompt)
    out = []
    for _ in range(max_tokens):
        logits, _ = model(torch.tensor([ids + out]))
        nxt = int(logits[0, -1, : tok.n_vocab].argmax())
        if nxt == tok.eot_token:
            break
        out.append(nxt)
    return out


# ---- the official client, unchanged ----------------------------------------------------------------


def test_models_health_and_auth(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # no key needed for health
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.completions.create(model=MODEL, prompt="hi", max_tokens=2)
    assert e.value.status_code == 401
    r = httpx.post(server.url + "/v1/completions", json={"prompt": "hi"})
    assert r.status_code == 401 and "Authorization: Bearer" in r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"


def test_completion_greedy_equals_reference(client, model, tok):
    prompt = "The quick brown fox"
    r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.model == MODEL and len(r.choices) == 1
    assert r.choices[0].text == greedy_reference(model, tok, prompt, 12)
    assert r.usage.prompt_tokens == len(tok.encode_ordinary(prompt))
    want = greedy_reference_ids(model, tok, prompt, 12)
    assert r.usage.completion_tokens == len(want)  # the tokens generated (an <|endoftext|> would end it, uncounted)
    assert r.choices[0].finish_reason == ("length" if len(want) == 12 else "stop")
    echo = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, echo=True)
    assert echo.choices[0].text == prompt + r.choices[0].text
    many = client.completions.create(model=MODEL, prompt=[prompt, "Hello"], max_tokens=6, temperature=0)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[1].text == greedy_reference(model, tok, "Hello", 6)


def test_chat_uses_the_documented_template(client):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hi."}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, temperature=0)
    choice = chat.choices[0]
    assert chat.object == "chat.completion" and choice.message.role == "assistant"
    prompt = DEFAULT_TEMPLATE.render([ChatTurn(m["role"], m["content"]) for m in messages])
    assert prompt == "You are terse.\n\nUser: Say hi.\nAssistant:"
    ref = client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, temperature=0, stop=list(DEFAULT_TEMPLATE.stop))
    assert choice.message.content == ref.choices[0].text.strip()
    assert choice.finish_reason == ref.choices[0].finish_reason


def test_streaming_equals_non_streaming(server, client):
    kw = dict(model=MODEL, prompt="Streaming works", max_tokens=15, temperature=0)
    full = client.completions.create(**kw).choices[0]
    chunks = list(client.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == full.finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    msgs = [{"role": "user", "content": "Tell me a story."}]
    chat_full = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0).choices[0]
    chat_chunks = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=12, temperature=0, stream=True))
    assert chat_chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chat_chunks) == chat_full.message.content
    assert chat_chunks[-1].choices[0].finish_reason == chat_full.finish_reason
    # the raw wire format: `data: {json}` events separated by blank lines, ending with `data: [DONE]`
    raw = httpx.post(server.url + "/v1/completions", headers={"Authorization": f"Bearer {KEY}"},
                     json={"prompt": "x", "max_tokens": 3, "stream": True}, timeout=30)  # fmt: skip
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = raw.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""] and all(e.startswith("data: {") for e in events[:-2])
    assert all(json.loads(e[6:])["object"] == "text_completion" for e in events[:-2])


def test_utf8_safe_streaming(tok):
    """Emoji and CJK are split across tokens; the stream must never carry a broken character. The model is
    scripted to write them token by token, so every byte-level token really is drawn."""
    text = " 🙂 and 日本語, then 👨‍👩‍👧‍👦."
    ids = tok.encode_ordinary(text)
    assert any("\ufffd" in tok.decode([i]) for i in ids)  # some tokens are bytes of a character
    server = BackgroundServer(tiny_model(), ServeConfig(port=0, api_key=None, max_tokens_limit=100), tok)
    prompt = tok.encode_ordinary("Smile:")
    server.worker.engine.runner = ScriptedRunner(prompt + ids + [tok.eot_token])
    with server, openai.OpenAI(base_url=server.url + "/v1", api_key="none", max_retries=0, timeout=60) as c:
        kw = dict(model=server.config.model_name, prompt="Smile:", max_tokens=len(ids) + 5, temperature=0)
        pieces = [ch.choices[0].text for ch in c.completions.create(stream=True, **kw) if ch.choices]
        whole = c.completions.create(**kw).choices[0]
    assert whole.text == text and whole.finish_reason == "stop"
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces), pieces
    assert len([p for p in pieces if p]) > 5  # streamed piece by piece, not in one final chunk


def test_n_and_seed_reproducibility(client):
    kw = dict(model=MODEL, prompt="Once upon a time", max_tokens=10, temperature=1.0, n=3)
    a = client.completions.create(seed=7, **kw)
    b = client.completions.create(seed=7, **kw)
    c = client.completions.create(seed=8, **kw)
    assert [ch.index for ch in a.choices] == [0, 1, 2]
    assert [ch.text for ch in a.choices] == [ch.text for ch in b.choices]  # same seed, same samples
    assert [ch.text for ch in a.choices] != [ch.text for ch in c.choices]
    assert len({ch.text for ch in a.choices}) > 1  # the n samples are independent (seed + i)
    # chat: choice i is the sample of seed + i, each the same as a request of its own for that seed
    msgs = [{"role": "user", "content": "Hi"}]
    chat = client.chat.completions.create(model=MODEL, messages=msgs, n=2, max_tokens=8, seed=3)
    alone = [client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, seed=s).choices[0] for s in (3, 4)]
    assert [ch.index for ch in chat.choices] == [0, 1]
    assert [ch.message.content for ch in chat.choices] == [a.message.content for a in alone]
    assert [ch.finish_reason for ch in chat.choices] == [a.finish_reason for a in alone]
    assert alone[0].message.content != alone[1].message.content
    assert chat.usage.completion_tokens == sum(
        client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=8, seed=s).usage.completion_tokens for s in (3, 4)
    )


def test_stop_strings(client):
    full = client.completions.create(model=MODEL, prompt="Stop here", max_tokens=20, temperature=0).choices[0].text
    stop = full[6:9]
    assert stop.strip(), f"need a visible stop string, got {full!r}"
    cut = client.completions.create(model=MODEL, prompt="Stop here", max_tokens=20, temperature=0, stop=[stop]).choices[0]
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"
    streamed = client.completions.create(model=MODEL, prompt="Stop here", max_tokens=20, temperature=0, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == cut.text


def test_bad_parameters_get_clear_400s(client):
    cases = [
        (dict(temperature=5), "temperature"),
        (dict(max_tokens=10**6), "max_tokens"),
        (dict(n=50), "n"),
        (dict(top_p=0), "top_p"),
        (dict(stop=["a", "b", "c", "d", "e"]), "stop"),
        (dict(logit_bias={"abc": 1}), "logit_bias"),
        (dict(extra_body={"max_tokenz": 3}), "max_tokenz"),
        (dict(prompt="word " * 200), "prompt"),
        (dict(prompt="word " * 100, max_tokens=60), "context length"),
    ]
    for kw, needle in cases:
        args = {"model": MODEL, "prompt": "hi", "max_tokens": 2, **kw}
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(**args)
        assert e.value.status_code == 400
        assert needle in e.value.body["message"], (kw, e.value.body)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi", max_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "tool", "content": "x"}])


def test_edge_prompts_and_limits(client, model, tok):
    # "" starts from <|endoftext|>, OpenAI's default prompt
    r = client.completions.create(model=MODEL, prompt="", max_tokens=6, temperature=0)
    with torch.no_grad():
        want, ids = [], [tok.eot_token]
        for _ in range(6):
            nxt = int(model(torch.tensor([ids + want]))[0][0, -1, : tok.n_vocab].argmax())
            if nxt == tok.eot_token:
                break
            want.append(nxt)
    assert r.choices[0].text == tok.decode(want) and r.usage.prompt_tokens == 1
    # max_tokens 0 without echo: nothing generated, nothing echoed
    r = client.completions.create(model=MODEL, prompt="Nothing more", max_tokens=0)
    assert r.choices[0].text == "" and r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 0
    assert r.usage.prompt_tokens == len(tok.encode_ordinary("Nothing more"))
    # prompts x n is what counts against --max-n (8 here): 3 x 3 = 9 is refused, 4 x 2 = 8 is served
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt=["a", "b", "c"], n=3, max_tokens=1)
    assert "3 prompts x n=3 = 9 choices" in e.value.body["message"]
    r = client.completions.create(model=MODEL, prompt=["a", "b", "c", "d"], n=2, max_tokens=1, seed=0)
    assert sorted(c.index for c in r.choices) == list(range(8))


def test_a_body_without_content_length_over_the_limit_is_413(server):
    """Chunked transfer encoding declares no size: the limit (64 KiB here) is enforced while reading."""

    def chunks():
        yield b'{"prompt": "'
        for _ in range(80):
            yield b"a" * 1024
        yield b'", "max_tokens": 1}'

    headers = {**AUTH, "Content-Type": "application/json"}
    r = httpx.post(server.url + "/v1/completions", content=chunks(), headers=headers, timeout=30)
    assert "content-length" not in r.request.headers and r.request.headers["transfer-encoding"] == "chunked"
    assert r.status_code == 413 and "larger than 65536 bytes" in r.json()["error"]["message"]
    small = httpx.post(server.url + "/v1/completions", content=iter([b'{"prompt": "hi", ', b'"max_tokens": 1}']), headers=headers)
    assert small.status_code == 200  # the same path under the limit


# ---- concurrency ---------------------------------------------------------------------------------


def test_32_concurrent_streams_are_batched_and_independent(server, client):
    prompts = [f"Client number {i} says" for i in range(32)]
    single = [client.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0).choices[0].text for p in prompts]
    steps0, tokens0 = metric(server, "gpt2kit_engine_steps_total"), metric(server, "gpt2kit_generation_tokens_total")

    async def one(ac, p: str) -> str:
        stream = await ac.completions.create(model=MODEL, prompt=p, max_tokens=16, temperature=0, stream=True)
        return "".join([c.choices[0].text async for c in stream])

    async def all_at_once() -> list[str]:
        async with openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60) as ac:
            return await asyncio.gather(*(one(ac, p) for p in prompts))

    concurrent = asyncio.run(all_at_once())
    assert concurrent == single  # greedy: batched rows compute exactly what each would alone
    steps = metric(server, "gpt2kit_engine_steps_total") - steps0
    tokens = metric(server, "gpt2kit_generation_tokens_total") - tokens0
    assert tokens >= 32 and steps < tokens / 4, f"{steps} decode steps for {tokens} tokens: requests were not batched"


def test_metrics_are_prometheus_text(server, client):
    client.completions.create(model=MODEL, prompt="count me", max_tokens=2)
    r = httpx.get(server.url + "/metrics", headers=AUTH)
    assert r.headers["content-type"].startswith("text/plain")
    for name in ("gpt2kit_http_requests_total", "gpt2kit_generation_tokens_total", "gpt2kit_queue_depth",
                 "gpt2kit_request_latency_seconds_bucket", "gpt2kit_time_to_first_token_seconds_count"):  # fmt: skip
        assert name in r.text
    for line in r.text.splitlines():
        assert line.startswith("#") or re.match(r"^[a-z_][a-z0-9_]*(\{[^}]*\})? -?[0-9.e+-]+$", line), line


def test_playground_page_is_served(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and 'id="generate"' in r.text and MODEL in r.text


def test_detect_route_judges_text_and_refuses_bad_input(server):
    url = server.url + "/v1/gpt2kit/detect"
    r = httpx.post(url, json={"text": "The cat sat on the mat, and then it slept."}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    assert {"verdict", "probability", "evidence"} <= set(r.json()) and r.json()["evidence"]["n_tokens"] > 5
    for body, status, param in [({"text": "  "}, 400, "text"), ({"text": "hi", "model": 5}, 400, "model"),
                                ({"text": "hi", "model": "nope"}, 404, "model")]:  # fmt: skip
        r = httpx.post(url, json=body, headers=AUTH, timeout=30)
        assert r.status_code == status and r.json()["error"]["param"] == param, (body, r.text)
    r = httpx.post(url, content=b"{not json", headers={**AUTH, "Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and "must be JSON" in r.json()["error"]["message"]
