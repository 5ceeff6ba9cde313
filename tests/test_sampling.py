"""Sampling steps on hand-made logits: the sets of allowed tokens are exactly right; params validated."""

import math

import pytest
import torch

from gpt2kit.errors import ConfigError
from gpt2kit.generate.sampling import (
    NO_TOKEN,
    SamplingParams,
    _finite,
    apply_min_p,
    apply_penalties,
    apply_top_k,
    apply_top_p,
    draw,
    greedy_tokens,
    inverse_cdf,
    process_logits,
)


def allowed_tokens(logits: torch.Tensor, p: SamplingParams, **kw) -> set[int]:
    """The set of token ids a request could draw from these logits."""
    processed = _finite(process_logits(logits, p, **kw))
    if p.greedy:
        return {int(torch.argmax(processed))}
    return set(torch.nonzero(torch.isfinite(processed)).flatten().tolist())


def probs_logits(probs):
    return torch.tensor(probs, dtype=torch.float32).log()


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([1.0, 3.0, 3.0, 3.0, 0.5, 3.0])  # four tied maxima
    kept = torch.isfinite(apply_top_k(logits, 2)).sum().item()
    assert kept == 2  # nanoGPT's threshold mask would keep all four tied tokens
    assert allowed_tokens(logits, SamplingParams(top_k=2)) <= {1, 2, 3, 5}
    assert allowed_tokens(torch.tensor([0.0, 5.0, 4.0, 1.0]), SamplingParams(top_k=2)) == {1, 2}
    assert allowed_tokens(torch.tensor([0.0, 5.0, 4.0, 1.0]), SamplingParams(top_k=10)) == {0, 1, 2, 3}


def test_top_p_smallest_set_reaching_p():
    logits = probs_logits([0.05, 0.5, 0.3, 0.15])
    assert allowed_tokens(logits, SamplingParams(top_p=0.5)) == {1}
    assert allowed_tokens(logits, SamplingParams(top_p=0.51)) == {1, 2}
    assert allowed_tokens(logits, SamplingParams(top_p=0.8)) == {1, 2}
    assert allowed_tokens(logits, SamplingParams(top_p=0.81)) == {1, 2, 3}
    assert allowed_tokens(logits, SamplingParams(top_p=1.0)) == {0, 1, 2, 3}
    assert torch.isfinite(apply_top_p(logits, 1e-9)).sum() == 1  # never empty
    assert torch.isfinite(apply_top_p(torch.tensor([0.0, -40.0]), 1.0)).all()  # 1 keeps even a 4e-18 tail


def test_top_p_among_the_top_candidates_equals_the_full_sort(monkeypatch):
    """On a CPU top-p looks for the nucleus among the 256 most likely tokens, and sorts the whole vocabulary's
    values only when they do not hold top_p: the kept set is the full sort's every time, ties included."""
    from gpt2kit.generate import sampling as S

    def reference(logits, top_p):  # the definition: the smallest descending prefix holding top_p
        probs, order = torch.sort(torch.softmax(logits.double(), -1), descending=True, stable=True)
        n = int(((torch.cumsum(probs, 0) - probs) < top_p * (1 - 1e-6)).sum())
        return set(order[: max(1, n)].tolist())

    sorts = []
    real_sort = S.np.sort
    monkeypatch.setattr(S.np, "sort", lambda *a, **kw: sorts.append(1) or real_sort(*a, **kw))
    base = torch.randn(50257, generator=torch.Generator().manual_seed(0))
    # nuclei of 1, 22, 49 (among the first 256), 1832, 1056, 30680 and 19207 tokens (the values sorted)
    cases = [(8.0, 0.9, 256), (8.0, 0.999, 256), (3.0, 0.5, 256), (3.0, 0.9, None), (2.0, 0.5, None), (1.0, 0.9, None), (0.3, 0.5, None)]
    tied = (base * 2).round(decimals=1)  # many equal logits: the nucleus ends inside a run of ties
    for logits, top_p, stage in [(base * scale, top_p, stage) for scale, top_p, stage in cases] + [(tied, 0.5, None), (tied, 0.93, None)]:
        sorts.clear()
        out = S.apply_top_p(logits, top_p)
        kept = set(torch.nonzero(torch.isfinite(out)).flatten().tolist())
        want = reference(logits, top_p)
        if logits is tied:  # which of the tokens equal to the last kept one are kept is the sort's choice: as many
            last = logits[list(want)].min()
            assert len(kept) == len(want) and {i for i in kept if logits[i] > last} == {i for i in want if logits[i] > last}
            assert logits[list(kept)].min() == last and logits[list(kept)].sum() == logits[list(want)].sum()
        else:
            assert kept == want, (top_p, len(kept))
        assert torch.equal(out[list(kept)], logits[list(kept)])
        assert (len(sorts) > 0) == (stage is None), (top_p, len(kept))  # the values sorted only when needed
        assert stage is None or len(kept) <= stage


