"""The Engine's step API on a scripted model: which rows each forward reads, what each event carries, how a
sequence ends, and the validation of the engine's own settings. A 64-token vocabulary and a mock runner whose
next token is fixed by position (conftest.ScriptedRunner), so every test knows the exact tokens; fast enough
to run once per mutant. The numerics (cached == uncached, batch == alone) are in test_engine.py."""

import re
import threading

import pytest
import torch

from conftest import ScriptedRunner, tiny_gpt
from gpt2kit.errors import ConfigError, InputError
from gpt2kit.generate import Engine, FinishReason, SamplingParams, generate

V, EOT = 64, 63
# token i < 26 is a letter, 26 a space, 27 a newline, 28 + 29 the two halves of "🎉" (F0 9F | 8E 89)
TABLE = (
    [bytes([97 + i]) for i in range(26)] + [b" ", b"\n", b"\xf0\x9f", b"\x8e\x89"] + [b"#%d" % i for i in range(30, 63)] + [b""]
)
A, B, C, D, SP, NL = 0, 1, 2, 3, 26, 27
GREEDY = SamplingParams(max_new_tokens=6, temperature=0)


@pytest.fixture(scope="module")
def model():
    return tiny_gpt(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=V)


@pytest.fixture(scope="module")
def big():
    """GPT-2's vocabulary (so <|endoftext|> is a token) and room for the default 64 new tokens."""
    return tiny_gpt(n_layer=1, n_head=2, n_embd=16, n_positions=72)


class Spy(ScriptedRunner):
    """ScriptedRunner that records every forward: (kind, tokens fed, rows of the cache view, mask given)."""

    def __init__(self, script):
        super().__init__(script, vocab=V)
        self.calls = []

    def prefill(self, idx, cache, mask, logits=True):
        self.calls.append(("prefill", idx.tolist(), cache.batch_size, mask is not None, logits))
        return super().prefill(idx, cache, mask, logits)

    def decode(self, tokens, cache, mask):
        if mask is not None:
            assert mask.dtype == torch.long and mask.shape == tokens.shape, (mask.dtype, mask.shape)
        self.calls.append(("decode", tokens[:, 0].tolist(), cache.batch_size, None if mask is None else mask[:, 0].tolist()))
        return super().decode(tokens, cache, mask)


def engine(model, script, table=TABLE, **kw):
    eng = Engine(model, token_bytes=table, eot_id=EOT, **kw)
    eng.runner = Spy(script)
    return eng


def run(eng):
    events = []
    while eng.active_slots:
        events += eng.step()
    return events


# ---- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 1.5, "2"])
def test_max_batch_must_be_a_positive_int(model, bad):
    with pytest.raises(ConfigError, match=re.escape(f"Engine max_batch must be an integer >= 1, got {bad!r}.")):
        Engine(model, max_batch=bad)


def test_cache_length_and_window(model):
    assert Engine(model, max_batch=1).max_len == 16 and Engine(model, max_batch=1, max_len=40).max_len == 16
    eng = Engine(model, max_batch=3, max_len=2)
    assert (eng.max_len, eng.window_keep, eng.max_batch, eng.cache.batch_size) == (2, 1, 3, 3)
    assert Engine(model, max_batch=1, max_len=9).window_keep == 4
    assert Engine(model, max_batch=1, max_len=9, window_keep=8).window_keep == 8
    with pytest.raises(ConfigError, match=re.escape("Engine max_len must be >= 2, got 1.")):
        Engine(model, max_len=1)
    for keep in (0, 9):
        with pytest.raises(ConfigError, match=re.escape(f"Engine window_keep must be in [1, max_len=9), got {keep!r}.")):
            Engine(model, max_len=9, window_keep=keep)
    assert not Engine(model, max_batch=1).cache.static and Engine(model, max_batch=1, static_cache=True).cache.static


