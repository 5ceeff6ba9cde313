"""The engine: cached == uncached logits, batch rows == alone, stopping, cancel, streaming, sliding window, errors.

Numerics use a tiny random GPT; stopping logic uses a scripted runner (a mock model whose next token is
fixed by position) over the real KVCache, so each test runs in milliseconds.
"""

import threading

import pytest
import torch

from conftest import ScriptedRunner, tiny_gpt
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


@pytest.mark.parametrize("mode", ["auto", "bf16", "int8"])
def test_decode_weights_against_the_uncached_float32_forward(tiny, mode):
    """The reference is the model's own uncached float32 forward. `auto` must match it to float32 rounding;
    bf16 and int8 (weights and activations rounded) differ by rounding only: on this model about 3e-3 at
    most, logits within +-0.5, while a dropped bias moves them by 0.2 and an identity ln_f by 0.04."""
    torch.manual_seed(4)
    seq = torch.randint(0, 50257, (2, 10))
    cache = KVCache(tiny.config, 2, 64)
    runner = DecodeRunner(tiny, mode)
    with torch.inference_mode():
        runner.prefill(seq[:, :9], cache, None)
        got = runner.decode(seq[:, 9:], cache, None)  # (2, V)
        want = tiny(seq)[0][:, -1]  # (2, V)
    err = (got - want).abs().max().item()
    if mode == "auto":
        assert err <= 1e-4, err
    else:
        assert 0 < err <= 1e-2, err  # 0: the low-precision kernel really ran


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


def test_banned_phrase_is_never_drawn(tiny):
    prompt = TOK.encode_ordinary("The")
    # unfiltered, the scripted model spells " badword here" as " bad" + "word" + " here"
    script = " bad" + "word" + " here"
    c = scripted_engine(tiny, script, prompt).generate([prompt], SamplingParams(max_new_tokens=4, temperature=0))[0]
    assert c.text.startswith(" badword")
    for temperature in (0, 1.0):  # greedy and sampled: the mask is applied where tokens are drawn
        p = SamplingParams(max_new_tokens=4, temperature=temperature, seed=0, banned_phrases=["BadWord"])
        c = scripted_engine(tiny, script, prompt).generate([prompt], p)[0]
        assert c.text.startswith(" bad") and "badword" not in c.text.lower(), c.text
    # case-insensitive, across the prompt: a phrase begun in the prompt is not completed either
    start = prompt + TOK.encode_ordinary(" BAD")
    p = SamplingParams(max_new_tokens=2, temperature=0, banned_phrases=["badword"])
    c = scripted_engine(tiny, "word here", start).generate([start], p)[0]
    assert not c.text.lower().startswith("word"), c.text
    # the filter's view: after " bad", "word" is banned and "w" is not (" bad" + "w" completes nothing yet)
    eng = scripted_engine(tiny, script, prompt)
    s = eng._slots[eng.add(prompt + TOK.encode_ordinary(" bad"), SamplingParams(max_new_tokens=1, banned_phrases=["BadWord"]))]
    banned = set(s.phrase_filter.banned_ids().tolist())
    assert TOK.encode_ordinary("word")[0] in banned and TOK.encode_ordinary("w")[0] not in banned
    assert all(b"badword" in (b" bad" + TABLE[t]).lower() for t in banned)


def test_banned_phrase_on_the_real_model(tiny):
    """A phrase the tiny model writes greedily across two tokens is never written once banned."""
    prompt = TOK.encode_ordinary("Once upon a time")
    free = generate(tiny, [prompt], SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True), token_bytes=TABLE)[0]
    i = 0
    phrase = (TABLE[free.token_ids[i]] + TABLE[free.token_ids[i + 1]]).decode().strip()  # " goose goose" here
    assert phrase.isprintable() and len(phrase) > 4 and phrase.lower() in free.text.lower()
    p = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True, banned_phrases=[phrase])
    banned = generate(tiny, [prompt], p, token_bytes=TABLE)[0]
    assert phrase.lower() not in banned.text.lower(), (phrase, banned.text)
    assert banned.token_ids[: i + 1] == free.token_ids[: i + 1]  # nothing changes before the completing token
    # banned token ids: the most frequent greedy token never appears once banned
    top = max(set(free.token_ids), key=free.token_ids.count)
    p = SamplingParams(max_new_tokens=24, temperature=0, ignore_eos=True, banned_token_ids=[top])
    assert top not in generate(tiny, [prompt], p)[0].token_ids


