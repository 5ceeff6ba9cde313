"""The router: HTTP only. FastAPI routes -> protocol (validate, plan) -> worker (generate) -> JSON or SSE.

    POST /v1/completions        OpenAI completions (JSON, or SSE with stream=true)
    POST /v1/chat/completions   OpenAI chat, through the plain-text chat template (chat_template.py)
    GET  /v1/models             the models served: the base and each --adapter (models.py); `model` picks one
    GET  /health                200 {"status": "ok"} while the engine worker runs, else 503
    GET  /metrics               Prometheus text (metrics.py)
    GET  /                      the playground page (static/index.html)
    GET  /openapi.json          the OpenAPI document, request schemas included (openapi.py); no /docs UI, which
                                would load Swagger UI from a CDN

In front of the routes (security.py): Host check on a loopback bind, the API key on everything but / and
/health, opt-in CORS, a body deadline; uvicorn's timeouts and connection cap are in transport.py.

Every error is OpenAI's JSON shape {"error": {"message", "type", "param", "code"}} with a 4xx status for a
bad request (400 invalid, 401 auth, 404 unknown model/route, 408 timeout, 413 too large, 415 not JSON,
421 foreign Host, 503 busy with Retry-After). Streams are Server-Sent Events exactly as OpenAI sends them: `data: {json}\\n\\n` chunks,
then `data: [DONE]\\n\\n`; an error after the stream started is sent as a `data: {"error": …}` event.
A client that disconnects cancels its request, which frees its batch slots before the next step.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import time
from collections.abc import AsyncIterator
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect

from gpt2kit.errors import Gpt2kitError
from gpt2kit.serve import protocol as P
from gpt2kit.serve.config import ServeConfig
from gpt2kit.serve.insight import router as insight_router
from gpt2kit.serve.logprobs import ChoiceLogprobs
from gpt2kit.serve.metrics import Metrics, MetricsMiddleware
from gpt2kit.serve.models import ModelRegistry
from gpt2kit.serve.openapi import declare_request_bodies
from gpt2kit.serve.protocol import GenerationPlan, ProtocolError
from gpt2kit.serve.security import EdgeGuard
from gpt2kit.serve.worker import Delta, Job, QueueFull, RequestTimeout, Worker, WorkerError
from gpt2kit.tokenizer import Tokenizer

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
log = logging.getLogger("gpt2kit.serve")


def create_app(worker: Worker | ModelRegistry, config: ServeConfig, tokenizer: Tokenizer | None = None) -> FastAPI:
    """The FastAPI app over a started (or soon started) worker, or several by model name (a ModelRegistry).
    The workers' lifetime is the caller's."""
    tok = tokenizer or Tokenizer()
    registry = worker if isinstance(worker, ModelRegistry) else ModelRegistry({config.model_name: worker})
    metrics = Metrics()
    created = P.now()
    app = FastAPI(title="gpt2kit", version="1", docs_url=None, redoc_url=None)
    app.state.worker, app.state.metrics, app.state.config = worker, metrics, config

    # ---- errors -> OpenAI's shape -------------------------------------------------------------------
    @app.exception_handler(ProtocolError)
    async def _protocol_error(_: Request, e: ProtocolError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(P.error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=headers)

    @app.exception_handler(QueueFull)
    async def _queue_full(_: Request, e: QueueFull) -> JSONResponse:
        return JSONResponse(P.error_body(str(e), "server_overloaded"), status_code=503, headers={"Retry-After": str(e.retry_after)})

    @app.exception_handler(RequestTimeout)
    async def _timeout(_: Request, e: RequestTimeout) -> JSONResponse:
        return JSONResponse(P.error_body(str(e), "timeout"), status_code=408)

    @app.exception_handler(WorkerError)
    async def _worker_error(_: Request, e: WorkerError) -> JSONResponse:
        return JSONResponse(P.error_body(str(e), "server_error"), status_code=500)

    @app.exception_handler(Gpt2kitError)
    async def _bad_input(_: Request, e: Gpt2kitError) -> JSONResponse:  # e.g. the engine's own InputError/ConfigError
        return JSONResponse(P.error_body(str(e), "invalid_request_error"), status_code=400)

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, _: ClientDisconnect) -> Response:
        log.info("%s %s: the client disconnected before sending the whole body", request.method, request.url.path)
        return Response(status_code=499)  # nobody reads this

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path} does not exist on this server." if e.status_code in (404, 405) else str(e.detail)
        return JSONResponse(P.error_body(message, "invalid_request_error"), status_code=e.status_code, headers=e.headers)

    # ---- edge checks --------------------------------------------------------------------------------
    async def read_body(request: Request) -> bytes:
        limit = config.max_body_bytes
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

    # ---- routes -------------------------------------------------------------------------------------
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground() -> HTMLResponse:
        page = resources.files("gpt2kit.serve").joinpath("static/index.html").read_text(encoding="utf-8")
        return HTMLResponse(page.replace("{{MODEL}}", html.escape(config.model_name)))

    @app.get("/health")
    async def health() -> JSONResponse:
        if not registry.alive:
            return JSONResponse({"status": "error", "detail": "the engine worker is not running"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=PlainTextResponse)
    async def get_metrics() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(registry.stats), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        return JSONResponse(P.model_list(registry.names, created))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _respond(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _respond(request, chat=True)

    async def _respond(request: Request, *, chat: bool) -> Response:
        """The two generation endpoints differ only in their request model, planner and response shape."""
        t0 = time.perf_counter()
        body = await read_body(request)
        req = P.ChatCompletionRequest.parse(body) if chat else P.CompletionRequest.parse(body)
        model, chosen = registry.select(req.model)  # 404 for a model this server does not offer
        plan = (P.plan_chat if chat else P.plan_completion)(req, tok, config, chosen.context_len)
        job = chosen.submit(plan.prompts, plan.params)
        rid = P.new_id("chatcmpl" if chat else "cmpl")
        if plan.stream:
            return StreamingResponse(_stream(job, plan, rid, model, chat=chat, t0=t0), media_type="text/event-stream", headers=SSE_HEADERS)
        texts, reasons, completion_tokens, lps = await _collect(job, request, plan, chat=chat)
        if texts is None:
            return Response(status_code=499)  # the client went away; nobody reads this
        metrics.observe_ttft("chat" if chat else "completions", (job.first_token_at or time.monotonic()) - _mono(t0))
        make_choice, make_body = (P.chat_choice, P.chat_body) if chat else (P.completion_choice, P.completion_body)
        choices = [make_choice(i, texts[i], reasons[i], lps[i].take(always=True) if lps else None) for i in range(len(texts))]
        return JSONResponse(make_body(rid, P.now(), model, choices, P.usage(plan.prompt_tokens, completion_tokens)))

    # ---- generation -> responses --------------------------------------------------------------------
    async def _stream(job: Job, plan: GenerationPlan, rid: str, model: str, *, chat: bool, t0: float) -> AsyncIterator[str]:
        created, n_choices, completion_tokens = P.now(), job.n_choices, 0
        lead = _LeadingSpace(n_choices) if chat else None
        lps = _choice_logprobs(plan, n_choices, chat)
        echo = [plan.echo[i // plan.params.n] for i in range(n_choices)]  # sent before the choice's first text
        first = True
        try:
            if chat:
                for i in range(n_choices):
                    yield _sse(P.chat_body(rid, created, model, [P.chat_delta(i, {"role": "assistant", "content": ""}, None)], None, chunk=True))
            elif any(echo) and lps is None:  # with logprobs the echo waits for the prompt's logprobs (first delta)
                for i in range(n_choices):
                    if echo[i]:
                        yield _sse(P.completion_body(rid, created, model, [P.completion_choice(i, echo[i], None)], None))
                echo = [""] * n_choices
            async for d in job.deltas():
                if d.token is not None:
                    completion_tokens += 1
                    if first:
                        first = False
                        metrics.observe_ttft("chat" if chat else "completions", time.perf_counter() - t0)
                reason = _openai_reason(d.finish_reason)
                lp = _add_logprobs(lps, d, plan)  # this choice's accumulator (None without logprobs)
                if chat:
                    text = lead.strip(d.index, d.text)
                    if text:  # logprobs of tokens without text yet (held back, stripped) ride on the next chunk
                        yield _sse(P.chat_body(rid, created, model, [P.chat_delta(d.index, {"content": text}, None, lp and lp.take())],
                                               None, chunk=True))  # fmt: skip
                    if reason is not None:
                        yield _sse(P.chat_body(rid, created, model, [P.chat_delta(d.index, {}, reason, lp and lp.take())], None, chunk=True))
                else:
                    text, echo[d.index] = echo[d.index] + d.text, ""
                    if text or reason is not None:
                        yield _sse(P.completion_body(rid, created, model, [P.completion_choice(d.index, text, reason, lp and lp.take())], None))
            if plan.include_usage:
                usage = P.usage(plan.prompt_tokens, completion_tokens)
                body = P.chat_body(rid, created, model, [], usage, chunk=True) if chat else P.completion_body(rid, created, model, [], usage)
                yield _sse(body)
        except Gpt2kitError as e:
            kind = "timeout" if isinstance(e, RequestTimeout) else "server_error" if isinstance(e, WorkerError) else "invalid_request_error"
            yield _sse(P.error_body(str(e), kind))
        finally:
            if not job.done:
                job.cancel()  # client disconnected (the generator was closed) or an error: free the slots now
        yield "data: [DONE]\n\n"

    async def _collect(job: Job, request: Request, plan: GenerationPlan, chat: bool = False):
        """Gather a non-streaming response, cancelling the job if the client disconnects meanwhile."""
        n = job.n_choices
        texts, reasons, count = [plan.echo[i // plan.params.n] for i in range(n)], [None] * n, [0]
        lps = _choice_logprobs(plan, n, chat)

        async def gather() -> None:
            async for d in job.deltas():
                _add_logprobs(lps, d, plan)
                texts[d.index] += d.text
                count[0] += d.token is not None
                if d.finish_reason is not None:
                    reasons[d.index] = _openai_reason(d.finish_reason)

        task = asyncio.ensure_future(gather())
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=0.25)
                if done:
                    task.result()  # re-raises RequestTimeout / WorkerError
                    break
                if await request.is_disconnected():
                    return None, None, 0, None
        finally:
            if not task.done():
                task.cancel()
            if not job.done:
                job.cancel()
        if chat:
            texts = [t.strip() for t in texts]
        return texts, reasons, count[0], lps

    def _choice_logprobs(plan: GenerationPlan, n: int, chat: bool) -> list[ChoiceLogprobs] | None:
        return [ChoiceLogprobs(tok, chat) for _ in range(n)] if plan.logprobs is not None else None

    def _add_logprobs(lps: list[ChoiceLogprobs] | None, d: Delta, plan: GenerationPlan) -> ChoiceLogprobs | None:
        """Feed a delta's logprob records (the echoed prompt's first) to its choice's accumulator."""
        if lps is None:
            return None
        lp = lps[d.index]
        if d.prompt_logprobs is not None:
            lp.add_prompt(plan.prompts[d.index // plan.params.n], d.prompt_logprobs)
        if d.logprob is not None:
            lp.add(d.logprob)
        return lp

    app.include_router(insight_router)  # POST /v1/gpt2kit/detect (insight.py)
    declare_request_bodies(app, {"/v1/completions": P.CompletionRequest, "/v1/chat/completions": P.ChatCompletionRequest})
    app.add_middleware(EdgeGuard, config=config)  # the last added runs first: CORS -> metrics -> EdgeGuard -> routes
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)  # fmt: skip
    return app


class _LeadingSpace:
    """Chat replies follow "Assistant:", so the model starts them with a space: drop leading whitespace."""

    def __init__(self, n: int) -> None:
        self.started = [False] * n

    def strip(self, index: int, text: str) -> str:
        if not self.started[index]:
            text = text.lstrip()
            self.started[index] = bool(text)
        return text


def _openai_reason(reason: str | None) -> str | None:
    return None if reason is None else ("stop" if reason == "cancelled" else reason)


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _mono(perf_t0: float) -> float:
    """A perf_counter timestamp on the monotonic clock (the worker stamps first tokens with monotonic)."""
    return time.monotonic() - (time.perf_counter() - perf_t0)


def serve(model, config: ServeConfig, tokenizer: Tokenizer | None = None, log_level: str = "info") -> None:
    """Serve `model` until Ctrl-C or SIGTERM: the engine loop on THIS thread (the main thread: torch's CPU
    kernels run fastest there once the model was loaded on it) and uvicorn (one process) in a daemon
    thread, running the app on config.host:config.port. `model` may be a dict name -> GPT (the first is the
    default): one worker each, chosen per request by `model` (models.py), all stepped by the one loop.
    On a signal: pending requests fail with "the server is shutting down", uvicorn stops, and it returns."""
    import threading

    from gpt2kit.serve.background import UvicornThread, stop_on_signals
    from gpt2kit.serve.transport import log_config_with_gpt2kit
    from gpt2kit.serve.worker import EngineLoop, build_worker

    if config.is_public and not config.api_key:
        log.warning(
            "serving on %s without an API key: anyone who can reach this address can use the model. "
            "Set --api-key (or $GPT2KIT_API_KEY).",
            config.host,
        )
    tok = tokenizer or Tokenizer()
    table, wake = tok.token_bytes_table, threading.Condition()  # one wake-up for every model's worker
    workers = {name: build_worker(m, table, max_batch_size=config.max_batch_size, max_model_len=config.max_model_len,
                                  max_queue=config.max_queue, request_timeout=config.request_timeout, wake=wake)
               for name, m in (model if isinstance(model, dict) else {config.model_name: model}).items()}  # fmt: skip
    app = create_app(ModelRegistry(workers), config, tok)
    loop = EngineLoop(list(workers.values()))
    http = UvicornThread(app, config, log_level, log_config=log_config_with_gpt2kit(log_level), timeout_graceful_shutdown=5)
    with stop_on_signals(loop.stop):
        loop.open()  # requests are accepted as soon as uvicorn listens; they wait for run() below
        try:
            http.start(timeout=60, abort=lambda: loop.stopping)
            loop.run(until=lambda: not http.alive)  # returns on a signal, failing what is still pending
        finally:
            stopped = loop.stopping
            loop.stop()
            http.stop()
    if not stopped:
        raise Gpt2kitError(f"the HTTP server on {config.host}:{config.port} stopped by itself; see the log above.")
