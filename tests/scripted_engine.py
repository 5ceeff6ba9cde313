"""A scripted Engine for the engine's unit tests (test_engine_steps.py, test_engine_sequences.py): a 64-token
vocabulary whose bytes are known, a mock runner whose next token is fixed by position and that records every
forward pass, and one whose logits never change (so penalties and bans alone decide)."""

import pytest
import torch

from conftest import ScriptedRunner, tiny_gpt
from gpt2kit.generate import Engine, SamplingParams

V, EOT = 64, 63
# token i < 26 is a letter, 26 a space, 27 a newline, 28 + 29 the two halves of "🎉" (F0 9F | 8E 89)
TABLE = (
    [bytes([97 + i]) for i in range(26)] + [b" ", b"\n", b"\xf0\x9f", b"\x8e\x89"] + [b"#%d" % i for i in range(30, 63)] + [b""]
)
A, B, C, D, SP, NL = 0, 1, 2, 3, 26, 27
GREEDY = SamplingParams(max_new_tokens=6, temperature=0)


@pytest.fixture(scope="module", name="model")
def model_fixture():
    """A real (perturbed) model of the scripted vocabulary: the runner decides the tokens, the model the shapes."""
    return tiny_gpt(n_layer=1, n_head=2, n_embd=16, n_positions=16, vocab_size=V)


@pytest.fixture(scope="module", name="big")
def big_fixture():
    """GPT-2's vocabulary (so <|endoftext|> is a token) and room for the default 64 new tokens."""
    return tiny_gpt(n_layer=1, n_head=2, n_embd=16, n_positions=72)


class Spy(ScriptedRunner):
    """ScriptedRunner that records every forward: (kind, tokens fed, rows of the cache view, mask given)."""

    def __init__(self, script):
        super().__init__(script, vocab=V)
        self.calls = []

    def prefill(self, idx, cache, mask, logits=True):
        if mask is not None:  # the runner's contract: (B, T) long, 1 for real tokens, 0 for left padding
            assert mask.dtype == torch.long and mask.shape == idx.shape and set(mask.unique().tolist()) <= {0, 1}, mask
        self.calls.append(("prefill", idx.tolist(), cache.batch_size, mask is not None, logits))
        return super().prefill(idx, cache, mask, logits)

    def decode(self, tokens, cache, mask, out=None):
        if mask is not None:
            assert mask.dtype == torch.long and mask.shape == tokens.shape, (mask.dtype, mask.shape)
        self.calls.append(("decode", tokens[:, 0].tolist(), cache.batch_size, None if mask is None else mask[:, 0].tolist()))
        return super().decode(tokens, cache, mask, out)


def engine(model, script, table=TABLE, **kw):
    eng = Engine(model, token_bytes=table, eot_id=EOT, **kw)
    eng.runner = Spy(script)
    return eng


def run(eng):
    events = []
    while eng.active_slots:
        events += eng.step()
    return events


class Flat:
    """A runner whose logits never change: A 1.0, B 0.8, every other token -1e9 (penalties decide)."""

    def _logits(self, n):
        out = torch.full((n, V), -1e9)
        out[:, A], out[:, B] = 1.0, 0.8
        return out

    def prefill(self, idx, cache, mask, logits=True):
        cache.plan(idx.shape[1], mask)
        return self._logits(idx.shape[0]) if logits else None

    def decode(self, tokens, cache, mask, out=None):
        cache.plan(1, mask)
        logits = self._logits(tokens.shape[0])
        return logits if out is None else out.copy_(logits[:, : out.shape[1]])


def flat(model, **kw):
    eng = Engine(model, token_bytes=TABLE, eot_id=EOT, **kw)
    eng.runner = Flat()
    return eng
