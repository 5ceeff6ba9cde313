"""The server survives what clients and the engine throw at it: a fuzz of malformed requests (each a 4xx, the
server alive after), an engine step that fails before or after a stream has started (that request fails,
with an error event mid-stream; the worker goes on).
"""

from __future__ import annotations

import json

import httpx
import pytest

from test_serve import AUTH, KEY, MODEL, client_fixture, metric, model_fixture, openai, server_fixture, tok_fixture  # noqa: F401 (fixtures)

MALFORMED: list[tuple[str, bytes | str]] = [
    ("/v1/completions", b""),
    ("/v1/completions", b"{"),
    ("/v1/completions", b"null"),
    ("/v1/completions", b"[1, 2, 3]"),
    ("/v1/completions", b'"just a string"'),
    ("/v1/completions", b"\xff\xfe\x00garbage"),
    ("/v1/completions", b"{}"),
    ("/v1/completions", b'{"prompt": null}'),
    ("/v1/completions", b'{"prompt": 12}'),
    ("/v1/completions", b'{"prompt": [[]]}'),
    ("/v1/completions", b'{"prompt": []}'),
    ("/v1/completions", b'{"prompt": [99999999]}'),
    ("/v1/completions", b'{"prompt": [-1]}'),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": "5"}'),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 1e309}'),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 123456789012345678901234567890}'),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": -1}'),
    ("/v1/completions", b'{"prompt": "x", "temperature": "hot"}'),
    ("/v1/completions", b'{"prompt": "x", "temperature": NaN}'),
    ("/v1/completions", b'{"prompt": "x", "temperature": Infinity}'),
    ("/v1/completions", b'{"prompt": "x", "n": 0}'),
    ("/v1/completions", b'{"prompt": "x", "n": true}'),
    ("/v1/completions", b'{"prompt": "x", "seed": -5}'),
    ("/v1/completions", b'{"prompt": "x", "seed": 99999999999999999999999}'),
    ("/v1/completions", b'{"prompt": "x", "stop": [""]}'),
    ("/v1/completions", b'{"prompt": "x", "stop": 5}'),
    ("/v1/completions", b'{"prompt": "x", "stream": "yes"}'),
    ("/v1/completions", b'{"prompt": "x", "logit_bias": {"1": 1000}}'),
    ("/v1/completions", b'{"prompt": "x", "logprobs": 6}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 2}'),
    ("/v1/completions", b'{"prompt": "x", "suffix": "y"}'),
    ("/v1/completions", b'{"prompt": "x", "stream_options": {"include_usage": 1}}'),
    ("/v1/completions", '{"prompt": "\ud800\udfff\u0000\u202e\U0010ffff", "max_tokens": 1}'.encode("utf-8", "surrogatepass")),
    ("/v1/completions", b'{"prompt": "x", "prompt": 5}'),
    ("/v1/chat/completions", b'{"messages": []}'),
    ("/v1/chat/completions", b'{"messages": "hi"}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user"}], "max_tokens": 1000}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "wizard", "content": "x"}]}'),
    ("/v1/chat/completions", b'{"messages": [{"content": "x"}]}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "tools": []}'),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}'),
    ("/v1/completions", b'{"prompt": "' + b"a" * 70_000 + b'"}'),  # over the 64 KiB body limit
    ("/v1/nonexistent", b"{}"),
]


def test_fuzz_malformed_requests_get_4xx_and_the_server_survives(server):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as http:
        for path, body in MALFORMED:
            r = http.post(path, content=body)
            assert 400 <= r.status_code < 500, (body[:80], r.status_code, r.text[:300])
            err = r.json()["error"]
            assert err["message"] and err["type"], body[:80]
        assert http.post("/v1/completions", content=b'{"prompt": "' + b"a" * 70_000 + b'"}').status_code == 413

        json_values = st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
            max_leaves=8,
        )
        fields = ["prompt", "messages", "max_tokens", "temperature", "top_p", "n", "stop", "seed", "stream", "echo",
                  "logit_bias", "presence_penalty", "frequency_penalty", "top_k", "model", "user", "best_of", "logprobs",
                  "top_logprobs"]  # fmt: skip

        @settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]),
               body=st.dictionaries(st.sampled_from(fields), json_values, max_size=6))  # fmt: skip
        def fuzz(path, body):
            body.setdefault("max_tokens", 3)  # short generations when the fuzz leaves it out; its own values stay
            r = http.post(path, content=json.dumps(body))
            assert r.status_code < 500, (body, r.status_code, r.text[:300])
            if r.status_code != 200:
                assert r.json()["error"]["message"]

        fuzz()
        assert http.get("/health").json() == {"status": "ok"}
        assert http.post("/v1/completions", json={"prompt": "still alive", "max_tokens": 2}).status_code == 200


def test_an_error_after_the_stream_started_ends_it_with_an_error_event(server):
    engine = server.worker.engine
    real, calls = engine.step, [0]

    def fails_on_the_third_step(emit=None):
        calls[0] += 1
        if calls[0] == 3:
            engine.step = real
            raise RuntimeError("boom mid-stream")
        return real(emit)

    engine.step = fails_on_the_third_step
    try:
        raw = httpx.post(server.url + "/v1/completions", headers=AUTH, timeout=30,
                         json={"prompt": "x", "max_tokens": 20, "stream": True, "logit_bias": {"50256": -100}})  # fmt: skip
    finally:
        engine.step = real
    assert raw.status_code == 200  # the headers went out with the first chunk
    events = [json.loads(e[6:]) for e in raw.text.split("\n\n") if e.startswith("data: {")]
    assert raw.text.endswith("data: [DONE]\n\n")
    assert "choices" in events[0] and events[0]["choices"][0]["text"] is not None  # tokens came first
    assert "boom mid-stream" in events[-1]["error"]["message"] and all("error" not in e for e in events[:-1])
    assert metric(server, "gpt2kit_running_sequences") == 0
    r = httpx.post(server.url + "/v1/completions", headers=AUTH, json={"prompt": "x", "max_tokens": 2}, timeout=30)
    assert r.status_code == 200  # the worker lives on


def test_engine_failure_fails_the_request_not_the_worker(server, client):
    engine = server.worker.engine
    real = engine.step

    def broken(emit=None):
        engine.step = real  # fail once
        raise RuntimeError("boom")

    engine.step = broken
    with pytest.raises(openai.InternalServerError) as e:
        client.completions.create(model=MODEL, prompt="x", max_tokens=3)
    assert "boom" in e.value.body["message"]
    assert client.completions.create(model=MODEL, prompt="x", max_tokens=3).choices[0].finish_reason
    assert metric(server, "gpt2kit_running_sequences") == 0
