"""The text layer, tasks, chat and CLI commands end to end on a tiny random model saved to a folder."""

import io
import json

import pytest
import torch

import gpt2kit
from gpt2kit.cli.__main__ import main
from gpt2kit.generate import SamplingParams
from gpt2kit.generate.chat import ChatSession, run_chat
from gpt2kit.generate.tasks import answer, first_sentences, summarize, translate
from gpt2kit.generate.text import GenerateOptions, TextGenerator, read_prompts

TOK = gpt2kit.Tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = gpt2kit.GPT(gpt2kit.GPTConfig(n_layer=2, n_embd=32, n_head=4, n_positions=256))
    return gpt2kit.save_pretrained(model, tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return gpt2kit.from_pretrained(tiny_dir)


def test_cli_generate_jsonl_and_plain(tiny_dir, capsys):
    args = ["generate", "Hello world", "--model", str(tiny_dir), "--max-new-tokens", "6", "--seed", "3", "--n", "2", "--jsonl"]
    assert main(args) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["index"] for r in rows] == [0, 1] and all(r["prompt"] == "Hello world" for r in rows)
    assert all(r["text"] == TOK.decode(r["token_ids"]) for r in rows)
    assert main(args) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == rows  # seeded: reproducible
    assert main(["generate", "Hi", "--model", str(tiny_dir), "--max-new-tokens", "5", "--temperature", "0", "--stream"]) == 0
    streamed = capsys.readouterr().out
    assert main(["generate", "Hi", "--model", str(tiny_dir), "--max-new-tokens", "5", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == streamed


def test_cli_errors_are_one_line(tiny_dir, capsys):
    assert main(["generate", "Hi", "--model", "", "--max-new-tokens", "3"]) == 2
    err = capsys.readouterr().err
    assert "empty --model" in err and "gpt2-xl" in err and "folder" in err and err.count("\n") == 1
    assert main(["generate", "Hi", "--model", str(tiny_dir), "--top-k", "0"]) == 2
    assert "top_k" in capsys.readouterr().err
    assert main(["generate", "Hi", "--model", str(tiny_dir), "--stream", "--n", "2"]) == 2
    assert "--stream" in capsys.readouterr().err
    assert main(["generate", "Hi", "--model", str(tiny_dir), "--logit-bias", "5:3"]) == 2
    assert "TOKEN_ID=BIAS" in capsys.readouterr().err


def test_cli_logit_bias_and_banned_token(tiny_dir, capsys):
    argv = ["generate", "Hi", "--model", str(tiny_dir), "--max-new-tokens", "4", "--temperature", "0", "--jsonl"]
    assert main([*argv, "--logit-bias", "318=1000"]) == 0
    assert json.loads(capsys.readouterr().out)["token_ids"] == [318] * 4
    assert main([*argv, "--logit-bias", "318=1000", "--ban-token", "318"]) == 0
    assert 318 not in json.loads(capsys.readouterr().out)["token_ids"]


def test_read_prompts_from_files(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("one\n\ntwo three\n")
    assert read_prompts(None, str(f)) == ["one", "two three"]
    j = tmp_path / "p.jsonl"
    j.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert read_prompts(None, str(j)) == ["a", "b"]
    j.write_text('{"text": "a"}\n')
    with pytest.raises(gpt2kit.errors.DataError, match="p.jsonl:1"):
        read_prompts(None, str(j))
    assert read_prompts(None, "-", stdin=io.StringIO("x\ny\n")) == ["x", "y"]


def test_text_generator_stream_equals_complete(tiny):
    tg = TextGenerator(tiny, TOK, GenerateOptions(max_batch=2))
    p = SamplingParams(max_new_tokens=12, temperature=0.9, seed=5, top_k=100)
    pieces = list(tg.stream_text("Once", p))
    (c,) = tg.complete(["Once"], p)
    assert "".join(pieces) == c.text


def test_tasks_build_the_paper_prompts(tiny):
    s = summarize(tiny, TOK, "The cat sat on the mat. It was warm.", max_new_tokens=20, seed=0)
    assert s.prompt.endswith("\nTL;DR:") and s.completion.token_ids
    t = translate(tiny, TOK, "The dog runs.", max_new_tokens=8)
    assert t.prompt.endswith("The dog runs. =") and "La maison est petite." in t.prompt
    assert "\n" not in t.completion.text
    a = answer(tiny, TOK, "Who wrote it?", context="A book by Jane.", max_new_tokens=8)
    assert a.prompt.startswith("A book by Jane.\n\n") and a.prompt.endswith("Q: Who wrote it?\nA:")
    long = summarize(tiny, TOK, "word " * 2000, max_new_tokens=20, seed=0)  # truncated to fit 256 tokens
    assert len(TOK.encode_ordinary(long.prompt)) <= 256 - 20 + 2


def test_first_sentences():
    assert first_sentences(" One. Two! Three? Four.", 3) == "One. Two! Three?"
    assert first_sentences('He said "hi." Then left. Gone.', 2) == 'He said "hi." Then left.'


def test_chat_keeps_the_conversation(tiny):
    session = ChatSession(tiny, TOK, SamplingParams(max_new_tokens=5, temperature=0))
    inputs = iter(["hello", "/reset", "again", "more"])

    def read(_prompt):
        try:
            return next(inputs)
        except StopIteration:
            raise EOFError from None

    out = []
    run_chat(session, read=read, write=out.append)
    assert "(conversation cleared)\n" in out
    assert [u for u, _ in session.turns] == ["again", "more"]
    prompt = session.prompt_for("third")
    assert prompt.count("User: ") == 3 and prompt.endswith("User: third\nAssistant:")
    long = ChatSession(tiny, TOK, SamplingParams(max_new_tokens=5, temperature=0), turns=[("x " * 100, "y")] * 5)
    assert long.prompt_for("hi").count("User: ") < 6  # oldest turns dropped to fit the context