def test_vocabulary_and_logits_buffer(model):
    eng = Engine(model, max_batch=2)
    assert (eng.n_vocab, eng.eot_id, eng.token_bytes) == (V, 50256, None)
    assert eng._logits.shape == (2, V) and eng._logits.dtype == torch.float32
    eng = Engine(model, max_batch=2, token_bytes=TABLE[:40])
    assert eng.n_vocab == 40 and eng._logits.shape == (2, 40)
    assert Engine(model, token_bytes=TABLE + [b"x"] * 10).n_vocab == V
    assert eng.device == torch.device("cpu") and eng.dtype == torch.float32 and not eng.model.training


# ---- slots ------------------------------------------------------------------------------------------


def test_slots_fill_and_free(model):
    eng = engine(model, [5, A, B, C, D, A, B, C, D])
    assert eng.free_slots == list(range(8)) and eng.active_slots == [] and eng.has_capacity
    assert eng.step() == []
    slots = eng.add_many([[5]] * 8, [GREEDY] * 8, request_ids=list("abcdefgh"))
    assert slots == list(range(8)) and not eng.has_capacity and eng.free_slots == []
    with pytest.raises(InputError, match=re.escape("the engine has 0 free slots, 1 requests were added; wait for a step")):
        eng.add([5], GREEDY)
    eng.remove(3)
    eng.remove(3)  # already free: nothing happens
    assert eng.free_slots == [3] and eng.has_capacity and eng.cache.row_length(3) == 0
    assert eng.add([5, 6], GREEDY, request_id="z") == 3
    assert eng._slots[3].request_id == "z" and eng._slots[3].params is GREEDY
    assert (eng._slots[3].index, eng._slots[3].prompt_index, eng._slots[3].prompt) == (0, 0, [5, 6])
    with pytest.raises(ConfigError, match=re.escape("got 2 prompts but 1 SamplingParams; give one per prompt.")):
        eng.add_many([[1], [2]], [GREEDY])


def test_add_many_defaults_and_bos(model):
    eng = engine(model, [EOT, 5, A, B, C])
    eng.add_many([[5], [5]], [GREEDY, GREEDY], bos=True)
    s0, s1 = eng._slots[0], eng._slots[1]
    assert (s0.request_id, s0.index, s0.prompt_index, s1.prompt_index) == (None, 0, 0, 1) and s0.prompt == [EOT, 5]
    eng.add([5], GREEDY, index=2, request_id=7, bos=True)
    assert eng._slots[2].prompt == [EOT, 5]
    assert (eng._slots[2].index, eng._slots[2].prompt_index, eng._slots[2].request_id) == (2, 0, 7)
    eng.add_many([[5]], [GREEDY], indices=[4], prompt_indices=[9])
    assert (eng._slots[3].index, eng._slots[3].prompt_index) == (4, 9)


def test_one_left_padded_prefill_into_a_contiguous_block(model):
    eng = engine(model, [1, 2, 3, A, B, C, D, A])
    eng.add([1, 2, 3], GREEDY)  # slot 0
    eng.add([1, 2, 3], GREEDY)  # slot 1
    eng.add([1, 2, 3], GREEDY)  # slot 2
    eng.remove(1)
    eng.runner.calls.clear()
    assert eng.add_many([[2, 3], [1, 2, 3]], [GREEDY, GREEDY]) == [3, 4]  # 1 is free but not next to another free row
    assert eng.runner.calls == [("prefill", [[0, 2, 3], [1, 2, 3]], 2, True, True)]
    eng.runner.calls.clear()
    assert eng.add_many([[1, 2, 3], [3]], [GREEDY, GREEDY]) == [5, 6]
    assert eng.runner.calls[0][:2] == ("prefill", [[1, 2, 3], [0, 0, 3]])
    eng.runner.calls.clear()
    assert eng.add_many([[1, 2, 3]], [GREEDY]) == [1]
    assert eng.runner.calls == [("prefill", [[1, 2, 3]], 1, False, True)]  # no padding: no mask
    assert [eng.cache.row_length(b) for b in range(8)] == [3, 3, 3, 3, 3, 3, 3, 0]


