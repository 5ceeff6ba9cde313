"""The playground's one endpoint beyond OpenAI's API: the detector (gpt2kit.insight.detect).

    POST /v1/gpt2kit/detect   {"text": "...", "model": optional}  ->  {"verdict", "probability",
                              "evidence": {"n_tokens", "fast_detect", "log_likelihood", "log_rank",
                              "gltr_top10", "gltr_counts"}, "notes": [...]}

Everything else the Inspect view shows comes from `/v1/completions` (`echo`, `logprobs`, `max_tokens: 0`).
The detector needs the expected log-likelihood and its variance over the whole vocabulary at every position,
which no OpenAI response carries. It reads the served model's own weights in a worker thread; behind the
same EdgeGuard (API key, Host, body limits) as every /v1 route. `model` picks one as for /v1/completions
(an unknown name is a 404).
"""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from gpt2kit.serve.protocol import ProtocolError
from gpt2kit.serve.state import ServerState, State

router = APIRouter()
MAX_TEXT_CHARS = 100_000


@router.post("/v1/gpt2kit/detect")
async def detect(request: Request, state: State) -> JSONResponse:
    return JSONResponse(await detect_text(state, await request.body()))


async def detect_text(state: ServerState, body: bytes) -> dict:
    """The raw JSON body -> the detector's verdict and evidence (a ProtocolError names what was wrong)."""
    from gpt2kit.insight.detect import detect_text as judge

    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ProtocolError('the request body must be JSON, e.g. {"text": "Some text to judge."}.') from None
    text = request.get("text") if isinstance(request, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise ProtocolError('"text" must be a non-empty string: the text to judge.', param="text")
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError(f'"text" is longer than {MAX_TEXT_CHARS} characters; send a shorter text.', param="text")
    model = request.get("model")
    if model is not None and not isinstance(model, str):
        raise ProtocolError('"model" must be a string: a name from /v1/models (or leave it out for the default).', param="model")
    _, worker = state.registry.select(model)  # the one named, or the default
    result = await asyncio.to_thread(judge, worker.engine.model, state.tokenizer, text)
    return result.to_dict()
