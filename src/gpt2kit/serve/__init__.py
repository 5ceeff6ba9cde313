"""An OpenAI-compatible HTTP server for gpt2kit models, in layers:

    routers.py (HTTP only) -> handlers.py (plain functions: request + ServerState -> body or SSE events)
    -> protocol.py (pydantic requests -> SamplingParams) -> worker.py (owns the model, continuous batching
    over the generation engine; never sees an HTTP type)

`create_app(worker, config)` (app.py) assembles the FastAPI app; `serve(...)` runs it with uvicorn.
Importing this package is light: fastapi and uvicorn are imported only by the modules that serve HTTP.
"""

from gpt2kit.serve.config import ServeConfig

__all__ = ["ServeConfig"]
