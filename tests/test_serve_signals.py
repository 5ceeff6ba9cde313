"""`gpt2kit serve` runs its engine loop on the main thread (uvicorn in a daemon thread) and stops cleanly on
Ctrl-C (SIGINT) and SIGTERM: exit status 0, no traceback, pending requests told the server is shutting down."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

import gpt2kit
from conftest import tiny_gpt
from gpt2kit.generate import Engine
from test_serve_cli import free_port, wait_healthy

TOK = gpt2kit.Tokenizer()
BODY = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "logit_bias": {"50256": -100}}


def complete_and_stream(url: str, model: str | None = None) -> None:
    body = {**BODY, **({"model": model} if model else {})}
    r = httpx.post(url + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["choices"][0]["text"], r.text
    with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}, timeout=60) as s:
        text = s.read().decode()
    pieces = [json.loads(e[6:]) for e in text.split("\n\n") if e.startswith("data: {")]
    assert (
        text.endswith("data: [DONE]\n\n") and "".join(p["choices"][0]["text"] for p in pieces) == r.json()["choices"][0]["text"]
    )


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_cli_serve_stops_cleanly_on_a_signal(tmp_path, sig):
    folder = gpt2kit.save_pretrained(tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=128), tmp_path / "tiny")
    port = free_port()
    cmd = [sys.executable, "-m", "gpt2kit.cli", "serve", "--model", str(folder), "--device", "cpu", "--port", str(port),
           "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc)
        complete_and_stream(url)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0 and "Traceback" not in err, err


def test_serve_steps_every_model_on_the_main_thread_and_fails_pending_requests(monkeypatch):
    """serve() with two models, called on this (the main) thread: every engine step of both runs here. A
    request still generating when SIGINT comes gets an error event and [DONE]; serve() returns."""
    from gpt2kit.serve.app import serve
    from gpt2kit.serve.config import ServeConfig

    assert threading.current_thread() is threading.main_thread()
    stepped, real_step = [], Engine.step

    def recording_step(self, emit=None):
        stepped.append((threading.current_thread(), id(self)))
        time.sleep(0.02)  # (so that the last request is still running when the signal comes)
        return real_step(self, emit)

    monkeypatch.setattr(Engine, "step", recording_step)
    port, seen, returned = free_port(), {}, threading.Event()
    url = f"http://127.0.0.1:{port}"

    def client() -> None:
        try:
            wait_healthy(url)
            complete_and_stream(url, "base")
            complete_and_stream(url, "other")
            with httpx.stream("POST", url + "/v1/completions", json={**BODY, "max_tokens": 100, "stream": True}, timeout=60) as s:
                lines = s.iter_lines()
                seen["first"] = next(lines)
                os.kill(os.getpid(), signal.SIGINT)
                seen["rest"] = list(lines)
        finally:
            seen.setdefault("rest", None)
            if not returned.wait(30):  # never leave serve() running
                os.kill(os.getpid(), signal.SIGINT)

    models = {
        "base": tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=128),
        "other": tiny_gpt(1, n_layer=1, n_embd=32, n_head=2),
    }
    helper = threading.Thread(target=client, daemon=True)
    before = signal.getsignal(signal.SIGINT)
    helper.start()
    serve(models, ServeConfig(port=port, api_key=None), TOK, log_level="warning")
    returned.set()
    helper.join(30)
    assert not helper.is_alive()
    assert stepped and {t for t, _ in stepped} == {threading.main_thread()}
    assert len({engine for _, engine in stepped}) == 2  # both models' engines were stepped, by the one loop
    assert seen["first"].startswith("data: {") and seen["rest"] is not None
    events = [json.loads(ln[6:]) for ln in seen["rest"] if ln.startswith("data: {")]
    assert "shutting down" in events[-1]["error"]["message"] and [ln for ln in seen["rest"] if ln][-1] == "data: [DONE]"
    assert signal.getsignal(signal.SIGINT) is before  # serve() put the handler back
