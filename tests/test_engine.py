"""The engine: cached == uncached logits, batch rows == alone, stopping, cancel, streaming, sliding window, errors.

Numerics use a tiny random GPT; stopping logic uses a scripted runner (a mock model whose next token is
fixed by position) over the real KVCache, so each test runs in milliseconds.
"""

import threading

import pytest
import torch

from conftest import tiny_gpt
from gpt2kit import Tokenizer
from gpt2kit.errors import ConfigError, InputError
from gpt2kit.generate import Engine, FinishReason, SamplingParams, generate
from gpt2kit.generate.decode import DecodeRunner
from gpt2kit.model.kv_cache import KVCache

TOK = Tokenizer()
TABLE = [TOK.token_bytes(i) for i in range(TOK.n_vocab)]
EOT = TOK.eot_token


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return tiny_gpt(n_layer=2, n_embd=32, n_head=4, n_positions=64)


class ScriptedRunner:
    """A mock model: after the token at position p it predicts `script[p + 1]` (positions from the cache plan)."""

    def __init__(self, script, vocab=50257):
        self.script, self.vocab = script, vocab

    def _logits(self, positions):
        out = torch.full((len(positions), self.vocab), -1e9)
        for i, p in enumerate(positions.tolist()):
            out[i, self.script[min(p + 1, len(self.script) - 1)]] = 0.0
        return out

    def prefill(self, idx, cache, mask, logits=True):
        plan = cache.plan(idx.shape[1], mask)
        return self._logits(plan.position_ids[:, -1]) if logits else None

    def decode(self, tokens, cache, mask):
        return self._logits(cache.plan(1, mask).position_ids[:, 0])


def scripted_engine(tiny, text_after_prompt, prompt, **kw):
    out_ids = text_after_prompt if isinstance(text_after_prompt, list) else TOK.encode_ordinary(text_after_prompt)
    eng = Engine(tiny, token_bytes=TABLE, **kw)
    eng.runner = ScriptedRunner(list(prompt) + out_ids)
    return eng


# ---- numerics -------------------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["model", "auto"])
def test_cached_decode_equals_uncached_forward(tiny, weights):
    torch.manual_seed(1)
    seq = torch.randint(0, 50257, (1, 20))
    runner = DecodeRunner(tiny, weights)
    cache = KVCache(tiny.config, 1, 64)
    with torch.inference_mode():
        logits = [runner.prefill(seq[:, :8], cache, None)]
        for t in range(8, 20):
            logits.append(runner.decode(seq[:, t : t + 1], cache, None))
        full, _ = tiny(seq)
    for i, lg in enumerate(logits):
        torch.testing.assert_close(lg, full[:, 7 + i], atol=1e-5, rtol=1e-5)


def test_left_padded_batch_rows_equal_alone(tiny):
    torch.manual_seed(2)
    prompts = [torch.randint(0, 50257, (n,)).tolist() for n in (3, 11, 7, 1)]
    p = SamplingParams(max_new_tokens=12, temperature=0, ignore_eos=True)
    batch = generate(tiny, prompts, p)
    for prompt, c in zip(prompts, batch):
        assert c.token_ids == generate(tiny, [prompt], p)[0].token_ids
        assert c.prompt_ids == prompt and c.finish_reason == FinishReason.LENGTH


def test_padding_never_overflows_the_cache(tiny):
    # a long prompt with few new tokens + a short prompt with many: padded together they would not fit
    p_long, p_short = list(range(1, 50)), [7]
    params = [SamplingParams(max_new_tokens=1, temperature=0), SamplingParams(max_new_tokens=60, temperature=0, ignore_eos=True)]
    eng = Engine(tiny, max_batch=2)  # max_len = n_positions = 64
    out = eng.generate([p_long, p_short], params)
    assert len(out[1].token_ids) == 60
    assert out[1].token_ids == generate(tiny, [p_short], params[1])[0].token_ids


def test_join_and_leave_between_steps_equals_alone(tiny):
    """Continuous batching: requests added mid-flight into freed slots give the same tokens as alone."""
    torch.manual_seed(3)
    prompts = [torch.randint(0, 50257, (n,)).tolist() for n in (5, 9, 2, 6, 4)]
    lens = [3, 10, 6, 8, 5]
    params = [SamplingParams(max_new_tokens=n, temperature=0, ignore_eos=True) for n in lens]
    eng = Engine(tiny, max_batch=2)  # 5 requests through 2 slots: they queue and join as slots free
    got = {c.prompt_index: c.token_ids for c in eng.generate(prompts, params)}
    for i, (pr, sp) in enumerate(zip(prompts, params)):
        assert got[i] == generate(tiny, [pr], sp)[0].token_ids
    # manual step API: add one, step, add another into the other slot, step both
    eng = Engine(tiny, max_batch=3)
    a = eng.add(prompts[0], params[1])
    eng.step()
    eng.step()
    b = eng.add(prompts[1], params[1])
    seen = {a: [], b: []}
    while eng.active_slots:
        for ev in eng.step():
            if ev.token is not None:
                seen[ev.slot].append(ev.token)
    assert seen[b] == generate(tiny, [prompts[1]], params[1])[0].token_ids
    assert len(seen[a]) == 8  # 2 tokens drawn before b joined