def test_rows_that_would_overflow_when_padded_are_prefilled_alone(model):
    eng = engine(model, [1] * 20)
    long, short = SamplingParams(max_new_tokens=1, temperature=0), SamplingParams(max_new_tokens=14, temperature=0)
    eng.add_many([list(range(1, 11)), [7]], [long, short])  # padded to 10: 10 + 14 - 1 > 16
    assert [c[:3] for c in eng.runner.calls] == [("prefill", [list(range(1, 11))], 1), ("prefill", [[7]], 1)]
    assert eng.cache.row_length(1) == 1
    eng = engine(model, [1] * 20)
    short = SamplingParams(max_new_tokens=7, temperature=0)  # 10 + 7 - 1 = 16: fits
    eng.add_many([list(range(1, 11)), [7]], [long, short])
    assert len(eng.runner.calls) == 1
    eng = engine(model, [1] * 20)
    slide = SamplingParams(max_new_tokens=40, temperature=0, sliding_window=True)
    eng.add_many([list(range(1, 11)), [7]], [long, slide])  # a sliding row never overflows
    assert len(eng.runner.calls) == 1


# ---- steps ------------------------------------------------------------------------------------------


def test_each_step_decodes_only_the_row_range_that_goes_on(model):
    eng = engine(model, [9, A, B, C, D, A, B, C])
    p = [SamplingParams(max_new_tokens=n, temperature=0) for n in (5, 2, 4)]
    eng.add_many([[9], [9], [9]], p, request_ids=["x", "y", "z"])
    eng.runner.calls.clear()
    first = eng.step()
    assert [(e.slot, e.request_id, e.token, e.text, e.finished) for e in first] == [
        (0, "x", A, "a", False), (1, "y", A, "a", False), (2, "z", A, "a", False)]  # fmt: skip
    assert eng.runner.calls == [("decode", [A, A, A], 3, None)]
    second = eng.step()
    assert [(e.slot, e.finished, e.finish_reason) for e in second] == [(0, False, None), (1, True, FinishReason.LENGTH),
                                                                       (2, False, None)]  # fmt: skip
    assert second[1].completion.token_ids == [A, B] and second[1].completion.text == "ab"
    assert eng.runner.calls[-1] == ("decode", [B, 0, B], 3, [1, 0, 1])  # row 1 left: a masked dummy in the range
    assert eng.cache.row_length(1) == 0 and eng.active_slots == [0, 2]
    eng.step()
    eng.step()  # slot 2 ends (4 tokens): only row 0 is decoded
    assert eng.runner.calls[-1] == ("decode", [D], 1, None)
    events = run(eng)
    assert events[-1].completion.token_ids == [A, B, C, D, A] and eng.active_slots == []
    assert eng.runner.calls[-1][0] == "decode" and len([c for c in eng.runner.calls if c[0] == "decode"]) == 4


def test_the_decoded_range_starts_at_the_first_row_that_goes_on(model):
    eng = engine(model, [9, A, B, C, D, A, B, C])
    p = [SamplingParams(max_new_tokens=n, temperature=0) for n in (1, 5, 5, 5)]
    eng.add_many([[9]] * 4, p)
    eng.step()  # row 0 ends: rows 1..3 go on
    assert eng.runner.calls[-1] == ("decode", [A, A, A], 3, None)
    eng.remove(2)
    eng.step()
    assert eng.runner.calls[-1] == ("decode", [B, 0, B], 3, [1, 0, 1])
    assert [eng.cache.row_length(b) for b in range(4)] == [0, 3, 0, 3]
    eng.remove(1)
    eng.step()
    assert eng.runner.calls[-1] == ("decode", [C], 1, None) and eng.cache.row_length(3) == 4