def test_min_p_relative_to_top_token():
    logits = probs_logits([0.5, 0.3, 0.15, 0.05])
    assert allowed_tokens(logits, SamplingParams(min_p=0.5)) == {0, 1}  # >= 0.25
    assert allowed_tokens(logits, SamplingParams(min_p=0.3)) == {0, 1, 2}  # >= 0.15
    assert allowed_tokens(logits, SamplingParams(min_p=1.0)) == {0}
    assert torch.equal(apply_min_p(logits, 0.0), logits)


def test_temperature_applies_before_top_p():
    logits = probs_logits([0.6, 0.3, 0.1])
    # T=1: 0.6 alone does not reach 0.7, so {0,1}. A low temperature sharpens 0 above 0.7: {0}.
    assert allowed_tokens(logits, SamplingParams(top_p=0.7)) == {0, 1}
    assert allowed_tokens(logits, SamplingParams(top_p=0.7, temperature=0.3)) == {0}


def test_repetition_penalty_ctrl_rule():
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    counts = torch.tensor([1.0, 1.0, 0.0, 0.0])
    out = apply_penalties(logits, counts, None, SamplingParams(repetition_penalty=2.0))
    assert out.tolist() == [1.0, -4.0, 1.0, 0.5]  # positive /2, negative *2, unseen unchanged
    # greedy flips from the repeated token 0 to the unseen token 2
    assert allowed_tokens(logits, SamplingParams(temperature=0, repetition_penalty=2.5), context_counts=counts) == {2}


def test_presence_frequency_penalties_and_bias_and_bans():
    logits = torch.zeros(4)
    out_counts = torch.tensor([3.0, 1.0, 0.0, 0.0])
    out = apply_penalties(logits, None, out_counts, SamplingParams(presence_penalty=0.5, frequency_penalty=0.25))
    assert out.tolist() == [-1.25, -0.75, 0.0, 0.0]
    p = SamplingParams(temperature=0, logit_bias={3: 5.0})
    assert allowed_tokens(torch.tensor([1.0, 2.0, 3.0, 0.0]), p) == {3}
    banned = torch.tensor([2])
    assert allowed_tokens(torch.tensor([1.0, 2.0, 3.0, 0.0]), SamplingParams(), banned=banned) == {0, 1, 3}
    assert allowed_tokens(torch.tensor([1.0, 2.0, 3.0, 0.0]), SamplingParams(logit_bias={2: -math.inf})) == {0, 1, 3}


def test_seeded_draws_reproducible_and_respect_the_mask():
    logits = torch.randn(1000)
    p = SamplingParams(top_k=5, temperature=1.5)
    processed = process_logits(logits, p)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    a = [int(draw(processed, p, g1)) for _ in range(50)]
    b = [int(draw(processed, p, g2)) for _ in range(50)]
    assert a == b
    assert set(a) <= set(torch.topk(logits, 5).indices.tolist())
    assert len(set(a)) > 1


