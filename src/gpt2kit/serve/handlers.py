"""The request handlers: plain async functions from a parsed request and the ServerState to a response
body (a dict), or to an async iterator of Server-Sent Events for `stream: true`. No HTTP object comes in or
goes out; failures are typed errors (http_errors.py maps them to status codes). The routers (routers.py)
only read the body, call one of these, and wrap what comes back.

    create_completion(state, CompletionRequest)          -> dict | AsyncIterator[str]   POST /v1/completions
    create_chat_completion(state, ChatCompletionRequest) -> dict | AsyncIterator[str]   POST /v1/chat/completions
    list_models(state) -> dict                                                          GET  /v1/models
    health(state) -> (status, dict)                                                     GET  /health
    metrics_text(state) -> str                                                          GET  /metrics
    playground_page(state) -> str                                                       GET  /

Streams are Server-Sent Events exactly as OpenAI sends them: `data: {json}\\n\\n` chunks, then
`data: [DONE]\\n\\n`; an error after the stream started is sent as a `data: {"error": …}` event. Closing a
stream early (the client disconnected), or `disconnected()` turning true while a non-streamed request runs,
cancels the job, which frees its batch slots before the next step.
"""

from __future__ import annotations

import asyncio
import html
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from importlib import resources

from gpt2kit.errors import Gpt2kitError
from gpt2kit.serve import protocol as P
from gpt2kit.serve.http_errors import ClientDisconnected, error_parts
from gpt2kit.serve.logprobs import ChoiceLogprobs
from gpt2kit.serve.protocol import GenerationPlan
from gpt2kit.serve.state import ServerState
from gpt2kit.serve.worker import Delta, Job

Disconnected = Callable[[], Awaitable[bool]]  # polled while a non-streamed request runs: true = the client left


# ---- generation ------------------------------------------------------------------------------------


async def create_completion(state: ServerState, req: P.CompletionRequest, *, started: float | None = None,
                            disconnected: Disconnected | None = None) -> dict | AsyncIterator[str]:  # fmt: skip
    """POST /v1/completions: the response body, or (stream) its SSE events. `started` (perf_counter) is
    when the request arrived, for the time-to-first-token metric."""
    return await _generate(state, req, chat=False, started=started, disconnected=disconnected)


async def create_chat_completion(state: ServerState, req: P.ChatCompletionRequest, *, started: float | None = None,
                                 disconnected: Disconnected | None = None) -> dict | AsyncIterator[str]:  # fmt: skip
    """POST /v1/chat/completions, through the chat template (generate/chat_template.py)."""
    return await _generate(state, req, chat=True, started=started, disconnected=disconnected)


@dataclass
class _Run:
    """One submitted request: what its response is built from."""

    state: ServerState
    job: Job
    plan: GenerationPlan
    rid: str  # the response id
    model: str  # the model name that served it
    chat: bool
    t0: float  # perf_counter when the request arrived

    @property
    def endpoint(self) -> str:
        return "chat" if self.chat else "completions"

    def logprobs(self) -> list[ChoiceLogprobs] | None:
        """One accumulator per choice when the request asked for logprobs."""
        n = self.job.n_choices
        return [ChoiceLogprobs(self.state.tokenizer, self.chat) for _ in range(n)] if self.plan.logprobs is not None else None


async def _generate(state: ServerState, req, *, chat: bool, started: float | None, disconnected: Disconnected | None):
    """The two generation endpoints differ only in their request model, planner and response shape."""
    t0 = time.perf_counter() if started is None else started
    model, worker = state.registry.select(req.model)  # 404 for a model this server does not offer
    plan = (P.plan_chat if chat else P.plan_completion)(req, state.tokenizer, state.config, worker.context_len)
    job = worker.submit(plan.prompts, plan.params)  # QueueFull (503) before any response starts
    run = _Run(state, job, plan, P.new_id("chatcmpl" if chat else "cmpl"), model, chat, t0)
    if plan.stream:
        return _stream(run)
    return await _respond(run, disconnected)


async def _respond(run: _Run, disconnected: Disconnected | None) -> dict:
    texts, reasons, completion_tokens, lps = await _collect(run, disconnected)
    first = run.job.first_token_at or time.monotonic()
    run.state.metrics.observe_ttft(run.endpoint, first - _mono(run.t0))
    make_choice, make_body = (P.chat_choice, P.chat_body) if run.chat else (P.completion_choice, P.completion_body)
    choices = [make_choice(i, texts[i], reasons[i], lps[i].take(always=True) if lps else None) for i in range(len(texts))]
    return make_body(run.rid, P.now(), run.model, choices, P.usage(run.plan.prompt_tokens, completion_tokens))


