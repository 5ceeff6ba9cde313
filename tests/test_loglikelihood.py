"""score_tokens and encode_pair against a naive reference: one full forward per request, log_softmax, argmax.

Fast and self-contained (a 1-layer model, a character tokenizer); the lm-eval parity runs in test_eval_*.py.
"""

import re

import pytest
import torch

from conftest import tiny_gpt
from gpt2kit.config import GPT2_EOT_ID
from gpt2kit.errors import InputError
from gpt2kit.eval import loglikelihood as ll
from gpt2kit.eval.loglikelihood import encode_pair, eval_mode, score_tokens

V = 64


def _model(n_positions=16):
    return tiny_gpt(n_layer=1, n_head=2, n_embd=16, n_positions=n_positions, vocab_size=V)


def _reference(model, ctx, cont):
    """(summed log p(cont), greedy) from one unbatched, unpadded forward over the last n_positions + 1 tokens."""
    whole = (list(ctx) + list(cont))[-(model.config.n_positions + 1) :]
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]]))[0][0].double()  # (T, V)
    logp = torch.log_softmax(logits, -1)[-len(cont) :]  # (k, V)
    target = torch.tensor(whole[-len(cont) :])
    return float(logp.gather(1, target[:, None]).sum()), bool((logp.argmax(-1) == target).all())


def test_scores_equal_the_naive_reference_in_request_order():
    model = _model()
    g = torch.Generator().manual_seed(0)
    reqs = [(torch.randint(0, V, (n,), generator=g).tolist(), torch.randint(0, V, (k,), generator=g).tolist())
            for n, k in [(3, 2), (9, 1), (1, 5), (20, 3), (5, 16), (2, 2)]]  # fmt: skip
    with torch.no_grad():  # a request the model predicts greedily, so is_greedy is True somewhere
        ctx = [1, 2, 3]
        cont = [int(model(torch.tensor([ctx]))[0][0, -1].argmax())]
    reqs.append((ctx, cont))
    s = score_tokens(model, reqs, batch_size=3)
    want = [_reference(model, c, k) for c, k in reqs]
    assert s.logprob.dtype == torch.float64 and s.is_greedy.dtype == torch.bool
    torch.testing.assert_close(s.logprob, torch.tensor([w[0] for w in want], dtype=torch.float64), rtol=1e-5, atol=1e-5)
    assert s.is_greedy.tolist() == [w[1] for w in want] and s.is_greedy[-1]
    assert s.n_tokens.tolist() == [2, 1, 5, 3, 16, 2, 1]


def test_a_long_context_is_cut_from_the_left():
    model = _model(n_positions=8)
    ctx, cont = list(range(1, 13)), [5, 6]
    s = score_tokens(model, [(ctx, cont), (ctx[-7:], cont)])
    assert s.logprob[0] == s.logprob[1]  # the same 8 inputs: the first 5 context tokens are dropped
    assert s.logprob[0].item() == pytest.approx(_reference(model, ctx, cont)[0], abs=1e-5)
    full = score_tokens(model, [([1], list(range(2, 10)))])  # a continuation as long as the window
    assert full.logprob.item() == pytest.approx(_reference(model, [1], list(range(2, 10)))[0], abs=1e-5)


def test_bad_requests_are_refused_with_what_to_do():
    model = _model(n_positions=8)
    with pytest.raises(InputError, match=re.escape("batch_size must be >= 1, got 0.")):
        score_tokens(model, [([1], [2])], batch_size=0)
    with pytest.raises(InputError, match=re.escape("request 1: the continuation is empty; there is nothing to score.")):
        score_tokens(model, [([1], [2]), ([1], [])])
    with pytest.raises(
        InputError, match=re.escape(f"request 0: the context is empty; start it with <|endoftext|> ({GPT2_EOT_ID}).")
    ):
        score_tokens(model, [([], [2])])
    with pytest.raises(InputError, match=re.escape("request 0: continuation of 9 tokens is longer than the model's context 8.")):
        score_tokens(model, [([1], list(range(9)))])
    assert score_tokens(model, [([1], [2])], batch_size=1).n_tokens.tolist() == [1]


def test_eval_mode_restores_the_training_flag_and_disables_grad():
    model = _model()
    for training in (True, False):
        model.train(training)
        with eval_mode(model):
            assert not model.training and torch.is_inference_mode_enabled()
        assert model.training is training
    model.train()
    with pytest.raises(KeyError), eval_mode(model):
        raise KeyError
    assert model.training
    score_tokens(model, [([1], [2])])
    assert model.training


