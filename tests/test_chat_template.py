"""One chat template: the terminal chat and the HTTP chat endpoint render a conversation the same way."""

import pytest

import gpt2kit
from conftest import tiny_gpt
from gpt2kit.errors import InputError
from gpt2kit.generate import SamplingParams
from gpt2kit.generate.chat import ChatSession
from gpt2kit.generate.chat_template import DEFAULT_TEMPLATE, PREAMBLE, ChatTemplate, ChatTurn
from gpt2kit.serve.config import ServeConfig
from gpt2kit.serve.protocol import ChatCompletionRequest, plan_chat

TOK = gpt2kit.Tokenizer()
PAST = [("Hello there.", "Hi! How can I help?"), ("What is 2 + 2?", "4.")]


@pytest.fixture(scope="module")
def tiny():
    return tiny_gpt(n_layer=1, n_embd=32, n_head=4, n_positions=256)


def _http(messages: list[dict], context: int):
    """What /v1/chat/completions runs for `messages`: (prompt text, stop strings)."""
    req = ChatCompletionRequest.model_validate({"messages": messages, "max_tokens": 8})
    plan = plan_chat(req, TOK, ServeConfig(), context)
    return TOK.decode(plan.prompts[0]), plan.params.stop


def _messages(system: str | None, message: str) -> list[dict]:
    head = [{"role": "system", "content": system}] if system is not None else []
    past = [{"role": r, "content": c} for u, a in PAST for r, c in (("user", u), ("assistant", a))]
    return [*head, *past, {"role": "user", "content": message}]


@pytest.mark.parametrize("system", [None, "You are terse."])
def test_terminal_and_http_chat_render_the_same_prompt_and_stops(tiny, system):
    template = DEFAULT_TEMPLATE if system is None else ChatTemplate(preamble=system)  # `gpt2kit chat --preamble`
    session = ChatSession(tiny, TOK, SamplingParams(max_new_tokens=8), template=template, turns=list(PAST))
    http_prompt, http_stop = _http(_messages(system, "And 3 + 3?"), tiny.config.n_positions)
    assert session.prompt_for("And 3 + 3?") == http_prompt
    assert session.params.stop == http_stop
    head = PREAMBLE if system is None else system
    assert http_prompt == (f"{head}\n\nUser: Hello there.\nAssistant: Hi! How can I help?\n"
                           "User: What is 2 + 2?\nAssistant: 4.\nUser: And 3 + 3?\nAssistant:")  # fmt: skip
    assert http_stop == ("\nUser:", "\nAssistant:", "\n\n")


def test_user_stops_come_first_in_both_paths(tiny):
    session = ChatSession(tiny, TOK, SamplingParams(max_new_tokens=8, stop=("END",)))
    req = ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "stop": "END"})
    assert session.params.stop == plan_chat(req, TOK, ServeConfig(), 256).params.stop == ("END", *DEFAULT_TEMPLATE.stop)


def test_template_edges():
    assert ChatTemplate(preamble="").render([ChatTurn("user", " hi ")]) == "User: hi\nAssistant:"
    joined = DEFAULT_TEMPLATE.render([ChatTurn("system", "A."), ChatTurn("developer", "B."), ChatTurn("user", "hi")])
    assert joined == "A.\nB.\n\nUser: hi\nAssistant:"
    with pytest.raises(InputError, match="messages is empty"):
        DEFAULT_TEMPLATE.render([])
    with pytest.raises(InputError, match="role 'tool' is not supported"):
        DEFAULT_TEMPLATE.render([ChatTurn("tool", "x")])
