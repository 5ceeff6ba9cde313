"""LoRA: our adapters against PEFT's own (both directions), merging, what trains, resume, loss on real text,
and --adapter on the commands that run a model. PEFT and transformers are the references throughout."""

from __future__ import annotations

import json

import pytest
import torch

from gpt2kit.adapter import ADAPTER_CONFIG, ADAPTER_WEIGHTS, apply_adapter, load_adapter, merged_copy, save_adapter
from gpt2kit.cli.__main__ import main
from gpt2kit.errors import CheckpointError, ConfigError
from gpt2kit.model.lora import LoRALinear, inject_lora, lora_modules
from gpt2kit.pretrained import from_pretrained
from gpt2kit.train.metrics import read_metrics

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

IDS = torch.tensor([[50256, 464, 2068, 7586, 21831, 18045, 625, 262, 16931, 3290, 13, 198, 40, 716, 1049, 11],
                    [1212, 318, 257, 1332, 286, 262, 1080, 290, 663, 13391, 13, 632, 815, 670, 790, 1110]])  # fmt: skip


def hf_base(folder):
    return transformers.GPT2LMHeadModel.from_pretrained(folder).eval()


def randomize_(model, seed: int = 0, std: float = 0.3) -> None:
    """Non-zero lora_A and lora_B everywhere (fresh adapters have B = 0 and change nothing)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_A" in name or "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def peft_adapter(base_dir, out, seed: int = 0, **lora) -> torch.nn.Module:
    """An adapter made by PEFT itself on the transformers model, with random non-zero A and B, saved to `out`."""
    cfg = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["c_attn", "c_proj", "c_fc"], "fan_in_fan_out": True,
                             "task_type": "CAUSAL_LM", **lora})  # fmt: skip
    model = peft.get_peft_model(hf_base(base_dir), cfg)
    randomize_(model, seed)
    model.save_pretrained(out)
    return model.eval()


@torch.no_grad()
def logits(model) -> torch.Tensor:
    out = model(IDS)
    return out[0] if isinstance(out, tuple) else out.logits


@pytest.mark.parametrize("targets", [("c_attn", "c_proj", "c_fc"), ("c_attn",), ("mlp.c_proj", "attn.c_proj")])
def test_our_adapter_loads_in_peft_with_our_logits(tiny_hf_dir, tmp_path, targets):
    ours = from_pretrained(tiny_hf_dir)
    names = inject_lora(ours, r=4, alpha=16, dropout=0.1, targets=targets)
    randomize_(ours)
    ours.eval()
    save_adapter(ours, tmp_path / "ad", base_model=str(tiny_hf_dir))

    # the files are PEFT's own: the same tensor names and shapes PEFT writes for the same LoRA on this model
    peft_adapter(tiny_hf_dir, tmp_path / "ref", target_modules=list(targets))
    from safetensors.torch import load_file

    mine, ref = load_file(tmp_path / "ad" / ADAPTER_WEIGHTS), load_file(tmp_path / "ref" / ADAPTER_WEIGHTS)
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in ref.items()}
    assert len(mine) == 2 * len(names)

    model = peft.PeftModel.from_pretrained(hf_base(tiny_hf_dir), tmp_path / "ad").eval()
    want, base = logits(model), logits(hf_base(tiny_hf_dir))
    assert (logits(ours) - want).abs().max() <= 1e-4  # unmerged, through LoRALinear
    assert (want - base).abs().max() > 0.1  # the adapter changes the output: the comparison can fail
    assert (logits(apply_adapter(from_pretrained(tiny_hf_dir), tmp_path / "ad")) - want).abs().max() <= 1e-4


@pytest.mark.parametrize("lora", [{}, {"use_rslora": True, "lora_alpha": 5, "rank_pattern": {"h.1.mlp.c_fc": 2},
                                        "alpha_pattern": {"c_attn": 3}}])  # fmt: skip
def test_peft_adapter_loads_into_gpt2kit(tiny_hf_dir, tmp_path, lora):
    model = peft_adapter(tiny_hf_dir, tmp_path / "ad", **lora)
    want = logits(model)
    assert (want - logits(hf_base(tiny_hf_dir))).abs().max() > 0.1

    ours = from_pretrained(tiny_hf_dir)
    names = load_adapter(ours, tmp_path / "ad")
    assert len(names) == 8 and all(isinstance(m, LoRALinear) for m in lora_modules(ours).values())
    assert (logits(ours.eval()) - want).abs().max() <= 1e-4  # unmerged
    merged = apply_adapter(from_pretrained(tiny_hf_dir), tmp_path / "ad")
    assert not lora_modules(merged) and (logits(merged) - want).abs().max() <= 1e-4


def test_merged_copy_shares_what_the_adapter_leaves_and_keeps_the_base(tiny_hf_dir, tmp_path):
    peft_adapter(tiny_hf_dir, tmp_path / "ad", target_modules=["c_attn"])
    base = from_pretrained(tiny_hf_dir)
    before = logits(base)
    copy = merged_copy(base, tmp_path / "ad")
    assert torch.equal(logits(base), before)  # the base still computes the base
    assert (logits(copy) - logits(peft.PeftModel.from_pretrained(hf_base(tiny_hf_dir), tmp_path / "ad"))).abs().max() <= 1e-4
    b, c = base.transformer.h[0], copy.transformer.h[0]
    assert c.mlp.c_fc.weight.data_ptr() == b.mlp.c_fc.weight.data_ptr()  # untargeted: shared
    assert copy.transformer.wte.weight.data_ptr() == base.transformer.wte.weight.data_ptr()
    assert c.attn.c_attn.weight.data_ptr() != b.attn.c_attn.weight.data_ptr()  # targeted: its own merged copy


def test_merge_command_writes_a_plain_folder_transformers_loads(tiny_hf_dir, tmp_path):
    adapter = peft_adapter(tiny_hf_dir, tmp_path / "ad")
    assert main(["merge", "--model", str(tiny_hf_dir), "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "m")]) == 0
    assert not (tmp_path / "m" / ADAPTER_CONFIG).exists()
    merged = hf_base(tmp_path / "m")
    assert (logits(merged) - logits(adapter)).abs().max() <= 1e-4  # merged == base + adapter (PEFT's, unmerged)
    ref = adapter.merge_and_unload()  # and PEFT's own merge
    assert (merged.transformer.h[1].attn.c_attn.weight - ref.transformer.h[1].attn.c_attn.weight).abs().max() <= 1e-6


def test_unsupported_or_mismatched_adapters_are_refused(tiny_hf_dir, tmp_path):
    peft_adapter(tiny_hf_dir, tmp_path / "dora", use_dora=True)
    with pytest.raises(CheckpointError, match="use_dora"):
        load_adapter(from_pretrained(tiny_hf_dir), tmp_path / "dora")
    from conftest import save_hf_gpt2

    wide = save_hf_gpt2(tmp_path / "wide", n_embd=128)
    peft_adapter(wide, tmp_path / "wide_ad")
    with pytest.raises(CheckpointError, match="another base model"):
        load_adapter(from_pretrained(tiny_hf_dir), tmp_path / "wide_ad")
    assert main(["generate", "--model", str(tmp_path / "wide_ad"), "hi"]) == 2  # an adapter is not a model
    with pytest.raises(ConfigError, match="matches no layer"):
        inject_lora(from_pretrained(tiny_hf_dir), 4, 8, targets=("q_proj",))


def test_a_step_trains_only_the_adapters_and_leaves_the_base_untouched(tiny_hf_dir):
    from gpt2kit.train.config import TrainConfig
    from gpt2kit.train.optim import make_optimizer

    model = from_pretrained(tiny_hf_dir).train()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    inject_lora(model, r=4, alpha=8, dropout=0.05)
    cfg = TrainConfig(data="-", init_from=str(tiny_hf_dir), lora_r=4, lr=1e-2, weight_decay=0.1)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(trainable)
    _, loss = model(IDS, torch.roll(IDS, -1, 1))
    loss.backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in trainable), name
    assert all(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if ".lora_B." in n)  # B = 0 still gets a gradient
    opt.step()
    after = model.state_dict()
    for key, value in base.items():  # every base tensor, under its LoRALinear name where it moved
        moved = key.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after.get(key, after.get(moved)), value), key
    assert all(after[n].abs().sum() > 0 for n in trainable if ".lora_B." in n)  # B left zero: it trained


def _finetune(base, data, out, *extra):
    return ["finetune", "--model", str(base), "--data", str(data), "--out-dir", str(out), "--block-size", "32",
            "--micro-batch", "4", "--sample-tokens", "4", "--threads", "1", "--lora-r", "4", "--lora-alpha", "8",
            "--log-interval", "1", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def qa(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora-data") / "qa.jsonl"
    pairs = [{"prompt": f"Q: what is {a} plus {b}?\nA:", "completion": f" {a + b}"} for a in range(12) for b in range(5)]
    path.write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    return path


def test_finetune_lora_writes_peft_checkpoints_and_resumes_exactly(tiny_hf_dir, qa, tmp_path):
    steps = ["--schedule", "constant", "--warmup-steps", "0", "--lr", "3e-3", "--eval-interval", "3"]
    assert main(_finetune(tiny_hf_dir, qa, tmp_path / "full", "--max-steps", "6", *steps)) == 0
    final = tmp_path / "full" / "checkpoints" / "step_000006"
    assert {p.name for p in final.iterdir()} >= {ADAPTER_CONFIG, ADAPTER_WEIGHTS, "optimizer.pt", "rng.pt", "meta.json"}
    assert not (final / "model.safetensors").exists()  # the base is not copied into every checkpoint
    config = json.loads((final / ADAPTER_CONFIG).read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["base_model_name_or_path"] == str(tiny_hf_dir.resolve())

    # PEFT loads the trained adapter and computes what we compute
    want = logits(peft.PeftModel.from_pretrained(hf_base(tiny_hf_dir), final).eval())
    assert (logits(apply_adapter(from_pretrained(tiny_hf_dir), final)) - want).abs().max() <= 1e-4
    assert (want - logits(hf_base(tiny_hf_dir))).abs().max() > 1e-3  # it trained

    # stop at step 3, resume to 6: the same losses step for step, the same adapter
    assert main(_finetune(tiny_hf_dir, qa, tmp_path / "split", "--max-steps", "3", *steps)) == 0
    assert main(["finetune", "--resume", "--out-dir", str(tmp_path / "split"), "--max-steps", "6"]) == 0
    got, full = (read_metrics(tmp_path / d / "metrics.jsonl", "train") for d in ("split", "full"))
    assert [r["loss"] for r in got] == [r["loss"] for r in full] and len(got) == 6
    from safetensors.torch import load_file

    a, b = (load_file(tmp_path / d / "checkpoints" / "step_000006" / ADAPTER_WEIGHTS) for d in ("split", "full"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def heldout_loss_drop(base, text, out, *flags) -> tuple[float, float]:
    """Fine-tune `base` with LoRA on `text`; (base, base + adapter) loss on the first 512 held-out tokens,
    the val tail that prepare split off and training never saw."""
    import numpy as np

    from gpt2kit.data.shards import find_shards, open_shard

    assert main(_finetune(base, text, out, "--val-fraction", "0.1", "--eval-batches", "1", "--sample-tokens", "0",
                          "--dropout", "0.0", "--block-size", "64", *flags)) == 0  # fmt: skip
    val = np.concatenate([open_shard(p) for p in find_shards(out / "data", "val")])[: 8 * 64 + 1]
    x = torch.from_numpy(val[:-1].astype(np.int64)).view(8, 64)  # (B, T)
    y = torch.from_numpy(val[1:].astype(np.int64)).view(8, 64)
    adapter = out / "checkpoints" / sorted(p.name for p in (out / "checkpoints").iterdir())[-1]
    with torch.no_grad():
        return float(from_pretrained(base)(x, y)[1]), float(apply_adapter(from_pretrained(base), adapter)(x, y)[1])


@pytest.mark.corpora
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_lora_adapts_the_builtin_model_to_text_it_never_saw(corpora_dir, tmp_path):
    """The built-in model was trained on the corpora less the last 1 % of each file (its val split). LoRA
    on the first 54 KB of the last 60 KB of sotu.txt (the most recent State of the Union addresses) lowers the
    loss on the following 6 KB, held out by prepare's val tail, below the base model's own."""
    text = tmp_path / "sotu_tail.txt"
    text.write_text((corpora_dir / "sotu.txt").read_text(encoding="utf-8")[-60_000:], encoding="utf-8")
    base, tuned = heldout_loss_drop("builtin", text, tmp_path / "ft", "--max-steps", "20", "--eval-interval", "20",
                                    "--lr", "5e-3", "--lora-r", "8", "--lora-alpha", "16", "--warmup-steps", "2", "--threads", "2")  # fmt: skip
    assert tuned < base - 0.1, (base, tuned)  # measured: 5.02 -> 4.75


def test_generate_with_adapter_equals_peft_greedy(tiny_hf_dir, tmp_path, capsys):
    from gpt2kit.tokenizer import Tokenizer

    adapter = peft_adapter(tiny_hf_dir, tmp_path / "ad")
    tok = Tokenizer()
    prompt = "The quick brown fox"
    ids = torch.tensor([tok.encode_ordinary(prompt)])
    with torch.no_grad():
        out = adapter.generate(input_ids=ids, max_new_tokens=12, do_sample=False, min_new_tokens=12, pad_token_id=0)
    want = tok.decode(out[0, ids.shape[1] :].tolist())
    flags = ["--temperature", "0", "--max-new-tokens", "12", "--ignore-eos", "--model", str(tiny_hf_dir)]
    assert main(["generate", prompt, *flags, "--adapter", str(tmp_path / "ad")]) == 0
    got = capsys.readouterr().out
    assert main(["generate", prompt, *flags]) == 0
    plain = capsys.readouterr().out
    assert got.strip() == want.strip() and got != plain


@torch.no_grad()
def greedy(model, ids: list[int], n: int) -> list[int]:
    """Uncached full forwards + argmax, stopping at <|endoftext|>: independent of the engine."""
    out = []
    for _ in range(n):
        out_ = model(torch.tensor([ids + out]))
        nxt = int((out_[0] if isinstance(out_, tuple) else out_.logits)[0, -1, :50257].argmax())
        if nxt == 50256:
            break
        out.append(nxt)
    return out


def test_serve_picks_the_adapter_named_in_model(tiny_hf_dir, tmp_path):
    import httpx

    from gpt2kit.serve.background import BackgroundServer
    from gpt2kit.serve.config import ServeConfig
    from gpt2kit.serve.models import ModelRegistry
    from gpt2kit.serve.worker import build_worker
    from gpt2kit.tokenizer import Tokenizer

    reference = peft_adapter(tiny_hf_dir, tmp_path / "ad", seed=3)
    tok = Tokenizer()
    base = from_pretrained(tiny_hf_dir)
    table = tok.token_bytes_table
    registry = ModelRegistry({name: build_worker(m, table, max_batch_size=4)
                              for name, m in (("tiny", base), ("poems", merged_copy(base, tmp_path / "ad")))})  # fmt: skip
    prompt = "The quick brown fox"
    ids = tok.encode_ordinary(prompt)
    want = {"poems": tok.decode(greedy(reference, ids, 10)), "tiny": tok.decode(greedy(hf_base(tiny_hf_dir), ids, 10))}
    assert want["poems"] != want["tiny"]
    with BackgroundServer(base, ServeConfig(port=0, model_name="tiny"), tok, worker=registry) as server:
        assert [m["id"] for m in httpx.get(server.url + "/v1/models").json()["data"]] == ["tiny", "poems"]
        for name in ("poems", "tiny", None):  # no model: the base
            body = {"prompt": prompt, "max_tokens": 10, "temperature": 0, **({"model": name} if name else {})}
            r = httpx.post(server.url + "/v1/completions", json=body, timeout=60).json()
            assert r["model"] == (name or "tiny") and r["choices"][0]["text"] == want[name or "tiny"], (name, r)
        r = httpx.post(server.url + "/v1/completions", json={"model": "nope", "prompt": "x"}, timeout=60)
        assert r.status_code == 404 and "`poems`" in r.json()["error"]["message"]


def test_adapter_flags():
    import argparse

    from gpt2kit.cli.common import adapter_specs, load_model_and_tokenizer

    specs = adapter_specs(argparse.Namespace(adapter=["poems=/x/step_1", "/y/qa-adapter"]))
    assert specs == [("poems", "/x/step_1"), ("qa-adapter", "/y/qa-adapter")]
    with pytest.raises(ConfigError, match="repeat"):
        adapter_specs(argparse.Namespace(adapter=["a=/x", "a=/y"]))
    with pytest.raises(ConfigError, match="only `gpt2kit serve`"):
        load_model_and_tokenizer(argparse.Namespace(model="builtin", device="cpu", dtype="auto", adapter=["/x", "/y"]))
