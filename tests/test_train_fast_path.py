"""The training fast path is chosen by config: torch.compile (--compile), fused AdamW on CUDA, and a
compiled forward with the chunked head loss computes the eager step's loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gpt2kit.data.shards import write_shard
from gpt2kit.train import TrainConfig, train
from gpt2kit.train.optim import make_optimizer


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast-path-data")
    ids = np.random.default_rng(0).integers(0, 50257, 4000).astype(np.uint16)
    write_shard(root / "train_000000.bin", ids)
    return root


def _run(data, tmp_path, **kw):
    cfg = TrainConfig(data=str(data), out_dir=str(tmp_path / "run"), model="tiny", block_size=16, micro_batch=2, max_steps=1,
                      eval_interval=1, sample_tokens=0, threads=1, **kw)  # fmt: skip
    return train(cfg, log=lambda *_: None)


@pytest.mark.parametrize("setting, compiled", [("on", True), ("off", False), ("auto", False)])  # auto: a 1-step CPU run is not compiled
def test_compile_is_chosen_by_config(data, tmp_path, monkeypatch, setting, compiled):
    seen = []

    def spy(model, *a, **k):
        seen.append(type(model).__name__)
        return model  # run eagerly: this test is about the choice, not the compiler

    monkeypatch.setattr(torch, "compile", spy)
    _run(data, tmp_path, compile=setting)
    assert seen == (["GPT"] if compiled else [])


@pytest.mark.parametrize(
    "setting, device, steps, minutes, compiled",
    [("auto", "cuda", 1, 0.0, True), ("auto", "cpu", 200, 0.0, True), ("auto", "cpu", 199, 0.0, False),
     ("auto", "cpu", 5000, 5.0, False), ("auto", "cpu", 5000, 10.0, True), ("auto", "mps", 5000, 0.0, False),
     ("off", "cuda", 5000, 0.0, False), ("on", "cpu", 1, 0.0, True)],
)  # fmt: skip
def test_auto_compiles_where_it_pays_back(monkeypatch, setting, device, steps, minutes, compiled):
    monkeypatch.setattr("gpt2kit.train.config._cpp_compiler_found", lambda: True)
    cfg = TrainConfig(data="-", compile=setting, max_steps=steps, max_minutes=minutes)
    assert cfg.use_compile(device) is compiled


def test_auto_trains_eagerly_on_a_cpu_without_a_cpp_compiler(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler")
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert TrainConfig(data="-", compile="auto", max_steps=5000).use_compile("cpu") is False
    assert TrainConfig(data="-", compile="on", max_steps=5000).use_compile("cpu") is True


@pytest.mark.parametrize("device, fused", [("cuda", True), ("cpu", False)])
def test_adamw_is_fused_on_cuda(monkeypatch, device, fused):
    got = {}

    class Spy(torch.optim.AdamW):
        def __init__(self, params, fused=None, **kw):  # `fused` in the signature, as torch's AdamW has it
            got["fused"] = fused
            super().__init__(params, **kw)  # built unfused: there is no GPU here

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    model = torch.nn.Linear(4, 4)
    make_optimizer(model, TrainConfig(data="-"), torch.device(device))
    assert bool(got["fused"]) is fused


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_compiled_chunked_loss_step_equals_the_eager_step():
    """torch.compile (inductor, CPU) of hidden_states + lm_head_loss: same loss and gradients as eager."""
    from conftest import tiny_gpt
    from gpt2kit.model.head_loss import lm_head_loss
    from gpt2kit.model.vocab_pad import pad_vocab

    model = pad_vocab(tiny_gpt(n_layer=1, n_embd=32, n_head=2, vocab_size=300, n_positions=32).train(), 64)
    x = torch.randint(0, 300, (2, 16), generator=torch.Generator().manual_seed(0))

    def loss_fn(x, y):
        return lm_head_loss(model.hidden_states(x), model.lm_head.weight, y, n_valid=300, chunk_rows=8)

    grads = []
    for fn in (loss_fn, torch.compile(loss_fn)):
        model.zero_grad(set_to_none=True)
        loss = fn(x, x)
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[1][1], grads[0][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
