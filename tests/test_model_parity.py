"""Our GPT against transformers' GPT2LMHeadModel on the same weights: logits to 1e-4 in fp32."""

import pytest
import torch
import transformers

import gpt2kit
from conftest import save_hf_gpt2
from gpt2kit import GPT, PRESETS

TOL = 1e-4


def hf_logits(folder, idx, **kw):
    hf = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    with torch.no_grad():
        return hf(idx, **kw).logits


# Every preset's width and head count, at 2 layers. The vocabulary is cut for the wide ones to keep the
# test fast; gpt2's keeps the real 50257 (and the full-depth 124M test below uses everything real).
SHAPES = {name: dict(n_embd=c.n_embd, n_head=c.n_head, vocab_size=50257 if name == "gpt2" else 4096) for name, c in PRESETS.items()}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_preset_shapes_match_transformers_both_ways(name, tmp_path):
    folder = save_hf_gpt2(tmp_path / "hf", seed=1, n_layer=2, n_positions=1024, **SHAPES[name])
    model = gpt2kit.from_pretrained(folder)
    idx = torch.randint(0, SHAPES[name]["vocab_size"], (2, 33), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = model(idx)
    assert (ours - hf_logits(folder, idx)).abs().max().item() <= TOL

    gpt2kit.save_pretrained(model, tmp_path / "ours")  # and back: transformers reads our folder
    assert (ours - hf_logits(tmp_path / "ours", idx)).abs().max().item() <= TOL


def test_full_gpt2_124m_matches_transformers(tmp_path):
    folder = save_hf_gpt2(tmp_path / "hf", seed=2, n_layer=12, n_embd=768, n_head=12, n_positions=1024)
    model = gpt2kit.from_pretrained(folder)
    assert model.num_params() == 124_439_808
    idx = torch.randint(0, 50257, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, _ = model(idx)
    assert (ours - hf_logits(folder, idx)).abs().max().item() <= TOL
    gpt2kit.save_pretrained(model, tmp_path / "ours")
    assert (ours - hf_logits(tmp_path / "ours", idx)).abs().max().item() <= TOL


def test_loss_matches_transformers(tiny_hf_dir):
    model = gpt2kit.from_pretrained(tiny_hf_dir)
    idx = torch.randint(0, 50257, (2, 20), generator=torch.Generator().manual_seed(3))
    _, ours = model(idx[:, :-1], targets=idx[:, 1:])  # our targets are shifted by the caller
    hf = transformers.GPT2LMHeadModel.from_pretrained(tiny_hf_dir).eval()
    with torch.no_grad():
        theirs = hf(idx, labels=idx).loss  # HF shifts inside the model
    assert abs(ours.item() - theirs.item()) <= 1e-5


def test_left_padded_batch_matches_each_row_alone(tiny_hf_dir):
    model = gpt2kit.from_pretrained(tiny_hf_dir)
    g = torch.Generator().manual_seed(4)
    short, long = torch.randint(0, 50257, (1, 7), generator=g), torch.randint(0, 50257, (1, 12), generator=g)
    pad = 50256
    idx = torch.cat([torch.cat([torch.full((1, 5), pad), short], 1), long])  # (2, 12), row 0 left-padded
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :5] = 0
    with torch.no_grad():
        batched, _ = model(idx, attention_mask=mask)
        alone_short, _ = model(short)
        alone_long, _ = model(long)
        # transformers' forward takes positions explicitly; derive them from the mask as generate() does
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        theirs = hf_logits(tiny_hf_dir, idx, attention_mask=mask, position_ids=position_ids)
    assert (batched[0, 5:] - alone_short[0]).abs().max().item() <= 1e-5
    assert (batched[1] - alone_long[0]).abs().max().item() <= 1e-5
    assert (batched[mask.bool()] - theirs[mask.bool()]).abs().max().item() <= TOL
    assert torch.isfinite(batched).all()  # padded queries stay finite (they attend to themselves)


def test_gpt2model_checkpoint_without_prefix_and_pytorch_bin(tmp_path, tiny_hf_dir):
    """Original OpenAI-converted repos store GPT2Model keys (no `transformer.`) and the .attn.bias buffers."""
    base = transformers.GPT2LMHeadModel.from_pretrained(tiny_hf_dir)
    state = {k.removeprefix("transformer."): v for k, v in base.state_dict().items() if k != "lm_head.weight"}
    for i in range(base.config.n_layer):  # the causal-mask buffers old checkpoints carry
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(128, 128)).view(1, 1, 128, 128)
        state[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    folder = tmp_path / "bin"
    folder.mkdir()
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text((tiny_hf_dir / "config.json").read_text())
    model = gpt2kit.from_pretrained(folder)
    idx = torch.randint(0, 50257, (1, 9))
    with torch.no_grad():
        assert (model(idx)[0] - base.eval()(idx).logits).abs().max().item() <= TOL
    # c_attn.bias is a real parameter and must survive the buffer filter
    assert torch.equal(model.transformer.h[0].attn.c_attn.bias, base.transformer.h[0].attn.c_attn.bias)


def test_dtype_and_tied_head_after_load(tiny_hf_dir):
    model = gpt2kit.from_pretrained(tiny_hf_dir, dtype="bfloat16")
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    assert model.lm_head.weight is model.transformer.wte.weight
    assert not model.training


def test_random_init_statistics():
    torch.manual_seed(0)
    model = GPT(gpt2kit.GPTConfig(n_layer=4, n_embd=128, n_head=4))
    assert abs(model.transformer.h[0].mlp.c_fc.weight.std().item() - 0.02) < 2e-3
    assert abs(model.transformer.h[0].attn.c_proj.weight.std().item() - 0.02 / (2 * 4) ** 0.5) < 1e-3
    assert model.transformer.h[0].attn.c_attn.bias.abs().sum() == 0
