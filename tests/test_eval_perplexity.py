"""Sliding-window perplexity: equal to a direct transformers computation, strides in the expected order."""

from __future__ import annotations

import math
import re

import pytest
import torch

import gpt2kit
from gpt2kit.config import GPT2_EOT_ID, IGNORE_INDEX
from gpt2kit.errors import ConfigError
from gpt2kit.eval.perplexity import count_words, sliding_windows, text_perplexity, val_perplexity

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def pair(tiny_hf_dir):
    """The same random weights as our GPT and as transformers' GPT2LMHeadModel (n_positions 128)."""
    ours = gpt2kit.from_pretrained(tiny_hf_dir)
    ref = transformers.GPT2LMHeadModel.from_pretrained(tiny_hf_dir).eval()
    return ours, ref


@pytest.fixture(scope="module")
def text(excerpts_dir):
    return (excerpts_dir / "austen.txt").read_text(encoding="utf-8")[:6000]


def reference_nll(ref, seq: list[int], max_len: int, stride: int) -> tuple[float, int]:
    """Direct transformers computation, windows written out independently of ours: the first window
    predicts up to max_len targets, each later one the next `stride`, each target read with the up to
    max_len tokens before it; log-probs straight from transformers' logits."""
    nll, count, t, first = 0.0, 0, 1, True
    while t < len(seq):
        n_pred = min(max_len if first else stride, len(seq) - t)
        end = t + n_pred  # targets S[t:end]
        start = max(0, end - 1 - max_len)
        with torch.no_grad():
            logits = ref(torch.tensor([seq[start : end - 1]])).logits[0]  # (W, V)
        logp = torch.log_softmax(logits.double(), -1)[-n_pred:]  # the last n_pred positions
        nll -= logp.gather(1, torch.tensor(seq[t:end])[:, None]).sum().item()
        count += n_pred
        t, first = end, False
    return nll, count


@pytest.mark.parametrize("stride", [128, 64, 37])
@pytest.mark.parametrize("bos", [True, False])
def test_perplexity_equals_transformers(pair, text, stride, bos):
    ours, ref = pair
    tok = gpt2kit.Tokenizer()
    ids = tok.encode_ordinary(text)[:700]
    result = text_perplexity(ours, tok, tok.decode(ids), stride=stride, bos=bos, batch_size=4)
    seq = [GPT2_EOT_ID] + ids if bos else ids
    nll, n = reference_nll(ref, seq, 128, stride)
    assert result.n_tokens == n == (len(ids) if bos else len(ids) - 1)
    assert result.token_perplexity == pytest.approx(math.exp(nll / n), rel=1e-4)
    scored = tok.decode(ids if bos else ids[1:])
    assert result.n_bytes == len(scored.encode("utf-8"))
    assert result.word_perplexity == pytest.approx(math.exp(nll / len(re.split(r"\s+", scored))), rel=1e-4)
    assert result.bits_per_byte == pytest.approx(nll / math.log(2) / result.n_bytes, rel=1e-4)


def test_windows_are_lm_evals_rolling_windows():
    utils = pytest.importorskip("lm_eval.utils")
    for n, max_len, stride in [(1000, 128, 128), (1000, 128, 64), (129, 128, 128), (50, 128, 128), (301, 32, 7)]:
        seq = list(range(n))  # S: S[0] is the prefix token, S[1:] the tokens to predict
        ours = [(seq[w.start : w.end], seq[w.end + 1 - w.n_pred : w.end + 1]) for w in sliding_windows(n, max_len, stride)]
        ref = list(utils.get_rolling_token_windows(seq[1:], seq[0], max_len, max_len - stride + 1))
        assert [(list(a), list(b)) for a, b in ref] == ours


def test_bad_stride_is_a_clear_error():
    with pytest.raises(ConfigError, match="stride must be in 1..128"):
        sliding_windows(10, 128, 129)


def test_word_count_matches_lm_eval():
    task = pytest.importorskip("lm_eval.api.task")
    for s in ["a b  c", " lead and trail ", "one\n\ntwo\tthree", ""]:
        assert count_words(s) == task.Task.count_words(s)


def _trained_copy_model() -> tuple[gpt2kit.GPT, list[int]]:
    """A tiny model trained on a periodic sequence: it predicts well only once it has seen a few tokens,
    so more context (a smaller stride) must give a lower perplexity."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    seq = torch.randint(0, 6, (12,), generator=g).repeat(40)
    model = gpt2kit.GPT(gpt2kit.GPTConfig(vocab_size=8, n_positions=32, n_embd=32, n_layer=2, n_head=2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    recent = []
    for _ in range(1000):  # until it has learnt the sequence (the path there depends on rounding: lr 1e-2 is noisy)
        off = torch.randint(0, len(seq) - 33, (32,), generator=g)
        b = torch.stack([seq[o : o + 33] for o in off])
        _, loss = model(b[:, :-1], b[:, 1:])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent = [*recent[-9:], loss.item()]
        if len(recent) == 10 and sum(recent) / 10 < 0.05:
            break
    assert sum(recent) / len(recent) < 0.05, recent
    return model.eval(), seq[:300].tolist()


def test_more_overlap_lowers_perplexity():
    from gpt2kit.eval.perplexity import score_sequence

    model, ids = _trained_copy_model()
    nll_full, n_full, w_full = score_sequence(model, ids, stride=32)  # no overlap: window starts see ~no context
    nll_half, n_half, w_half = score_sequence(model, ids, stride=16)  # every scored token sees >= 16 tokens
    assert n_full == n_half == len(ids) - 1
    assert w_half > w_full
    assert nll_half / n_half < 0.5 * nll_full / n_full


def test_val_perplexity_matches_transformers_loss(pair, text):
    ours, ref = pair
    tok = gpt2kit.Tokenizer()
    ids = torch.tensor(tok.encode_ordinary(text)[: 4 * 65]).view(4, 65)
    x, y = ids[:, :-1], ids[:, 1:].clone()
    y[0, :10] = IGNORE_INDEX  # ignored targets do not count
    ours.train()
    out = val_perplexity(ours, [(x[:2], y[:2]), (x[2:], y[2:])])
    assert ours.training  # the mode is restored
    labels = torch.cat([torch.full((4, 1), IGNORE_INDEX), y], 1)  # HF shifts labels itself
    with torch.no_grad():
        want = ref(torch.cat([x, x[:, -1:]], 1), labels=labels).loss.item()
    assert out["val_tokens"] == 4 * 64 - 10
    assert out["val_loss"] == pytest.approx(want, rel=1e-4)
    assert out["val_perplexity"] == pytest.approx(math.exp(want), rel=1e-4)
