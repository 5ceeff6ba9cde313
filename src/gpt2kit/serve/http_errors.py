"""Typed errors -> HTTP: the one mapping from what the handlers, the protocol and the worker raise to a
status code, OpenAI's error JSON and headers. The app's exception handler uses it for a response; a stream
that already started uses the same body for its `data: {"error": …}` event.

    ProtocolError        its own status (400 invalid, 401 auth, 404 unknown model, 408, 413, 421, 415)
    QueueFull            503 + Retry-After
    RequestTimeout       408
    WorkerError          500 (a bug in the engine, not bad input)
    ClientDisconnected   499 (nobody reads it: the client went away while its request ran)
    any other Gpt2kitError (e.g. the engine's InputError / ConfigError)   400
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from gpt2kit.errors import Gpt2kitError
from gpt2kit.serve.protocol import ProtocolError, error_body
from gpt2kit.serve.worker import QueueFull, RequestTimeout, WorkerError

log = logging.getLogger("gpt2kit.serve")


class ClientDisconnected(Gpt2kitError):
    """The client went away before its response was ready; its job was cancelled (499)."""


def error_parts(e: Gpt2kitError) -> tuple[int, dict, dict[str, str] | None]:
    """(status, OpenAI error body, extra headers) for a typed error."""
    if isinstance(e, ProtocolError):
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return e.status, error_body(e.message, e.type, e.param, e.code), headers
    if isinstance(e, QueueFull):
        return 503, error_body(str(e), "server_overloaded"), {"Retry-After": str(e.retry_after)}
    if isinstance(e, RequestTimeout):
        return 408, error_body(str(e), "timeout"), None
    if isinstance(e, WorkerError):
        return 500, error_body(str(e), "server_error"), None
    if isinstance(e, ClientDisconnected):
        return 499, {}, None
    return 400, error_body(str(e), "invalid_request_error"), None


def install_error_handlers(app: FastAPI) -> None:
    """Every error a route can meet becomes OpenAI's JSON shape (or an unread 499 for a client that left)."""

    @app.exception_handler(Gpt2kitError)  # Starlette looks handlers up along the exception's MRO: every subclass
    async def _typed(_: Request, e: Gpt2kitError) -> Response:
        status, body, headers = error_parts(e)
        return Response(status_code=status) if status == 499 else JSONResponse(body, status_code=status, headers=headers)

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, _: ClientDisconnect) -> Response:
        log.info("%s %s: the client disconnected before sending the whole body", request.method, request.url.path)
        return Response(status_code=499)  # nobody reads this

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = (
            f"{request.method} {request.url.path} does not exist on this server."
            if e.status_code in (404, 405)
            else str(e.detail)
        )
        return JSONResponse(error_body(message, "invalid_request_error"), status_code=e.status_code, headers=e.headers)
