"""The routers: HTTP only. Each endpoint family is one module-level APIRouter whose routes read the request
(the body, under the server's size limit), call one plain handler (handlers.py) with the app's ServerState,
and wrap the result: a dict as JSON, an async iterator as Server-Sent Events. Errors are raised, typed, and
become status codes in one place (http_errors.py).

    completions_router       POST /v1/completions
    chat_router              POST /v1/chat/completions
    models_router            GET  /v1/models
    operations_router        GET  /health, GET /metrics
    playground_router        GET  /
    insight.py `router`      POST /v1/gpt2kit/detect
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse

from gpt2kit.serve import handlers as H
from gpt2kit.serve import protocol as P
from gpt2kit.serve.protocol import ProtocolError
from gpt2kit.serve.state import State

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

completions_router = APIRouter()
chat_router = APIRouter()
models_router = APIRouter()
operations_router = APIRouter()
playground_router = APIRouter()


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused with 413 as soon as it is (or says it will be) larger than `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise ProtocolError(f"the request body is larger than {limit} bytes; send a smaller request.", status=413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProtocolError(f"the request body is larger than {limit} bytes; send a smaller request.", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def _response(result: dict | AsyncIterator[str]) -> Response:
    if isinstance(result, dict):
        return JSONResponse(result)
    return StreamingResponse(result, media_type="text/event-stream", headers=SSE_HEADERS)


# The route functions keep their names: FastAPI derives each operationId in /openapi.json from them.


@completions_router.post("/v1/completions")
async def completions(request: Request, state: State) -> Response:
    t0 = time.perf_counter()
    req = P.CompletionRequest.parse(await read_body(request, state.config.max_body_bytes))
    return _response(await H.create_completion(state, req, started=t0, disconnected=request.is_disconnected))


@chat_router.post("/v1/chat/completions")
async def chat_completions(request: Request, state: State) -> Response:
    t0 = time.perf_counter()
    req = P.ChatCompletionRequest.parse(await read_body(request, state.config.max_body_bytes))
    return _response(await H.create_chat_completion(state, req, started=t0, disconnected=request.is_disconnected))


@models_router.get("/v1/models")
async def models(state: State) -> JSONResponse:
    return JSONResponse(H.list_models(state))


@operations_router.get("/health")
async def health(state: State) -> JSONResponse:
    status, body = H.health(state)
    return JSONResponse(body, status_code=status)


@operations_router.get("/metrics", response_class=PlainTextResponse)
async def get_metrics(state: State) -> PlainTextResponse:
    return PlainTextResponse(H.metrics_text(state), media_type="text/plain; version=0.0.4")


@playground_router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def playground(state: State) -> HTMLResponse:
    return HTMLResponse(H.playground_page(state))
