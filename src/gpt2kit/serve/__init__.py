"""An OpenAI-compatible HTTP server for gpt2kit models, in three layers:

    app.py (router: HTTP only) -> protocol.py (pydantic requests -> SamplingParams) -> worker.py (owns the
    model, continuous batching over the generation engine; never sees an HTTP type)

`create_app(worker, config)` builds the FastAPI app; `serve(...)` runs it with uvicorn. Importing this
package is light: fastapi and uvicorn are imported by app.py only.
"""

from gpt2kit.serve.config import ServeConfig

__all__ = ["ServeConfig"]
