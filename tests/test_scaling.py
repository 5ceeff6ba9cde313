"""The scaling lab: the fit recovers known laws, the ladder follows its rules, cpu-tiny runs end to end, and a
second run skips finished sizes and resumes an interrupted one exactly."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from gpt2kit.cli.__main__ import main
from gpt2kit.errors import ConfigError, InputError
from gpt2kit.scaling import LADDER_PRESETS, bootstrap, fit_power_law, parse_size, plan_ladder, run_ladder
from gpt2kit.scaling.ladder import kaplan_lr, non_embedding_params
from gpt2kit.train.checkpoint import latest_checkpoint, read_meta

# ---- fit ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("E, A, alpha", [(1.69, 406.4, 0.34), (3.2, 25.0, 0.2), (5.0, 60.0, 0.5)])
def test_fit_recovers_known_law_from_noisy_losses(E, A, alpha):
    N = np.geomspace(3e3, 1.2e5, 7)
    rng = np.random.default_rng(0)
    clean = E + A * N**-alpha
    exact = fit_power_law(N, clean)
    assert exact.E == pytest.approx(E, abs=1e-6) and exact.alpha == pytest.approx(alpha, rel=1e-6)
    assert exact.A == pytest.approx(A, rel=1e-5) and exact.r2 == pytest.approx(1.0)
    noisy = clean + rng.normal(0, 0.003, len(N))
    f = fit_power_law(N, noisy)
    assert f.alpha == pytest.approx(alpha, rel=0.1) and f.E == pytest.approx(E, abs=0.1) and f.r2 > 0.999
    boot = bootstrap(N, noisy, n_boot=200, level=0.9, seed=1)
    lo, hi = boot.interval("alpha")
    assert lo <= alpha <= hi and hi - lo < 0.5 * alpha  # covers the truth, and says something
    x_new = 2.5e5  # one size past the ladder, as --predict asks
    lo, hi = boot.prediction_interval(x_new)
    assert lo <= E + A * x_new**-alpha <= hi


def test_fit_without_E_is_kaplans_power_law():
    N = np.geomspace(1e3, 1e6, 6)
    L = (8.8e13 / N) ** 0.076
    f = fit_power_law(N, L, fix_E=0.0)
    assert f.E == 0.0 and f.alpha == pytest.approx(0.076, rel=1e-6) and f.A == pytest.approx(8.8e13**0.076, rel=1e-5)


def test_fit_keeps_E_nonnegative_and_refuses_too_few_points():
    N = np.geomspace(1e3, 1e5, 5)
    f = fit_power_law(N, 40.0 * N**-0.3)  # E = 0 exactly; noise must not push E below zero
    assert f.E >= 0 and f.alpha == pytest.approx(0.3, rel=1e-3)
    with pytest.raises(InputError, match="distinct positive x"):
        fit_power_law([1e3, 1e3, 2e3], [5.0, 5.0, 4.0])
    with pytest.raises(InputError):
        fit_power_law([1e3, 2e3, 4e3], [5.0, float("nan"), 4.0])


# ---- ladder rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["cpu-tiny", "cpu", pytest.param("gpu", id="gpu-preset-plan")])
def test_presets_are_ladders(preset):
    rungs = plan_ladder(LADDER_PRESETS[preset])
    cfg = LADDER_PRESETS[preset]
    assert len(rungs) >= 6 and rungs[-1].n_params / rungs[0].n_params >= 30
    micro = cfg.micro_batch * cfg.block_size
    for r in rungs:
        m = r.model
        assert m.vocab_size == 50257 and m.n_positions == cfg.block_size  # exact GPT-2; embeddings counted apart
        assert r.n_params + r.n_embedding == m.num_params() and r.n_embedding == 50257 * m.n_embd + m.n_positions * m.n_embd
        target = cfg.tokens or cfg.tokens_per_param * r.n_params
        k = min(max(1, round(math.sqrt(cfg.batch_scale * target) / micro)), cfg.max_batch_tokens // micro)
        assert r.batch_tokens == max(1, k) * micro  # sqrt(batch_scale x D), a whole number of micro-batches
        assert r.tokens == r.steps * r.batch_tokens and r.lr == pytest.approx(cfg.lr_scale * kaplan_lr(r.n_params))
        if not cfg.tokens:  # D proportional to N (up to rounding to whole batches)
            assert r.tokens / r.n_params == pytest.approx(cfg.tokens_per_param, rel=0.05)
    assert [r.lr for r in rungs] == sorted((r.lr for r in rungs), reverse=True)  # bigger models, smaller lr


def test_cpu_preset_fits_its_time_budget():
    """The cpu preset's budget: ~4.8M tokens. Measured on the 2-core boxes, an idle step of these widths runs
    at >= 2,500 tokens/s, so training takes <= 32 min and the evals a few more (docs/scaling.md). Depth grows
    with width (no 1-layer sizes) and the steps grow with the budget, never back down."""
    rungs = plan_ladder(LADDER_PRESETS["cpu"])
    assert sum(r.tokens for r in rungs) <= 4.8e6
    assert min(r.model.n_layer for r in rungs) >= 2
    assert [r.model.n_layer for r in rungs] == sorted(r.model.n_layer for r in rungs)
    assert [r.steps for r in rungs] == sorted(r.steps for r in rungs)


def test_non_embedding_params_match_the_model():
    from gpt2kit.model import GPT

    rung = plan_ladder(LADDER_PRESETS["cpu-tiny"])[-1]
    model = GPT(rung.model)
    embed = {"transformer.wte.weight", "transformer.wpe.weight"}
    counted = sum(p.numel() for n, p in model.named_parameters() if n not in embed and n != "lm_head.weight")
    assert non_embedding_params(rung.model) == counted == rung.n_params


def test_sizes_and_budgets_are_validated():
    assert parse_size("2x32", 16) == (2, 32, 2) and parse_size("3x48x4") == (3, 48, 4) and parse_size("1x24", 16) == (1, 24, 1)
    with pytest.raises(ConfigError, match="LAYERSxWIDTH"):
        parse_size("2-32")
    with pytest.raises(ConfigError, match="not divisible"):
        LADDER_PRESETS["cpu"].replace(sizes=((1, 30, 4), (2, 32, 2), (2, 48, 3)))
    with pytest.raises(ConfigError, match="at least 3 sizes"):
        LADDER_PRESETS["cpu"].replace(sizes=((1, 32, 2), (2, 32, 2)))
    with pytest.raises(ConfigError, match="token budget"):
        LADDER_PRESETS["cpu"].replace(tokens_per_param=0.0)


# ---- end to end --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shards(tmp_path_factory, excerpts_dir):
    out = tmp_path_factory.mktemp("scaling") / "data"
    assert main(["prepare", str(excerpts_dir), "--out", str(out), "--val-tail", "0.05", "--workers", "1", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def tiny_ladder(shards, tmp_path_factory):
    """The cpu-tiny ladder with --predict, through the CLI, on one thread; -> (out folder, progress events)."""
    out = tmp_path_factory.mktemp("scaling") / "ladder"
    n = torch.get_num_threads()
    try:
        rc = main(["scaling", "--data", str(shards), "--out", str(out), "--preset", "cpu-tiny", "--predict", "--threads", "1",
                   "--n-boot", "200"])  # fmt: skip
    finally:
        torch.set_num_threads(n)
    assert rc == 0
    return out


def test_cpu_tiny_ladder_end_to_end(tiny_ladder, capsys):
    out = tiny_ladder
    report = json.loads((out / "scaling.json").read_text())
    rungs = plan_ladder(LADDER_PRESETS["cpu-tiny"])
    assert [r["name"] for r in report["runs"]] == [r.name for r in rungs]
    for run, rung in zip(report["runs"], rungs):
        # trained by `gpt2kit train`: its checkpoint holds the planned config, step and tokens
        meta = read_meta(latest_checkpoint(out / rung.name / "checkpoints"))
        assert meta["step"] == rung.steps and meta["tokens"] == rung.tokens == run["tokens_trained"]
        assert meta["train_config"]["lr"] == rung.lr and meta["train_config"]["batch_tokens"] == rung.batch_tokens
        assert 5.0 < run["val_loss"] < math.log(50257) + 0.5 and run["val_tokens"] > 4000
    losses = [r["val_loss"] for r in report["runs"]]
    assert losses[-1] < losses[0] - 0.5  # 43x the parameters, same tokens: clearly better
    fit = report["fits"]["L(N)"]
    assert fit["n"] == 6 and 0 < fit["alpha"] < 3 and fit["alpha_interval"][0] <= fit["alpha"] <= fit["alpha_interval"][1]
    pred = report["prediction"]
    assert pred["fit_on"] == [r.name for r in rungs[:-1]] and pred["made_after_training"] == []
    (p,) = pred["predictions"]
    assert p["name"] == rungs[-1].name and p["measured"] == losses[-1]
    assert p["interval"][0] < p["predicted"] < p["interval"][1] and p["inside_interval"] == (
        p["interval"][0] <= p["measured"] <= p["interval"][1]
    )
    md = (out / "scaling.md").read_text()
    assert all(f"| {r.name} |" in md for r in rungs) and "Kaplan" in md and "Why they differ" in md
    assert (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (out / "scaling.png").stat().st_size > 20_000


def test_rerun_skips_finished_sizes(tiny_ladder, shards, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(tiny_ladder, out)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if "checkpoints" in p.parts or p.name == "final_eval.json"}
    events = []
    cfg = LADDER_PRESETS["cpu-tiny"].replace(threads=1)
    report = run_ladder(cfg, shards, out, predict=1, n_boot=50, on_progress=events.append)
    assert not [e for e in events if e.phase in ("train", "eval")]  # nothing trained or measured again
    assert [e.name for e in events if e.phase == "skip"] == [r.name for r in plan_ladder(cfg)]
    assert {p: p.stat().st_mtime_ns for p in before} == before
    old = json.loads((tiny_ladder / "scaling.json").read_text())
    assert [r["val_loss"] for r in report["runs"]] == [r["val_loss"] for r in old["runs"]]
    assert report["prediction"]["made_at"] == old["prediction"]["made_at"]  # the prediction made before training, kept


class Interrupt(Exception):
    pass


def test_interrupted_ladder_resumes_exactly(tiny_ladder, shards, tmp_path):
    """Three sizes, the first and third already finished (copied from the full ladder); the second is stopped
    after its first checkpoint. The rerun skips the finished ones, resumes the second where it stopped, and
    ends with the same weights (so the same val loss) as the uninterrupted ladder."""
    base = LADDER_PRESETS["cpu-tiny"]
    cfg = base.replace(sizes=base.sizes[:3], checkpoints=2, threads=1)  # checkpoints at steps 16 and 32
    first, second, third = (r.name for r in plan_ladder(cfg))
    out = tmp_path / "ladder"
    for name in (first, third):
        shutil.copytree(tiny_ladder / name, out / name)

    def stop_after_checkpoint(p):
        if p.name == second and p.phase == "train" and p.step == 20:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_ladder(cfg, shards, out, on_progress=stop_after_checkpoint, n_boot=20)
    assert read_meta(latest_checkpoint(out / second / "checkpoints"))["step"] == 16
    assert not (out / second / "final_eval.json").exists()
    events = []
    report = run_ladder(cfg, shards, out, on_progress=events.append, n_boot=20)
    assert [e.name for e in events if e.phase == "skip"] == [first, third]
    assert all(0 <= e.done_flops <= e.total_flops for e in events) and events[-1].done_flops == pytest.approx(
        events[-1].total_flops
    )
    steps = [e.step for e in events if e.phase == "train"]
    assert steps == list(range(17, 33))  # resumed after step 16, not from 0
    uninterrupted = json.loads((tiny_ladder / "scaling.json").read_text())["runs"][1]
    assert report["runs"][1]["name"] == uninterrupted["name"] == second
    assert report["runs"][1]["val_loss"] == pytest.approx(uninterrupted["val_loss"], abs=1e-6)
    assert report["fits"]["L(N)"]["n"] == 3


def test_a_folder_with_another_run_is_refused(tiny_ladder, shards, tmp_path):
    out = tmp_path / "ladder"
    shutil.copytree(tiny_ladder, out)
    cfg = LADDER_PRESETS["cpu-tiny"].replace(lr_scale=1.0, threads=1)
    with pytest.raises(ConfigError, match="with lr="):
        run_ladder(cfg, shards, out, n_boot=20)


def test_cli_errors_are_one_line(shards, tmp_path, capsys):
    no_val = tmp_path / "noval"
    no_val.mkdir()
    (no_val / "meta.json").write_text(json.dumps({"train": {"tokens": 10}, "val": {"tokens": 0}}))
    assert main(["scaling", "--data", str(no_val), "--out", str(tmp_path / "o"), "--preset", "cpu-tiny"]) == 2
    assert "--val-tail" in capsys.readouterr().err
    assert main(["scaling", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--preset", "cpu-tiny"]) == 2
    assert "gpt2kit prepare" in capsys.readouterr().err
    assert (
        main(["scaling", "--data", str(shards), "--out", str(tmp_path / "o"), "--sizes", "1x16", "2x32", "2x48", "--predict"])
        == 2
    )
    assert "at least 4" in capsys.readouterr().err
    assert main(["scaling", "--data", str(shards), "--out", str(tmp_path / "o"), "--preset", "cpu", "--plan"]) == 0
    plan = capsys.readouterr().out
    assert "L5-C44-H2" in plan and "31.4x in N" in plan


def test_progress_bar_renders_runs_and_steps():
    import io

    from gpt2kit.cli.scaling import ProgressBar
    from gpt2kit.scaling import Progress

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = ProgressBar(stream)
    bar(Progress(0, 6, "L1-C16-H1", 0, 10, 0.0, 100.0, "skip"))
    bar(Progress(1, 6, "L1-C24-H1", 1, 10, 25.0, 100.0, "train"))
    bar.say("a note")
    bar(Progress(1, 6, "L1-C24-H1", 10, 10, 50.0, 100.0, "train"))
    bar.close()
    text = stream.getvalue()
    assert "size 2/6 L1-C24-H1 step 1/10" in text and "a note\n" in text
    assert "[############             ]  50% | size 2/6 L1-C24-H1 step 10/10" in text and text.endswith("\n")
    quiet = io.StringIO()  # not a terminal: no bar (the ladder's log lines say what runs)
    ProgressBar(quiet)(Progress(0, 6, "L1-C16-H1", 1, 10, 1.0, 100.0, "train"))
    assert quiet.getvalue() == ""
