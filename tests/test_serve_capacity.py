"""The server's capacity limits, on a slowed server (2 slots, 2 queue places, 20 ms per engine step): a client
that leaves frees its slot, a full queue answers 503 with Retry-After, and a request past its timeout gets
408 and frees its slot. Every test decides by counts (tokens, refusals, steps), never by the wall clock.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from gpt2kit.serve.background import BackgroundServer
from gpt2kit.serve.config import ServeConfig
from test_serve import metric, tiny_model, tok_fixture  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def slow_server(tok):
    cfg = ServeConfig(port=0, max_batch_size=2, max_queue=2, request_timeout=1.5, max_tokens_limit=120, api_key=None)
    server = BackgroundServer(tiny_model(1), cfg, tok)
    step = server.worker.engine.step

    def slow_step(emit=None):
        time.sleep(0.02)
        return step(emit)

    server.worker.engine.step = slow_step
    with server:
        yield server


def test_disconnect_mid_stream_frees_the_slot(slow_server, monkeypatch):
    """Deterministic, by counts: the engine takes 3 steps, then waits until the server has seen the client
    leave (Job.cancel reached the worker), then may take one more; the request asked for 100 tokens."""
    worker, engine = slow_server.worker, slow_server.worker.engine
    cancelled, steps, real_step, real_cancel = threading.Event(), [0], engine.step, worker._cancel

    def gated_step(emit=None):
        steps[0] += 1
        if steps[0] > 3:
            assert cancelled.wait(30), "the server never noticed the client leaving"
        return real_step(emit)

    def cancel(job):
        real_cancel(job)
        cancelled.set()

    monkeypatch.setattr(engine, "step", gated_step)
    monkeypatch.setattr(worker, "_cancel", cancel)
    before = metric(slow_server, "gpt2kit_generation_tokens_total")
    with httpx.Client(base_url=slow_server.url, timeout=30) as http:
        with http.stream("POST", "/v1/completions", json={"prompt": "a long story", "max_tokens": 100, "stream": True,
                                                         "temperature": 1.0, "logit_bias": {"50256": -100}}) as r:  # fmt: skip
            assert next(r.iter_lines()).startswith("data: {")
        # the connection is closed here, a few tokens into a 100-token request
    assert cancelled.wait(30), "the server never cancelled the request of a client that left"
    wait_until(lambda: metric(slow_server, "gpt2kit_running_sequences") == 0, "the disconnected request still holds its slot")
    generated = metric(slow_server, "gpt2kit_generation_tokens_total") - before
    assert 1 <= generated <= 5, f"{generated} tokens were generated for a client that left after 3 engine steps"


def wait_until(ready, message: str, limit_s: float = 30.0) -> None:
    """Poll for a state the server reaches by itself; the limit guards against a hang, it is not a measurement."""
    deadline = time.monotonic() + limit_s
    while not ready():
        assert time.monotonic() < deadline, message
        time.sleep(0.02)


def test_queue_overflow_gets_503_with_retry_after(slow_server, monkeypatch):
    """Deterministic: the engine is held, so of 10 requests at most 2 slots + 2 queue places + 2 counted
    against slots still free on arrival (the worker admits between steps) are held, and at least 4 get 503;
    the held ones are released only once 4 were refused."""
    engine, release = slow_server.worker.engine, threading.Event()
    real_step = engine.step

    def held_step(emit=None):
        assert release.wait(30), "the test never released the engine"
        return real_step(emit)

    monkeypatch.setattr(engine, "step", held_step)
    rejected0 = metric(slow_server, "gpt2kit_requests_rejected_total")

    def accounted() -> bool:
        return metric(slow_server, "gpt2kit_requests_rejected_total") - rejected0 >= 4

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=slow_server.url, timeout=30) as ac:
            body = {"prompt": "busy", "max_tokens": 10, "temperature": 0}
            posts = [asyncio.ensure_future(ac.post("/v1/completions", json=body)) for _ in range(10)]
            deadline = time.monotonic() + 30
            while not accounted():  # (a hang guard, not a measurement)
                assert time.monotonic() < deadline, "with 2 slots and 2 queue places held, 4 of 10 requests were not refused"
                await asyncio.sleep(0.02)
            release.set()
            return await asyncio.gather(*posts)

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    # the held requests complete (200), or hit this server's 1.5 s request timeout (408) on a very busy machine
    assert set(codes) <= {200, 408, 503} and codes.count(503) >= 4, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert busy.headers["retry-after"].isdigit() and busy.json()["error"]["message"]
    assert metric(slow_server, "gpt2kit_requests_rejected_total") - rejected0 == codes.count(503)
    assert httpx.get(slow_server.url + "/health").status_code == 200


def test_request_timeout_is_408_and_frees_the_slot(slow_server):
    """120 tokens at >= 20 ms a step take >= 2.4 s; the timeout is 1.5 s, so the request must be cut short
    (by the count of tokens, not by the wall clock)."""
    before = metric(slow_server, "gpt2kit_generation_tokens_total")
    r = httpx.post(slow_server.url + "/v1/completions", json={"prompt": "x", "max_tokens": 120, "temperature": 1.0,
                                                            "logit_bias": {"50256": -100}}, timeout=30)  # fmt: skip
    assert r.status_code == 408 and "timeout" in r.json()["error"]["message"]
    wait_until(lambda: metric(slow_server, "gpt2kit_running_sequences") == 0, "the timed-out request still holds its slot")
    generated = metric(slow_server, "gpt2kit_generation_tokens_total") - before
    assert 1 <= generated <= 1.5 / 0.02 + 1, f"{generated} tokens: the request ran past its 1.5 s timeout"