def test_greedy_rows_with_biases_and_bans_in_one_batch_equal_alone(tiny, monkeypatch):
    """Greedy rows with logit biases or banned ids are drawn in one batched pass: each row gives what it
    gives alone, and if that pass fails the rows are drawn one by one with the same result."""
    import gpt2kit.generate.step_draw as E

    torch.manual_seed(3)
    prompts = [torch.randint(0, 50257, (n,)).tolist() for n in (5, 9, 5, 7)]
    free = generate(tiny, [prompts[0]], SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True))[0].token_ids
    params = [  # the first row ends early: then a row's place among the active rows is not its slot
        SamplingParams(max_new_tokens=1, temperature=0, ignore_eos=True),
        SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True, logit_bias={free[1]: 50.0}),
        SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True, banned_token_ids=[free[0]]),
        SamplingParams(max_new_tokens=6, temperature=0, ignore_eos=True, logit_bias={free[2]: 9.0}, banned_token_ids=[free[3]]),
    ]
    alone = [generate(tiny, [pr], p)[0].token_ids for pr, p in zip(prompts, params)]
    assert alone[1] == [free[1]] * 6 and free[0] not in alone[2] and alone[2] != free
    assert [c.token_ids for c in generate(tiny, prompts, params)] == alone

    def broken(*a):
        raise RuntimeError("boom")

    monkeypatch.setattr(E, "greedy_tokens", broken)
    assert [c.token_ids for c in generate(tiny, prompts, params)] == alone


def test_max_new_tokens_zero_and_length(tiny):
    c = generate(tiny, [[1, 2, 3]], SamplingParams(max_new_tokens=0))[0]
    assert c.token_ids == [] and c.finish_reason == FinishReason.LENGTH


# ---- sliding window -------------------------------------------------------------------------------


@torch.no_grad()
def sliding_reference(model, prompt: list[int], n: int, keep: int, max_len: int) -> list[tuple[int, torch.Tensor]]:
    """Greedy decoding with an uncached forward over the context the window keeps: when a token would not
    fit, the context restarts from its newest `keep` tokens. -> [(token, log-probs over the vocab)]."""
    ctx = prompt[-keep:] if len(prompt) > max_len else list(prompt)
    out = []
    for _ in range(n):
        logp = torch.log_softmax(model(torch.tensor([ctx]))[0][0, -1, : TOK.n_vocab].double(), -1)
        tok = int(logp.argmax())
        out.append((tok, logp))
        if len(ctx) + 1 > max_len:
            ctx = ctx[-keep:]
        ctx = ctx + [tok]
    return out


@pytest.mark.parametrize("prompt_len", [49, 99])  # n_positions = 64: fills during generation / longer than the context
def test_sliding_window_equals_the_uncached_forward_on_the_window(tiny, prompt_len):
    prompt = [(7 * i) % 5000 + 1 for i in range(prompt_len)]
    p = SamplingParams(max_new_tokens=60, temperature=0, ignore_eos=True, sliding_window=True, logprobs=3)
    c = generate(tiny, [prompt], p)[0]  # the window slides twice
    assert len(c.token_ids) == 60 and c.finish_reason == FinishReason.LENGTH
    ref = sliding_reference(tiny, prompt, 60, keep=32, max_len=64)  # the engine's default window_keep: max_len // 2
    assert c.token_ids == [t for t, _ in ref]
    for rec, (tok, logp) in zip(c.logprobs, ref):
        assert rec.logprob == pytest.approx(logp[tok].item(), abs=1e-4)
        assert [lp for _, lp in rec.top] == pytest.approx(torch.topk(logp, 3).values.tolist(), abs=1e-4)


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
