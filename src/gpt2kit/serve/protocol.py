"""The protocol layer: OpenAI-shaped pydantic requests and responses, and their conversion to the
engine's `SamplingParams`. Nothing here knows about HTTP; nothing in the worker knows about these models.

Requests are validated strictly from the raw JSON body (`CompletionRequest.parse(body)`): wrong types
are not coerced ("5" is not an int), unknown fields are refused (a typo in `max_tokens` should not be
silently ignored), and every failure raises `ProtocolError` with the offending parameter and the fix,
which the router turns into OpenAI's error JSON with status 400.

Fields are in the order of OpenAI's API reference, followed by the extensions vLLM also accepts
(top_k, min_p, repetition_penalty).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpt2kit.errors import InputError
from gpt2kit.generate.chat_template import DEFAULT_TEMPLATE, ChatTemplate, ChatTurn
from gpt2kit.generate.params import MAX_LOGPROBS, SamplingParams
from gpt2kit.serve.config import ServeConfig
from gpt2kit.tokenizer import Tokenizer

MAX_COMPLETION_LOGPROBS = 5  # OpenAI's legacy completions limit (chat's top_logprobs allows MAX_LOGPROBS = 20)


class ProtocolError(InputError):
    """A request the server cannot run; `status` and `param` go into OpenAI's error JSON."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, type: str = "invalid_request_error",
                 code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's error shape: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ---- requests ----------------------------------------------------------------------------------------