def test_idle_rows_inside_the_range_get_their_column_back(model):
    eng = engine(model, [9, A, B, C, D, A, B, C])
    eng.add_many([[9], [9], [9]], [SamplingParams(max_new_tokens=4, temperature=0)] * 3)
    eng.step()
    eng.remove(1)
    eng.step()
    assert eng.runner.calls[-1] == ("decode", [B, 0, B], 3, [1, 0, 1])
    assert [eng.cache.row_length(b) for b in range(3)] == [3, 0, 3]
    eng.add([9], SamplingParams(max_new_tokens=4, temperature=0))
    assert eng.cache.row_length(1) == 1


def test_endoftext_stop_tokens_and_ignore_eos(model):
    eng = engine(model, [5, A, B, EOT, C, D])
    eng.add([5], SamplingParams(max_new_tokens=9, temperature=0))
    ev = run(eng)[-1]
    assert (ev.token, ev.finish_reason, ev.completion.stop_reason, ev.completion.token_ids) == (
        None,
        FinishReason.STOP,
        EOT,
        [A, B],
    )
    assert ev.completion.text == "ab" and ev.text == ""
    eng = engine(model, [5, A, B, EOT, C, D])
    eng.add([5], SamplingParams(max_new_tokens=4, temperature=0, ignore_eos=True))
    assert run(eng)[-1].completion.token_ids == [A, B, EOT, C]
    eng = engine(model, [5, A, B, EOT, C, D])
    eng.add([5], SamplingParams(max_new_tokens=9, temperature=0, stop_token_ids=[B]))
    c = run(eng)[-1].completion
    assert c.token_ids == [A] and c.stop_reason == B and c.finish_reason == FinishReason.STOP


def test_a_stop_string_ends_the_text_before_it(model):
    eng = engine(model, [5, A, B, NL, NL, C, D])
    eng.add([5], SamplingParams(max_new_tokens=9, temperature=0, stop=["\n\n"]))
    events = run(eng)
    last = events[-1]
    assert (last.token, last.finished, last.finish_reason) == (NL, True, FinishReason.STOP)
    assert last.completion.token_ids == [A, B, NL, NL] and last.completion.text == "ab" and last.completion.stop_reason == "\n\n"
    assert [e.text for e in events] == ["a", "b", "", ""]


def test_held_back_bytes_are_released_at_endoftext(model):
    eng = engine(model, [5, A, NL, EOT])
    eng.add([5], SamplingParams(max_new_tokens=5, temperature=0, stop=["\nX"]))
    events = run(eng)
    assert [e.text for e in events] == ["a", "", "\n"] and events[-1].completion.text == "a\n"
    assert events[-1].completion.stop_reason == EOT


def test_held_back_bytes_are_released_when_the_sequence_ends_otherwise(model):
    eng = engine(model, [5, A, NL, C, D])
    eng.add([5], SamplingParams(max_new_tokens=2, temperature=0, stop=["\nX"]))
    events = run(eng)
    assert [e.text for e in events] == ["a", "\n"] and events[-1].completion.text == "a\n"
    eng = engine(model, [5, A, 28, 29, SP])  # an emoji split over two tokens: held until whole
    eng.add([5], SamplingParams(max_new_tokens=4, temperature=0))
    assert [e.text for e in run(eng)] == ["a", "", "🎉", " "]
    eng = engine(model, [5, A, 28, EOT])  # ends on half a character: flushed as U+FFFD
    eng.add([5], SamplingParams(max_new_tokens=4, temperature=0))
    assert run(eng)[-1].completion.text == "a\ufffd"


def test_no_table_no_text(model):
    eng = Engine(model, eot_id=EOT)
    eng.runner = Spy([5, A, B])
    eng.add([5], SamplingParams(max_new_tokens=2, temperature=0))
    events = run(eng)
    assert [e.text for e in events] == ["", ""] and events[-1].completion.text is None


