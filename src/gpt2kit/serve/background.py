"""Run the server in a background thread of this process (tests, benchmarks, notebooks).

    with BackgroundServer(model, ServeConfig(port=0)) as server:   # port 0: any free port
        openai.OpenAI(base_url=server.url + "/v1", api_key="-").completions.create(...)

It binds config.host (127.0.0.1 by default), waits until uvicorn is listening, and on exit stops
uvicorn and the engine worker, so nothing outlives the `with` block.
"""

from __future__ import annotations

import threading
import time

from gpt2kit.errors import Gpt2kitError
from gpt2kit.serve.config import ServeConfig
from gpt2kit.serve.worker import Worker, build_worker
from gpt2kit.tokenizer import Tokenizer


class BackgroundServer:
    """uvicorn + engine worker in daemon threads; `url` is http://host:port once started."""

    def __init__(self, model, config: ServeConfig, tokenizer: Tokenizer | None = None, worker: Worker | None = None) -> None:
        import uvicorn

        from gpt2kit.serve.app import create_app, token_bytes_table
        from gpt2kit.serve.transport import uvicorn_config

        self.config = config
        self.tokenizer = tokenizer or Tokenizer()
        self.worker = worker or build_worker(model, token_bytes_table(self.tokenizer), max_batch_size=config.max_batch_size,
                                             max_model_len=config.max_model_len, max_queue=config.max_queue,
                                             request_timeout=config.request_timeout)  # fmt: skip
        self.app = create_app(self.worker, config, self.tokenizer)
        uv = uvicorn_config(self.app, config, "warning", lifespan="off", timeout_graceful_shutdown=2)
        self._server = uvicorn.Server(uv)
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        self.worker.start()
        self._thread = threading.Thread(target=self._server.run, name="gpt2kit-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise Gpt2kitError(f"the server did not start on {self.config.host}:{self.config.port} (port in use?).")
            time.sleep(0.02)
        host, port = self._server.servers[0].sockets[0].getsockname()[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.worker.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
