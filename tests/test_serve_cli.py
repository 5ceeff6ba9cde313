"""`gpt2kit serve` as a user runs it: a subprocess on 127.0.0.1 serving a saved tiny model, with an API key."""

from __future__ import annotations

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
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up in 60 s"
            time.sleep(0.2)
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