def test_inverse_cdf_draws_each_token_at_its_probability_and_never_a_zero():
    probs = torch.tensor([0.5, 0.0, 0.25, 0.125, 0.0, 0.125, 0.0])
    g = torch.Generator().manual_seed(0)
    counts = torch.bincount(torch.stack([inverse_cdf(probs, g) for _ in range(20000)]), minlength=7)
    assert counts[[1, 4, 6]].tolist() == [0, 0, 0]
    expected = 20000 * probs
    chi2 = float((((counts - expected) ** 2)[expected > 0] / expected[expected > 0]).sum())
    assert chi2 < 16.3  # chi-square, 3 degrees of freedom: p = 0.001
    assert int(inverse_cdf(torch.tensor([0.0, 0.0, 1.0]), g)) == 2
    unnormalised = torch.tensor([2.0, 0.0, 6.0])  # scaled by the total: 1/4 and 3/4
    share = sum(int(inverse_cdf(unnormalised, g)) == 0 for _ in range(4000)) / 4000
    assert abs(share - 0.25) < 0.03


def test_inverse_cdf_never_draws_a_leading_zero_probability_token(monkeypatch):
    monkeypatch.setattr(torch, "rand", lambda *a, **kw: torch.tensor(0.0, dtype=torch.float64))  # u = 0 exactly
    assert int(inverse_cdf(torch.tensor([0.0, 0.0, 0.5, 0.5]), None)) == 2


def test_inverse_cdf_never_runs_past_the_last_drawable_token(monkeypatch):
    """A uniform number that rounds up to the total would land past every token; it is kept below the total,
    so the draw is the last token of non-zero probability, not the zero-probability tail."""
    monkeypatch.setattr(torch, "rand", lambda *a, **kw: torch.tensor(1.0, dtype=torch.float64))
    assert int(inverse_cdf(torch.tensor([0.3, 0.7, 0.0, 0.0]), None)) == 1


def test_greedy_is_argmax():
    logits = torch.tensor([0.1, 0.7, 0.2])
    assert int(draw(process_logits(logits, SamplingParams(temperature=0)), SamplingParams(temperature=0), None)) == 1


def test_batched_greedy_equals_row_by_row():
    """greedy_tokens over rows with different biases and bans == process_logits + draw on each row alone,
    including NaN / inf logits, a bias on an id past the vocabulary and a row with nothing drawable."""
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    logits[1, 7] = math.nan
    logits[2, 3] = math.inf
    logits[3] = math.nan
    biases = [{}, {7: 30.0, 60: 5.0, 50: 9.0}, {3: -1.0, 4: 2.5}, {}, {i: -math.inf for i in range(50)}, {9: 8.0}]  # 50, 60: past V
    banned = [None, torch.tensor([2]), None, None, None, torch.tensor([9, int(logits[5].argmax())])]
    before = logits.clone()
    rows = [
        draw(process_logits(logits[i], SamplingParams(temperature=0, logit_bias=biases[i]), banned=banned[i]), SamplingParams(temperature=0), None)
        for i in range(6)
    ]  # fmt: skip
    assert torch.equal(logits.nan_to_num(), before.nan_to_num())  # the one-row steps return new tensors
    assert greedy_tokens(logits, biases, banned).tolist() == [int(t) for t in rows]
    assert torch.equal(logits.nan_to_num(), before.nan_to_num())  # the caller's logits are left as they were
    order = [5, 0, 2]  # a subset of the rows, in another order
    assert greedy_tokens(logits, [biases[i] for i in order], [banned[i] for i in order], order).tolist() == [int(rows[i]) for i in order]
    assert [int(t) for t in rows][3:5] == [-1, -1] and int(rows[2]) == 3  # all NaN, all -inf; +inf wins
    ties = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, -math.inf, 2.0], [-math.inf, 5.0, math.nan, 5.0]])
    assert greedy_tokens(ties, [{}] * 3, [None] * 3).tolist() == [1, 0, 1]  # torch.argmax's rule: the first maximum