Float = Annotated[float, Field(allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = False


class _SamplingFields(_Strict):
    """The conversion shared by both endpoints (each declares its own fields, in OpenAI's order)."""

    def sampling_params(self, max_tokens: int, config: ServeConfig, extra_stop: tuple[str, ...] = (),
                        logprobs: int | None = None, prompt_logprobs: int | None = None) -> SamplingParams:  # fmt: skip
        """Range checks with OpenAI's limits, then SamplingParams (the engine's own validation is the backstop)."""
        n = 1 if self.n is None else self.n
        if not 1 <= n <= config.max_n:
            raise ProtocolError(f"n={n} is out of range: it must be between 1 and {config.max_n} on this server.", "n")
        temperature = 1.0 if self.temperature is None else self.temperature
        if not 0.0 <= temperature <= 2.0:
            raise ProtocolError(f"temperature={temperature} is out of range: use a number in [0, 2] (0 = greedy).", "temperature")
        top_p = 1.0 if self.top_p is None else self.top_p
        if not 0.0 < top_p <= 1.0:
            raise ProtocolError(f"top_p={top_p} is out of range: use a number in (0, 1] (1 = off).", "top_p")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name) or 0.0
            if not -2.0 <= v <= 2.0:
                raise ProtocolError(f"{name}={v} is out of range: use a number in [-2, 2] (0 = off).", name)
        min_p = self.min_p or 0.0
        if not 0.0 <= min_p <= 1.0:
            raise ProtocolError(f"min_p={min_p} is out of range: use a number in [0, 1] (0 = off).", "min_p")
        rep = 1.0 if self.repetition_penalty is None else self.repetition_penalty
        if not 0.0 < rep <= 10.0:
            raise ProtocolError(f"repetition_penalty={rep} is out of range: use a number in (0, 10] (1 = off).", "repetition_penalty")
        if self.top_k is not None and self.top_k != -1 and self.top_k < 1:
            raise ProtocolError(f"top_k={self.top_k} is invalid: use an integer >= 1, or -1 / null for no top-k.", "top_k")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise ProtocolError(f"seed={self.seed} is out of range: use an integer in [0, 2**63).", "seed")
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > config.max_stop:
            raise ProtocolError(f"stop has {len(stops)} strings; at most {config.max_stop} are allowed.", "stop")
        if any(not s for s in stops):
            raise ProtocolError("stop strings must be non-empty.", "stop")
        if any(len(s) > 256 for s in stops):
            raise ProtocolError("stop strings must be at most 256 characters long.", "stop")
        bias = {}
        for key, value in (self.logit_bias or {}).items():
            # ASCII digits only: str.isdigit() also accepts "²" (int() refuses it) and "٣" (int() reads 3)
            if not (key.isascii() and key.isdigit()) or len(key) > 5 or int(key) >= 50257:
                raise ProtocolError(f"logit_bias key {key[:40]!r} is not a token id: keys are token ids in 0..50256 (as strings).", "logit_bias")
            if not -100.0 <= value <= 100.0:
                raise ProtocolError(f"logit_bias[{key}]={value} is out of range: values are in [-100, 100].", "logit_bias")
            bias[int(key)] = value
        if len(bias) > 300:
            raise ProtocolError(f"logit_bias has {len(bias)} entries; at most 300 are allowed.", "logit_bias")
        return SamplingParams(
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_k=None if self.top_k in (None, -1) else self.top_k,
            top_p=top_p,
            min_p=min_p,
            repetition_penalty=rep,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            logit_bias=bias,
            banned_phrases=config.banned_phrases,
            stop=tuple(dict.fromkeys([*stops, *extra_stop])),
            seed=self.seed,
            n=n,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @classmethod
    def parse(cls: type[_Request], body: bytes) -> _Request:
        """Raw JSON body -> this request; any failure -> ProtocolError naming the first bad field."""
        return _parse(cls, body)


_Request = TypeVar("_Request", bound=_SamplingFields)


class _VllmExtensions(_Strict):
    """Sampling parameters beyond OpenAI's that vLLM also accepts, by vLLM's names."""

    top_k: int | None = None
    min_p: Float | None = 0.0
    repetition_penalty: Float | None = 1.0


# Each endpoint lists OpenAI's fields for it, in its reference order: the two lists interleave shared and own
# fields alphabetically, so they cannot share a base. The request class then adds the extensions: pydantic
# collects fields from the bases right to left, so `Request(_VllmExtensions, _OpenAIFields)` puts them last.


class _CompletionFields(_SamplingFields):
    model: str | None = None
    prompt: str | list[str] | list[int] | list[list[int]]
    best_of: int | None = None
    echo: bool | None = False
    frequency_penalty: Float | None = 0.0
    logit_bias: dict[str, Float] | None = None
    logprobs: int | None = None
    max_tokens: int | None = None
    n: int | None = 1
    presence_penalty: Float | None = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: Float | None = 1.0
    top_p: Float | None = 1.0
    user: str | None = None


class CompletionRequest(_VllmExtensions, _CompletionFields):
    """POST /v1/completions."""


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def turn(self) -> ChatTurn:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content or [])
        return ChatTurn(self.role, text)


class ResponseFormat(_Strict):
    type: Literal["text"]


class _ChatCompletionFields(_SamplingFields):
    messages: list[ChatMessage]
    model: str | None = None
    frequency_penalty: Float | None = 0.0
    logit_bias: dict[str, Float] | None = None
    logprobs: bool | None = False
    max_completion_tokens: int | None = None
    max_tokens: int | None = None
    n: int | None = 1
    presence_penalty: Float | None = 0.0
    response_format: ResponseFormat | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    temperature: Float | None = 1.0
    top_logprobs: int | None = None
    top_p: Float | None = 1.0
    user: str | None = None


class ChatCompletionRequest(_VllmExtensions, _ChatCompletionFields):
    """POST /v1/chat/completions."""


def _parse(cls: type[BaseModel], body: bytes) -> Any:
    try:
        return cls.model_validate_json(body)
    except ValidationError as e:
        err = e.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"] if not _is_type_tag(p))
        kind = err["type"]
        if kind == "json_invalid":
            raise ProtocolError(f"the request body is not valid JSON ({err['msg']}). Send a JSON object with Content-Type: application/json.") from None
        if kind.endswith("_type") and not loc:  # the body itself; a nested object of the wrong type falls through
            raise ProtocolError("the request body must be a JSON object, e.g. {\"prompt\": \"Hello\", \"max_tokens\": 16}.") from None
        if kind == "missing":
            raise ProtocolError(f"'{loc}' is a required property.", loc) from None
        if kind == "extra_forbidden":
            raise ProtocolError(f"unrecognized request argument supplied: '{loc}'. Remove it or check its spelling.", loc) from None
        got = repr(err.get("input"))
        got = got if len(got) <= 60 else got[:57] + "..."
        raise ProtocolError(f"invalid value for '{loc}': {err['msg']} (got {got}).", loc) from None


def _is_type_tag(part: object) -> bool:
    """pydantic puts union member names ('str', 'list[int]') into error locations; they mean nothing to a caller."""
    return isinstance(part, str) and (part in ("str", "int", "float", "bool") or part.startswith(("list[", "function-", "constrained-")))


# ---- requests -> what the worker runs -------------------------------------------------------------


@dataclass
class GenerationPlan:
    """A validated request, in engine terms: token-id prompts, one SamplingParams, and what the
    response needs besides the generated text."""

    prompts: list[list[int]]  # one list of token ids per prompt
    params: SamplingParams  # params.n choices per prompt
    echo: list[str]  # per prompt: text to put before the output ("" without echo)
    prompt_tokens: int  # for usage: the prompts' tokens, each prompt counted once (as vLLM does, whatever n is)
    stream: bool
    include_usage: bool
    logprobs: int | None = None  # top alternatives per token when the response carries logprobs, else None


def plan_completion(req: CompletionRequest, tok: Tokenizer, config: ServeConfig, context: int) -> GenerationPlan:
    """Validate a completion request against the server's limits and tokenize its prompt(s)."""
    if req.suffix:
        raise ProtocolError("suffix is not supported: GPT-2 only continues text (no insertion mode). Remove it.", "suffix")
    if req.logprobs is not None and not 0 <= req.logprobs <= MAX_COMPLETION_LOGPROBS:
        raise ProtocolError(f"logprobs={req.logprobs} is out of range: use an integer in [0, {MAX_COMPLETION_LOGPROBS}] (the "
                            "number of most likely alternatives reported per token), or null.", "logprobs")  # fmt: skip
    n = 1 if req.n is None else req.n
    if req.best_of is not None and req.best_of != n:
        raise ProtocolError(f"best_of={req.best_of} is not supported (only best_of == n); remove it.", "best_of")
    prompts, texts = _tokenize_prompts(req.prompt, tok)
    if len(prompts) * n > config.max_n:
        raise ProtocolError(f"{len(prompts)} prompts x n={n} = {len(prompts) * n} choices; at most {config.max_n} per request.", "prompt")
    max_tokens = config.default_max_tokens if req.max_tokens is None else req.max_tokens
    _check_lengths(prompts, max_tokens, config, context, "max_tokens")
    echo = [t if req.echo else "" for t in texts]
    params = req.sampling_params(max_tokens, config, logprobs=req.logprobs, prompt_logprobs=req.logprobs if req.echo else None)
    return GenerationPlan(prompts, params, echo, sum(map(len, prompts)), bool(req.stream), req.include_usage, req.logprobs)


def plan_chat(req: ChatCompletionRequest, tok: Tokenizer, config: ServeConfig, context: int,
              template: ChatTemplate = DEFAULT_TEMPLATE) -> GenerationPlan:  # fmt: skip
    """Validate a chat request, render it with the chat template, and tokenize it."""
    if req.top_logprobs is not None:
        if not req.logprobs:
            raise ProtocolError("top_logprobs needs logprobs: set \"logprobs\": true, or remove top_logprobs.", "top_logprobs")
        if not 0 <= req.top_logprobs <= MAX_LOGPROBS:
            raise ProtocolError(f"top_logprobs={req.top_logprobs} is out of range: use an integer in [0, {MAX_LOGPROBS}].", "top_logprobs")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    if not req.messages:
        raise ProtocolError("messages is empty: give at least one message, e.g. [{\"role\": \"user\", \"content\": \"Hi\"}].", "messages")
    text = template.render([m.turn() for m in req.messages])
    prompt = tok.encode_ordinary(text)  # message text never becomes a control token
    limit = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    if limit is None:  # vLLM: whatever fits the context, capped by the server's limit
        limit = max(0, min(config.max_tokens_limit, context - len(prompt)))
    _check_lengths([prompt], limit, config, context, param)
    params = req.sampling_params(limit, config, extra_stop=template.stop, logprobs=logprobs)
    return GenerationPlan([prompt], params, [""], len(prompt), bool(req.stream), req.include_usage, logprobs)


def _tokenize_prompts(prompt: str | list, tok: Tokenizer) -> tuple[list[list[int]], list[str]]:
    """OpenAI's four prompt forms -> (token-id lists, their texts). "" starts from <|endoftext|> (OpenAI's
    default prompt); the text `<|endoftext|>` in a prompt is that token, as in OpenAI's and vLLM's servers."""
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise ProtocolError("prompt is an empty list: give a string, a list of strings, or token ids.", "prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    out, texts = [], []
    for p in prompt:
        if isinstance(p, str):
            ids = tok.encode(p, allowed_special={"<|endoftext|>"}) or [tok.eot_token]
            texts.append(p)
        else:
            if not p:
                raise ProtocolError("a token-id prompt is empty: give at least one token id.", "prompt")
            bad = [t for t in p if not 0 <= t < tok.n_vocab]
            if bad:
                raise ProtocolError(f"prompt token id {bad[0]} is outside the vocabulary [0, {tok.n_vocab}).", "prompt")
            ids = list(p)
            texts.append(tok.decode(ids))
        out.append(ids)
    return out, texts


def _check_lengths(prompts: list[list[int]], max_tokens: int, config: ServeConfig, context: int, param: str) -> None:
    if not 0 <= max_tokens <= config.max_tokens_limit:
        raise ProtocolError(f"{param}={max_tokens} is out of range: it must be between 0 and {config.max_tokens_limit} on this server.", param)
    limit = min(config.max_prompt_tokens or context - 1, context - 1)
    for ids in prompts:
        if len(ids) > limit:
            raise ProtocolError(f"the prompt has {len(ids)} tokens; this server accepts at most {limit}. Shorten the prompt.", "prompt")
        if len(ids) + max_tokens > context:
            raise ProtocolError(
                f"this model's maximum context length is {context} tokens. However, you requested {len(ids) + max_tokens} "
                f"tokens ({len(ids)} in the prompt, {max_tokens} for the completion). Reduce the prompt or {param}.",
                param,
            )


# ---- responses (dicts in OpenAI's field order; pydantic would add nothing but cost per streamed chunk) ----
# Checked against OpenAI's published response schemas by tools/fuzz_openai.py: no `system_fingerprint`
# (optional, and a string when present), and chat messages carry `refusal` (required, null here).


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}


def completion_body(id: str, created: int, model: str, choices: list[dict], usage_: dict | None) -> dict:
    body = {"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if usage_ is not None:
        body["usage"] = usage_
    return body


def completion_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_body(id: str, created: int, model: str, choices: list[dict], usage_: dict | None, chunk: bool = False) -> dict:
    body = {"id": id, "object": "chat.completion.chunk" if chunk else "chat.completion", "created": created, "model": model,
            "choices": choices}  # fmt: skip
    if usage_ is not None:
        body["usage"] = usage_
    return body


def chat_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text, "refusal": None}, "logprobs": logprobs,
            "finish_reason": finish_reason}  # fmt: skip


def chat_delta(index: int, delta: dict, finish_reason: str | None, logprobs: dict | None = None) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def model_list(models: list[str], created: int) -> dict:
    return {"object": "list", "data": [{"id": m, "object": "model", "created": created, "owned_by": "gpt2kit"} for m in models]}
