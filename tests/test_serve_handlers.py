"""The server's request handlers called directly, without HTTP: a parsed request and a ServerState in, a
response body (or SSE events) out, typed errors for failures. The worker is a scripted stand-in with the
real Worker's interface (`submit(prompts, params) -> Job`, `Job.deltas()`, `cancel()`), so each test knows
exactly which deltas the handler turns into a response."""

from __future__ import annotations

import asyncio
import json

import pytest

from gpt2kit.generate.chat_template import DEFAULT_TEMPLATE, ChatTurn
from gpt2kit.serve import handlers as H
from gpt2kit.serve.config import ServeConfig
from gpt2kit.serve.http_errors import ClientDisconnected, error_parts
from gpt2kit.serve.models import ModelRegistry
from gpt2kit.serve.protocol import ChatCompletionRequest, CompletionRequest, ProtocolError
from gpt2kit.serve.state import ServerState
from gpt2kit.serve.worker import Delta, QueueFull, WorkerStats
from gpt2kit.tokenizer import Tokenizer

TOK = Tokenizer()


class ScriptedJob:
    def __init__(self, deltas: list[Delta], n_choices: int, hang: bool = False) -> None:
        self.script, self.n_choices, self.hang = deltas, n_choices, hang
        self.done, self.cancelled, self.first_token_at = False, False, None

    async def deltas(self):
        if self.hang:  # a request that never finishes: only cancellation ends it
            await asyncio.Event().wait()
        for d in self.script:
            yield d
        self.done = True

    def cancel(self) -> None:
        self.cancelled = True


class ScriptedWorker:
    """Replies to every request with `script` (the deltas of every choice); records what was submitted."""

    context_len = 128
    alive = True

    def __init__(self, script: list[Delta], hang: bool = False, full: bool = False) -> None:
        self.script, self.hang, self.full = script, hang, full
        self.stats, self.submitted, self.jobs = WorkerStats(), [], []

    def submit(self, prompts, params, timeout=None) -> ScriptedJob:
        if self.full:
            raise QueueFull("the server is busy: retry after a moment.", retry_after=2)
        self.submitted.append((prompts, params))
        self.jobs.append(ScriptedJob(self.script, len(prompts) * params.n, self.hang))
        return self.jobs[-1]


def state_over(**workers: ScriptedWorker) -> ServerState:
    return ServerState(ModelRegistry(workers), TOK, ServeConfig(port=0, model_name=next(iter(workers)), max_tokens_limit=100))


def run(coro):
    return asyncio.run(coro)


def test_completion_body_from_the_workers_deltas():
    worker = ScriptedWorker([Delta(0, " world", 995), Delta(0, "!", 0), Delta(0, "", None, "stop")])
    state = state_over(tiny=worker)
    req = CompletionRequest.parse(b'{"prompt": "Hello", "max_tokens": 5, "temperature": 0, "echo": true}')
    body = run(H.create_completion(state, req))
    [(prompts, params)] = worker.submitted
    assert prompts == [TOK.encode_ordinary("Hello")] and params.max_new_tokens == 5 and params.temperature == 0
    assert body["object"] == "text_completion" and body["model"] == "tiny" and body["id"].startswith("cmpl-")
    assert body["choices"] == [{"index": 0, "text": "Hello world!", "logprobs": None, "finish_reason": "stop"}]
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


def test_streamed_completion_is_openai_sse_ending_in_done():
    worker = ScriptedWorker([Delta(0, " a", 257), Delta(0, " b", 275, "length")])
    req = CompletionRequest.parse(b'{"prompt": "x", "max_tokens": 2, "stream": true, "stream_options": {"include_usage": true}}')

    async def events():
        return [e async for e in await H.create_completion(state_over(tiny=worker), req)]

    out = run(events())
    assert out[-1] == "data: [DONE]\n\n" and all(e.startswith("data: ") and e.endswith("\n\n") for e in out)
    chunks = [json.loads(e[6:]) for e in out[:-1]]
    assert [c["choices"][0]["text"] for c in chunks[:2]] == [" a", " b"]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:2]] == [None, "length"]
    assert chunks[2]["choices"] == [] and chunks[2]["usage"]["completion_tokens"] == 2


def test_chat_completion_renders_the_template_and_strips_the_reply():
    worker = ScriptedWorker([Delta(0, " Hi", 15902), Delta(0, " there.", 612), Delta(0, "", None, "stop")])
    req = ChatCompletionRequest.parse(b'{"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}')
    body = run(H.create_chat_completion(state_over(tiny=worker), req))
    [(prompts, params)] = worker.submitted
    assert prompts == [TOK.encode_ordinary(DEFAULT_TEMPLATE.render([ChatTurn("user", "Say hi.")]))]
    assert set(DEFAULT_TEMPLATE.stop) <= set(params.stop)
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi there.", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]


def test_models_list_health_and_metrics():
    state = state_over(base=ScriptedWorker([]), poems=ScriptedWorker([]))
    body = H.list_models(state)
    assert body["object"] == "list" and [m["id"] for m in body["data"]] == ["base", "poems"]
    assert all(m["object"] == "model" and m["created"] == state.created and m["owned_by"] == "gpt2kit" for m in body["data"])
    assert H.health(state) == (200, {"status": "ok"})
    state.registry.workers["poems"].alive = False
    assert H.health(state)[0] == 503
    assert "gpt2kit_engine_steps_total 0" in H.metrics_text(state)


def test_errors_are_typed_and_map_to_openai_statuses():
    state = state_over(tiny=ScriptedWorker([]))
    with pytest.raises(ProtocolError) as e:
        run(H.create_completion(state, CompletionRequest.parse(b'{"model": "nope", "prompt": "a"}')))
    status, body, _ = error_parts(e.value)
    assert status == 404 and body["error"]["code"] == "model_not_found" and "`tiny`" in body["error"]["message"]
    with pytest.raises(ProtocolError) as e:  # the server's limit, checked before anything is submitted
        run(H.create_completion(state, CompletionRequest.parse(b'{"prompt": "a", "max_tokens": 101}')))
    assert error_parts(e.value)[:2] == (400, {"error": {"message": e.value.message, "type": "invalid_request_error",
                                                        "param": "max_tokens", "code": None}})  # fmt: skip
    assert state.registry.workers["tiny"].submitted == []
    with pytest.raises(QueueFull) as e:
        run(H.create_completion(state_over(tiny=ScriptedWorker([], full=True)), CompletionRequest.parse(b'{"prompt": "a"}')))
    status, body, headers = error_parts(e.value)
    assert status == 503 and headers == {"Retry-After": "2"} and body["error"]["type"] == "server_overloaded"


def test_a_client_that_leaves_cancels_its_job():
    worker = ScriptedWorker([], hang=True)

    async def gone() -> bool:
        return True

    req = CompletionRequest.parse(b'{"prompt": "a"}')
    with pytest.raises(ClientDisconnected) as e:
        run(H.create_completion(state_over(tiny=worker), req, disconnected=gone))
    assert worker.jobs[0].cancelled and error_parts(e.value)[0] == 499
