"""The text layer, tasks, chat and CLI commands end to end on a tiny random model saved to a folder."""

import io
import json
import sys

import pytest

import gpt2kit
from conftest import tiny_gpt
from gpt2kit.cli.__main__ import main
from gpt2kit.cli.chat import run_chat
from gpt2kit.cli.textio import DIM, RESET, read_prompts
from gpt2kit.generate import SamplingParams
from gpt2kit.generate.chat import ChatSession
from gpt2kit.generate.tasks import EN_FR_EXAMPLES, answer, first_sentences, summarize, translate
from gpt2kit.generate.text import GenerateOptions, TextGenerator

TOK = gpt2kit.Tokenizer()


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return gpt2kit.save_pretrained(tiny_gpt(n_layer=2, n_embd=32, n_head=4, n_positions=256), tmp_path_factory.mktemp("tiny"))


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


def test_the_first_runs_kernel_measurement_says_so_in_one_line(tiny_dir, tmp_path, monkeypatch, capsys):
    """On the CLI a run that times this CPU's kernels says so (once: the next run reads the cache); the library logs it
    at INFO, which prints nothing unless asked for."""
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    args = ["generate", "Hi", "--model", str(tiny_dir), "--max-new-tokens", "2", "--temperature", "0"]
    assert main(args) == 0
    notes = [line for line in capsys.readouterr().err.splitlines() if "kernels" in line]
    assert notes == [f"gpt2kit: timing this CPU's kernels for this model (float32, auto weights, batch 1), once: later runs read "
                     f"the choice from {tmp_path / 'kernels.json'}"]  # fmt: skip
    assert main(args) == 0 and "kernels" not in capsys.readouterr().err
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path / "other"))
    gpt2kit.generate.text.TextGenerator(gpt2kit.from_pretrained(tiny_dir), TOK).complete(["Hi"], SamplingParams(max_new_tokens=2))
    assert not capsys.readouterr().err
    import logging

    assert logging.getLogger("gpt2kit.kernels").handlers == []  # the command's handler is gone after it


def test_text_generator_sizes_its_engine_to_the_sequences_a_call_decodes(tiny, monkeypatch):
    """An engine of as many rows as the call's prompts x samples, max_batch at most, so its kernels are chosen for the
    batch it decodes (one prompt: a 1-row decode step); built again, larger, only for a call with more."""
    built = []
    real = gpt2kit.generate.text.Engine
    monkeypatch.setattr(gpt2kit.generate.text, "Engine", lambda model, **kw: built.append(kw["max_batch"]) or real(model, **kw))
    tg = TextGenerator(tiny, TOK, GenerateOptions(max_batch=4))
    p = SamplingParams(max_new_tokens=2, temperature=0)
    assert list(tg.stream_text("Once", p)) and built == [1]
    tg.complete(["a", "b"], p)
    assert built == [1, 2] and tg.engine().max_batch == 4 and built == [1, 2, 4]
    tg.complete(["a"], [SamplingParams(max_new_tokens=2, n=3, seed=1)])
    assert built == [1, 2, 4]  # 3 rows: the engine of 4 holds them
    tg = TextGenerator(tiny, TOK, GenerateOptions(max_batch=4))
    out = tg.complete(["a", "b", "c"], [SamplingParams(max_new_tokens=2, n=2, seed=1)] * 3)
    assert built[-1] == 4 and len(out) == 6  # 6 sequences: max_batch rows, decoded in turns


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


# ---- the CLI commands against the library they wrap ------------------------------------------------
def _jsonl(capsys) -> list[dict]:
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_cli_ban_and_ban_file_keep_a_phrase_out(tiny_dir, tmp_path, capsys):
    argv = ["generate", "Once upon a time", "--model", str(tiny_dir), "--max-new-tokens", "16", "--temperature", "0",
            "--ignore-eos", "--jsonl"]  # fmt: skip
    assert main(argv) == 0
    [free] = _jsonl(capsys)
    phrase = TOK.decode(free["token_ids"][:2]).strip()  # what the model writes first, across two tokens
    assert len(phrase) > 3 and phrase in free["text"]
    assert main([*argv, "--ban", phrase.upper()]) == 0  # case-insensitive
    [banned] = _jsonl(capsys)
    assert phrase.lower() not in banned["text"].lower() and banned["token_ids"][0] == free["token_ids"][0]
    ban_file = tmp_path / "banned.txt"
    ban_file.write_text("unrelated words\n" + phrase + "\n\n")
    assert main([*argv, "--ban-file", str(ban_file)]) == 0
    assert _jsonl(capsys) == [banned]
    assert main([*argv, "--ban-file", str(tmp_path / "missing.txt")]) == 2
    err = capsys.readouterr().err
    assert "--ban-file" in err and "missing.txt" in err and err.count("\n") == 1


