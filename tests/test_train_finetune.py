"""Fine-tuning: prompt/completion masking on a hand-made example, and a transformers-saved model that
loads, trains, saves, and loads back into transformers."""

import json

import pytest
import torch

from gpt2kit.cli.__main__ import main
from gpt2kit.config import IGNORE_INDEX
from gpt2kit.data.sft import SFTLoader, build_example, split_pairs
from gpt2kit.errors import DataError
from gpt2kit.train.metrics import read_metrics

EOT = 50256


def test_mask_covers_exactly_the_prompt():
    x, y = build_example([10, 11, 12], [20, 21], T=16)
    assert x == [EOT, 10, 11, 12, 20, 21]
    assert y == [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 20, 21, EOT]  # x[3] (last prompt token) predicts 20


def test_long_examples_drop_prompt_from_the_left_first():
    x, y = build_example([1, 2, 3, 4, 5], [7, 8], T=5)
    assert x == [EOT, 4, 5, 7, 8] and y == [IGNORE_INDEX, IGNORE_INDEX, 7, 8, EOT]
    x, y = build_example([1, 2], [7, 8, 9, 10, 11, 12], T=4)
    assert x == [EOT, 7, 8, 9] and y == [7, 8, 9, EOT]
    with pytest.raises(DataError, match="empty completion"):
        build_example([1], [], T=8)


def test_batches_pad_with_eot_and_ignore():
    ld = SFTLoader([build_example([5], [6, 7], 6), build_example([8, 9, 10], [11], 6)], B=2, T=6, order="sequential")
    x, y = ld.next_batch()
    assert x.tolist() == [[EOT, 5, 6, 7, EOT, EOT], [EOT, 8, 9, 10, 11, EOT]]
    assert y.tolist() == [[-100, 6, 7, EOT, -100, -100], [-100, -100, -100, 11, EOT, -100]]
    # the model's loss ignores the masked targets: equal to the mean over unmasked positions only
    logits = torch.randn(2, 6, 50257)
    keep = y != IGNORE_INDEX
    want = torch.nn.functional.cross_entropy(logits[keep], y[keep])
    got = torch.nn.functional.cross_entropy(logits.view(-1, 50257), y.view(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(got, want)


def test_split_pairs_is_seeded_and_disjoint():
    pairs = [(str(i), str(i)) for i in range(20)]
    tr, va = split_pairs(pairs, 0.1, seed=1)
    assert len(va) == 2 and not set(tr) & set(va) and split_pairs(pairs, 0.1, seed=1) == (tr, va)


def test_finetune_a_transformers_model_and_load_it_back(tiny_hf_dir, tmp_path, capsys):
    import transformers

    data = tmp_path / "qa.jsonl"
    pairs = [{"prompt": f"Q: what is {a} plus {b}?\nA:", "completion": f" {a + b}"} for a in range(12) for b in range(5)]
    data.write_text("\n".join(json.dumps(p) for p in pairs) + "\n")
    out = tmp_path / "ft"
    rc = main(["finetune", "--model", str(tiny_hf_dir), "--data", str(data), "--out-dir", str(out), "--max-steps", "30",
               "--eval-interval", "15", "--block-size", "32", "--micro-batch", "8", "--lr", "3e-3", "--warmup-steps", "3",
               "--sample-tokens", "4", "--sample-prompt", "Q: what is 2 plus 2?\nA:", "--threads", "1"])  # fmt: skip
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "57 train / 3 val prompt/completion examples" in stdout and "loss on completions only" in stdout
    val = read_metrics(out / "metrics.jsonl", "val")
    assert len(val) == 2 and val[-1]["loss"] < val[0]["loss"]
    assert read_metrics(out / "metrics.jsonl", "train")[0]["loss"] > read_metrics(out / "metrics.jsonl", "train")[-1]["loss"] + 1
    final = out / "checkpoints" / "step_000030"
    hf = transformers.GPT2LMHeadModel.from_pretrained(final).eval()
    base = transformers.GPT2LMHeadModel.from_pretrained(tiny_hf_dir).eval()
    import gpt2kit

    ours = gpt2kit.from_pretrained(final)
    ids = torch.tensor([[EOT, 48, 25, 644, 318]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).logits, atol=1e-4, rtol=1e-4)
        assert not torch.allclose(hf(ids).logits, base(ids).logits, atol=1e-3)  # it did train
    assert json.loads((final / "meta.json").read_text())["data_kind"] == "prompt-completion"


def test_finetune_on_plain_text_prepares_it_with_a_val_tail(tiny_hf_dir, tmp_path, excerpts_dir, capsys):
    text = tmp_path / "milton.txt"
    text.write_text((excerpts_dir / "milton.txt").read_text(encoding="utf-8"), encoding="utf-8")
    out = tmp_path / "ft"
    argv = ["finetune", "--model", str(tiny_hf_dir), "--data", str(text), "--out-dir", str(out), "--max-steps", "6",
            "--eval-interval", "3", "--block-size", "32", "--micro-batch", "4", "--sample-tokens", "0", "--threads", "1"]  # fmt: skip
    assert main(argv) == 0
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert meta["val_tail"] == 0.05 and meta["val"]["tokens"] > 500
    assert "tokenizing" in capsys.readouterr().out
    assert main(["finetune", "--resume", "--out-dir", str(out), "--max-steps", "8"]) == 0  # reuses the prepared shards
    assert "tokenizing" not in capsys.readouterr().out
    assert len(read_metrics(out / "metrics.jsonl", "val")) == 3
