"""The server's edge against a careless or hostile client: what needs the key, which Host and Content-Type
are answered, CORS when asked for, the request schemas in /openapi.json, and slow or vanishing clients
(the real `gpt2kit serve` in a subprocess, with one-second deadlines)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest

from conftest import tiny_gpt
from gpt2kit import save_pretrained
from gpt2kit.errors import ConfigError
from gpt2kit.serve.background import BackgroundServer
from gpt2kit.serve.config import ServeConfig
from gpt2kit.serve.security import is_loopback_host
from test_serve_cli import wait_healthy

KEY = "sk-edge-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
COMPLETION = {"prompt": "hi", "max_tokens": 2, "temperature": 0}


def tiny():
    return tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=128)


@pytest.fixture(scope="module")
def server():
    cfg = ServeConfig(port=0, api_key=KEY, model_name="tiny<b>&", max_tokens_limit=16)
    with BackgroundServer(tiny(), cfg) as s:
        yield s


@pytest.fixture(scope="module")
def cors_server():
    cfg = ServeConfig(port=0, api_key=KEY, model_name="tiny", max_tokens_limit=16, cors_origins=("http://localhost:3000",))
    with BackgroundServer(tiny(), cfg) as s:
        yield s


def error(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


# ---- the API key covers everything but /health and the page -------------------------------------------


@pytest.mark.parametrize("method,path", [("GET", "/metrics"), ("GET", "/openapi.json"), ("GET", "/v1/models"),
                                         ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                                         ("GET", "/docs"), ("GET", "/no/such/path")])  # fmt: skip
def test_the_key_guards_every_path_but_health_and_the_page(server, method, path):
    r = httpx.request(method, server.url + path, json=COMPLETION if method == "POST" else None)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (path, r.text)
    assert error(r)["code"] == "invalid_api_key"
    wrong = httpx.request(method, server.url + path, headers={"Authorization": "Bearer sk-edge-0124"})
    assert wrong.status_code == 401 and "incorrect API key" in error(wrong)["message"]


def test_open_paths_and_keyed_paths_with_the_key(server):
    assert httpx.get(server.url + "/health").status_code == 200
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "tiny&lt;b&gt;&amp;" in page.text and "tiny<b>&" not in page.text  # escaped
    metrics = httpx.get(server.url + "/metrics", headers=AUTH)
    assert metrics.status_code == 200 and "gpt2kit_http_requests_total" in metrics.text
    assert httpx.get(server.url + "/openapi.json", headers=AUTH).status_code == 200
    # no Swagger UI: it would load its scripts from a public CDN
    assert httpx.get(server.url + "/docs", headers=AUTH).status_code == 404
    assert "cdn" not in page.text.lower() and "<script src=" not in page.text


def test_page_names_the_model_not_its_folder(tmp_path):
    from gpt2kit.cli.serve import served_name

    folder = tmp_path / "runs" / "my-gpt2"
    folder.mkdir(parents=True)
    assert served_name(str(folder)) == "my-gpt2"
    assert served_name("gpt2-medium") == "gpt2-medium" and served_name("openai-community/gpt2") == "openai-community/gpt2"


# ---- cross-site requests: Content-Type, Host, CORS -----------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
def test_a_body_that_is_not_declared_json_gets_415(server, content_type):
    import json

    headers = {**AUTH, **({"Content-Type": content_type} if content_type else {})}
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/any-other-route"):  # every POST, before routing
        r = httpx.post(server.url + path, content=json.dumps(COMPLETION), headers=headers)
        assert r.status_code == 415, r.text
        assert "Content-Type: application/json" in error(r)["message"] and error(r)["type"] == "invalid_request_error"
    ok = httpx.post(server.url + "/v1/completions", content=json.dumps(COMPLETION),
                    headers={**AUTH, "Content-Type": "application/json; charset=utf-8"}, timeout=30)  # fmt: skip
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.nip.io", "localhost.evil.example", "10.0.0.5:80"])
def test_a_loopback_server_refuses_foreign_host_names(server, host):
    for path in ("/health", "/", "/v1/completions"):
        r = httpx.post(server.url + path, json=COMPLETION, headers={**AUTH, "Host": host})
        assert r.status_code == 421, (host, path, r.status_code)
        assert error(r)["code"] == "host_not_allowed" and "DNS-rebinding" in error(r)["message"]


def test_loopback_host_names_are_answered(server):
    port = server.url.rsplit(":", 1)[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST", "127.0.0.1"):
        assert httpx.get(server.url + "/health", headers={"Host": host}).status_code == 200, host
    assert is_loopback_host(None)  # HTTP/1.0 without Host: no browser sends that
    assert not any(is_loopback_host(h) for h in ("", "[::2]:80", "127.0.0.2", "localhost:80:80", "[::1]x"))


def test_a_public_bind_answers_any_host():
    from gpt2kit.serve.security import EdgeGuard

    guard = EdgeGuard(app=None, config=ServeConfig(host="0.0.0.0", api_key=KEY))
    assert not guard.loopback


def test_no_cors_without_the_flag(server):
    pre = httpx.options(server.url + "/v1/completions", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers and pre.status_code >= 400
    r = httpx.post(server.url + "/v1/completions", json=COMPLETION, headers={**AUTH, "Origin": "http://localhost:3000"}, timeout=30)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_cors_origin_answers_preflight_for_that_origin_only(cors_server):
    url, origin = cors_server.url + "/v1/chat/completions", "http://localhost:3000"
    pre = httpx.options(url, headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                                      "Access-Control-Request-Headers": "authorization, content-type"})  # fmt: skip
    assert pre.status_code == 200, pre.text  # no key on a preflight: browsers never send one
    assert pre.headers["access-control-allow-origin"] == origin
    assert "POST" in pre.headers["access-control-allow-methods"]
    assert {"authorization", "content-type"} <= {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
    other = httpx.options(url, headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert other.status_code == 400 and "access-control-allow-origin" not in other.headers
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = httpx.post(url, json=body, headers={**AUTH, "Origin": origin}, timeout=30)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    denied = httpx.post(url, json=body, headers={"Origin": origin})  # the key is still required
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == origin  # readable by the page


@pytest.mark.parametrize("origin", ["localhost:3000", "http://localhost:3000/", "http://x.example/path", "ftp://x.example", ""])
def test_cors_origin_must_be_an_origin(origin):
    with pytest.raises(ConfigError, match="not a web origin"):
        ServeConfig(cors_origins=(origin,))
    ServeConfig(cors_origins=("https://app.example:8443", "http://[::1]:3000", "*"))


# ---- /openapi.json declares the request bodies ------------------------------------------------------------


def test_openapi_declares_the_request_schemas(server):
    jsonschema_rs = pytest.importorskip("jsonschema_rs", reason="comes with schemathesis (the dev extra)")
    doc = httpx.get(server.url + "/openapi.json", headers=AUTH).json()
    for path, name, good, bad in (
        ("/v1/completions", "CompletionRequest", {"prompt": ["a", "b"], "max_tokens": 3, "stop": "x"}, {"prompt": "a", "max_tokenz": 3}),
        ("/v1/chat/completions", "ChatCompletionRequest", {"messages": [{"role": "user", "content": "hi"}], "logprobs": True},
         {"messages": [{"role": "tool", "content": "hi"}]}),
    ):  # fmt: skip
        body = doc["paths"][path]["post"]["requestBody"]
        ref = body["content"]["application/json"]["schema"]["$ref"]
        assert body["required"] and ref == f"#/components/schemas/{name}"
        validator = jsonschema_rs.Draft202012Validator({**doc, "$ref": ref})
        assert validator.is_valid(good) and not validator.is_valid(bad)
        # the server still validates as before: same status and error shape as the schema predicts
        assert httpx.post(server.url + path, json=good, headers=AUTH, timeout=30).status_code == 200
        r = httpx.post(server.url + path, json=bad, headers=AUTH)
        assert r.status_code == 400 and error(r)["param"] in ("max_tokenz", "messages.0.role")
    typed = httpx.post(server.url + "/v1/completions", json={"prompt": "a", "max_tokens": "5"}, headers=AUTH)
    assert typed.status_code == 400 and error(typed)["param"] == "max_tokens"  # "5" is still not an int


# ---- slow and vanishing clients against the real command ------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory):
    """`gpt2kit serve` with 1-second header/body/keep-alive deadlines and at most 12 connections."""
    folder = save_pretrained(tiny(), tmp_path_factory.mktemp("edge") / "my-model")
    port = free_port()
    cmd = [sys.executable, "-m", "gpt2kit.cli", "serve", "--model", str(folder), "--device", "cpu", "--port", str(port),
           "--header-timeout", "1", "--body-timeout", "1", "--keep-alive-timeout", "1", "--max-connections", "12",
           "--max-tokens-limit", "16", "--log-level", "info"]  # fmt: skip
    log = tmp_path_factory.mktemp("edge_log") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=out, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, 90, output=log.read_text)
        yield url, port, log, folder
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """(did the server close the socket within `seconds`, what it sent before closing)."""
    sock.settimeout(0.1)
    got, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def test_slow_clients_are_cut_off_while_the_server_keeps_answering(cli_server):
    url, port, log, _ = cli_server
    answered, failures, stop = [0], [], threading.Event()

    def keep_asking():  # a well-behaved client, all along
        with httpx.Client(base_url=url, timeout=10) as http:
            while not stop.is_set():
                r = http.post("/v1/completions", json=COMPLETION)
                (failures.append(r.status_code) if r.status_code != 200 else None)
                answered[0] += 1
                time.sleep(0.05)

    asker = threading.Thread(target=keep_asking)
    asker.start()
    try:
        time.sleep(0.3)
        t0 = time.monotonic()
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]  # connect, say nothing
        partial = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # half a request line
        for s in partial:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        slow_body = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]  # headers, then half the body
        for s in slow_body:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n{\"prompt\":")  # fmt: skip
        for s in idle + partial:
            closed, got = closed_within(s, 4.0)
            assert closed and got == b"", f"an idle socket was still open {time.monotonic() - t0:.1f} s later"
        for s in slow_body:
            closed, got = closed_within(s, 4.0)
            assert closed and got.startswith(b"HTTP/1.1 408"), got[:200]
            assert b'"code":"timeout"' in got and b"connection: close" in got.lower()
        assert time.monotonic() - t0 < 4.0  # 1 s deadlines; generous for a loaded 2-core machine
        before = answered[0]
        time.sleep(0.5)
        assert answered[0] > before  # still answering after the slow clients are gone
    finally:
        stop.set()
        asker.join(30)
        for s in idle + partial + slow_body:
            s.close()
    assert not failures and answered[0] >= 5, (failures, answered)
    text = log.read_text()
    assert "no complete request headers within 1 s" in text


def test_idle_keep_alive_connection_is_closed(cli_server):
    url, port, _, _ = cli_server
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    closed, got = closed_within(s, 3.0)
    s.close()
    assert closed and got.startswith(b"HTTP/1.1 200"), got[:100]


def test_oversized_headers_are_refused(cli_server):
    url, port, _, _ = cli_server
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 20000)  # headers still unfinished
    closed, got = closed_within(s, 0.8)  # refused at once, not at the 1 s header deadline
    s.close()
    assert closed and got.startswith(b"HTTP/1.1 400"), got[:100]  # 16 KiB of request line + headers at most
    assert httpx.get(url + "/health", timeout=5).status_code == 200


def test_connection_limit_refuses_beyond_it(cli_server):
    url, port, _, _ = cli_server
    held = [socket.create_connection(("127.0.0.1", port)) for _ in range(12)]
    try:
        time.sleep(0.2)
        r = httpx.get(url + "/health", timeout=5)
        assert r.status_code == 503
    finally:
        for s in held:
            s.close()
    deadline = time.monotonic() + 5
    while httpx.get(url + "/health", timeout=5).status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_client_gone_mid_body_is_one_info_line(cli_server):
    url, port, log, folder = cli_server
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
              b"Content-Length: 100\r\n\r\n{\"prompt\":")  # fmt: skip
    time.sleep(0.3)
    s.close()
    deadline = time.monotonic() + 5
    while "disconnected before sending the whole body" not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.1)
    text = log.read_text()
    assert "Traceback" not in text and "ERROR" not in text, text[-3000:]
    assert [line for line in text.splitlines() if "disconnected before" in line][0].startswith("INFO")
    # the model is served under its folder's name, and no page shows the folder's path
    r = httpx.get(url + "/v1/models")
    assert [m["id"] for m in r.json()["data"]] == ["my-model"]
    assert str(folder) not in httpx.get(url + "/").text
