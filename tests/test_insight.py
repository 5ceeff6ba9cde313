"""The inspector's numbers against references: next-token probabilities = softmax of transformers'
logits; per-token surprisal = eval's perplexity protocol, token by token; Fast-DetectGPT's criterion =
the paper's formula on transformers' logits; the CLI commands and the HTML page render them."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import tiny_gpt
from gpt2kit.config import GPT2_EOT_ID
from gpt2kit.eval.loglikelihood import score_tokens
from gpt2kit.eval.perplexity import text_perplexity, window_requests
from gpt2kit.generate import SamplingParams
from gpt2kit.insight.calibration import auroc, fit_logistic
from gpt2kit.insight.detect import detect_text, text_evidence
from gpt2kit.insight.html import render_html
from gpt2kit.insight.next_token import next_tokens
from gpt2kit.insight.surprisal import position_stats, score_text
from gpt2kit.insight.tokens import token_label
from gpt2kit.tokenizer import Tokenizer

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife. However little known the feelings or views of such a man may be on his first entering "
        "a neighbourhood, this truth is so well fixed in the minds of the surrounding families.")  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    return Tokenizer()


@pytest.fixture(scope="module")
def pair(tiny_hf_dir):
    """(ours, transformers') for the same perturbed random GPT-2."""
    transformers = pytest.importorskip("transformers")
    from gpt2kit.pretrained import from_pretrained

    ours = from_pretrained(str(tiny_hf_dir), device="cpu").eval()
    hf = transformers.GPT2LMHeadModel.from_pretrained(tiny_hf_dir).eval()
    return ours, hf


def test_token_label_shows_spaces_and_stray_bytes():
    assert token_label(b" cat") == "␣cat"
    assert token_label(b"\n\n") == "↵↵"
    assert token_label(b"  x") == "␣␣x"
    assert token_label("é".encode()[:1] + b"a") == "<0xC3>a"
    assert token_label(" 🙂".encode()[:3]) == "␣<0xF0><0x9F>"


def test_next_token_probabilities_equal_transformers_softmax(pair, tok):
    ours, hf = pair
    text = "The cat sat on the"
    ids = tok.encode_ordinary(text)
    with torch.no_grad():
        ref = torch.softmax(hf(torch.tensor([ids])).logits[0, -1].double(), dim=-1)  # (V,)
    result = next_tokens(ours, tok, text, top=10)
    ref_p, ref_ids = torch.topk(ref, 10)
    assert [c.token_id for c in result.candidates] == ref_ids.tolist()
    torch.testing.assert_close(
        torch.tensor([c.prob for c in result.candidates], dtype=torch.float64), ref_p, rtol=1e-4, atol=1e-6
    )
    assert result.candidates[-1].cum_prob == pytest.approx(float(ref_p.sum()), rel=1e-4)
    entropy = float(-(ref * ref.log2()).sum())
    assert result.entropy_bits == pytest.approx(entropy, rel=1e-4)


def test_next_token_shows_what_the_sampler_keeps(pair, tok):
    ours, hf = pair
    ids = tok.encode_ordinary("Once upon a time")
    with torch.no_grad():
        logits = hf(torch.tensor([ids])).logits[0, -1].double()
    T, k = 0.7, 3
    top_v, top_i = torch.topk(logits / T, k)
    ref = torch.softmax(top_v, dim=-1)  # the top-k renormalised at temperature T
    result = next_tokens(ours, tok, "Once upon a time", SamplingParams(temperature=T, top_k=k), top=6)
    got = {c.token_id: c.sampler_prob for c in result.candidates}
    for i, p in zip(top_i.tolist(), ref.tolist()):
        assert got[i] == pytest.approx(p, rel=1e-4)
    assert sum(v > 0 for v in got.values()) == k and result.sampler_kept == k
    greedy = next_tokens(ours, tok, "Once upon a time", SamplingParams(temperature=0), top=3)
    assert [c.sampler_prob for c in greedy.candidates] == [1.0, 0.0, 0.0]


def test_surprisal_equals_eval_protocol_token_by_token(tok):
    model = tiny_gpt(n_layer=2, n_embd=32, n_head=4, n_positions=16)
    text = TEXT[:160]
    ids = tok.encode_ordinary(text)
    seq = [GPT2_EOT_ID] + ids
    stride = 6
    scores = score_text(model, tok, text, stride=stride)
    assert scores.n_windows > 3  # the text runs well past the 16-token context
    # every token against score_tokens on a one-token request with exactly the context its window reads
    requests = []
    for ctx, cont in window_requests(seq, 16, stride):
        whole = (ctx + cont)[-17:]
        k = len(cont)
        requests += [(whole[: len(whole) - k + i], [whole[len(whole) - k + i]]) for i in range(k)]
    ref = score_tokens(model, requests, batch_size=len(requests)).logprob
    got = torch.tensor([t.logprob for t in scores.tokens], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    whole = text_perplexity(model, tok, text, stride=stride)
    assert scores.nll == pytest.approx(whole.nll, rel=1e-5)
    assert scores.perplexity == pytest.approx(whole.token_perplexity, rel=1e-5)
    assert scores.bits_per_byte == pytest.approx(whole.bits_per_byte, rel=1e-5)


def test_ranks_alternatives_and_detector_match_transformers(pair, tok):
    ours, hf = pair
    ids = tok.encode_ordinary(TEXT)[:60]
    seq = [GPT2_EOT_ID] + ids
    with torch.no_grad():
        lp = torch.log_softmax(hf(torch.tensor([seq])).logits[0, :-1].double(), dim=-1)  # (N, V)
    target = torch.tensor(ids)
    stats = position_stats(ours, seq, top=5)
    own = lp.gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(stats.logprob, own, rtol=1e-4, atol=1e-4)
    # the rank: 1 + how many other tokens are more likely, up to ties within float32 rounding (a random model's
    # near-uniform tail puts other tokens ~1e-6 nats from the target, where the two sides' sums can order them
    # either way)
    others = lp.scatter(1, target[:, None], -math.inf)  # (N, V): the target itself left out
    lo, hi = ((others > own[:, None] + d).sum(1) + 1 for d in (1e-5, -1e-5))
    assert ((lo <= stats.rank) & (stats.rank <= hi)).all(), (stats.rank, lo, hi)
    assert stats.top_ids.tolist() == torch.topk(lp, 5).indices.tolist()
    # Fast-DetectGPT (Bao et al.), sampling and scoring model the same, written as in the paper's code
    probs = lp.exp()
    mean_ref = (probs * lp).sum(-1)
    var_ref = (probs * lp.square()).sum(-1) - mean_ref.square()
    criterion = (own.sum() - mean_ref.sum()) / var_ref.sum().sqrt()
    ev = text_evidence(ours, tok, tok.decode(ids))
    assert ev.n_tokens == 60
    assert ev.fast_detect == pytest.approx(float(criterion), rel=1e-3, abs=1e-3)
    assert ev.log_rank == pytest.approx(float(((lp > own[:, None]).sum(1) + 1).double().log().mean()), rel=1e-6)
    assert sum(ev.gltr_counts.values()) == 60


def test_detector_says_when_it_cannot_judge(pair, tok):
    ours, _ = pair
    short = detect_text(ours, tok, "Hello there.")
    assert short.probability is None and "too short" in short.verdict
    other = detect_text(ours, tok, TEXT)  # a random model: not the one the shipped calibration is for
    assert other.probability is None and "uncalibrated" in other.verdict


def test_auroc_and_logistic_fit():
    assert auroc([3, 4, 5], [0, 1, 2]) == 1.0
    assert auroc([0, 1], [0, 1]) == 0.5
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4000, generator=g, dtype=torch.float64) * 2
    y = (torch.rand(4000, generator=g, dtype=torch.float64) < torch.sigmoid(1.5 * x - 0.5)).long()
    coef, intercept = fit_logistic(x.tolist(), y.tolist())
    assert coef == pytest.approx(1.5, abs=0.2) and intercept == pytest.approx(-0.5, abs=0.2)


def test_html_page_has_every_token_and_its_alternatives(tok):
    model = tiny_gpt(n_layer=1, n_embd=32, n_head=2, n_positions=64)
    scores = score_text(model, tok, "A <b>bold</b> claim, made twice.")
    page = render_html(scores)
    assert page.count('class="tok"') == len(scores.tokens)
    assert "&lt;" in page and "<b>bold" not in page and ">bold<" in page  # the text is escaped
    assert page.count('class="tip"') == len(scores.tokens) and "alternatives:" in page


def test_cli_next_score_detect(tiny_hf_dir, tmp_path, capsys):
    from gpt2kit.cli.__main__ import main

    assert main(["next", "The cat sat on the", "--top", "4", "--top-k", "2", "--json", "--model", str(tiny_hf_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["candidates"]) == 4 and out["sampler_kept"] == 2
    assert sum(c["sampler_prob"] > 0 for c in out["candidates"]) == 2
    page = tmp_path / "s.html"
    assert main(["score", TEXT, "--json", "--html", str(page), "--model", str(tiny_hf_dir)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["summary"]["tokens"] == len(out["tokens"]) > 40
    assert math.isfinite(out["summary"]["perplexity"]) and len(out["tokens"][0]["top"]) == 5
    assert page.read_text().count('class="tok"') == len(out["tokens"])
    assert main(["score", "The cat sat.", "--color", "always", "--model", str(tiny_hf_dir)]) == 0
    assert "\x1b[48;5;" in capsys.readouterr().out
    assert main(["score", "The cat sat.", "--model", str(tiny_hf_dir)]) == 0  # piped: a plain table
    out = capsys.readouterr().out
    assert "\x1b[" not in out and out.startswith("index\ttoken\tbits\trank")
    assert main(["detect", "Short.", "--model", str(tiny_hf_dir)]) == 0
    assert "too short" in capsys.readouterr().out


def test_attention_maps_equal_transformers(pair, tok, tiny_hf_dir):
    transformers = pytest.importorskip("transformers")
    from gpt2kit.insight.attention import attention_maps

    ours, _ = pair
    hf = transformers.GPT2LMHeadModel.from_pretrained(tiny_hf_dir, attn_implementation="eager").eval()
    result = attention_maps(ours, tok, "The cat sat on the mat because it was tired.")
    with torch.no_grad():
        ref = hf(torch.tensor([result.ids]), output_attentions=True).attentions  # L x (1, nh, T, T)
    torch.testing.assert_close(result.maps, torch.cat(ref), rtol=1e-4, atol=1e-5)
    assert result.select(None, "mean").shape == (2, len(result.ids), len(result.ids))
    torch.testing.assert_close(result.select(1, 2)[0], ref[1][0, 2])
    with pytest.raises(ValueError, match="layers 0..1"):
        result.select(5, 0)


def test_cli_attention_draws_a_png(tiny_hf_dir, tmp_path):
    pytest.importorskip("matplotlib")
    from gpt2kit.cli.__main__ import main

    for layer, head in (("1", "0"), ("all", "mean")):
        out = tmp_path / f"a_{layer}_{head}.png"
        assert main(["attention", "The cat sat on the mat.", "--layer", layer, "--head", head, "--out", str(out),
                     "--model", str(tiny_hf_dir)]) == 0  # fmt: skip
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["attention", "Hi", "--layer", "9", "--model", str(tiny_hf_dir)]) == 2
