"""The validation loss is defined once (`eval.perplexity.batches_nll`): token-weighted, in the training loop too."""

import contextlib

import pytest
import torch

from conftest import tiny_gpt
from gpt2kit.config import IGNORE_INDEX
from gpt2kit.eval.perplexity import val_perplexity
from gpt2kit.train import distributed as D
from gpt2kit.train.loop import evaluate


class FixedBatches:
    """A loader stand-in: the same (x, y) batches at every evaluation."""

    def __init__(self, batches):
        self.batches = batches

    def eval_batches(self, max_batches):
        yield from self.batches[:max_batches]


def _unequal_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 100, (2, 2, 16), generator=g)
    y = torch.randint(0, 100, (2, 2, 16), generator=g)
    y[1, :, :13] = IGNORE_INDEX  # batch 0 scores 32 targets, batch 1 only 6
    y[1, 1, 15] = IGNORE_INDEX  # (5)
    return [(x[0], y[0]), (x[1], y[1])]


def _means_and_counts(model, batches):
    with torch.no_grad():
        losses = [model(x, y)[1].item() for x, y in batches]
    return losses, [int((y != IGNORE_INDEX).sum()) for _, y in batches]


def test_loop_val_loss_is_token_weighted_not_a_mean_of_batch_means():
    model = tiny_gpt(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=100)
    batches = _unequal_batches()
    losses, counts = _means_and_counts(model, batches)
    weighted = sum(loss * n for loss, n in zip(losses, counts)) / sum(counts)
    mean_of_means = sum(losses) / len(losses)
    assert counts == [32, 5] and abs(weighted - mean_of_means) > 1e-3  # the two definitions differ here
    got = evaluate(model, FixedBatches(batches), 10, torch.device("cpu"), contextlib.nullcontext(), D.DistInfo())
    assert got == pytest.approx(weighted, rel=1e-5)
    assert model.training  # evaluate restores train mode
    assert val_perplexity(model, batches)["val_loss"] == pytest.approx(got, rel=1e-6)  # the same function


def test_a_batch_of_ignored_targets_only_counts_nothing():
    model = tiny_gpt(n_layer=2, n_head=2, n_embd=32, n_positions=32, vocab_size=100)
    batches = _unequal_batches()
    empty = (batches[1][0], torch.full_like(batches[1][1], IGNORE_INDEX))
    want = val_perplexity(model, batches)["val_loss"]
    assert val_perplexity(model, [*batches, empty])["val_loss"] == pytest.approx(want, rel=1e-6)