def test_max_new_tokens_zero_ends_at_the_first_step(model):
    eng = engine(model, [5, A])
    eng.add([5], SamplingParams(max_new_tokens=0))
    (ev,) = eng.step()
    assert (ev.token, ev.finished, ev.finish_reason, ev.completion.token_ids) == (None, True, FinishReason.LENGTH, [])
    assert eng.runner.calls[-1][0] == "prefill"  # nothing left to decode


def test_cancel_ends_at_the_next_step_with_the_text_so_far(model):
    eng = engine(model, [5, A, B, C, D])
    slot = eng.add([5], SamplingParams(max_new_tokens=9, temperature=0), request_id="r")
    eng.step()
    eng.cancel(slot)
    eng.cancel(5)  # an empty slot: nothing
    (ev,) = eng.step()
    assert (ev.slot, ev.request_id, ev.token, ev.finish_reason) == (slot, "r", None, FinishReason.CANCELLED)
    assert ev.completion.text == "a" and ev.completion.token_ids == [A] and eng.free_slots == list(range(8))


def test_completion_carries_everything(model):
    eng = engine(model, [5, 6, A, B, C])
    eng.add_many([[5, 6]], [SamplingParams(max_new_tokens=2, temperature=0, logprobs=1, prompt_logprobs=1)],
                 request_ids=["q"], indices=[3], prompt_indices=[4])  # fmt: skip
    events = run(eng)
    first, last = events
    c = last.completion
    assert (c.request_id, c.prompt_ids, c.token_ids, c.text, c.index, c.prompt_index) == ("q", [5, 6], [A, B], "ab", 3, 4)
    assert first.prompt_logprobs is not None and len(first.prompt_logprobs) == 2 and first.prompt_logprobs[0] is None
    assert last.prompt_logprobs is None and c.prompt_logprobs == first.prompt_logprobs
    assert [lp.token for lp in c.logprobs] == [A, B] and last.logprob is c.logprobs[-1] and first.logprob is c.logprobs[0]
    assert all(lp.logprob == pytest.approx(0.0, abs=1e-6) for lp in c.logprobs)  # the script puts all mass on it
    assert c.error is None and last.error is None


def test_logprobs_only_for_the_rows_that_ask(model):
    eng = engine(model, [5, A, B, C])
    eng.add_many([[5], [5], [5]], [GREEDY, SamplingParams(max_new_tokens=2, temperature=0, logprobs=2), GREEDY])
    events = eng.step()
    assert [e.token for e in events] == [A, A, A]
    assert events[0].logprob is None and events[2].logprob is None
    lp = events[1].logprob
    assert lp.token == A and len(lp.top) == 2 and lp.top[0][0] == A


def test_a_sampling_failure_ends_that_sequence_alone(model, monkeypatch):
    import gpt2kit.generate.engine as E

    eng = engine(model, [5, A, B, C])
    eng.add_many([[5], [5]], [GREEDY, SamplingParams(max_new_tokens=6, temperature=1.0, seed=0)])
    real = E.draw

    def broken(logits, params, generator):
        raise ValueError("boom")

    monkeypatch.setattr(E, "draw", broken)
    events = eng.step()
    assert events[0].token == A and not events[0].finished
    bad = events[1]
    assert (bad.finished, bad.finish_reason, bad.token) == (True, FinishReason.ERROR, None)
    assert bad.error == bad.completion.error == "sampling failed: ValueError: boom"
    monkeypatch.setattr(E, "draw", real)
    assert eng.active_slots == [0]


def test_nothing_drawable_is_an_error_event(model):
    eng = engine(model, [5, A, B])
    eng.add([5], GREEDY)
    eng.add([5], SamplingParams(max_new_tokens=3, temperature=1.0, seed=0, logit_bias={i: -float("inf") for i in range(V)}))
    ev = eng.step()[1]
    msg = "no token can be drawn: every token's logit is -inf or NaN (banned, biased to -inf, or a broken model)."
    assert (ev.slot, ev.finish_reason, ev.error, ev.completion.error, ev.completion.stop_reason) == (
        1,
        FinishReason.ERROR,
        msg,
        msg,
        msg,
    )


