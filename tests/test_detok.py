"""Incremental detokenization and stop-string matching: UTF-8 safe, split across tokens, stream == final."""

from hypothesis import given, settings
from hypothesis import strategies as st

from gpt2kit import Tokenizer
from gpt2kit.generate.detok import IncrementalDetokenizer, decode_tokens
from gpt2kit.generate.stopping import StopStringMatcher

TOK = Tokenizer()
TABLE = [TOK.token_bytes(i) for i in range(TOK.n_vocab)]


def stream(ids):
    d = IncrementalDetokenizer(TABLE)
    parts = [d.add_bytes(TABLE[i]) for i in ids]
    parts.append(d.flush())
    return parts


def test_emoji_and_cjk_never_emit_half_a_character():
    text = "Hi 👋🏽 你好, naïve café — 🎉!"
    ids = TOK.encode_ordinary(text)
    assert any("\ufffd" in TABLE[i].decode("utf-8", errors="replace") for i in ids)  # some token splits a character
    parts = stream(ids)
    assert "".join(parts) == text
    assert all("\ufffd" not in p for p in parts)


def test_invalid_bytes_match_whole_decode():
    raw = [i for i in range(256) if len(TABLE[i]) == 1 and TABLE[i][0] >= 0x80][:5]  # lone continuation/lead bytes
    ids = raw + TOK.encode_ordinary(" ok")
    assert "".join(stream(ids)) == decode_tokens(TABLE, ids) == TOK.decode(ids)


@settings(max_examples=60, deadline=None)
@given(st.text(min_size=0, max_size=40))
def test_stream_equals_final_text(text):
    ids = TOK.encode_ordinary(text)
    assert "".join(stream(ids)) == text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 50255), max_size=30))
def test_stream_equals_decode_for_any_ids(ids):
    assert "".join(stream(ids)) == TOK.decode(ids)


def run_matcher(stops, chunks):
    m = StopStringMatcher(stops)
    out, hit = b"", None
    for c in chunks:
        emit, hit = m.feed(c)
        out += emit
        if hit is not None:
            return out, hit
    return out + m.flush(), None


def test_stop_string_split_across_tokens():
    assert run_matcher(["\n\nQ:"], [b"Answer", b"\n", b"\n", b"Q", b":", b" more"]) == (b"Answer", "\n\nQ:")
    assert run_matcher(["END"], [b"xxE", b"N", b"Dyy"]) == (b"xx", "END")


def test_held_back_prefix_is_released_when_no_stop_follows():
    m = StopStringMatcher(["\n\n"])
    assert m.feed(b"Hello\n") == (b"Hello", None)  # the "\n" may start a stop
    assert m.feed(b"World") == (b"\nWorld", None)
    assert run_matcher(["abc"], [b"ab", b"ab", b"x"]) == (b"ababx", None)
    assert run_matcher(["abc"], [b"xa"]) == (b"xa", None)  # flushed at the end


def test_earliest_stop_wins_and_text_stops_before_it():
    assert run_matcher(["b", "aX"], [b"1aXb"]) == (b"1", "aX")
    assert run_matcher(["zz"], [b"no stop here"]) == (b"no stop here", None)


@settings(max_examples=80, deadline=None)
@given(st.text(alphabet="ab\nQ:é", max_size=30), st.sampled_from(["\n\n", "Q:", "aé", "é"]), st.data())
def test_matcher_equals_reference_on_any_split(text, stop, data):
    raw = text.encode()
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=6)))
    chunks = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
    out, hit = run_matcher([stop], chunks)
    i = raw.find(stop.encode())
    if i < 0:
        assert (out, hit) == (raw, None)
    else:
        assert (out, hit) == (raw[:i], stop)