def test_cpu_batches_hold_at_most_cpu_batch_tokens(monkeypatch):
    model = _model(n_positions=1024)
    sizes = []
    real = ll._score_batch

    def spy(model, head, seqs, n_conts, device):
        sizes.append([len(s) for s in seqs])
        return real(model, head, seqs, n_conts, device)

    monkeypatch.setattr(ll, "_score_batch", spy)
    reqs = [([1] * 700, [2]), ([1] * 10, [2]), ([1] * 700, [3]), ([1] * 700, [4])]
    s = score_tokens(model, reqs, batch_size=8)
    assert sizes == [[701, 701], [701, 11]]  # longest first, 2048 // 700 = 2 per batch
    assert s.logprob[0] != s.logprob[2] and s.logprob[2] != s.logprob[3]
    assert ll.CPU_BATCH_TOKENS == 2048
    sizes.clear()
    for n in (683, 1024):  # inputs of n tokens: 2048 // 1024 = 2048 // 683 = 2 per batch
        sizes.clear()
        score_tokens(model, [([1] * n, [2])] * 3)
        assert sizes == [[n + 1, n + 1], [n + 1]]
    sizes.clear()
    score_tokens(model, [([1], [2])] * 9)
    assert [len(b) for b in sizes] == [8, 1]  # batch_size 8 by default


def test_every_tensor_is_made_on_the_models_device(monkeypatch):
    """The meta device stands in for a GPU: a tensor made on the CPU by mistake meets the model's tensors and
    fails with a device error. Done right, scoring runs to the final copy of the results to the host, which
    meta tensors (having no data) cannot make; and the CPU's cap on padded tokens is not applied."""
    from gpt2kit.eval.logit_head import LogitHead

    model = _model(n_positions=1024).to("meta")
    sizes = []
    real = ll._score_batch

    def spy(model, head, seqs, n_conts, device):
        sizes.append([len(s) for s in seqs])
        lp, wr = real(model, head, seqs, n_conts, device)
        assert lp.device.type == wr.device.type == "meta" and lp.dtype == torch.float64 and wr.dtype == torch.float32
        return lp, wr

    monkeypatch.setattr(ll, "_score_batch", spy)
    with pytest.raises(NotImplementedError, match="^Cannot copy out of meta tensor"):
        score_tokens(model, [([1] * 700, [2])] * 3 + [([3], [4, 5])], batch_size=8)
    assert sizes == [[701, 701, 701, 3]]
    lp, wr = real(model, LogitHead(model), [[1, 2, 3], [4, 5]], [2, 1], torch.device("meta"))
    assert lp.shape == wr.shape == (2,) and lp.device.type == "meta"


def test_batches():
    assert list(ll._batches([4, 2, 0], [5, 5, 5], 2, None)) == [[4, 2], [0]]
    assert list(ll._batches([0, 1, 2, 3], [10, 10, 3, 3], 8, 20)) == [[0, 1], [2, 3]]
    assert list(ll._batches([0, 1], [0, 0], 8, 1)) == [[0], [1]]  # empty inputs count as 1 token
    assert list(ll._batches([0, 1, 2], [50, 1, 1], 8, 20)) == [[0], [1, 2]]
    assert list(ll._batches([], [], 8, 20)) == []
    assert list(ll._batches(list(range(5)), [1] * 5, 8, 4)) == [[0, 1, 2, 3], [4]]  # 4 // 1


def test_progress_bar_only_when_asked(capsys):
    model = _model()
    score_tokens(model, [([1], [2])], desc="quiet-one")
    assert "quiet-one" not in capsys.readouterr().err
    score_tokens(model, [([1], [2])], progress=True, desc="loud-one")
    err = capsys.readouterr().err
    assert re.match(r"\rloud-one: +0%.* 0/1 \[.*\?req/s\]", err), err
    assert err.endswith("\r") and "\n" not in err  # the bar is wiped when scoring ends (leave=False)
    score_tokens(model, [([1], [2])], progress=True)
    assert capsys.readouterr().err.startswith("\rscoring: ")


class _Chars:
    """encode_ordinary: one id per character, except that "ab" merges into one token (id 1000)."""

    def encode_ordinary(self, text):
        out, i = [], 0
        while i < len(text):
            if text[i : i + 2] == "ab":
                out.append(1000)
                i += 2
            else:
                out.append(ord(text[i]))
                i += 1
        return out


class _Eot(_Chars):
    def encode_ordinary(self, text):
        return [GPT2_EOT_ID if c == "#" else ord(c) for c in text]


