"""One reader for users' text and JSONL files: each mistake has one message, whichever command reads the file."""

import io

import pytest

from gpt2kit.cli.textio import read_document, read_examples, read_prompts
from gpt2kit.data.prepare import prepare
from gpt2kit.data.sft import read_prompt_completion
from gpt2kit.errors import DataError
from gpt2kit.eval.lambada import load_lambada
from gpt2kit.eval.perplexity import files_perplexity
from gpt2kit.eval.wikitext import load_wikitext
from gpt2kit.textfiles import read_jsonl, read_text

LATIN1 = "ok\ncaf\u00e9\n".encode("latin-1")  # the bad byte 0xe9 is on line 2, at offset 6


def _error(read, path) -> str:
    with pytest.raises(DataError) as e:
        read(path)
    message = str(e.value)
    assert "\n" not in message and message.startswith(str(path))
    return message


# ---- each message, once per reader kind ------------------------------------------------------------
def test_read_text_errors(tmp_path):
    def read(p):
        return read_text(p, "a poem")

    assert _error(read, tmp_path / "nope.txt") == f"{tmp_path / 'nope.txt'}: no such file; pass the path of a poem."
    assert _error(read, tmp_path) == f"{tmp_path} is a directory; pass the path of a poem."
    (tmp_path / "bin.txt").write_bytes(b"\x7fELF\x00\x01")
    assert _error(read, tmp_path / "bin.txt") == f"{tmp_path / 'bin.txt'} looks binary (it contains NUL bytes); expected a poem."
    (tmp_path / "latin1.txt").write_bytes(LATIN1)
    assert _error(read, tmp_path / "latin1.txt") == (
        f"{tmp_path / 'latin1.txt'}:2: not valid UTF-8 (byte 0xe9 at offset 6); convert it first, "
        "e.g. `iconv -f latin1 -t utf-8 latin1.txt > latin1.utf8.txt`."
    )
    (tmp_path / "blank.txt").write_text(" \n\n")
    assert _error(read, tmp_path / "blank.txt") == f"{tmp_path / 'blank.txt'}: the file is empty; expected a poem."
    (tmp_path / "ok.txt").write_text("caf\u00e9\n")
    assert read(tmp_path / "ok.txt") == "caf\u00e9\n"


def test_read_jsonl_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    shape = '{"text": string, "n": integer}'

    def read(content, **kw):
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return read_jsonl(path, {"text": str, "n": int}, "records", **kw)

    def error(content, **kw):
        return _error(lambda p: read(content, **kw), path)

    good = '{"text": "a", "n": 1}\n'
    assert error(good + '{"text": "b", \n') == (
        f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes at column 15); "
        f"every line of records must be one JSON object like {shape}."
    )
    assert error(good + "\n[1]\n") == f"{path}:3: expected a JSON object like {shape}, got list."
    assert error('{"txt": "a", "n": 1}\n') == (
        f"{path}:1: missing field 'text' (found ['n', 'txt']); each line of records must look like {shape}."
    )
    assert error('{"txt": "a", "n": 1}\n', hint="Use --text-field.").endswith(f"like {shape}. Use --text-field.")
    assert error('{"text": "a", "n": "1"}\n') == f"{path}:1: field 'n' should be integer, got str ('1')."
    assert error('{"text": "a", "n": true}\n') == f"{path}:1: field 'n' should be integer, got bool ('True')."
    assert error(good.encode() + b'{"text": "caf\xe9", "n": 2}\n').startswith(
        f"{path}:2: not valid UTF-8 (byte 0xe9 at offset 35); convert it first"
    )
    assert error("\n \n") == f"{path}: the file is empty; expected records, one JSON object a line like {shape}."
    assert _error(lambda p: read_jsonl(p, {"text": str}, "records"), tmp_path / "no.jsonl").endswith(
        "no such file; pass the path of records."
    )
    assert read(good + good + "not json\n", limit=2) == [{"text": "a", "n": 1, "_line": 1}, {"text": "a", "n": 1, "_line": 2}]


# ---- every former caller reads through it ------------------------------------------------------------
def _prepare(path):
    prepare([path], path.parent / f"out-{path.name}", workers=1, progress=False)


def _prompts(path):
    read_prompts(None, str(path), stdin=io.StringIO())


JSONL_READERS = {
    "prepare": _prepare,
    "sft": read_prompt_completion,
    "eval": load_lambada,
    "prompts": _prompts,
}
TEXT_READERS = {
    "prepare": _prepare,
    "eval wikitext": load_wikitext,
    "eval perplexity": lambda p: files_perplexity(None, None, [p]),
    "prompts": _prompts,
    "examples": lambda p: read_examples(str(p)),
    "documents": lambda p: read_document(str(p), "an article"),
}


@pytest.mark.parametrize("reader", JSONL_READERS)
def test_a_bad_jsonl_line_gets_the_same_message_from_every_reader(tmp_path, reader):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a", "prompt": "p", "completion": "c"}\n{"text": \n')
    assert _error(JSONL_READERS[reader], path).startswith(
        f"{path}:2: not valid JSON (Expecting value at column 10); every line of "
    )
    path.write_text('{"other": 1}\n')
    assert _error(JSONL_READERS[reader], path).startswith(f"{path}:1: missing field ")
    if reader != "prepare":  # prepare's inputs may be folders: it checks them first, with its own message
        missing = tmp_path / "missing.jsonl"
        assert _error(JSONL_READERS[reader], missing).startswith(f"{missing}: no such file; pass the path of ")


@pytest.mark.parametrize("reader", TEXT_READERS)
def test_a_bad_text_file_gets_the_same_message_from_every_reader(tmp_path, reader):
    path = tmp_path / "latin1.txt"
    path.write_bytes(LATIN1)
    assert _error(TEXT_READERS[reader], path).startswith(f"{path}:2: not valid UTF-8 (byte 0xe9 at offset 6); convert it first")
    path.write_bytes(b"\0\0\0")
    assert _error(TEXT_READERS[reader], path).startswith(f"{path} looks binary (it contains NUL bytes); expected ")
    path.write_text("\n")
    assert _error(TEXT_READERS[reader], path).startswith(f"{path}: the file is empty; expected ")
