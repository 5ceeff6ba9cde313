"""uvicorn off the main thread: `UvicornThread` (used by `gpt2kit serve`, whose main thread runs the engine
loop) and `BackgroundServer` (tests, benchmarks, notebooks: the engine loop on a thread too).

    with BackgroundServer(model, ServeConfig(port=0)) as server:   # port 0: any free port
        openai.OpenAI(base_url=server.url + "/v1", api_key="-").completions.create(...)

It binds config.host (127.0.0.1 by default), waits until uvicorn is listening, and on exit stops
uvicorn and the engine worker, so nothing outlives the `with` block.

uvicorn installs no signal handlers off the main thread, so the owner of the main thread handles Ctrl-C
and SIGTERM itself: `stop_on_signals(stop)` calls `stop()` on either (serve/app.py `serve()`).
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable

from gpt2kit.errors import Gpt2kitError
from gpt2kit.serve.config import ServeConfig
from gpt2kit.serve.worker import Worker, build_worker
from gpt2kit.tokenizer import Tokenizer


class UvicornThread:
    """uvicorn.Server running `app` in a daemon thread; `start()` waits until it listens, `url` is then set."""

    def __init__(self, app, config: ServeConfig, log_level: str = "warning", **uvicorn_kw) -> None:
        import uvicorn

        from gpt2kit.serve.transport import uvicorn_config

        self.config = config
        self.server = uvicorn.Server(uvicorn_config(app, config, log_level, **uvicorn_kw))
        self._thread: threading.Thread | None = None
        self.url = ""

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 30.0, abort: Callable[[], bool] | None = None) -> UvicornThread:
        """Start and wait until listening; raises if it stops first or takes longer than `timeout` s.
        `abort()` true (e.g. a signal came meanwhile) stops waiting and returns."""
        self._thread = threading.Thread(target=self.server.run, name="gpt2kit-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if abort is not None and abort():
                return self
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise Gpt2kitError(f"the server did not start on {self.config.host}:{self.config.port} (port in use?).")
            time.sleep(0.02)
        host, port = self.server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None


@contextlib.contextmanager
def stop_on_signals(stop: Callable[[], None]):
    """While inside, SIGINT (Ctrl-C) and SIGTERM call `stop()` instead of raising/killing; the previous
    handlers come back on exit. Off the main thread signals cannot be caught: nothing is installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handled = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, lambda *_: stop()) for sig in handled}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class BackgroundServer:
    """uvicorn and the engine loop in daemon threads; `url` is http://host:port once started."""

    def __init__(self, model, config: ServeConfig, tokenizer: Tokenizer | None = None, worker: Worker | None = None) -> None:
        from gpt2kit.serve.app import create_app

        self.config = config
        self.tokenizer = tokenizer or Tokenizer()
        self.worker = worker or build_worker(model, self.tokenizer.token_bytes_table, max_batch_size=config.max_batch_size,
                                             max_model_len=config.max_model_len, max_queue=config.max_queue,
                                             request_timeout=config.request_timeout, huge_pages=config.huge_pages)  # fmt: skip
        self.app = create_app(self.worker, config, self.tokenizer)
        self.http = UvicornThread(self.app, config, "warning", lifespan="off", timeout_graceful_shutdown=2)
        self.url = ""

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.worker.start()
        try:
            self.url = self.http.start(timeout).url
        except Gpt2kitError:
            self.worker.close()
            raise
        return self

    def stop(self) -> None:
        self.http.stop()
        self.worker.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