@pytest.mark.parametrize("mode", ["bf16", "int8"])
def test_low_precision_decode_close_to_fp32(tiny, mode):
    torch.manual_seed(4)
    seq = torch.randint(0, 50257, (2, 10))
    outs = {}
    for w in ("auto", mode):
        cache = KVCache(tiny.config, 2, 64)
        runner = DecodeRunner(tiny, w)
        runner.prefill(seq[:, :9], cache, None)
        outs[w] = runner.decode(seq[:, 9:], cache, None)
    err = (outs["auto"] - outs[mode]).abs().max().item()
    assert 0 < err < 0.05 * outs["auto"].abs().max().item()


def test_seeded_sampling_reproducible_and_n_samples_differ(tiny):
    prompt = TOK.encode_ordinary("Once upon a time")
    p = SamplingParams(max_new_tokens=10, temperature=1.0, top_k=50, seed=123, n=3, ignore_eos=True)
    a = generate(tiny, [prompt], p, token_bytes=TABLE)
    b = generate(tiny, [prompt], p, token_bytes=TABLE)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    assert [c.text for c in a] == [c.text for c in b]
    assert [c.index for c in a] == [0, 1, 2]
    assert len({tuple(c.token_ids) for c in a}) > 1
    c = generate(tiny, [prompt], SamplingParams(max_new_tokens=10, top_k=50, seed=124, ignore_eos=True))
    assert c[0].token_ids == a[1].token_ids  # sample i uses seed + i


# ---- stopping (scripted) --------------------------------------------------------------------------


def test_stop_string_split_across_tokens_is_not_emitted(tiny):
    prompt = TOK.encode_ordinary("Q: hi")
    out = [*TOK.encode_ordinary(" A: hello"), TOK.encode_ordinary("\n")[0], TOK.encode_ordinary("\n")[0],
           *TOK.encode_ordinary("Q: next")]  # fmt: skip
    eng = scripted_engine(tiny, out, prompt)
    events = list(eng.stream([prompt], SamplingParams(max_new_tokens=30, stop=["\n\nQ:"], temperature=0)))
    c = events[-1].completion
    assert c.text == " A: hello" and c.finish_reason == FinishReason.STOP and c.stop_reason == "\n\nQ:"
    assert "".join(e.text for e in events) == c.text


def test_endoftext_stops_and_is_not_emitted(tiny):
    prompt = TOK.encode_ordinary("x")
    eng = scripted_engine(tiny, [*TOK.encode_ordinary(" the end"), EOT, *TOK.encode_ordinary(" more")], prompt)
    c = eng.generate([prompt], SamplingParams(max_new_tokens=20, temperature=0))[0]
    assert c.text == " the end" and c.finish_reason == FinishReason.STOP and c.stop_reason == EOT
    assert EOT not in c.token_ids
    eng = scripted_engine(tiny, [*TOK.encode_ordinary(" the end"), EOT, *TOK.encode_ordinary(" more")], prompt)
    c = eng.generate([prompt], SamplingParams(max_new_tokens=5, temperature=0, ignore_eos=True))[0]
    assert c.token_ids[len(TOK.encode_ordinary(" the end"))] == EOT and c.finish_reason == FinishReason.LENGTH


def test_stream_equals_final_text_with_emoji(tiny):
    prompt = TOK.encode_ordinary("say")
    eng = scripted_engine(tiny, " 🎉 你好 done", prompt)
    n = len(TOK.encode_ordinary(" 🎉 你好 done"))
    events = list(eng.stream([prompt], SamplingParams(max_new_tokens=n, temperature=0)))
    assert "".join(e.text for e in events) == events[-1].completion.text == " 🎉 你好 done"
    assert all("\ufffd" not in e.text for e in events)


def test_cancel_from_the_caller(tiny):
    prompt = TOK.encode_ordinary("go")
    eng = scripted_engine(tiny, " a b c d e f g h i j k l m n o p", prompt)
    stop = threading.Event()
    events = []
    for ev in eng.stream([prompt], SamplingParams(max_new_tokens=16, temperature=0), cancel=stop):
        events.append(ev)
        if len(events) == 3:
            stop.set()
    assert events[-1].finish_reason == FinishReason.CANCELLED
    assert events[-1].completion.text == " a b c"
    assert eng.active_slots == []
    slot = eng.add(prompt, SamplingParams(max_new_tokens=16, temperature=0))  # step API cancel
    eng.step()
    eng.cancel(slot)
    (ev,) = eng.step()
    assert ev.finished and ev.finish_reason == FinishReason.CANCELLED and eng.free_slots == list(range(8))


def test_breaking_out_of_stream_frees_slots(tiny):
    prompt = TOK.encode_ordinary("go")
    eng = scripted_engine(tiny, " a b c d e f", prompt)
    for _ in eng.stream([prompt, prompt], SamplingParams(max_new_tokens=6, temperature=0)):
        break
    assert eng.active_slots == []


