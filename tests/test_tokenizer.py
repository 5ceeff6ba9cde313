"""The tokenizer is GPT-2's, id for id: against transformers' GPT-2 tokenizer and our pure-Python reference."""

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2kit import Tokenizer
from gpt2kit.errors import CheckpointError, InputError
from gpt2kit.tokenizer import gpt2_vocab
from gpt2kit.tokenizer.bpe import ReferenceBPE

TRICKY = [
    "",
    "Hello world",
    "I'm sure they'll say it's what we've done; he'd go, you're right. DON'T SHOUT'S",
    "line one\r\nline two\r\n\r\nend",
    "runs   of    spaces     and\ttabs\t\t\there   ",
    "trailing spaces   ",
    "   leading spaces",
    "non\u00a0breaking\u00a0spaces and\u2003em\u2009thin",
    "family: 👨‍👩‍👧‍👦, flags 🇫🇷🇯🇵, skin 👍🏽",
    "CJK: 日本語のテキスト、中文文本，한국어 텍스트",
    "combining: e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353",
    "control bytes: \x00\x01\x07\x1b[31m\x7f",
    "numbers 1234567890 3.14159 1,000,000 ١٢٣",
    "the literal <|endoftext|> token in text",
    "mixed\n\n\n\nnewlines \n \n",
    "Ωmega ß straße ﬁ ligature İstanbul",
    "\ud7ff\ue000\uffff",
]


@functools.cache
def hf_tokenizer():
    import tempfile
    from pathlib import Path

    import transformers

    folder = Path(tempfile.mkdtemp())
    gpt2_vocab.write_hf_tokenizer_files(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


@functools.cache
def reference():
    return ReferenceBPE()


tok = Tokenizer()


@pytest.mark.parametrize("text", TRICKY)
def test_tricky_strings_match_transformers_and_reference(text):
    ids = tok.encode_ordinary(text)
    assert ids == reference().encode(text)
    if "<|endoftext|>" not in text:  # transformers always splits the special token out
        assert ids == hf_tokenizer()(text)["input_ids"]
    assert tok.decode(ids) == text


def test_endoftext_policy():
    text = "a <|endoftext|> b"
    with pytest.raises(InputError, match="allowed_special"):
        tok.encode(text)
    special = tok.encode(text, allowed_special="all")
    assert special == [64, 220, 50256, 275]
    assert special == hf_tokenizer()(text)["input_ids"]
    assert tok.encode(text, disallowed_special=()) == tok.encode_ordinary(text)
    assert 50256 not in tok.encode_ordinary(text)
    assert tok.eot_token == 50256 and tok.n_vocab == 50257


def test_corpus_excerpts_match_transformers_and_reference(excerpts_dir):
    files = sorted(excerpts_dir.glob("*.txt"))
    assert len(files) == 7
    for path in files:
        text = path.read_text(encoding="utf-8")
        ids = tok.encode_ordinary(text)
        assert ids == reference().encode(text), path.name
        assert ids == hf_tokenizer()(text)["input_ids"], path.name
        assert tok.decode(ids) == text


@pytest.mark.corpora
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_whole_corpora_match_transformers_and_reference(corpora_dir):
    files = sorted(corpora_dir.glob("*.txt"))
    assert len(files) >= 7
    total = 0
    for path in files:
        text = path.read_text(encoding="utf-8")
        ids = tok.encode_ordinary(text)
        assert ids == reference().encode(text), path.name
        assert ids == hf_tokenizer()(text)["input_ids"], path.name
        assert tok.decode(ids) == text
        total += len(ids)
    assert total > 9_000_000  # ≈10M tokens: the whole corpus was compared


def test_batch_encode_equals_single():
    texts = TRICKY[1:8]
    assert tok.encode_batch(texts) == [tok.encode_ordinary(t) for t in texts]


def test_decode_bytes_and_bad_ids():
    ids = tok.encode_ordinary("日本")
    assert tok.decode_bytes(ids) == "日本".encode()
    partial = tok.decode_bytes(ids[:1])  # a token can end mid-character
    assert "日本".encode().startswith(partial)
    with pytest.raises(InputError, match="outside GPT-2's vocabulary"):
        tok.decode([50257])
    with pytest.raises(InputError, match="outside"):
        tok.decode([-1])
    with pytest.raises(InputError, match="expected text"):
        tok.encode_ordinary(b"bytes")


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_round_trip_any_text(text):
    ids = tok.encode_ordinary(text)
    assert tok.decode(ids) == text
    assert ids == reference().encode(text)


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.sampled_from(" \t\n\r\u00a0'sltvedm"), max_size=40))
def test_whitespace_and_contractions_match_reference(text):
    assert tok.encode_ordinary(text) == reference().encode(text)


def test_corrupted_vocabulary_is_refused(tmp_path, monkeypatch):
    bad = tmp_path / "gpt2.tiktoken"
    bad.write_bytes(gpt2_vocab.asset_path("gpt2.tiktoken").read_bytes()[:-10])
    monkeypatch.setattr(gpt2_vocab, "asset_path", lambda name: tmp_path / name)
    with pytest.raises(CheckpointError, match="corrupt"):
        gpt2_vocab.read_asset("gpt2.tiktoken")


def test_token_bytes_table_is_every_tokens_bytes_built_once(monkeypatch):
    fresh = Tokenizer()
    calls = []
    real = fresh._enc.decode_single_token_bytes
    monkeypatch.setattr(fresh._enc, "decode_single_token_bytes", lambda i: calls.append(i) or real(i))
    table = fresh.token_bytes_table
    assert fresh.token_bytes_table is table and len(calls) == fresh.n_vocab  # once per instance, not per read
    assert len(table) == fresh.n_vocab == 50257
    for i in [*range(0, 300), 1000, 12345, 31373, 50000, 50255, fresh.eot_token]:
        assert table[i] == fresh.decode_bytes([i]) == fresh.token_bytes(i), i
    assert table[fresh.eot_token] == b"<|endoftext|>" and table[31373] == b"hello"
