"""serve/protocol.py without a server: JSON body -> request, request -> GenerationPlan (tokens, SamplingParams),
every limit at its edge with the message and `param` OpenAI's error JSON carries, and the response builders'
exact shapes. Fast enough to run once per mutant; the HTTP behaviour is in test_serve*.py."""

import json
import re
import time

import pytest

from gpt2kit.generate.chat_template import DEFAULT_TEMPLATE, ChatTemplate
from gpt2kit.generate.sampling import SamplingParams
from gpt2kit.serve import protocol as P
from gpt2kit.serve.config import ServeConfig
from gpt2kit.serve.protocol import ChatCompletionRequest, CompletionRequest, ProtocolError
from gpt2kit.tokenizer import Tokenizer

TOK = Tokenizer()
CFG = ServeConfig()
CTX = 1024


def req(**fields):
    return CompletionRequest.parse(json.dumps({"prompt": "Hi", **fields}).encode())


def chat(**fields):
    return ChatCompletionRequest.parse(json.dumps({"messages": [{"role": "user", "content": "Hi"}], **fields}).encode())


def refused(message, param, fn, *args, **kw):
    with pytest.raises(ProtocolError, match="^" + re.escape(message) + "$") as e:
        fn(*args, **kw)
    assert e.value.param == param and e.value.status == 400 and e.value.type == "invalid_request_error"
    assert e.value.code is None and e.value.message == message and str(e.value) == message
    return e.value


# ---- errors -----------------------------------------------------------------------------------------


