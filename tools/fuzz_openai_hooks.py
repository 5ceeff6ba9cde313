"""Schemathesis hooks for tools/fuzz_openai.py (loaded through $SCHEMATHESIS_HOOKS).

- `before_call` pins the `model` field of every JSON object sent to the served model's name
  ($GPT2KIT_FUZZ_MODEL): OpenAI's schema would otherwise send "gpt-4o" and the like, a 404 that tests nothing.
  It also drops, from half of the bodies (chosen by a hash of the body, so reruns agree), the fields
  gpt2kit does not implement (tools, audio, store, ...): with all of OpenAI's fields nearly every request
  is a 400 "unrecognized request argument", and the response schemas would hardly be exercised. The other
  half keeps them and must be refused cleanly.
- `after_call` tallies every response by status code and content type into $GPT2KIT_FUZZ_TALLY (JSON,
  rewritten after each call), so the driver can report exact figures; with $GPT2KIT_FUZZ_WHY=1 also the
  400s by the `param` their error names (which fields the fuzzer gets refused for).
- `sse_events_conform` checks every event of a streamed 2xx response against OpenAI's schema for one
  chunk (CreateCompletionResponse for /completions, whose spec declares no stream media type, and
  CreateChatCompletionStreamResponse for /chat/completions; `finish_reason` may be null before a
  choice's last chunk, as OpenAI streams it), plus the `data: [DONE]` terminator; an
  `{"error": ...}` event inside a 2xx stream fails it too.
"""

from __future__ import annotations

import json
import os
import threading
import zlib
from collections import Counter

import jsonschema_rs
import schemathesis

from gpt2kit.serve.protocol import ChatCompletionRequest, CompletionRequest

MODEL = os.environ.get("GPT2KIT_FUZZ_MODEL", "builtin")
TALLY = os.environ.get("GPT2KIT_FUZZ_TALLY")
SPEC = os.environ.get("GPT2KIT_FUZZ_SPEC")
STREAM_SCHEMAS = {"/completions": "CreateCompletionResponse", "/chat/completions": "CreateChatCompletionStreamResponse"}

IMPLEMENTED = {"/completions": set(CompletionRequest.model_fields), "/chat/completions": set(ChatCompletionRequest.model_fields)}

_counts: Counter = Counter()
_lock = threading.Lock()
_validators: dict[str, object] = {}


@schemathesis.hook
def before_call(ctx, case, kwargs):
    """Runs in every phase (the spec's own examples and the coverage phase bypass `map_body`)."""
    body = case.body
    if not isinstance(body, dict):
        return
    body = {**body, "model": MODEL}
    fields = IMPLEMENTED.get(case.operation.path, set())
    if zlib.crc32(json.dumps(body, sort_keys=True, default=str).encode()) % 2:  # half: only what gpt2kit implements
        body = {k: v for k, v in body.items() if k in fields}
    case.body = body


@schemathesis.hook
def after_call(ctx, case, response):
    kind = response.headers.get("content-type", [""])
    kind = (kind[0] if isinstance(kind, list) else kind).split(";")[0] or "none"
    why = None
    if response.status_code == 400 and os.environ.get("GPT2KIT_FUZZ_WHY"):
        try:
            why = response.json()["error"]["param"]
        except Exception:
            why = "?"
    with _lock:  # Schemathesis' workers are threads
        _counts[f"{response.status_code} {kind}"] += 1
        _counts[f"path {case.operation.path}"] += 1
        if why is not None:
            _counts[f"why {why}"] += 1
        if TALLY:
            with open(TALLY + ".tmp", "w") as f:
                json.dump(dict(_counts), f)
            os.replace(TALLY + ".tmp", TALLY)


def _nullable_to_json_schema(node):
    """OpenAPI 3.0's `nullable: true` (which this 3.1 document still uses) -> JSON Schema's null type."""
    if isinstance(node, list):
        return [_nullable_to_json_schema(x) for x in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable_to_json_schema(v) for k, v in node.items()}
    if node.pop("nullable", False) is True:
        node = {"anyOf": [node, {"type": "null"}]}
    return node


def _validator(path: str):
    if path not in _validators:
        with open(SPEC) as f:
            spec = _nullable_to_json_schema(json.load(f))
        # The document has no stream schema for /completions. OpenAI's completions stream sends the
        # non-stream body per chunk, except that `finish_reason` is null until a choice's last chunk.
        choice = spec["components"]["schemas"]["CreateCompletionResponse"]["properties"]["choices"]["items"]["properties"]
        choice["finish_reason"] = {"anyOf": [choice["finish_reason"], {"type": "null"}]}
        _validators[path] = jsonschema_rs.Draft202012Validator({**spec, "$ref": f"#/components/schemas/{STREAM_SCHEMAS[path]}"})
    return _validators[path]


@schemathesis.check
def sse_events_conform(ctx, response, case):
    kind = response.headers.get("content-type", [""])
    kind = kind[0] if isinstance(kind, list) else kind
    if not 200 <= response.status_code < 300 or not kind.startswith("text/event-stream") or SPEC is None:
        return None
    events = [block for block in response.text.split("\n\n") if block.strip()]
    assert events and events[-1] == "data: [DONE]", f"the stream does not end with `data: [DONE]`: {events[-1:]!r}"
    validator = _validator(case.operation.path)
    for event in events[:-1]:
        assert event.startswith("data: "), f"not an SSE data event: {event[:200]!r}"
        chunk = json.loads(event[len("data: ") :])
        assert "error" not in chunk, f"an error event inside a {response.status_code} stream: {chunk}"
        errors = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(chunk)]
        assert not errors, (
            f"a stream chunk does not match OpenAI's {STREAM_SCHEMAS[case.operation.path]}: {errors[:3]} in {chunk}"
        )
    return True
