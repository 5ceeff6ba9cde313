"""Many processes on the CPU (gloo): torchrun --nproc_per_node=2 follows the loss curve of one process with
the same global batch, with DDP and with FSDP2 (fully_shard, sharded per rank, including a resume from its gathered
checkpoint)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gpt2kit.data.shards import write_shard
from gpt2kit.train.metrics import read_metrics

pytestmark = pytest.mark.slow  # three torchrun / train subprocesses: ~30-60 s on the 2-core CI box

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ARGS = [
    "--model",
    "tiny",
    "--block-size",
    "32",
    "--eval-interval",
    "4",
    "--eval-batches",
    "2",
    "--log-interval",
    "1",
    "--sample-tokens",
    "0",
    "--dropout",
    "0.0",
    "--lr",
    "3e-3",
    "--warmup-steps",
    "2",
    "--threads",
    "1",
    "--batch-tokens",
    "256",
    "--schedule",
    "constant",  # (the FSDP run stops at 4 steps and resumes to 8: its schedule must not depend on max_steps)
    "--max-minutes",
    "30",
]  # fmt: skip  (a time budget: the ranks agree on stopping through a collective)


@pytest.fixture(scope="module")
def data(tmp_path_factory, excerpts_dir):
    from gpt2kit.tokenizer import Tokenizer

    root = tmp_path_factory.mktemp("ddp-data")
    ids = Tokenizer().encode_ordinary((excerpts_dir / "kjv.txt").read_text(encoding="utf-8"))
    write_shard(root / "train_000000.bin", np.array(ids[:-2000], dtype=np.uint16))
    write_shard(root / "val_000000.bin", np.array(ids[-2000:], dtype=np.uint16))
    return root


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory):
    """Global batch 2 x 4 x 32 tokens per optimizer step: one process with B=4 and gradient accumulation 2."""
    out = tmp_path_factory.mktemp("one")
    subprocess.run([sys.executable, "-m", "gpt2kit", "train", "--data", str(data), "--out-dir", str(out), "--micro-batch", "4",
                    "--max-steps", "8", *ARGS], check=True, env=ENV, capture_output=True, timeout=600)  # fmt: skip
    return out


# Run under torchrun instead of `-m gpt2kit`: the training CLI, with wrap_model recording per rank what it made
SHARD_PROBE = """
import json, os, sys
import gpt2kit.train.distributed as D
from torch.distributed.tensor import DTensor

real = D.wrap_model
# fully_shard's own default mesh is the GPU's wherever torch sees one: wrap_model must pass a mesh of the model's device
import torch.distributed.fsdp._fully_shard._fully_shard as fsdp_module

def default_mesh(*args, **kwargs):
    raise RuntimeError("fully_shard was left to make its default mesh")

fsdp_module._init_default_mesh = default_mesh

def wrap_model(model, info, device, fsdp):
    out = real(model, info, device, fsdp)
    params = list(model.parameters())
    report = {"fsdp": fsdp, "types": [c.__name__ for c in type(out).__mro__],
              "local": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params),
              "full": sum(p.numel() for p in params), "dtensors": sum(isinstance(p, DTensor) for p in params),
              "mesh": sorted({p.device_mesh.device_type for p in params if isinstance(p, DTensor)})}
    with open(os.environ["SHARD_REPORT"] + "." + str(info.rank), "w") as f:
        json.dump(report, f)
    return out

D.wrap_model = wrap_model
from gpt2kit.cli.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def torchrun(data, out, *extra, entry=("-m", "gpt2kit"), env=ENV):
    """Two processes with B=2, accum 2: rank r takes windows [2r, 2r+2) of each global draw of 4."""
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *entry, "train",
                          "--data", str(data), "--out-dir", str(out), "--micro-batch", "2", *ARGS, *extra],
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


def assert_same_curve(a_dir, b_dir):
    a = [r["loss"] for r in read_metrics(a_dir / "metrics.jsonl", "train")]
    b = [r["loss"] for r in read_metrics(b_dir / "metrics.jsonl", "train")]
    assert len(a) == len(b) == 8 and a[-1] < a[0] - 0.5
    np.testing.assert_allclose(b, a, rtol=2e-5)
    va = [r["loss"] for r in read_metrics(a_dir / "metrics.jsonl", "val")]
    vb = [r["loss"] for r in read_metrics(b_dir / "metrics.jsonl", "val")]
    np.testing.assert_allclose(vb, va, rtol=2e-5)


def test_ddp_two_processes_match_one(data, one_process, tmp_path):
    stdout = torchrun(data, tmp_path / "ddp", "--max-steps", "8")
    assert "x2" in stdout and "2 x 32 x 2 x 2 accum" in stdout  # really two ranks, accumulation derived
    assert_same_curve(one_process, tmp_path / "ddp")


def test_fsdp_two_processes_match_one_and_resume(data, one_process, tmp_path):
    import gpt2kit

    out = tmp_path / "fsdp"
    probe = tmp_path / "probe.py"
    probe.write_text(SHARD_PROBE)
    env = {**ENV, "SHARD_REPORT": str(tmp_path / "shards")}
    torchrun(data, out, "--max-steps", "4", "--fsdp", entry=(str(probe),), env=env)
    reports = [json.loads((tmp_path / f"shards.{r}").read_text()) for r in (0, 1)]
    for r in reports:  # really FSDP2 (not DDP): an FSDPModule, DTensor parameters, each rank holding about half
        assert r["fsdp"] and "FSDPModule" in r["types"] and r["dtensors"] > 0 and r["mesh"] == ["cpu"]
        assert r["local"] < 0.6 * r["full"]
    assert reports[0]["local"] + reports[1]["local"] == reports[0]["full"]  # the two shards make the whole model
    torchrun(data, out, "--resume", "--max-steps", "8")  # optimizer state gathered at save, re-sharded at load
    assert_same_curve(one_process, out)
    gpt2kit.from_pretrained(out / "checkpoints" / "step_000008")  # a plain, full model folder
