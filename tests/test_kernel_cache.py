"""The kernel choice's cache (kernels.py): where it lives, what a forced kernel or use_cache=False leave in it, what
a failing file costs, and when a cached choice still stands."""

import json
import logging

from gpt2kit.model import kernels as K
from test_kernel_choice import fixed_times_fixture, model_fixture  # noqa: F401 (fixtures)


def test_cache_path_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert K.kernel_cache_path() == tmp_path / "a" / "kernels.json"
    monkeypatch.delenv("GPT2KIT_CACHE_DIR")
    assert K.kernel_cache_path() == tmp_path / "x" / "gpt2kit" / "kernels.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert K.kernel_cache_path() == tmp_path / "home" / ".cache" / "gpt2kit" / "kernels.json"


def test_nothing_is_cached_when_a_kernel_is_forced(model, fixed_times, monkeypatch, caplog):
    """A forced kernel, or use_cache=False: measured, not cached, and the note says where the choice goes."""
    fixed_times.write_text(json.dumps({K.machine_key(): {}}))
    monkeypatch.setenv("GPT2KIT_KERNEL", "onednn")
    with caplog.at_level(logging.INFO, logger="gpt2kit.kernels"):
        assert {c.kind for c in K.plan_kernels(model)} == {"onednn"}
        forced = caplog.records[-1].getMessage()
        monkeypatch.delenv("GPT2KIT_KERNEL")
        K.plan_kernels(model, use_cache=False)
        uncached = caplog.records[-1].getMessage()
        assert json.loads(fixed_times.read_text()) == {K.machine_key(): {}} and forced == uncached  # neither wrote
        K.plan_kernels(model)
        cached = caplog.records[-1].getMessage()
    assert forced == ("timing this CPU's kernels for this model (float32, auto weights, batch 1), once: later runs read the "
                      "choice from nowhere (not cached)") and cached == forced.replace("nowhere (not cached)", str(fixed_times))  # fmt: skip


def test_cache_file_read_and_write_failures(monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    assert K.read_choices() == {}
    (tmp_path / "kernels.json").write_text("[1, 2]")
    assert K.read_choices() == {}
    (tmp_path / "kernels.json").write_text('{"m": {"k": 1}}')
    assert K.read_choices() == {"m": {"k": 1}}
    K.write_choices({"b": 1, "a": {"y": 2, "x": 1}})
    text = (tmp_path / "kernels.json").read_text()
    assert text == json.dumps({"a": {"x": 1, "y": 2}, "b": 1}, indent=1, sort_keys=True)
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path / "kernels.json"))  # a file where the folder should be
    K.write_choices({"a": 1})  # no error: measured again next time


def test_a_cached_choice_stands_only_if_it_judged_every_candidate_offered_now():
    cands = (["linear", "mkl", "onednn"], {"bf16": "not available on this CPU/torch"})
    wrong = K.WRONG + " by 1e-2 (tolerance 1e-4)"
    assert K._covers({"kind": "mkl", "us": {"linear": 3.0, "mkl": 1.0}, "rejected": {"onednn": wrong}}, cands)
    assert not K._covers({"kind": "mkl", "us": {"linear": 3.0, "mkl": 1.0}, "rejected": {}}, cands)  # onednn is new: measure
    assert not K._covers({"kind": "linear", "us": {"linear": 3.0}, "rejected": {"mkl": wrong, "bf16": "not available"}}, cands)
    # onednn could not run then (unavailable, turned off) and runs now: measured, not left out for good
    assert not K._covers({"kind": "mkl", "us": {"linear": 3.0, "mkl": 1.0}, "rejected": {"onednn": "turned off"}}, cands)
    assert K._covers(
        {"kind": "linear", "us": {"linear": 3.0}}, (["linear"], {"bf16": "not available"})
    )  # unavailable: nothing to judge
    # a kernel no longer offered (e.g. int8-f32 where int8 runs) is not kept, whatever was judged
    assert not K._covers(
        {"kind": "int8-f32", "us": {"int8": 2.0, "int8-f32": 1.0, "int8-dynamic": 3.0}}, (["int8", "int8-dynamic"], {})
    )
    assert K._covers({"kind": "int8", "us": {"int8": 2.0, "int8-f32": 9.0, "int8-dynamic": 3.0}}, (["int8", "int8-dynamic"], {}))
    assert not K._covers({"role": "r", "rows": 1, "kind": "linear"}, cands)  # an entry that judged nothing
    assert K._covers({"role": "r", "rows": 1, "kind": "linear"}, ([], {"bf16": "not available"}))
