"""The Engine's step API on a scripted model: the engine's own settings, slots, which rows each forward reads,
the sliding window and the one-shot `generate`. A 64-token vocabulary and a mock runner whose next token is
fixed by position (scripted_engine.py), so every test knows the exact tokens; fast enough to run once per
mutant. How a sequence ends and what it carries: test_engine_sequences.py; numerics: test_engine.py."""

import re
import threading

import pytest
import torch

from gpt2kit.errors import ConfigError, InputError
from gpt2kit.generate import Engine, FinishReason, SamplingParams, generate
from scripted_engine import EOT, GREEDY, TABLE, A, B, C, D, V, big_fixture, engine, model_fixture, run  # noqa: F401 (fixtures)

# ---- settings ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 1.5, "2"])
def test_max_batch_must_be_a_positive_int(model, bad):
    with pytest.raises(ConfigError, match=re.escape(f"Engine max_batch must be an integer >= 1, got {bad!r}.")):
        Engine(model, max_batch=bad)


def test_cache_length_and_window(model):
    assert Engine(model, max_batch=1).max_len == 16 and Engine(model, max_batch=1, max_len=40).max_len == 16
    eng = Engine(model, max_batch=3, max_len=2)
    assert (eng.max_len, eng.window_keep, eng.max_batch, eng.cache.batch_size, eng.cache.max_len) == (2, 1, 3, 3, 2)
    assert eng.cache.k.dtype == torch.float32
    bf16 = Engine(model.to(torch.bfloat16), max_batch=1)  # its cache: bf16, or float32 where attention runs faster so
    assert bf16.cache.k.dtype == (torch.float32 if bf16.runner.attention.kind == "float32" else torch.bfloat16)
    model.float()
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
    eng.add_many([list(range(1, 11)), [7]], [long, SamplingParams(max_new_tokens=8, temperature=0)])  # 17: one too many
    assert len(eng.runner.calls) == 2
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


def test_cancel_ends_at_the_next_step_with_the_text_so_far(model):
    eng = engine(model, [5, A, B, C, D])
    slot = eng.add([5], SamplingParams(max_new_tokens=9, temperature=0), request_id="r")
    eng.step()
    eng.cancel(slot)
    eng.cancel(5)  # an empty slot: nothing
    (ev,) = eng.step()
    assert (ev.slot, ev.request_id, ev.token, ev.finish_reason) == (slot, "r", None, FinishReason.CANCELLED)
    assert ev.completion.text == "a" and ev.completion.token_ids == [A] and eng.free_slots == list(range(8))


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
