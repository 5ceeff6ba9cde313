"""prepare -> train -> val loss falls -> sample -> resume, all through the CLI on real text; bad inputs."""

import json
import shutil

import pytest
import torch

from gpt2kit.cli.__main__ import main
from gpt2kit.train.checkpoint import list_checkpoints
from gpt2kit.train.metrics import read_metrics


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on a small, shared CI machine two OpenMP threads mostly wait on each other."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, excerpts_dir):
    root = tmp_path_factory.mktemp("e2e")
    src = root / "text"
    src.mkdir()
    for name in ("austen.txt", "shakespeare.txt"):
        shutil.copy(excerpts_dir / name, src / name)
    assert main(["prepare", str(src), "--out", str(root / "data"), "--val-tail", "0.05", "--workers", "2", "--no-progress"]) == 0
    return root / "data"


TINY = ["--model", "tiny", "--block-size", "32", "--micro-batch", "4", "--lr", "1e-2", "--warmup-steps", "5", "--log-interval", "10",
        "--eval-batches", "4", "--sample-tokens", "8", "--dropout", "0.0"]  # fmt: skip


def test_prepare_train_sample_resume(shards, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--data", str(shards), "--out-dir", str(out), "--max-steps", "40", "--eval-interval", "20", *TINY])
    assert rc == 0
    val = read_metrics(out / "metrics.jsonl", "val")
    assert [r["step"] for r in val] == [20, 40]
    train = read_metrics(out / "metrics.jsonl", "train")
    assert train[0]["loss"] > 10.0 and val[-1]["loss"] < 8.5 and val[-1]["loss"] < val[0]["loss"]  # ln(50257) = 10.8 at init
    samples = read_metrics(out / "metrics.jsonl", "sample")
    assert len(samples) == 2 and all(isinstance(s["text"], str) and s["text"] for s in samples)
    assert "sample: " in capsys.readouterr().out
    assert (out / "loss.png").stat().st_size > 1000
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [20, 40]
    meta = json.loads((out / "checkpoints" / "step_000040" / "meta.json").read_text())
    assert meta["train_config"]["max_steps"] == 40 and meta["loader"]["draws"] == 40 and meta["val_loss"] == val[-1]["loss"]

    # resume: only the out dir and the new length; everything else comes from the checkpoint
    assert main(["train", "--resume", "--out-dir", str(out), "--max-steps", "50"]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl", "val")] == [20, 40, 50]
    assert [s for s, _ in list_checkpoints(out / "checkpoints")] == [40, 50]  # keep_last 2 (+ best, here among them)

    # the checkpoint is a Hugging Face folder: gpt2kit and transformers both load it
    import transformers

    import gpt2kit

    ours = gpt2kit.from_pretrained(out / "checkpoints" / "step_000050")
    hf = transformers.GPT2LMHeadModel.from_pretrained(out / "checkpoints" / "step_000050").eval()
    ids = torch.randint(0, 50257, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).logits, atol=1e-4, rtol=1e-4)


def test_bad_inputs_are_one_line_errors(shards, tmp_path, capsys):
    def err(*argv):
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    assert "does not exist" in err("train", "--data", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "a"), *TINY)
    e = err("train", "--data", str(shards), "--out-dir", str(tmp_path / "b"), "--batch-tokens", "1000", *TINY)
    assert "batch_tokens=1,000 is not a multiple of" in e and "--batch-tokens 896 or 1,024" in e
    assert "no checkpoint" in err("train", "--resume", "--out-dir", str(tmp_path / "c"))
    assert "exceeds the model's context" in err(
        "train", "--data", str(shards), "--out-dir", str(tmp_path / "d"), *TINY, "--block-size", "512"
    )
    assert "unknown model" in err("train", "--data", str(shards), "--out-dir", str(tmp_path / "e"), "--model", "gpt5")

    # a corrupt checkpoint
    out = tmp_path / "f"
    assert main(["train", "--data", str(shards), "--out-dir", str(out), "--max-steps", "2", "--eval-interval", "2", *TINY]) == 0
    capsys.readouterr()
    step = out / "checkpoints" / "step_000002"
    (step / "optimizer.pt").write_bytes(b"not a torch file")
    assert "optimizer.pt or rng.pt is unreadable" in err("train", "--resume", "--out-dir", str(out), "--max-steps", "4")
    (step / "meta.json").write_text("{truncated")
    assert "meta.json is corrupt" in err("train", "--resume", "--out-dir", str(out))
    (step / "model.safetensors").unlink()
    assert "is incomplete: missing ['model.safetensors']" in err("train", "--resume", "--out-dir", str(out))
    shutil.rmtree(step)
    assert "no checkpoint" in err("train", "--resume", "--out-dir", str(out))
    # a shard from another tokenizer
    bad = tmp_path / "bad"
    shutil.copytree(shards, bad)
    raw = bytearray((bad / "train_000000.bin").read_bytes())
    raw[32:40] = b"otherTok"
    (bad / "train_000000.bin").write_bytes(bytes(raw))
    assert "was tokenized with 'otherTok" in err("train", "--data", str(bad), "--out-dir", str(tmp_path / "g"), *TINY)
