"""`gpt2kit serve` as a user runs it: a subprocess on 127.0.0.1 serving a saved tiny model, with an API key."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time

import httpx
import torch

from conftest import tiny_gpt
from gpt2kit import save_pretrained


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None = None, limit_s: float = 90.0, output=None) -> None:
    """Poll /health until the server answers; fail with the server's output (`output()`, else its pipe) if the
    process dies, or when limit_s passes (a hang guard, not a measurement)."""
    deadline = time.monotonic() + limit_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(output() if output else (proc.stdout or proc.stderr).read())
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the server did not come up in {limit_s:g} s"
        time.sleep(0.1)


def test_cli_serves_a_model_folder(tmp_path):
    torch.manual_seed(0)
    folder = save_pretrained(tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=128), tmp_path / "tiny")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GPT2KIT_API_KEY": "sk-cli"}
    cmd = [sys.executable, "-m", "gpt2kit.cli", "serve", "--model", str(folder), "--device", "cpu", "--port", str(port),
           "--model-name", "tiny", "--max-batch-size", "4", "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, proc, 60)
        assert httpx.post(url + "/v1/completions", json={"prompt": "hi"}).status_code == 401  # key from the env var
        r = httpx.post(url + "/v1/completions", headers={"Authorization": "Bearer sk-cli"},
                       json={"model": "tiny", "prompt": "hi", "max_tokens": 4, "temperature": 0}, timeout=30)  # fmt: skip
        assert r.status_code == 200 and r.json()["model"] == "tiny" and r.json()["choices"][0]["finish_reason"]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_cli_bad_flag_is_one_line_error():
    out = subprocess.run([sys.executable, "-m", "gpt2kit.cli", "serve", "--model", "gpt2", "--port", "70000"],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "port must be in 0..65535" in out.stderr and "Traceback" not in out.stderr


def test_cli_banned_phrase_reaches_the_server_and_is_never_generated(tmp_path, monkeypatch):
    """`--banned-phrase` (repeatable) -> ServeConfig -> the engine's filter: a phrase the model writes
    greedily is absent from the served completion, though the same request without the flag has it."""
    import gpt2kit.serve.app
    from gpt2kit import Tokenizer
    from gpt2kit.cli.__main__ import main
    from gpt2kit.generate import SamplingParams, generate
    from gpt2kit.serve.background import BackgroundServer

    model = tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=128)
    folder = save_pretrained(model, tmp_path / "tiny")
    tok = Tokenizer()
    prompt = "Once upon a time"
    free = generate(model, [tok.encode_ordinary(prompt)], SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True))[0]
    phrase = tok.decode(free.token_ids[:2]).strip()
    assert len(phrase) > 3 and phrase in tok.decode(free.token_ids)
    served = {}
    monkeypatch.setattr(gpt2kit.serve.app, "serve", lambda models, config, tokenizer, **kw: served.update(models=models, config=config))
    argv = ["serve", "--model", str(folder), "--device", "cpu", "--banned-phrase", "unrelated", "--banned-phrase", phrase.upper()]
    assert main(argv) == 0
    config = served["config"]
    assert config.banned_phrases == ("unrelated", phrase.upper())
    body = {"prompt": prompt, "max_tokens": 12, "temperature": 0, "logit_bias": {"50256": -100}}
    with BackgroundServer(next(iter(served["models"].values())), dataclasses.replace(config, port=0, api_key=None), tok) as s:
        text = httpx.post(s.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    assert phrase.lower() not in text.lower() and text.startswith(tok.decode(free.token_ids[:1])), (phrase, text)
    with BackgroundServer(model, dataclasses.replace(config, port=0, api_key=None, banned_phrases=()), tok) as s:
        assert phrase in httpx.post(s.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
