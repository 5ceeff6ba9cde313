"""The lm-eval adapter: lm-eval drives our model and gets HFLM's numbers on the same weights."""

from __future__ import annotations

import pytest
import torch

import gpt2kit
from conftest import tiny_gpt

pytest.importorskip("lm_eval")
pytest.importorskip("accelerate")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return gpt2kit.save_pretrained(tiny_gpt(2, n_layer=2, n_embd=64, n_head=4, n_positions=64), tmp_path_factory.mktemp("adapter_tiny"))


def _instances(kind, args_list):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args_list)]


def test_registered_and_matches_hflm(folder, excerpts_dir):
    from lm_eval.api.registry import get_model
    from lm_eval.models.huggingface import HFLM

    from gpt2kit.eval.lm_eval_adapter import register

    cls = register()
    assert get_model("gpt2kit") is cls
    ours = cls.create_from_arg_string(f"pretrained={folder}", {"batch_size": 3, "device": "cpu"})
    ref = HFLM(pretrained=str(folder), tokenizer=str(folder), device="cpu", batch_size=3)
    pairs = [("The keeper touched the", " key"), ("Tom handed her the ", "letter"), ("", "Hello world"), ("A b", " harpsichord")]
    got = ours.loglikelihood(_instances("loglikelihood", pairs), disable_tqdm=True)
    want = ref.loglikelihood(_instances("loglikelihood", pairs), disable_tqdm=True)
    assert [g for _, g in got] == [g for _, g in want]
    assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in want], rel=1e-4, abs=1e-4)
    text = (excerpts_dir / "milton.txt").read_text(encoding="utf-8")[:1500]  # several 64-token windows
    docs = [(text,), (text[:100],)]
    got_r = ours.loglikelihood_rolling(_instances("loglikelihood_rolling", docs), disable_tqdm=True)
    want_r = ref.loglikelihood_rolling(_instances("loglikelihood_rolling", docs), disable_tqdm=True)
    assert got_r == pytest.approx(want_r, rel=1e-4)


def test_generate_until_is_greedy_and_stops(folder):
    from gpt2kit.eval.lm_eval_adapter import register

    lm = register()(pretrained=str(folder), device="cpu")
    ref = transformers.GPT2LMHeadModel.from_pretrained(folder).eval()
    tok = gpt2kit.Tokenizer()
    prompt = "Once upon a time"
    ids = torch.tensor([tok.encode_ordinary(prompt)])
    want_ids = ref.generate(ids, do_sample=False, max_new_tokens=12, pad_token_id=50256)[0, ids.shape[1] :].tolist()
    out = lm.generate_until(
        _instances("generate_until", [(prompt, {"until": ["\u2603"], "max_gen_toks": 12})]), disable_tqdm=True
    )
    assert out == [tok.decode(want_ids)]
    stop = tok.decode(want_ids[3:4])
    cut = lm.generate_until(_instances("generate_until", [(prompt, {"until": [stop], "max_gen_toks": 12})]), disable_tqdm=True)[0]
    assert stop not in cut and tok.decode(want_ids).startswith(cut)


def test_misspelt_model_args_are_an_error(folder):
    from gpt2kit.errors import ConfigError
    from gpt2kit.eval.lm_eval_adapter import register

    cls = register()
    with pytest.raises(ConfigError, match="unknown gpt2kit model_args dtpye: .*pretrained, device, dtype"):
        cls.create_from_arg_string(f"pretrained={folder},dtpye=bfloat16", {"batch_size": 2, "max_batch_size": None, "device": "cpu"})
    # what lm-eval itself passes to every model (batch_size, max_batch_size, device) is accepted
    lm = cls.create_from_arg_string(f"pretrained={folder},dtype=float32", {"batch_size": 2, "max_batch_size": 64, "device": "cpu"})
    assert lm.batch_size == 2


LOCAL_LAMBADA = """task: gpt2kit_local_lambada
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


@pytest.mark.slow
def test_run_entry_point_drives_lm_evals_own_cli(folder, tmp_path):
    """`python -m gpt2kit.eval.lm_eval_adapter` = lm-eval's CLI with --model gpt2kit: a LAMBADA-format task
    read from the local fixture (lambada_openai's prompt and target), scored end to end; its numbers equal
    `gpt2kit eval lambada`'s lm-eval protocol on the same weights."""
    import glob
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from gpt2kit.cli.__main__ import main

    data = Path(__file__).parent / "fixtures" / "eval" / "lambada_test.jsonl"
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "local.yaml").write_text(LOCAL_LAMBADA.format(data=data))
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "gpt2kit.eval.lm_eval_adapter", "--model", "gpt2kit", "--model_args",
                          f"pretrained={folder}", "--tasks", "gpt2kit_local_lambada", "--include_path", str(tmp_path / "tasks"),
                          "--device", "cpu", "--batch_size", "2", "--output_path", str(tmp_path / "out")],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    [result_file] = glob.glob(str(tmp_path / "out" / "*" / "results_*.json"))
    got = json.loads(Path(result_file).read_text())["results"]["gpt2kit_local_lambada"]
    assert got["sample_len"] == 6
    assert main(["eval", "lambada", "--model", str(folder), "--data", str(data), "--no-progress", "-o", str(tmp_path / "ours.json")]) == 0
    ours = {r["metric"]: r["value"] for r in json.loads((tmp_path / "ours.json").read_text()) if r["protocol"] == "lm-eval"}
    assert got["acc,none"] == ours["acc"] and got["perplexity,none"] == pytest.approx(ours["ppl"], rel=1e-4)