def test_sampled_rows_apply_bans_and_phrase_filters(model):
    eng = engine(model, [5, A, B, C])
    eng.add([5], SamplingParams(max_new_tokens=1, temperature=1.0, seed=0, banned_token_ids=[A]))
    (ev,) = eng.step()
    assert ev.token not in (A, None)
    for ban in ({"banned_token_ids": [B]}, {"banned_phrases": ["AB"]}):  # by id; by the phrase B would complete
        for temperature in (0, 1.0):
            eng = engine(model, [5, A, B, C])
            eng.add([5], SamplingParams(max_new_tokens=2, temperature=temperature, seed=1, **ban))
            toks = [e.token for e in run(eng)]
            assert toks[0] == A and toks[1] not in (B, None), (ban, temperature, toks)


class Flat:
    """A runner whose logits never change: A 1.0, B 0.8, every other token -1e9 (penalties decide)."""

    def _logits(self, n):
        out = torch.full((n, V), -1e9)
        out[:, A], out[:, B] = 1.0, 0.8
        return out

    def prefill(self, idx, cache, mask, logits=True):
        cache.plan(idx.shape[1], mask)
        return self._logits(idx.shape[0]) if logits else None

    def decode(self, tokens, cache, mask):
        cache.plan(1, mask)
        return self._logits(tokens.shape[0])


def flat(model, **kw):
    eng = Engine(model, token_bytes=TABLE, eot_id=EOT, **kw)
    eng.runner = Flat()
    return eng


def test_penalties_see_the_prompt_and_the_output(model):
    eng = flat(model)
    eng.add([A], SamplingParams(max_new_tokens=1, temperature=0, repetition_penalty=2.0))  # A in the prompt: 1.0 / 2
    eng.add([5], SamplingParams(max_new_tokens=2, temperature=0, frequency_penalty=0.5))  # A once in the output: 0.5
    eng.add([5], GREEDY)
    assert [e.token for e in eng.step()] == [B, A, A]
    assert [e.token for e in eng.step()] == [B, A]


def test_ids_and_phrases_are_banned_together(model):
    for temperature in (0, 1.0):
        eng = flat(model)
        eng.add(
            [5], SamplingParams(max_new_tokens=3, temperature=temperature, seed=0, banned_token_ids=[A], banned_phrases=["bc"])
        )
        assert [e.token for e in run(eng)] == [B, B, B]  # A by id; C would complete "bc", but nothing but A, B is likely


def test_seeded_sampling_uses_the_requests_generator(model):
    def sample(seed, index=0):
        eng = engine(model, [5] * 30)
        eng.runner = Spy([5] * 30)
        eng.runner._logits = lambda positions: torch.zeros(len(positions), V)  # uniform over the vocabulary
        eng.add([5], SamplingParams(max_new_tokens=12, temperature=1.0, seed=seed), index=index)
        return [e.token for e in run(eng)]

    torch.manual_seed(0)
    a = sample(3)
    torch.manual_seed(1)
    assert sample(3) == a and sample(4) != a and sample(3, index=1) == sample(4)  # sample i uses seed + i


def test_counts_follow_the_output(model):
    eng = engine(model, [5, A, A, A, B])
    slot = eng.add([5, A], SamplingParams(max_new_tokens=3, temperature=0, frequency_penalty=0.1))
    eng.step()
    eng.step()
    s = eng._slots[slot]
    assert s.output_counts[A] == 2 and s.context_counts[A] == 3 and s.output_counts.sum() == 2


# ---- sliding window ---------------------------------------------------------------------------------