def test_cli_file_of_prompts_and_int8_weights(tiny_dir, tiny, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The cat\n\nA dog barked\n")
    argv = ["generate", "--file", str(prompts), "--model", str(tiny_dir), "--max-new-tokens", "6", "--temperature", "0",
            "--ignore-eos", "--jsonl"]  # fmt: skip
    assert main(argv) == 0
    rows = _jsonl(capsys)
    assert [r["prompt"] for r in rows] == ["The cat", "A dog barked"]
    p = SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True)
    for r in rows:  # each equals the library's greedy completion of its prompt
        [want] = gpt2kit.generate.generate(tiny, [TOK.encode_ordinary(r["prompt"])], p)
        assert r["token_ids"] == want.token_ids
    assert main([*argv, "--weights", "int8"]) == 0
    q = _jsonl(capsys)
    assert [r["prompt"] for r in q] == ["The cat", "A dog barked"]
    assert all(len(r["token_ids"]) == 6 and r["text"] == TOK.decode(r["token_ids"]) for r in q)
    # int8 rounding is ~1e-3 on logits: the first greedy pick (a clear winner here) is unchanged
    assert [r["token_ids"][0] for r in q] == [r["token_ids"][0] for r in rows]


def test_cli_summarize_translate_answer_match_the_library(tiny_dir, tiny, tmp_path, capsys):
    article = tmp_path / "article.txt"
    article.write_text("The cat sat on the mat. It was warm. The dog slept.")
    assert (
        main(["summarize", str(article), "--model", str(tiny_dir), "--max-new-tokens", "12", "--seed", "1", "--show-prompt"]) == 0
    )
    out = capsys.readouterr()
    want = summarize(tiny, TOK, article.read_text(), max_new_tokens=12, seed=1)
    assert out.out == want.text + "\n" and out.err == want.prompt + "\n"

    examples = tmp_path / "examples.txt"
    examples.write_text("cat = chat\n\ndog = chien\n")
    assert main(["translate", "house", "--model", str(tiny_dir), "--examples", str(examples), "--max-new-tokens", "6",
                 "--show-prompt"]) == 0  # fmt: skip
    out = capsys.readouterr()
    want = translate(tiny, TOK, "house", examples=[("cat", "chat"), ("dog", "chien")], max_new_tokens=6)
    assert out.out == want.text + "\n" and out.err == want.prompt + "\n"
    assert "cat = chat" in want.prompt and EN_FR_EXAMPLES[0][1] not in want.prompt  # the file replaced the built-ins
    examples.write_text("no separator here\n")
    assert main(["translate", "house", "--model", str(tiny_dir), "--examples", str(examples)]) == 2
    assert "examples.txt:1: expected 'source = target'" in capsys.readouterr().err

    context = tmp_path / "context.txt"
    context.write_text("A book by Jane.")
    examples.write_text("Who? = Tom\n")
    assert main(["answer", "Who wrote it?", "--context", str(context), "--examples", str(examples), "--model", str(tiny_dir),
                 "--max-new-tokens", "5", "--show-prompt"]) == 0  # fmt: skip
    out = capsys.readouterr()
    want = answer(tiny, TOK, "Who wrote it?", context="A book by Jane.", examples=[("Who?", "Tom")], max_new_tokens=5)
    assert out.out == want.text + "\n" and out.err == want.prompt + "\n"
    assert want.prompt.startswith("A book by Jane.") and "Q: Who?\nA: Tom" in want.prompt


def test_cli_chat_reads_turns_from_stdin(tiny_dir, tiny, monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/reset\nagain\n/quit\nnever read\n"))
    assert main(["chat", "--model", str(tiny_dir), "--max-new-tokens", "5", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    session = ChatSession(tiny, TOK, SamplingParams(max_new_tokens=5, temperature=0))
    first = "".join(session.send("hello"))
    session.reset()
    second = "".join(session.send("again"))
    assert out.count("Assistant:") == 2 and "(conversation cleared)" in out
    assert f"Assistant:{first}\n" in out and f"Assistant:{second}\n" in out


class _Terminal(io.StringIO):
    """A stdout that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("stream", [False, True])
def test_cli_generate_shows_the_prompt_dimmed_in_a_terminal_only(tiny_dir, monkeypatch, capsys, stream):
    argv = ["generate", "Hello world", "--model", str(tiny_dir), "--max-new-tokens", "5", "--temperature", "0"]
    argv += ["--stream"] if stream else []
    assert main(argv) == 0
    piped = capsys.readouterr().out  # not a terminal: the continuation alone
    assert piped.endswith("\n") and "Hello world" not in piped and "\x1b" not in piped
    monkeypatch.delenv("NO_COLOR", raising=False)
    for no_color, want in (("", f"{DIM}Hello world{RESET}{piped}"), ("1", f"Hello world{piped}")):
        monkeypatch.setenv("NO_COLOR", no_color)
        monkeypatch.setattr("sys.stdout", _Terminal())
        assert main(argv) == 0
        assert sys.stdout.getvalue() == want
