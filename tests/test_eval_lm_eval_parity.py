"""Our LAMBADA / HellaSwag / WikiText scoring against lm-evaluation-harness's HFLM on the same weights.

lm-eval reads the tiny random model from a local folder (HF_HUB_OFFLINE=1: nothing is downloaded); the
task strings come from lm-eval's own task definitions where they are importable (HellaSwag's
preprocess, WikiText's detokenizer), so the comparison covers text preparation as well as scoring.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import gpt2kit
from gpt2kit.eval.hellaswag import hellaswag_scores, load_hellaswag
from gpt2kit.eval.lambada import evaluate_lambada, lm_eval_request, load_lambada
from gpt2kit.eval.loglikelihood import score_tokens
from gpt2kit.eval.wikitext import detokenize, evaluate_wikitext, load_wikitext, split_articles

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")
FIXTURES = Path(__file__).parent / "fixtures" / "eval"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    import torch

    torch.manual_seed(1)
    model = gpt2kit.GPT(gpt2kit.GPTConfig(n_layer=2, n_embd=64, n_head=4, n_positions=64))
    return gpt2kit.save_pretrained(model, tmp_path_factory.mktemp("lm_eval_tiny"))


@pytest.fixture(scope="module")
def hflm(folder):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(folder), tokenizer=str(folder), device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def ours(folder):
    return gpt2kit.from_pretrained(folder), gpt2kit.Tokenizer()


def _loglikelihood(hflm, pairs):
    from lm_eval.api.instance import Instance

    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i) for i, p in enumerate(pairs)]
    return hflm.loglikelihood(reqs, disable_tqdm=True)


def test_lambada_matches_hflm(hflm, ours):
    model, tok = ours
    texts = load_lambada(FIXTURES / "lambada_test.jsonl")
    # lm-eval's lambada_openai.yaml: doc_to_text / doc_to_target
    pairs = [(" ".join(t.split(" ")[:-1]), " " + t.split(" ")[-1]) for t in texts]
    want = _loglikelihood(hflm, pairs)
    got = score_tokens(model, [lm_eval_request(tok, t) for t in texts], batch_size=4)
    for (ll, greedy), lp, g in zip(want, got.logprob.tolist(), got.is_greedy.tolist()):
        assert lp == pytest.approx(ll, rel=1e-4, abs=1e-4)
        assert g == greedy
    import math

    rows = {(r.protocol, r.metric): r.value for r in evaluate_lambada(model, tok, texts)}
    assert rows[("lm-eval", "ppl")] == pytest.approx(math.exp(-sum(w[0] for w in want) / len(want)), rel=1e-4)
    assert rows[("lm-eval", "acc")] == sum(w[1] for w in want) / len(want)


def test_lambada_last_token_protocol_matches_hflm(hflm, ours):
    """The paper's protocol, through lm-eval: context = the text minus its last BPE token's text."""
    model, tok = ours
    texts = load_lambada(FIXTURES / "lambada_test.jsonl")
    pairs = []
    for t in texts:
        ids = tok.encode_ordinary(t)
        pairs.append((tok.decode(ids[:-1]), tok.decode(ids[-1:])))
    want = _loglikelihood(hflm, pairs)
    rows = {(r.protocol, r.metric): r.value for r in evaluate_lambada(model, tok, texts, ("paper-last-token",))}
    import math

    assert rows[("paper-last-token", "ppl")] == pytest.approx(math.exp(-sum(w[0] for w in want) / len(want)), rel=1e-4)
    assert rows[("paper-last-token", "acc")] == sum(w[1] for w in want) / len(want)


def test_hellaswag_matches_hflm(hflm, ours):
    import numpy as np
    from lm_eval.tasks.hellaswag.utils import preprocess

    model, tok = ours
    records = [json.loads(line) for line in (FIXTURES / "hellaswag_val.jsonl").read_text().splitlines()]
    examples = load_hellaswag(FIXTURES / "hellaswag_val.jsonl")
    acc = acc_norm = 0
    for rec, ex in zip(records, examples):
        # lm-eval's hellaswag process_docs, verbatim through its own preprocess()
        query = preprocess(rec["activity_label"] + ": " + rec["ctx_a"] + " " + rec["ctx_b"].capitalize())
        choices = [preprocess(e) for e in rec["endings"]]
        assert (ex.context, list(ex.choices)) == (query, choices)
        lls = np.array([ll for ll, _ in _loglikelihood(hflm, [(query, " " + c) for c in choices])])
        mine = hellaswag_scores(model, tok, [ex])
        acc += int(np.argmax(lls) == int(rec["label"]))
        acc_norm += int(np.argmax(lls / np.array([float(len(c)) for c in choices])) == int(rec["label"]))
        assert (mine["acc"], mine["acc_norm"]) == (int(np.argmax(lls) == int(rec["label"])),
                                                   int(np.argmax(lls / np.array([len(c) for c in choices])) == int(rec["label"])))  # fmt: skip
    whole = hellaswag_scores(model, tok, examples, batch_size=5)
    assert whole["acc"] == acc / len(examples) and whole["acc_norm"] == acc_norm / len(examples)


def test_hellaswag_loglikelihoods_equal_hflm(hflm, ours):
    from gpt2kit.eval.loglikelihood import encode_pair

    model, tok = ours
    examples = load_hellaswag(FIXTURES / "hellaswag_val.jsonl")
    pairs = [(ex.context, " " + c) for ex in examples for c in ex.choices]
    want = [ll for ll, _ in _loglikelihood(hflm, pairs)]
    got = score_tokens(model, [encode_pair(tok, a, b) for a, b in pairs], batch_size=5).logprob.tolist()
    assert got == pytest.approx(want, rel=1e-4, abs=1e-4)


def test_wikitext_detokenizer_and_rolling_match_lm_eval(hflm, ours):
    import math
    import re

    from lm_eval.api.instance import Instance
    from lm_eval.tasks.wikitext.preprocess_wikitext import wikitext_detokenizer

    model, tok = ours
    raw = (FIXTURES / "wiki.test.raw").read_text(encoding="utf-8")
    pages = load_wikitext(FIXTURES / "wiki.test.raw")
    assert pages == split_articles(raw) and len(pages) == 2
    for page in pages:
        assert detokenize(page) == wikitext_detokenizer({"page": page})
    reqs = [Instance(request_type="loglikelihood_rolling", doc={}, arguments=(wikitext_detokenizer({"page": p}),), idx=i)
            for i, p in enumerate(pages)]  # fmt: skip
    nll = -sum(hflm.loglikelihood_rolling(reqs, disable_tqdm=True))
    words = sum(len(re.split(r"\s+", p)) for p in pages)  # lm-eval counts words of the original page
    rows = {r.metric: r.value for r in evaluate_wikitext(model, tok, pages, batch_size=4)}
    assert rows["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-4)
    n_bytes = sum(len(p.encode()) for p in pages)
    assert rows["bits_per_byte"] == pytest.approx(nll / n_bytes / math.log(2), rel=1e-4)