def test_greedy_tokens_numpy_path_equals_the_batched_pass():
    """On a CPU, rows whose winner is finite are drawn by numpy (sampling._numpy_greedy); the float64 copy of
    the same logits takes the batched torch pass. Both equal process_logits + draw row by row, ties included."""
    from gpt2kit.generate.sampling import _numpy_greedy

    torch.manual_seed(2)
    logits = torch.randn(5, 50257) * 3
    logits[0, [11, 40000]] = 30.0  # a tie: the first
    logits[1, 50256] = 40.0  # the last id wins, then is biased away
    logits[3, 50] = -math.inf
    biases = [{}, {50256: -100.0, 12: 1.5}, {7: 25.0, 60000: 1.0}, {}, {3: 0.25}]
    banned = [None, None, None, torch.tensor([int(logits[3].argmax())]), torch.tensor([0, 1])]
    ref = [int(draw(process_logits(logits[i], SamplingParams(temperature=0, logit_bias=biases[i]), banned=banned[i]),
                    SamplingParams(temperature=0), None)) for i in range(5)]  # fmt: skip
    assert ref[0] == 11 and ref[1] != 50256 and ref[2] == 7
    assert _numpy_greedy(logits.numpy(), range(5), biases, banned).tolist() == ref  # the CPU path ran
    assert greedy_tokens(logits, biases, banned).tolist() == ref == greedy_tokens(logits.double(), biases, banned).tolist()
    nan_row = logits.clone()
    nan_row[4, 9] = math.nan
    assert _numpy_greedy(nan_row.numpy(), range(5), biases, banned) is None  # the batched pass decides: NaN is never drawn
    assert greedy_tokens(nan_row, biases, banned).tolist() == ref


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(temperature=-0.1), "temperature"),
        (dict(top_k=0), "top_k"),
        (dict(max_new_tokens=-1), "max_new_tokens"),
        (dict(min_p=1.5), "min_p"),
        (dict(repetition_penalty=0.0), "repetition_penalty"),
        (dict(n=0), "n"),
        (dict(seed=-3), "seed"),
        (dict(stop=[""]), "stop"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(presence_penalty=3.0), "presence_penalty"),
    ],
)
def test_bad_parameters_raise_clear_errors(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        SamplingParams(**kwargs)


def test_stop_given_as_one_string_becomes_a_tuple():
    assert SamplingParams(stop="\n").stop == ("\n",)


def test_greedy_rows_of_a_step_are_drawn_as_draw_draws_them():
    """The step's greedy rows (numpy's argmax on a CPU): the first maximum of each active row, in the active
    order; a NaN is never drawn (as `draw` treats it), and a row with nothing drawable gets NO_TOKEN."""
    from types import SimpleNamespace

    from gpt2kit.generate.step_draw import draw_step

    torch.manual_seed(1)
    logits = torch.randn(5, 50257)
    logits[1, [7, 9000]] = 40.0  # a tie: the first
    logits[2, 123] = math.nan
    logits[3, -1] = 50.0  # the last id
    logits[4] = -math.inf
    plain = SimpleNamespace(batchable_greedy=True, banned=None, params=SimpleNamespace(logprobs=None, logit_bias={}))
    active = [(3, plain), (1, plain), (2, plain), (0, plain), (4, plain)]
    toks, lps = draw_step(logits, active)
    expect = [int(draw(logits[b], SamplingParams(temperature=0), None)) for b, _ in active]
    assert toks == expect and toks[:3] == [50256, 7, int(logits[2].nan_to_num(-math.inf).argmax())] and toks[4] == NO_TOKEN
    assert toks[2] != 123 and lps == [None] * 5
