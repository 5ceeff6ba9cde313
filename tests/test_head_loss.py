"""The chunked LM-head cross-entropy (model/head_loss.py) and the padded vocabulary (model/vocab_pad.py)
against the plain path: F.cross_entropy over the full logits, and transformers for the exported model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_gpt
from gpt2kit.config import IGNORE_INDEX
from gpt2kit.model.head_loss import lm_head_loss
from gpt2kit.model.vocab_pad import pad_vocab, unpadded


def _data(N=40, C=16, V=97, seed=0, ignore=(3, 4, 17)):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(N, C, generator=g)
    w = torch.randn(V, C, generator=g) * 0.5
    t = torch.randint(0, V, (N,), generator=g)
    t[list(ignore)] = IGNORE_INDEX
    return h, w, t


def _reference(h, w, t, dtype=None):
    """The plain path, as GPT.forward computes it: full logits, upcast, F.cross_entropy; -> loss, dh, dw."""
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    ctx = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with ctx:
        loss = F.cross_entropy(F.linear(h, w).float(), t, ignore_index=IGNORE_INDEX)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def _fused(h, w, t, dtype=None, **kw):
    h, w = h.clone().requires_grad_(), w.clone().requires_grad_()
    ctx = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
    with ctx:
        loss = lm_head_loss(h, w, t, **kw)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk_rows", [7, 40, 0])
def test_fp32_loss_and_gradients_equal_cross_entropy(chunk_rows):
    h, w, t = _data()
    ref = _reference(h, w, t)
    got = _fused(h, w, t, chunk_rows=chunk_rows)
    assert got[0].dtype == torch.float32
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_matches_the_plain_step():
    h, w, t = _data(N=64, C=32, V=130)
    ref = _reference(h, w, t, torch.bfloat16)
    got = _fused(h, w, t, torch.bfloat16, chunk_rows=24)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)  # same bf16-rounded logits, fp32 softmax
    assert got[1].dtype == got[2].dtype == torch.float32  # grads in the inputs' dtypes
    torch.testing.assert_close(got[1], ref[1], rtol=2e-2, atol=1e-4)  # bf16 backward matmuls
    torch.testing.assert_close(got[2], ref[2], rtol=2e-2, atol=1e-4)


def test_leading_dims_and_all_ignored():
    h, w, t = _data(N=24)
    got = lm_head_loss(h.view(4, 6, -1), w, t.view(4, 6), chunk_rows=5)
    torch.testing.assert_close(got, F.cross_entropy(h @ w.t(), t, ignore_index=IGNORE_INDEX))
    none = torch.full_like(t, IGNORE_INDEX)
    assert torch.isnan(lm_head_loss(h, w, none)) and torch.isnan(F.cross_entropy(h @ w.t(), none, ignore_index=IGNORE_INDEX))


def test_padded_columns_are_left_out_of_the_softmax():
    h, w, t = _data(V=97)
    junk = torch.randn(31, w.shape[1]) * 3  # padding rows with large values: must not matter at all
    wp = torch.cat([w, junk])  # (128, C)
    ref = _reference(h, w, t)
    got = _fused(h, wp, t, n_valid=97, chunk_rows=9)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[2][:97], ref[2], rtol=1e-5, atol=1e-6)
    assert torch.equal(got[2][97:], torch.zeros_like(junk))  # padded rows: exactly no gradient
    # nanoGPT's semantics (padding inside the softmax) gives another loss: the check above can tell them apart
    assert not torch.allclose(F.cross_entropy(h @ wp.t(), t, ignore_index=IGNORE_INDEX), ref[0])


def _saved_shapes(fn):
    shapes = []

    def pack(x):
        shapes.append(tuple(x.shape))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        fn()
    return shapes


def test_no_rows_by_vocab_tensor_is_saved_for_backward():
    N, V = 256, 1000
    h, w, t = _data(N=N, C=16, V=V)
    h.requires_grad_()
    w.requires_grad_()
    plain = _saved_shapes(lambda: F.cross_entropy(F.linear(h, w).float(), t, ignore_index=IGNORE_INDEX))
    fused = _saved_shapes(lambda: lm_head_loss(h, w, t, chunk_rows=64))
    assert any(s == (N, V) for s in plain)  # the plain path keeps full logits / log-softmax
    assert fused and max(torch.Size(s).numel() for s in fused) == V * 16  # the largest is W itself
    assert not any(N in s and V in s for s in fused)


def test_peak_memory_of_the_forward_is_one_chunk():
    """Every (rows, V) tensor any operation makes in the forward and backward has one chunk's rows at most,
    never all N rows."""
    from torch.utils._python_dispatch import TorchDispatchMode

    N, V = 512, 2000
    h, w, t = _data(N=N, C=8, V=V)
    h.requires_grad_()
    big = []

    class Shapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for o in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(o, torch.Tensor) and o.dim() == 2 and o.shape[1] == V:
                    big.append(o.shape[0])
            return out

    with Shapes():
        lm_head_loss(h, w, t, chunk_rows=128).backward()
    assert big and max(big) == 128


def test_bad_shapes_are_refused():
    h, w, t = _data()
    with pytest.raises(ValueError, match="disagree"):
        lm_head_loss(h, w, t[:-1])
    with pytest.raises(ValueError, match="n_valid"):
        lm_head_loss(h, w, t, n_valid=w.shape[0] + 1)


# ---- the padded vocabulary on a whole model ---------------------------------------------------------


def _model_grads(model, x, y, fused):
    model.zero_grad(set_to_none=True)
    if fused:
        loss = lm_head_loss(model.hidden_states(x), model.lm_head.weight, y, n_valid=model.config.real_vocab_size, chunk_rows=5)
    else:
        _, loss = model(x, y)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_padded_model_trains_exactly_like_the_unpadded_one():
    model = tiny_gpt(n_layer=2, n_embd=32, n_head=2, vocab_size=300, n_positions=32).train()
    padded = pad_vocab(model, 64)
    assert padded.config.vocab_size == 320 and padded.config.n_vocab == 300
    assert padded.lm_head.weight is padded.transformer.wte.weight
    assert torch.equal(padded.transformer.wte.weight[300:], torch.zeros(20, 32))
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 300, (3, 16), generator=g)
    y = torch.randint(0, 300, (3, 16), generator=g)
    y[0, :4] = IGNORE_INDEX
    ref_loss, ref = _model_grads(model, x, y, fused=False)  # the plain step of the unpadded model
    loss, got = _model_grads(padded, x, y, fused=True)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    for name, r in ref.items():
        gp = got[name][:300] if name == "transformer.wte.weight" else got[name]
        torch.testing.assert_close(gp, r, rtol=1e-4, atol=1e-6, msg=name)
    assert torch.equal(got["transformer.wte.weight"][300:], torch.zeros(20, 32))


def test_unpadded_shares_storage_and_export_matches_transformers(tmp_path):
    import transformers

    from gpt2kit.pretrained import save_pretrained

    model = tiny_gpt(n_layer=2, n_embd=32, n_head=2, vocab_size=300, n_positions=32)
    padded = pad_vocab(model, 64)
    with torch.no_grad():
        padded.transformer.wte.weight[300:] = 5.0  # even non-zero padding never leaks into the export
    back = unpadded(padded)
    assert back.config.vocab_size == 300 and back.config.n_vocab is None
    assert back.transformer.wte.weight.data_ptr() == padded.transformer.wte.weight.data_ptr()
    save_pretrained(padded, tmp_path, tokenizer_files=False)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    assert hf.config.vocab_size == 300
    x = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = padded.eval()(x)[0][..., :300]
        theirs = hf(x).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_padded_model_forward_loss_equals_the_unpadded_one():
    model = tiny_gpt(n_layer=1, n_embd=32, n_head=2, vocab_size=300, n_positions=32)
    padded = pad_vocab(model, 64)
    x = torch.randint(0, 300, (2, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(padded(x, x)[1], model(x, x)[1], rtol=1e-5, atol=1e-6)


def test_training_with_a_padded_vocabulary_saves_and_resumes_at_the_real_size(tmp_path):
    import json

    import numpy as np
    from safetensors import safe_open

    from gpt2kit.data.shards import write_shard
    from gpt2kit.train import TrainConfig, train

    ids = np.random.default_rng(0).integers(0, 50257, 6000).astype(np.uint16)
    write_shard(tmp_path / "data" / "train_000000.bin", ids[:5000])
    write_shard(tmp_path / "data" / "val_000000.bin", ids[5000:])
    kw = dict(data=str(tmp_path / "data"), out_dir=str(tmp_path / "run"), model="tiny", block_size=16, micro_batch=2,
              eval_interval=2, eval_batches=1, sample_tokens=2, log_interval=1, pad_vocab=64, threads=1, warmup_steps=1)  # fmt: skip
    train(TrainConfig(max_steps=2, **kw), log=lambda *_: None)
    step2 = tmp_path / "run" / "checkpoints" / "step_000002"
    with safe_open(step2 / "model.safetensors", "pt") as f:
        assert f.get_slice("transformer.wte.weight").get_shape() == [50257, 64]  # exported at the real size
    assert json.loads((step2 / "config.json").read_text())["vocab_size"] == 50257
    moments = torch.load(step2 / "optimizer.pt", weights_only=False)["optimizer"]["state"]
    assert max(s["exp_avg"].shape[0] for s in moments.values() if s["exp_avg"].dim() == 2) == 50304  # padded, for resume
    result = train(TrainConfig(max_steps=4, resume=True, **kw), log=lambda *_: None)  # re-pads, loads the padded moments
    assert result.step == 4


def test_accumulation_scaling_and_no_gradient_work_without_grad(monkeypatch):
    import gpt2kit.model.head_loss as hl

    h, w, t = _data()
    hr, wr = h.clone().requires_grad_(), w.clone().requires_grad_()
    (F.cross_entropy(hr @ wr.t(), t, ignore_index=IGNORE_INDEX) / 4).backward()  # loss / accum
    hf, wf = h.clone().requires_grad_(), w.clone().requires_grad_()
    (lm_head_loss(hf, wf, t, chunk_rows=16) / 4).backward()
    torch.testing.assert_close(hf.grad, hr.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(wf.grad, wr.grad, rtol=1e-5, atol=1e-7)
    calls = []
    monkeypatch.setattr(hl, "_chunk_grads", lambda *a: calls.append(1))
    with torch.no_grad():
        loss = lm_head_loss(hf, wf, t, chunk_rows=16)
    torch.testing.assert_close(loss, F.cross_entropy(h @ w.t(), t, ignore_index=IGNORE_INDEX))
    assert calls == []  # evaluation pays for the loss only
