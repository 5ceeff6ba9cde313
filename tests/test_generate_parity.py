"""Greedy generation equals transformers' generate(do_sample=False) token for token, for the same weights:
a single prompt and a left-padded batch of prompts of different lengths (HF generate derives position_ids
from the attention mask; so do we)."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

import gpt2kit  # noqa: E402
from gpt2kit.generate import SamplingParams, generate  # noqa: E402

EOT = 50256
N_NEW = 24


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    torch.manual_seed(0)
    # A larger init than GPT-2's 0.02 makes the random model's argmax decisive (no near-ties that a
    # different summation order could flip), so token equality is a strict test of the math.
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=128, initializer_range=0.15)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    hf.save_pretrained(folder)
    ours = gpt2kit.from_pretrained(folder)
    return hf, ours


def hf_greedy(hf, ids, mask):
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N_NEW, do_sample=False,
                          pad_token_id=EOT, eos_token_id=EOT)  # fmt: skip
    return [until_eot(row[ids.shape[1] :].tolist()) for row in out]


def until_eot(tokens):
    return tokens[: tokens.index(EOT)] if EOT in tokens else tokens


@pytest.mark.parametrize("weights", ["auto", "model"])
def test_greedy_single_prompt_matches_transformers(pair, weights):
    hf, ours = pair
    prompt = torch.randint(0, 50256, (1, 9), generator=torch.Generator().manual_seed(1))
    want = hf_greedy(hf, prompt, torch.ones_like(prompt))[0]
    got = generate(ours, [prompt[0].tolist()], SamplingParams(max_new_tokens=N_NEW, temperature=0), weights=weights)[0]
    assert got.token_ids == want
    assert len(want) >= 5  # the comparison covered real decoding steps


def test_greedy_left_padded_batch_matches_transformers(pair):
    hf, ours = pair
    g = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 50256, (n,), generator=g).tolist() for n in (4, 13, 1, 8)]
    T = max(map(len, prompts))
    ids = torch.full((len(prompts), T), EOT)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :] = torch.tensor(p)
        mask[i, T - len(p) :] = 1
    want = hf_greedy(hf, ids, mask)
    got = generate(ours, prompts, SamplingParams(max_new_tokens=N_NEW, temperature=0))
    assert [c.token_ids for c in got] == want
    assert sum(len(w) for w in want) >= 20
