"""The server's edge, in front of every route: which Host names, web origins and callers get in, and how
long a request may take to send its body.

    CORS (only with --cors-origin)  ->  metrics  ->  EdgeGuard (Host, API key, JSON, body deadline)  ->  routes

- **Host.** On a loopback bind only `localhost`, `127.0.0.1` and `[::1]` (with any port) are answered; any
  other Host gets 421. A page on attacker.example whose DNS name is re-pointed at 127.0.0.1 (DNS rebinding)
  is same-origin with its own name, so only the Host header gives it away.
- **API key.** With `api_key` set, every path but `/health` and the playground page `/` needs
  `Authorization: Bearer KEY` (compared in constant time): /v1/*, /metrics, /openapi.json, unknown paths.
- **JSON only.** Every POST must say `Content-Type: application/json` (else 415). A page on another site
  can send a cross-site POST without a preflight only as text/plain or a form, so a keyless local server
  would otherwise run whatever any web page the user visits asks for.
- **CORS.** Off unless origins are configured: then Starlette's CORSMiddleware answers preflights
  (OPTIONS with Access-Control-Request-Method) for those origins before the key is asked for, as browsers
  never send credentials on a preflight, and marks their responses readable.
- **Body deadline.** The whole body must arrive within `body_timeout` seconds of the headers, else 408.
  A response sent before the body was read whole (401, 413, 415, 408) closes the connection, so a client
  cannot keep it open by trickling a body nobody reads. The header deadline, idle keep-alive and the
  connection limit are uvicorn's side (transport.py).

Errors are OpenAI's JSON shape, as everywhere else in the server.
"""

from __future__ import annotations

import asyncio
import hmac
import re

from starlette.datastructures import Headers
from starlette.responses import JSONResponse

from gpt2kit.serve import protocol as P
from gpt2kit.serve.config import LOOPBACK_HOSTS, ServeConfig
from gpt2kit.serve.protocol import ProtocolError

PUBLIC_PATHS = frozenset({"/", "/health"})  # open even with an API key: the page asks for the key itself
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
_HOST = re.compile(r"(\[[^\]]*\]|[^:]*)(?::[0-9]{1,5})?")


class BodyTimeout(ProtocolError):
    """The client did not send its request body in time (408)."""


def is_loopback_host(host: str | None) -> bool:
    """A Host header naming this machine's loopback: localhost, 127.0.0.1 or [::1], with or without a port.
    No Host at all (HTTP/1.0) is accepted: browsers always send one, so it cannot be a rebinding page."""
    if host is None:
        return True
    m = _HOST.fullmatch(host.strip())
    return m is not None and m.group(1).lower() in LOOPBACK_NAMES


def check_api_key(config: ServeConfig, authorization: str | None) -> None:
    """Raise a 401 ProtocolError unless the header is `Bearer <config.api_key>` (constant-time compare)."""
    if config.api_key is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise ProtocolError("missing API key: send it as the header `Authorization: Bearer YOUR_KEY`.", status=401, code="invalid_api_key")
    if not hmac.compare_digest(given.strip().encode(), config.api_key.encode()):
        raise ProtocolError("incorrect API key provided.", status=401, code="invalid_api_key")


class EdgeGuard:
    """Pure ASGI middleware (not BaseHTTPMiddleware, which breaks streaming cancellation)."""

    def __init__(self, app, config: ServeConfig) -> None:
        self.app, self.config = app, config
        self.loopback = config.host in LOOPBACK_HOSTS

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        try:
            host = headers.get("host")
            if self.loopback and not is_loopback_host(host):
                raise ProtocolError(f"this server listens on loopback and answers only the Host names localhost, 127.0.0.1 and "
                                    f"[::1], not {host[:100]!r}: open it as http://127.0.0.1:{self.config.port or 'PORT'}/ "
                                    "(a page that sends another Host may be a DNS-rebinding attack).",
                                    status=421, code="host_not_allowed")  # fmt: skip
            if scope["path"] not in PUBLIC_PATHS:
                check_api_key(self.config, headers.get("authorization"))
            content_type = headers.get("content-type", "")
            if scope["method"] == "POST" and content_type.partition(";")[0].strip().lower() != "application/json":
                raise ProtocolError(f"the request body must be JSON sent with `Content-Type: application/json`, not "
                                    f"{content_type[:60] or 'no Content-Type'!r}.", status=415, code="unsupported_media_type")  # fmt: skip
        except ProtocolError as e:
            extra = {"WWW-Authenticate": "Bearer"} if e.status == 401 else {}
            response = JSONResponse(P.error_body(e.message, e.type, e.param, e.code), status_code=e.status,
                                    headers={**extra, "Connection": "close"})  # fmt: skip
            return await response(scope, receive, send)
        has_body = headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
        await self.app(scope, *self._body_deadline(receive, send, has_body))

    def _body_deadline(self, receive, send, has_body: bool):
        """(receive, send) wrappers: the body must be complete by the deadline; an early response closes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.body_timeout
        body_done = not has_body

        async def timed_receive():
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                raise BodyTimeout(f"the request body did not arrive within {self.config.body_timeout:g} s; send it at once "
                                  "(the server's --body-timeout).", status=408, code="timeout") from None  # fmt: skip
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def closing_send(message):
            if message["type"] == "http.response.start" and not body_done:
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        return timed_receive, closing_send