def test_protocol_error_and_error_body():
    e = ProtocolError("no", "n", status=413, type="t", code="c")
    assert (e.message, e.param, e.status, e.type, e.code) == ("no", "n", 413, "t", "c")
    assert P.error_body("m") == {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": None}}
    assert P.error_body("m", "t", "p", "c") == {"error": {"message": "m", "type": "t", "param": "p", "code": "c"}}


# ---- parsing ----------------------------------------------------------------------------------------


def test_parse_refusals_name_the_field():
    refused(
        "the request body is not valid JSON (Invalid JSON: EOF while parsing an object at line 1 column 1). Send a JSON "
        "object with Content-Type: application/json.", None, CompletionRequest.parse, b"{")  # fmt: skip
    body_msg = 'the request body must be a JSON object, e.g. {"prompt": "Hello", "max_tokens": 16}.'
    refused(body_msg, None, CompletionRequest.parse, b"[1]")
    refused(body_msg, None, ChatCompletionRequest.parse, b'"x"')
    refused("'prompt' is a required property.", "prompt", CompletionRequest.parse, b"{}")
    refused("'messages' is a required property.", "messages", ChatCompletionRequest.parse, b"{}")
    refused(
        "unrecognized request argument supplied: 'max_token'. Remove it or check its spelling.", "max_token", req, max_token=5
    )
    refused("invalid value for 'max_tokens': Input should be a valid integer (got '5').", "max_tokens", req, max_tokens="5")
    long = "x" * 70
    refused(f"invalid value for 'user': Input should be a valid string (got {[long]!r:.57}...).", "user", req, user=[long])
    sixty, sixty_one = ["y" * 56], ["y" * 57]  # reprs of 60 and 61 characters: the first is shown whole
    refused(f"invalid value for 'user': Input should be a valid string (got {sixty!r}).", "user", req, user=sixty)
    refused(f"invalid value for 'user': Input should be a valid string (got {sixty_one!r:.57}...).", "user", req, user=sixty_one)
    e = refused("invalid value for 'prompt': Input should be a valid string (got 5).", "prompt", req, prompt=5)
    assert "str" not in e.param
    refused("invalid value for 'messages.0.role': Input should be 'system', 'developer', 'user' or 'assistant' (got 'bot').",
            "messages.0.role", chat, messages=[{"role": "bot", "content": "x"}])  # fmt: skip
    refused("invalid value for 'stream_options.include_usage': Input should be a valid boolean (got 1).",
            "stream_options.include_usage", req, stream_options={"include_usage": 1})  # fmt: skip



def test_a_nested_object_of_the_wrong_type_is_named_not_called_the_body():
    """Only the body itself not being an object gets the "request body" message; a field that should hold an
    object (stream_options, a message) names that field."""
    for fn, fields, param in ((req, {"stream_options": 5}, "stream_options"), (chat, {"messages": [5]}, "messages.0")):
        with pytest.raises(ProtocolError) as e:
            fn(**fields)
        assert e.value.param == param
        assert str(e.value).startswith(f"invalid value for '{param}': ") and "request body" not in str(e.value)

def test_type_tags():
    assert all(P._is_type_tag(t) for t in ("str", "int", "float", "bool", "list[int]", "function-after", "constrained-str"))
    assert not any(P._is_type_tag(t) for t in ("prompt", 0, "strs", "lists", "xlist[", "function", "dict[str,float]"))


def test_requests_keep_openais_field_order_then_the_extensions():
    assert list(CompletionRequest.model_fields)[:3] == ["model", "prompt", "best_of"]
    assert list(CompletionRequest.model_fields)[-3:] == ["top_k", "min_p", "repetition_penalty"]
    assert list(ChatCompletionRequest.model_fields)[:2] == ["messages", "model"]
    r = req()
    assert (r.n, r.temperature, r.top_p, r.min_p, r.repetition_penalty, r.echo, r.stream) == (1, 1.0, 1.0, 0.0, 1.0, False, False)
    assert (r.top_k, r.seed, r.max_tokens, r.logprobs, r.frequency_penalty, r.presence_penalty) == (
        None,
        None,
        None,
        None,
        0.0,
        0.0,
    )
    c = chat()
    assert (c.logprobs, c.top_logprobs, c.max_completion_tokens, c.response_format) == (False, None, None, None)


def test_include_usage():
    assert not req().include_usage and not req(stream_options={}).include_usage
    assert req(stream_options={"include_usage": True}).include_usage


def test_chat_message_turns():
    turns = [m.turn() for m in chat(messages=[{"role": "user", "content": "a"},
                                              {"role": "assistant", "content": [{"type": "text", "text": "b"}, {"type": "text", "text": "c"}]},
                                              {"role": "system", "content": None}]).messages]  # fmt: skip
    assert [(t.role, t.content) for t in turns] == [("user", "a"), ("assistant", "bc"), ("system", "")]


# ---- sampling parameters ----------------------------------------------------------------------------


def test_defaults_become_the_engines_defaults():
    sp = req().sampling_params(16, CFG)
    assert sp == SamplingParams(max_new_tokens=16, temperature=1.0, top_p=1.0, n=1)
    null = req(n=None, temperature=None, top_p=None, min_p=None, repetition_penalty=None, presence_penalty=None,
               frequency_penalty=None, top_k=None).sampling_params(16, CFG)  # fmt: skip
    assert null == sp


def test_values_are_carried_over():
    sp = req(n=3, temperature=0.5, top_p=0.9, min_p=0.1, repetition_penalty=1.3, presence_penalty=0.5, frequency_penalty=-0.5,
             top_k=40, seed=7, stop=["a", "b", "a"], logit_bias={"5": -100, "50256": 100}).sampling_params(
        9, ServeConfig(banned_phrases=("x",)), extra_stop=("b", "\n"), logprobs=2, prompt_logprobs=3)  # fmt: skip
    assert (sp.n, sp.temperature, sp.top_p, sp.min_p, sp.repetition_penalty) == (3, 0.5, 0.9, 0.1, 1.3)
    assert (sp.presence_penalty, sp.frequency_penalty, sp.top_k, sp.seed, sp.max_new_tokens) == (0.5, -0.5, 40, 7, 9)
    assert sp.stop == ("a", "b", "\n") and sp.logit_bias == {5: -100.0, 50256: 100.0} and sp.banned_phrases == ("x",)
    assert (sp.logprobs, sp.prompt_logprobs) == (2, 3)
    assert req(stop="x").sampling_params(1, CFG).stop == ("x",)
    assert req(top_k=-1).sampling_params(1, CFG).top_k is None


@pytest.mark.parametrize(
    ("fields", "message", "param"),
    [
        ({"n": 0}, "n=0 is out of range: it must be between 1 and 16 on this server.", "n"),
        ({"n": 17}, "n=17 is out of range: it must be between 1 and 16 on this server.", "n"),
        ({"temperature": -0.1}, "temperature=-0.1 is out of range: use a number in [0, 2] (0 = greedy).", "temperature"),
        ({"temperature": 2.01}, "temperature=2.01 is out of range: use a number in [0, 2] (0 = greedy).", "temperature"),
        ({"top_p": 0.0}, "top_p=0.0 is out of range: use a number in (0, 1] (1 = off).", "top_p"),
        ({"top_p": 1.01}, "top_p=1.01 is out of range: use a number in (0, 1] (1 = off).", "top_p"),
        ({"presence_penalty": -2.1}, "presence_penalty=-2.1 is out of range: use a number in [-2, 2] (0 = off).", "presence_penalty"),
        ({"frequency_penalty": 2.1}, "frequency_penalty=2.1 is out of range: use a number in [-2, 2] (0 = off).", "frequency_penalty"),
        ({"min_p": -0.1}, "min_p=-0.1 is out of range: use a number in [0, 1] (0 = off).", "min_p"),
        ({"min_p": 1.1}, "min_p=1.1 is out of range: use a number in [0, 1] (0 = off).", "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty=0.0 is out of range: use a number in (0, 10] (1 = off).", "repetition_penalty"),
        ({"repetition_penalty": 10.5}, "repetition_penalty=10.5 is out of range: use a number in (0, 10] (1 = off).", "repetition_penalty"),
        ({"top_k": 0}, "top_k=0 is invalid: use an integer >= 1, or -1 / null for no top-k.", "top_k"),
        ({"top_k": -2}, "top_k=-2 is invalid: use an integer >= 1, or -1 / null for no top-k.", "top_k"),
        ({"seed": -1}, "seed=-1 is out of range: use an integer in [0, 2**63).", "seed"),
        ({"seed": 2**63}, f"seed={2**63} is out of range: use an integer in [0, 2**63).", "seed"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop has 5 strings; at most 4 are allowed.", "stop"),
        ({"stop": ["a", ""]}, "stop strings must be non-empty.", "stop"),
        ({"stop": ""}, "stop strings must be non-empty.", "stop"),
        ({"stop": ["x" * 257]}, "stop strings must be at most 256 characters long.", "stop"),
        ({"logit_bias": {"²": 1}}, "logit_bias key '²' is not a token id: keys are token ids in 0..50256 (as strings).", "logit_bias"),
        ({"logit_bias": {"٣": 1}}, "logit_bias key '٣' is not a token id: keys are token ids in 0..50256 (as strings).", "logit_bias"),
        ({"logit_bias": {"-1": 1}}, "logit_bias key '-1' is not a token id: keys are token ids in 0..50256 (as strings).", "logit_bias"),
        ({"logit_bias": {"000001": 1}}, "logit_bias key '000001' is not a token id: keys are token ids in 0..50256 (as strings).",
         "logit_bias"),
        ({"logit_bias": {"50257": 1}}, "logit_bias key '50257' is not a token id: keys are token ids in 0..50256 (as strings).", "logit_bias"),
        ({"logit_bias": {"y" * 50: 1}}, f"logit_bias key {'y' * 40!r} is not a token id: keys are token ids in 0..50256 (as strings).",
         "logit_bias"),
        ({"logit_bias": {"7": 100.5}}, "logit_bias[7]=100.5 is out of range: values are in [-100, 100].", "logit_bias"),
        ({"logit_bias": {"7": -100.5}}, "logit_bias[7]=-100.5 is out of range: values are in [-100, 100].", "logit_bias"),
        ({"logit_bias": {str(i): 1 for i in range(301)}}, "logit_bias has 301 entries; at most 300 are allowed.", "logit_bias"),
    ],
)  # fmt: skip
def test_out_of_range_sampling_fields(fields, message, param):
    refused(message, param, req(**fields).sampling_params, 16, CFG)


def test_edges_that_are_allowed():
    for fields in ({"n": 1}, {"n": 16}, {"temperature": 0.0}, {"temperature": 2.0}, {"top_p": 1e-9}, {"top_p": 1.0},
                   {"presence_penalty": -2.0}, {"frequency_penalty": 2.0}, {"min_p": 1.0}, {"repetition_penalty": 10.0},
                   {"repetition_penalty": 1e-3}, {"top_k": 1}, {"seed": 0}, {"seed": 2**63 - 1}, {"stop": ["x" * 256] * 4},
                   {"logit_bias": {"0": -100.0, "50256": 100.0, "00007": 1}}, {"logit_bias": {str(i): 1 for i in range(300)}}):  # fmt: skip
        req(**fields).sampling_params(16, CFG)
    assert req(n=2).sampling_params(1, ServeConfig(max_n=2)).n == 2
    refused(
        "n=3 is out of range: it must be between 1 and 2 on this server.", "n", req(n=3).sampling_params, 1, ServeConfig(max_n=2)
    )
    refused(
        "stop has 2 strings; at most 1 are allowed.", "stop", req(stop=["a", "b"]).sampling_params, 1, ServeConfig(max_stop=1)
    )
    assert req(logit_bias={"00007": 2}).sampling_params(1, CFG).logit_bias == {7: 2.0}


# ---- completion plans -------------------------------------------------------------------------------


def test_completion_plan():
    plan = P.plan_completion(req(prompt=["Hello world", "Hi"], n=2, max_tokens=5, echo=True, logprobs=3, stream=True,
                                 stream_options={"include_usage": True}), TOK, CFG, CTX)  # fmt: skip
    assert plan.prompts == [TOK.encode_ordinary("Hello world"), TOK.encode_ordinary("Hi")]
    assert plan.echo == ["Hello world", "Hi"] and plan.prompt_tokens == 3 and plan.stream and plan.include_usage
    assert plan.logprobs == 3 and plan.params.logprobs == 3 and plan.params.prompt_logprobs == 3
    assert plan.params.max_new_tokens == 5 and plan.params.n == 2
    plain = P.plan_completion(req(logprobs=0), TOK, CFG, CTX)
    assert plain.echo == [""] and plain.params.prompt_logprobs is None and plain.params.logprobs == 0
    assert plain.params.max_new_tokens == CFG.default_max_tokens == 16 and not plain.stream and not plain.include_usage
    assert P.plan_completion(req(stream=None, echo=None), TOK, CFG, CTX).stream is False
    assert P.plan_completion(req(max_tokens=0, n=None, best_of=1), TOK, CFG, CTX).params.max_new_tokens == 0


def test_completion_refusals():
    refused("suffix is not supported: GPT-2 only continues text (no insertion mode). Remove it.", "suffix",
            P.plan_completion, req(suffix="x"), TOK, CFG, CTX)  # fmt: skip
    assert P.plan_completion(req(suffix=""), TOK, CFG, CTX).prompts  # an empty suffix is no suffix
    for bad in (-1, 6):
        refused(f"logprobs={bad} is out of range: use an integer in [0, 5] (the number of most likely alternatives reported "
                "per token), or null.", "logprobs", P.plan_completion, req(logprobs=bad), TOK, CFG, CTX)  # fmt: skip
    assert P.plan_completion(req(logprobs=5), TOK, CFG, CTX).logprobs == 5
    refused(
        "best_of=2 is not supported (only best_of == n); remove it.", "best_of", P.plan_completion, req(best_of=2), TOK, CFG, CTX
    )
    assert P.plan_completion(req(best_of=2, n=2), TOK, CFG, CTX).params.n == 2
    refused("3 prompts x n=6 = 18 choices; at most 16 per request.", "prompt", P.plan_completion, req(prompt=["a", "b", "c"], n=6),
            TOK, CFG, CTX)  # fmt: skip
    assert P.plan_completion(req(prompt=["a", "b"], n=8), TOK, CFG, CTX).params.n == 8
    refused("max_tokens=1025 is out of range: it must be between 0 and 1024 on this server.", "max_tokens",
            P.plan_completion, req(max_tokens=1025), TOK, CFG, 4000)  # fmt: skip


def test_prompt_forms():
    ids = TOK.encode_ordinary("Hello")
    assert P._tokenize_prompts("Hello", TOK) == ([ids], ["Hello"])
    assert P._tokenize_prompts(["Hello", ""], TOK) == ([ids, [TOK.eot_token]], ["Hello", ""])
    assert P._tokenize_prompts(ids, TOK) == ([ids], ["Hello"])
    assert P._tokenize_prompts([ids, [50256]], TOK) == ([ids, [50256]], ["Hello", "<|endoftext|>"])
    assert P._tokenize_prompts("a<|endoftext|>", TOK)[0] == [TOK.encode_ordinary("a") + [50256]]
    refused("prompt is an empty list: give a string, a list of strings, or token ids.", "prompt", P._tokenize_prompts, [], TOK)
    refused("a token-id prompt is empty: give at least one token id.", "prompt", P._tokenize_prompts, [[1], []], TOK)
    refused("prompt token id 50257 is outside the vocabulary [0, 50257).", "prompt", P._tokenize_prompts, [0, 50257], TOK)
    refused("prompt token id -1 is outside the vocabulary [0, 50257).", "prompt", P._tokenize_prompts, [[5, -1, 50300]], TOK)


def test_lengths():
    check = P._check_lengths
    check([[1] * 9], 1, CFG, 10, "max_tokens")  # 9 + 1 = the context
    check([[1]], 1024, CFG, 2000, "max_tokens")
    check([[1]], 0, CFG, 10, "max_tokens")
    refused("max_tokens=1025 is out of range: it must be between 0 and 1024 on this server.", "max_tokens",
            check, [[1]], 1025, CFG, 4000, "max_tokens")  # fmt: skip
    refused("max_completion_tokens=-1 is out of range: it must be between 0 and 1024 on this server.", "max_completion_tokens",
            check, [[1]], -1, CFG, 10, "max_completion_tokens")  # fmt: skip
    refused(
        "the prompt has 10 tokens; this server accepts at most 9. Shorten the prompt.",
        "prompt",
        check,
        [[1] * 10],
        0,
        CFG,
        10,
        "x",
    )
    small = ServeConfig(max_prompt_tokens=3)
    check([[1] * 3], 1, small, 10, "x")
    refused(
        "the prompt has 4 tokens; this server accepts at most 3. Shorten the prompt.",
        "prompt",
        check,
        [[1], [1] * 4],
        1,
        small,
        10,
        "x",
    )
    refused("the prompt has 5 tokens; this server accepts at most 4. Shorten the prompt.", "prompt", check, [[1] * 5], 0,
            ServeConfig(max_prompt_tokens=50), 5, "x")  # fmt: skip
    refused("this model's maximum context length is 10 tokens. However, you requested 11 tokens (9 in the prompt, 2 for the "
            "completion). Reduce the prompt or max_tokens.", "max_tokens", check, [[1] * 9], 2, CFG, 10, "max_tokens")  # fmt: skip


# ---- chat plans -------------------------------------------------------------------------------------


def test_chat_plan():
    plan = P.plan_chat(chat(max_tokens=7, stream=True), TOK, CFG, CTX)
    assert plan.prompts == [TOK.encode_ordinary(DEFAULT_TEMPLATE.render([P.ChatTurn("user", "Hi")]))]
    assert plan.prompt_tokens == len(plan.prompts[0]) and plan.echo == [""] and plan.stream and not plan.include_usage
    assert plan.params.max_new_tokens == 7 and plan.params.stop == DEFAULT_TEMPLATE.stop and plan.logprobs is None
    assert P.plan_chat(chat(max_tokens=7, max_completion_tokens=3), TOK, CFG, CTX).params.max_new_tokens == 3
    n = len(plan.prompts[0])
    assert P.plan_chat(chat(), TOK, CFG, n + 5).params.max_new_tokens == 5  # what fits the context
    assert P.plan_chat(chat(), TOK, CFG, CTX).params.max_new_tokens == CTX - n
    assert P.plan_chat(chat(), TOK, ServeConfig(max_tokens_limit=20), CTX).params.max_new_tokens == 20
    assert P.plan_chat(chat(stop="Z"), TOK, CFG, CTX, ChatTemplate(preamble="")).params.stop == ("Z", *DEFAULT_TEMPLATE.stop)
    custom = P.plan_chat(chat(), TOK, CFG, CTX, ChatTemplate(preamble="Be brief."))
    assert TOK.decode(custom.prompts[0]).startswith("Be brief.")
    assert P.plan_chat(chat(messages=[{"role": "user", "content": "<|endoftext|>"}]), TOK, CFG, CTX).prompts[0].count(50256) == 0


def test_chat_logprobs_and_limits():
    assert P.plan_chat(chat(logprobs=True), TOK, CFG, CTX).logprobs == 0
    assert P.plan_chat(chat(logprobs=True, top_logprobs=0), TOK, CFG, CTX).params.logprobs == 0
    assert P.plan_chat(chat(stream=True, stream_options={"include_usage": True}), TOK, CFG, CTX).include_usage
    refused("max_tokens=1025 is out of range: it must be between 0 and 1024 on this server.", "max_tokens",
            P.plan_chat, chat(max_tokens=1025), TOK, CFG, 4000)  # fmt: skip
    plan = P.plan_chat(chat(logprobs=True, top_logprobs=20), TOK, CFG, CTX)
    assert plan.logprobs == plan.params.logprobs == 20 and plan.params.prompt_logprobs is None
    assert P.plan_chat(chat(logprobs=False), TOK, CFG, CTX).params.logprobs is None
    refused('top_logprobs needs logprobs: set "logprobs": true, or remove top_logprobs.', "top_logprobs",
            P.plan_chat, chat(top_logprobs=2), TOK, CFG, CTX)  # fmt: skip
    for bad in (-1, 21):
        refused(f"top_logprobs={bad} is out of range: use an integer in [0, 20].", "top_logprobs",
                P.plan_chat, chat(logprobs=True, top_logprobs=bad), TOK, CFG, CTX)  # fmt: skip
    refused('messages is empty: give at least one message, e.g. [{"role": "user", "content": "Hi"}].', "messages",
            P.plan_chat, chat(messages=[]), TOK, CFG, CTX)  # fmt: skip
    n = len(P.plan_chat(chat(), TOK, CFG, CTX).prompts[0])
    e = refused(f"this model's maximum context length is {n + 1} tokens. However, you requested {n + 2} tokens ({n} in the prompt, 2 "
                "for the completion). Reduce the prompt or max_completion_tokens.", "max_completion_tokens",
                P.plan_chat, chat(max_completion_tokens=2, max_tokens=1), TOK, CFG, n + 1)  # fmt: skip
    assert e.param == "max_completion_tokens"
    refused(f"the prompt has {n} tokens; this server accepts at most {n - 2}. Shorten the prompt.", "prompt", P.plan_chat, chat(), TOK, CFG,
            n - 1)  # fmt: skip
    assert P.plan_chat(chat(), TOK, CFG, n + 1).params.max_new_tokens == 1


# ---- responses --------------------------------------------------------------------------------------


def test_response_builders():
    assert re.fullmatch(r"cmpl-[0-9a-f]{24}", P.new_id("cmpl")) and P.new_id("x") != P.new_id("x")
    t = P.now()
    assert isinstance(t, int) and abs(t - time.time()) < 5
    assert P.usage(3, 4) == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    ch = P.completion_choice(1, "hi", "stop")
    assert ch == {"index": 1, "text": "hi", "logprobs": None, "finish_reason": "stop"} and list(ch) == [
        "index",
        "text",
        "logprobs",
        "finish_reason",
    ]
    assert P.completion_choice(0, "", None, {"a": 1})["logprobs"] == {"a": 1}
    body = P.completion_body("i", 5, "m", [ch], None)
    assert body == {"id": "i", "object": "text_completion", "created": 5, "model": "m", "choices": [ch]}
    assert list(P.completion_body("i", 5, "m", [], {"u": 1})) == ["id", "object", "created", "model", "choices", "usage"]
    assert P.completion_body("i", 5, "m", [], {"u": 1})["usage"] == {"u": 1}
    cc = P.chat_choice(0, "yo", "length")
    assert cc == {"index": 0, "message": {"role": "assistant", "content": "yo", "refusal": None}, "logprobs": None,
                  "finish_reason": "length"}  # fmt: skip
    assert P.chat_choice(0, "", None, {"c": 2})["logprobs"] == {"c": 2}
    assert P.chat_body("i", 5, "m", [cc], None) == {
        "id": "i",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "choices": [cc],
    }
    chunk = P.chat_body("i", 5, "m", [], {"u": 1}, chunk=True)
    assert chunk["object"] == "chat.completion.chunk" and chunk["usage"] == {"u": 1}
    assert P.chat_delta(2, {"content": "x"}, None) == {
        "index": 2,
        "delta": {"content": "x"},
        "logprobs": None,
        "finish_reason": None,
    }
    assert P.chat_delta(2, {}, "stop", {"l": 1})["logprobs"] == {"l": 1}
    assert P.model_list(["a", "b"], 9) == {"object": "list", "data": [
        {"id": "a", "object": "model", "created": 9, "owned_by": "gpt2kit"}, {"id": "b", "object": "model", "created": 9, "owned_by": "gpt2kit"}]}  # fmt: skip
    assert P.MAX_COMPLETION_LOGPROBS == 5