def test_encode_pair_moves_trailing_space_to_the_continuation():
    tok = _Chars()
    assert encode_pair(tok, "The cat  ", "sat") == (tok.encode_ordinary("The cat"), tok.encode_ordinary("  sat"))
    assert encode_pair(tok, "The cat\n", "sat") == (tok.encode_ordinary("The cat"), tok.encode_ordinary("\nsat"))
    assert encode_pair(tok, "The cat", " sat") == (tok.encode_ordinary("The cat"), tok.encode_ordinary(" sat"))
    assert encode_pair(tok, "xa", "bc") == ([ord("x"), ord("a")], [ord("c")])  # "ab" merged: what follows ctx's tokens


def test_encode_pair_with_an_empty_context():
    assert encode_pair(_Chars(), "", "hi") == ([GPT2_EOT_ID], [ord("h"), ord("i")])
    assert encode_pair(_Eot(), "", "#hi") == ([GPT2_EOT_ID], [ord("h"), ord("i")])  # already starts with EOT
    with pytest.raises(InputError, match="^" + re.escape("empty continuation: there is nothing to score.") + "$"):
        encode_pair(_Chars(), "", "")


def test_scoring_runs_on_an_inference_copy_kept_while_the_weights_stay_the_same():
    """On the CPU a GPT scores through its inference copy (kernels chosen by measurement, c_fc with its GELU),
    made once and kept until a weight changes in place; its scores are the model's own (test above)."""
    from gpt2kit.model.kernels import KernelLinear

    model = _model()
    scorer = ll.scoring_copy(model)
    assert scorer is not model and ll.scoring_copy(model) is scorer
    assert isinstance(scorer.transformer.h[0].mlp.c_fc, KernelLinear) and isinstance(model.transformer.h[0].mlp.c_fc, torch.nn.Linear)
    reqs = [([1, 2, 3, 4], [5, 6]), ([7] * 12, [8])]
    before = score_tokens(model, reqs).logprob
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.bias.add_(0.5)  # an optimizer step does the same: the copy is stale
    assert ll.scoring_copy(model) is not scorer
    after = score_tokens(model, reqs).logprob
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, torch.tensor([_reference(model, c, k)[0] for c, k in reqs], dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_the_scoring_copy_runs_the_kinds_measured_at_scoring_rows(monkeypatch, tmp_path):
    """A scoring copy's products of more than twice PREFILL_ROWS rows (a window's) run the kind measured for
    SCORING_ROWS, shorter ones PREFILL_ROWS': with MKL the fastest at SCORING_ROWS and oneDNN at every other count,
    each runs its own, and the scores are the model's."""
    from gpt2kit.model import kernels
    from gpt2kit.model.kernel_timing import Choice

    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    asked = []

    def plan(model, batch=1, weights="auto", **kw):
        asked.append(batch)
        return [Choice(r, n, "mkl" if n == ll.SCORING_ROWS else "onednn", {"mkl": 1.0, "onednn": 1.0})
                for r in kernels.ROLES for n in kernels.measured_rows(batch)]  # fmt: skip

    monkeypatch.setattr(kernels, "plan_kernels", plan)
    model = _model()
    scorer = ll.scoring_copy(model)
    assert asked == [kernels.PREFILL_ROWS, ll.SCORING_ROWS] and ll.SCORING_ROWS == 1024
    c_attn = [m for _, _, m in kernels.role_slots(scorer, "attn.c_attn")]
    assert {m.kinds for m in c_attn} == {("onednn", "mkl")} and c_attn[0].rows == 2 * kernels.PREFILL_ROWS
    reqs = [([1, 2, 3, 4], [5, 6])]
    torch.testing.assert_close(score_tokens(model, reqs).logprob, torch.tensor([_reference(model, *reqs[0])[0]], dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)  # fmt: skip


def test_a_model_with_hooks_or_lora_layers_or_not_a_gpt_scores_as_it_is():
    from gpt2kit.model.lora import inject_lora

    model = _model()
    model.transformer.h[0].register_forward_hook(lambda *a: None)
    assert ll.scoring_copy(model) is model
    tuned = _model()
    inject_lora(tuned, r=2, alpha=4)
    for name, p in tuned.named_parameters():
        if "lora_B" in name:  # a trained adapter: not zero
            torch.nn.init.normal_(p, generator=torch.Generator().manual_seed(0))
    assert ll.scoring_copy(tuned) is tuned
    reqs = [([1, 2, 3], [4, 5])]
    torch.testing.assert_close(score_tokens(tuned, reqs).logprob, torch.tensor([_reference(tuned, *reqs[0])[0]], dtype=torch.float64),
                               rtol=1e-5, atol=1e-5)  # fmt: skip
    plain = torch.nn.Linear(2, 2)
    assert ll.scoring_copy(plain) is plain
