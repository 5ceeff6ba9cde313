"""The playground's one endpoint beyond OpenAI's API: the detector (gpt2kit.insight.detect).

    POST /v1/gpt2kit/detect   {"text": "...", "model": optional}  ->  {"verdict", "probability",
                              "evidence": {"n_tokens", "fast_detect", "log_likelihood", "log_rank",
                              "gltr_top10", "gltr_counts"}, "notes": [...]}

Everything else the Inspect view shows comes from `/v1/completions` (`echo`, `logprobs`, `max_tokens: 0`).
The detector needs the expected log-likelihood and its variance over the whole vocabulary at every position,
which no OpenAI response carries. It reads the served model's own weights in a worker thread; behind the
same EdgeGuard (API key, Host, body limits) as every /v1 route.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gpt2kit.serve.protocol import ProtocolError

router = APIRouter()
MAX_TEXT_CHARS = 100_000


@router.post("/v1/gpt2kit/detect")
async def detect(request: Request) -> JSONResponse:
    from gpt2kit.insight.detect import detect_text
    from gpt2kit.tokenizer import Tokenizer

    try:
        body = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError('the request body must be JSON, e.g. {"text": "Some text to judge."}.') from None
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise ProtocolError('"text" must be a non-empty string: the text to judge.', param="text")
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError(f'"text" is longer than {MAX_TEXT_CHARS} characters; send a shorter text.', param="text")
    worker = request.app.state.worker
    if hasattr(worker, "select"):  # several models served: the one named, or the default
        _, worker = worker.select(body.get("model"))
    result = await asyncio.to_thread(detect_text, worker.engine.model, Tokenizer(), text)
    return JSONResponse(result.to_dict())
