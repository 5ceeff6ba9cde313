"""The app: `create_app` assembles the routers, the middleware and the error mapping; `serve` runs it.

    POST /v1/completions        OpenAI completions (JSON, or SSE with stream=true)
    POST /v1/chat/completions   OpenAI chat, through the plain-text chat template (generate/chat_template.py)
    GET  /v1/models             the models served: the base and each --adapter (models.py); `model` picks one
    GET  /health                200 {"status": "ok"} while the engine worker runs, else 503
    GET  /metrics               Prometheus text (metrics.py)
    GET  /                      the playground page (static/index.html)
    POST /v1/gpt2kit/detect     the playground's detector (insight.py)
    GET  /openapi.json          the OpenAPI document, request schemas included (openapi.py); no /docs UI, which
                                would load Swagger UI from a CDN

Layers, as in vLLM's OpenAI server: router (routers.py, insight.py: HTTP only) -> handler (handlers.py: a
parsed request + the ServerState in, a body or SSE events out) -> protocol (protocol.py: validate, plan)
-> worker (worker.py: generate; never sees an HTTP type). The shared state (workers by model name,
tokenizer, config, metrics) is one ServerState on `app.state.server` (state.py).

In front of the routes (security.py): Host check on a loopback bind, the API key on everything but / and
/health, opt-in CORS, a body deadline; uvicorn's timeouts and connection cap are in transport.py.

Every error is OpenAI's JSON shape {"error": {"message", "type", "param", "code"}} with a 4xx status for a
bad request (400 invalid, 401 auth, 404 unknown model/route, 408 timeout, 413 too large, 415 not JSON,
421 foreign Host, 503 busy with Retry-After): one mapping from typed errors, in http_errors.py.
A client that disconnects cancels its request, which frees its batch slots before the next step.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from gpt2kit.errors import Gpt2kitError, warn
from gpt2kit.serve import protocol as P
from gpt2kit.serve import routers
from gpt2kit.serve.config import ServeConfig
from gpt2kit.serve.http_errors import install_error_handlers
from gpt2kit.serve.insight import router as insight_router
from gpt2kit.serve.metrics import MetricsMiddleware
from gpt2kit.serve.models import ModelRegistry
from gpt2kit.serve.openapi import declare_request_bodies
from gpt2kit.serve.security import EdgeGuard
from gpt2kit.serve.state import ServerState
from gpt2kit.serve.worker import Worker
from gpt2kit.tokenizer import Tokenizer


def create_app(worker: Worker | ModelRegistry, config: ServeConfig, tokenizer: Tokenizer | None = None) -> FastAPI:
    """The FastAPI app over a started (or soon started) worker, or several by model name (a ModelRegistry).
    The workers' lifetime is the caller's."""
    state = ServerState.build(worker, config, tokenizer)
    app = FastAPI(title="gpt2kit", version="1", docs_url=None, redoc_url=None)
    app.state.server = state
    install_error_handlers(app)
    for router in (routers.playground_router, routers.operations_router, routers.models_router, routers.completions_router,
                   routers.chat_router, insight_router):  # fmt: skip
        app.include_router(router)
    declare_request_bodies(app, {"/v1/completions": P.CompletionRequest, "/v1/chat/completions": P.ChatCompletionRequest})
    app.add_middleware(EdgeGuard, config=config)  # the last added runs first: CORS -> metrics -> EdgeGuard -> routes
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], max_age=600)  # fmt: skip
    return app


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
        warn(  # a warning to whoever starts the server (gpt2kit.errors.warn); the request log stays logging's
            f"serving on {config.host} without an API key: anyone who can reach this address can use the model. "
            "Set --api-key (or $GPT2KIT_API_KEY)."
        )
    tok = tokenizer or Tokenizer()
    table, wake = tok.token_bytes_table, threading.Condition()  # one wake-up for every model's worker
    workers = {name: build_worker(m, table, max_batch_size=config.max_batch_size, max_model_len=config.max_model_len,
                                  max_queue=config.max_queue, request_timeout=config.request_timeout, wake=wake,
                                  huge_pages=config.huge_pages)
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