def test_banned_phrase_is_never_completed(tiny):
    prompt = TOK.encode_ordinary("The")
    # unfiltered, the scripted model spells " badword" as " bad" + "word"; the filter must mask "word"
    eng = scripted_engine(tiny, " bad" + "word" + " here", prompt)
    c = eng.generate([prompt], SamplingParams(max_new_tokens=4, temperature=0))[0]
    assert "badword" in c.text
    torch.manual_seed(0)
    eng = Engine(tiny, token_bytes=TABLE)
    eng.runner = ScriptedRunner(prompt + TOK.encode_ordinary(" bad") + [0] * 10)
    p = SamplingParams(max_new_tokens=1, temperature=1.0, seed=0, banned_phrases=["BadWord"])
    slot = eng.add(prompt + TOK.encode_ordinary(" bad"), p)
    s = eng._slots[slot]
    banned = set(s.phrase_filter.banned_ids().tolist())
    assert TOK.encode_ordinary("word")[0] in banned and TOK.encode_ordinary("w")[0] not in banned
    assert all(b"badword" in (b" bad" + TABLE[t]).lower() for t in banned)


def test_max_new_tokens_zero_and_length(tiny):
    c = generate(tiny, [[1, 2, 3]], SamplingParams(max_new_tokens=0))[0]
    assert c.token_ids == [] and c.finish_reason == FinishReason.LENGTH


# ---- sliding window -------------------------------------------------------------------------------


def test_sliding_window_generates_past_the_context(tiny):
    p = SamplingParams(max_new_tokens=150, temperature=0, ignore_eos=True, sliding_window=True)
    c = generate(tiny, [list(range(1, 50))], p)[0]  # n_positions = 64
    assert len(c.token_ids) == 150 and c.finish_reason == FinishReason.LENGTH
    c = generate(
        tiny, [list(range(1, 100))], SamplingParams(max_new_tokens=20, temperature=0, sliding_window=True, ignore_eos=True)
    )[0]
    assert len(c.token_ids) == 20  # a prompt longer than the context keeps its last part


def test_sliding_window_past_1024_tokens():
    torch.manual_seed(0)
    model = tiny_gpt(n_layer=1, n_embd=16, n_head=2)  # n_positions 1024
    p = SamplingParams(max_new_tokens=1100, temperature=0, ignore_eos=True, sliding_window=True)
    c = generate(model, [[EOT]], p)[0]
    assert len(c.token_ids) == 1100


# ---- errors ---------------------------------------------------------------------------------------


def test_bad_inputs_give_clear_errors(tiny):
    with pytest.raises(InputError, match="empty"):
        generate(tiny, [[]], SamplingParams())
    assert len(generate(tiny, [[]], SamplingParams(max_new_tokens=2, ignore_eos=True), bos=True)[0].token_ids) == 2
    with pytest.raises(InputError, match="more than the context"):
        generate(tiny, [list(range(100))], SamplingParams(max_new_tokens=1))
    with pytest.raises(InputError, match="sliding_window"):
        generate(tiny, [list(range(60))], SamplingParams(max_new_tokens=10))
    with pytest.raises(InputError, match="vocabulary"):
        generate(tiny, [[60000]], SamplingParams())
    with pytest.raises(ConfigError, match="token_bytes"):
        generate(tiny, [[1]], SamplingParams(stop=["x"]))
    with pytest.raises(ConfigError, match="one per prompt"):
        generate(tiny, [[1], [2]], [SamplingParams()])
    eng = Engine(tiny, max_batch=1)
    eng.add([1], SamplingParams())
    with pytest.raises(InputError, match="free slots"):
        eng.add([1], SamplingParams())


def test_padded_vocab_rows_are_never_sampled():
    torch.manual_seed(0)
    model = tiny_gpt(n_layer=1, n_embd=16, n_head=2, vocab_size=50304, n_positions=32)
    with torch.no_grad():
        model.transformer.wte.weight[50257:] = 10.0  # make the padding rows the most likely by far
    eng = Engine(model, token_bytes=TABLE)
    assert eng.n_vocab == 50257
    cs = eng.generate([[1, 2, 3]], SamplingParams(max_new_tokens=8, temperature=1.0, seed=0, ignore_eos=True, n=2))
    assert all(t < 50257 for c in cs for t in c.token_ids)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_engine_on_cuda_matches_cpu(tiny):
    import copy

    prompts = [[5, 6, 7], list(range(100, 120))]
    p = SamplingParams(max_new_tokens=16, temperature=0, ignore_eos=True)
    cpu = [c.token_ids for c in generate(tiny, prompts, p)]
    gpu = [c.token_ids for c in generate(copy.deepcopy(tiny).cuda(), prompts, p)]
    assert gpu == cpu
    s = SamplingParams(max_new_tokens=16, temperature=1.0, seed=3, ignore_eos=True)
    model = copy.deepcopy(tiny).cuda()
    assert [c.token_ids for c in generate(model, prompts, s)] == [c.token_ids for c in generate(model, prompts, s)]
