"""How an Engine sequence ends and what its events carry, on a scripted model (scripted_engine.py): end of
text, stop tokens and strings, held-back bytes, logprobs, errors, penalties, bans and seeded sampling. The
step API's rows and slots: test_engine_steps.py."""

import pytest
import torch

from gpt2kit.generate import Engine, FinishReason, SamplingParams
from scripted_engine import EOT, GREEDY, NL, SP, A, B, C, D, Spy, V, big_fixture, engine, flat, model_fixture, run  # noqa: F401 (fixtures)


def test_endoftext_stop_tokens_and_ignore_eos(model):
    eng = engine(model, [5, A, B, EOT, C, D])
    eng.add([5], GREEDY)
    eng.add([5], SamplingParams(max_new_tokens=9, temperature=0))
    ev = run(eng)[-1]
    assert ev.slot == 1
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


def test_text_before_a_stop_string_inside_the_last_token(model):
    eng = engine(model, [5, 5, A, 30, B])  # "f", "a", then token 30 = "#30": the stop "0" cuts it after "#3"
    eng.add([5], GREEDY)
    eng.add([5], SamplingParams(max_new_tokens=9, temperature=0, stop=["0"], logprobs=1))
    last = [e for e in run(eng) if e.slot == 1][-1]
    assert (last.token, last.text, last.completion.text, last.completion.stop_reason) == (30, "#3", "fa#3", "0")
    assert last.finish_reason == FinishReason.STOP
    assert last.logprob is not None and last.logprob.token == 30 and last.completion.logprobs[-1] is last.logprob


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
    import gpt2kit.generate.step_draw as E

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