async def _stream(run: _Run) -> AsyncIterator[str]:
    job, plan, model, rid, chat = run.job, run.plan, run.model, run.rid, run.chat
    created, n_choices, completion_tokens = P.now(), job.n_choices, 0
    lead = _LeadingSpace(n_choices) if chat else None
    lps = run.logprobs()
    echo = [plan.echo[i // plan.params.n] for i in range(n_choices)]  # sent before the choice's first text
    first = True
    try:
        if chat:
            for i in range(n_choices):
                yield sse(
                    P.chat_body(
                        rid, created, model, [P.chat_delta(i, {"role": "assistant", "content": ""}, None)], None, chunk=True
                    )
                )
        elif any(echo) and lps is None:  # with logprobs the echo waits for the prompt's logprobs (first delta)
            for i in range(n_choices):
                if echo[i]:
                    yield sse(P.completion_body(rid, created, model, [P.completion_choice(i, echo[i], None)], None))
            echo = [""] * n_choices
        async for d in job.deltas():
            if d.token is not None:
                completion_tokens += 1
                if first:
                    first = False
                    run.state.metrics.observe_ttft(run.endpoint, time.perf_counter() - run.t0)
            reason = _openai_reason(d.finish_reason)
            lp = _add_logprobs(lps, d, plan)  # this choice's accumulator (None without logprobs)
            if chat:
                text = lead.strip(d.index, d.text)
                if text:  # logprobs of tokens without text yet (held back, stripped) ride on the next chunk
                    yield sse(P.chat_body(rid, created, model, [P.chat_delta(d.index, {"content": text}, None, lp and lp.take())],
                                          None, chunk=True))  # fmt: skip
                if reason is not None:
                    yield sse(
                        P.chat_body(rid, created, model, [P.chat_delta(d.index, {}, reason, lp and lp.take())], None, chunk=True)
                    )
            else:
                text, echo[d.index] = echo[d.index] + d.text, ""
                if text or reason is not None:
                    yield sse(
                        P.completion_body(
                            rid, created, model, [P.completion_choice(d.index, text, reason, lp and lp.take())], None
                        )
                    )
        if plan.include_usage:
            usage = P.usage(plan.prompt_tokens, completion_tokens)
            yield sse(
                P.chat_body(rid, created, model, [], usage, chunk=True)
                if chat
                else P.completion_body(rid, created, model, [], usage)
            )
    except Gpt2kitError as e:
        yield sse(error_parts(e)[1])
    finally:
        if not job.done:
            job.cancel()  # client disconnected (the generator was closed) or an error: free the slots now
    yield "data: [DONE]\n\n"


async def _collect(run: _Run, disconnected: Disconnected | None):
    """Gather a non-streaming response, cancelling the job if the client disconnects meanwhile."""
    job, plan = run.job, run.plan
    n = job.n_choices
    texts, reasons, count = [plan.echo[i // plan.params.n] for i in range(n)], [None] * n, [0]
    lps = run.logprobs()

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
            if disconnected is not None and await disconnected():
                raise ClientDisconnected("the client disconnected before the response was ready.")
    finally:
        if not task.done():
            task.cancel()
        if not job.done:
            job.cancel()
    if run.chat:
        texts = [t.strip() for t in texts]
    return texts, reasons, count[0], lps


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


def sse(obj: dict) -> str:
    """One Server-Sent Event carrying `obj` as compact JSON."""
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


def _mono(perf_t0: float) -> float:
    """A perf_counter timestamp on the monotonic clock (the worker stamps first tokens with monotonic)."""
    return time.monotonic() - (time.perf_counter() - perf_t0)


# ---- models, health, metrics, playground -----------------------------------------------------------


def list_models(state: ServerState) -> dict:
    """GET /v1/models: the base model and each adapter, in the order served."""
    return P.model_list(state.registry.names, state.created)


def health(state: ServerState) -> tuple[int, dict]:
    """GET /health: 200 while every engine worker runs, else 503."""
    if not state.registry.alive:
        return 503, {"status": "error", "detail": "the engine worker is not running"}
    return 200, {"status": "ok"}


def metrics_text(state: ServerState) -> str:
    """GET /metrics: Prometheus text (metrics.py), the workers' counters summed."""
    return state.metrics.render(state.registry.stats)


def playground_page(state: ServerState) -> str:
    """GET /: the playground (static/index.html) with the default model's name filled in."""
    page = resources.files("gpt2kit.serve").joinpath("static/index.html").read_text(encoding="utf-8")
    return page.replace("{{MODEL}}", html.escape(state.config.model_name))