def test_a_full_row_is_re_prefilled_from_its_last_window_keep_tokens(model):
    eng = engine(model, list(range(1, 40)), max_len=6, window_keep=2)
    eng.add([1, 2, 3, 4], SamplingParams(max_new_tokens=6, temperature=0, sliding_window=True))
    eng.runner.calls.clear()
    toks = [e.token for e in run(eng)]
    assert toks == [5, 6, 7, 4, 5, 6]  # positions restart after the re-prefill: the script goes back to 4
    kinds = [(c[0], c[1]) for c in eng.runner.calls]
    assert kinds[:5] == [("decode", [5]), ("decode", [6]), ("prefill", [[5, 6]]), ("decode", [7]), ("decode", [4])]
    assert eng.runner.calls[2][2:] == (1, False, False)  # one row, no mask, no logits: only the cache is rebuilt
    assert eng._slots == [None] * 8


# ---- high level -------------------------------------------------------------------------------------


def test_stream_cancel_by_callable_and_generate_order(model):
    eng = engine(model, [5, A, B, C, D, A, B, C, D])
    seen = []
    for ev in eng.stream([[5]], SamplingParams(max_new_tokens=8, temperature=0), cancel=lambda: len(seen) >= 2):
        seen.append(ev)
    assert seen[-1].finish_reason == FinishReason.CANCELLED and len(seen) == 3
    stop, seen = threading.Event(), []
    eng = engine(model, [EOT, 5, A, B, C, D, A, B, C, D])
    for ev in eng.stream([[5]], SamplingParams(max_new_tokens=8, temperature=0), cancel=stop, bos=True):
        seen.append(ev)
        stop.set()
    assert [e.finish_reason for e in seen] == [None, FinishReason.CANCELLED] and seen[-1].completion.prompt_ids == [EOT, 5]
    eng = engine(model, [5, A, B, C, D])
    out = eng.generate(
        [[5], [5]], [SamplingParams(max_new_tokens=3, temperature=0, n=2), SamplingParams(max_new_tokens=1, temperature=0)]
    )
    assert [(c.prompt_index, c.index, c.token_ids) for c in out] == [(0, 0, [A, B, C]), (0, 1, [A, B, C]), (1, 0, [A])]


def test_add_without_params_uses_the_defaults(big):
    eng = Engine(big, max_batch=1)
    eng.add([5])
    assert eng._slots[0].params == SamplingParams()


def test_generate_sizes_the_engine_to_the_job(big, monkeypatch):
    model = big
    import gpt2kit.generate.engine as E

    made, weights = [], []
    real = E.Engine

    class Recording(real):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append((self.max_batch, self.max_len))
            weights.append(kw["weights"])

    monkeypatch.setattr(E, "Engine", Recording)
    p = SamplingParams(max_new_tokens=3, temperature=0, ignore_eos=True)
    out = generate(model, [[1, 2], [1, 2, 3, 4]], p, max_batch=8)
    assert made[-1] == (2, 4 + 3) and [len(c.token_ids) for c in out] == [3, 3]
    generate(model, [[1, 2]], [SamplingParams(max_new_tokens=3, temperature=0, n=5)], max_batch=4)
    assert made[-1] == (4, 5)
    out = generate(model, [[1]], SamplingParams(max_new_tokens=1, temperature=0), bos=True, token_bytes=TABLE, weights="model")
    assert made[-1] == (1, 3) and out[0].prompt_ids == [50256, 1]  # 1 + bos + 1
    assert out[0].text is not None and weights[-1] == "model" and weights[0] == "auto"
    generate(model, [[1]] * 9, SamplingParams(max_new_tokens=1, temperature=0))
    assert made[-1][0] == 8  # max_batch 8 by default
    generate(model, [[1]], SamplingParams(max_new_tokens=0, temperature=0))
    assert made[-1] == (1, 2)  # at least 2
    generate(model, [[1]], SamplingParams(max_new_tokens=30, temperature=0, sliding_window=True, ignore_eos=True))
    assert made[-1] == (1, 72)  # sliding: the whole context
    assert generate(model, [], SamplingParams()) == [] and made[-1] == (1, 2)
