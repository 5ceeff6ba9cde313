"""How a decode step attends (model/attention_plan.py): measured once per machine and cached, forced by
GPT2KIT_ATTENTION, applied to the decode runner's inference copy only, a 16-bit model's cache then kept in
float32 for `float32` (or not, past FLOAT32_CACHE_MAX); cached decode equals the uncached forward every way."""

import json

import pytest
import torch

from conftest import bf16_in_build, causal_buildable, causal_not_buildable, gemv_buildable, tiny_gpt
from gpt2kit.errors import ConfigError
from gpt2kit.generate import Engine
from gpt2kit.generate.decode import DecodeRunner
from gpt2kit.model import attention_plan as A
from gpt2kit.model import gemv
from gpt2kit.model import kernels as K
from gpt2kit.model.kv_cache import KVCache

BF = torch.bfloat16
GEMV = gemv_buildable()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(A.ENV, raising=False)
    monkeypatch.delenv("GPT2KIT_KERNEL", raising=False)
    return tmp_path


def _tiny(dtype=BF):
    return tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=64).to(dtype)


def test_measured_once_then_cached(cache_dir):
    model = _tiny()
    c = A.plan_attention(model, 1, float32_cache=True)
    usable = [k for k, why in A.candidates(BF).items() if why is None]
    assert c.role == "attention" and set(c.us) == set(usable) and c.kind == min(c.us, key=c.us.get)
    assert not c.cached and all(t > 0 for t in c.us.values()) and not c.rejected
    table = json.loads((cache_dir / "kernels.json").read_text())[K.machine_key()]
    assert table["torch.bfloat16 | attention 4x16 | 1 rows | float32 cache"]["kind"] == c.kind
    again = A.plan_attention(model, 1, float32_cache=True)
    assert again.cached and again.kind == c.kind and again.us == c.us
    assert not A.plan_attention(model, 1, float32_cache=False).cached  # another variant: measured on its own
    assert not A.plan_attention(model, 1, float32_cache=True, remeasure=True).cached
    assert all(b.attn.compute_dtype is None and b.attn.one_query is None for b in model.transformer.h)  # left as it was


def test_a_choice_measured_on_a_busy_machine_is_not_cached(cache_dir, monkeypatch):
    from gpt2kit import machine

    monkeypatch.setattr(machine, "busy_meter", lambda path=None: lambda: 0.5)  # others took half the CPU time
    c = A.plan_attention(_tiny(), 1, float32_cache=True)
    assert len(c.us) >= 2 and not (cache_dir / "kernels.json").exists()  # measured, used, not cached


def test_a_choice_measured_before_a_candidate_existed_is_measured_again(cache_dir):
    key = "torch.bfloat16 | attention 4x16 | 1 rows | float32 cache"
    old = {"role": "attention", "rows": 1, "kind": "float32", "us": {"model": 9.0, "float32": 1.0}, "rejected": {}}
    K.write_choices({K.machine_key(): {key: old}})
    c = A.plan_attention(_tiny(), 1, float32_cache=True)
    assert not c.cached and {*c.us, *c.rejected} == set(A.CANDIDATES)
    assert A.plan_attention(_tiny(), 1, float32_cache=True).cached


@GEMV
def test_a_cached_choice_is_measured_again_when_what_runs_here_changed(cache_dir, monkeypatch):
    key = "torch.float32 | attention 4x16 | 1 rows | float32 cache"
    off = {"gemv": "turned off (GPT2KIT_GEMV=0)", "float32": "the model is float32 already"}
    K.write_choices(
        {K.machine_key(): {key: {"role": "attention", "rows": 1, "kind": "model", "us": {"model": 5.0}, "rejected": off}}}
    )
    assert not A.plan_attention(_tiny(torch.float32), 1, True).cached  # gemv could not run then; it can now
    K.write_choices({K.machine_key(): {key: {"role": "attention", "rows": 1, "kind": "gemv", "us": {"model": 9.0, "gemv": 1.0},
                                            "rejected": {"float32": "the model is float32 already"}}}})  # fmt: skip
    monkeypatch.setenv(gemv.SWITCH, "0")
    gemv._build.cache_clear()
    try:
        c = A.plan_attention(_tiny(torch.float32), 1, True)  # the cached kind cannot run now
        assert not c.cached and c.kind == "model" and c.rejected["gemv"] == "turned off (GPT2KIT_GEMV=0)"
    finally:
        gemv._build.cache_clear()


@GEMV
def test_a_float32_model_chooses_between_sdpa_and_gemv(cache_dir):
    c = A.plan_attention(_tiny(torch.float32), 1, True)
    assert set(c.us) == {"model", "gemv"} and c.kind == min(c.us, key=c.us.get)
    assert c.rejected == {"float32": "the model is float32 already"}


def test_a_candidate_whose_output_is_wrong_is_rejected(cache_dir, monkeypatch):
    monkeypatch.setattr(gemv, "attend", lambda q, k, v, bias=None: torch.zeros_like(q))
    c = A.plan_attention(_tiny(torch.float32), 1, True)
    assert c.kind == "model" and "gemv" not in c.us
    if gemv.not_buildable() is None:
        assert c.rejected["gemv"] == "its output differs from float64 SDPA's over 64 keys"


def test_a_forced_choice_and_what_cannot_be_forced(cache_dir, monkeypatch):
    monkeypatch.setenv(A.ENV, "float32")
    assert A.plan_attention(_tiny(), 1, True) == K.Choice("attention", 1, "float32")
    assert not (cache_dir / "kernels.json").exists()  # nothing measured
    with pytest.raises(ConfigError, match=r"^GPT2KIT_ATTENTION='float32' does not run here \(the model is float32 already\)"):
        A.plan_attention(_tiny(torch.float32), 1, True)
    monkeypatch.setenv(A.ENV, "gemv")
    with pytest.raises(ConfigError, match=r"^GPT2KIT_ATTENTION='gemv' does not run here \(gemv.c attends in float32 and bf16"):
        A.plan_attention(_tiny(torch.float16), 1, True)
    monkeypatch.setenv(A.ENV, "fast")
    wrong = r"^GPT2KIT_ATTENTION='fast' is not an attention kind; use one of \['model', 'float32', 'gemv'\]\.$"
    with pytest.raises(ConfigError, match=wrong):
        A.plan_attention(_tiny(), 1, True)


KINDS = [("model", True), ("float32", True), ("float32", False), pytest.param("gemv", True, marks=GEMV)]


@pytest.mark.parametrize("kind, float32_cache", KINDS)
def test_the_runner_applies_the_choice_to_its_copy_only(cache_dir, monkeypatch, kind, float32_cache):
    monkeypatch.setenv(A.ENV, kind)
    if not float32_cache:  # a cache too large to hold in float32 stays in bf16; attention converts what it reads
        monkeypatch.setattr(A, "FLOAT32_CACHE_MAX", A.cache_bytes(_tiny(), 1, 64, torch.float32) - 1)
    model = _tiny()
    runner = DecodeRunner(model, "auto", max_len=64)
    assert runner.attention.kind == kind and all(b.attn.compute_dtype is None for b in model.transformer.h)
    want = torch.float32 if kind == "float32" else None
    assert all(b.attn.compute_dtype == want for b in runner.model.transformer.h)
    assert all(b.attn.one_query is (gemv.attend if kind == "gemv" else None) for b in runner.model.transformer.h)
    assert runner.cache_dtype == (torch.float32 if kind == "float32" and float32_cache else BF)
    engine = Engine(model, max_batch=1, max_len=64)
    assert engine.cache.kv.dtype == runner.cache_dtype
    assert DecodeRunner(model, "model").attention is None and DecodeRunner(model, "model").cache_dtype == BF


@pytest.mark.parametrize("kind, float32_cache", KINDS)
def test_cached_decode_equals_the_uncached_forward(cache_dir, monkeypatch, kind, float32_cache):
    """Prefill and one-token steps through the runner (its cache in its dtype) against the inference copy's own
    forward over the whole sequence without a cache, and both against the float32 model within bf16's error."""
    monkeypatch.setenv(A.ENV, kind)
    if not float32_cache:
        monkeypatch.setattr(A, "FLOAT32_CACHE_MAX", 0)
    model = _tiny()
    runner = DecodeRunner(model, "auto", max_len=64)
    seq = torch.randint(0, 50257, (1, 24), generator=torch.Generator().manual_seed(3))
    cache = KVCache(model.config, 1, 64, dtype=runner.cache_dtype)
    with torch.inference_mode():
        logits = [runner.prefill(seq[:, :8], cache, None)]
        logits += [runner.decode(seq[:, t : t + 1], cache, None) for t in range(8, 24)]
        full = runner.model.lm_head(runner.model.hidden_states(seq))[0, 7:]  # (17, V): the same modules, no cache
        ref = _tiny(torch.float32)(seq)[0][0, 7:]  # (17, V)
    got = torch.stack([lg[0] for lg in logits])  # (17, V)
    assert got.dtype == BF
    torch.testing.assert_close(got.float(), full.float(), atol=0.05, rtol=0.02)
    assert (got.float() - ref).abs().max() < 0.05 * ref.abs().max()


@GEMV
@pytest.mark.parametrize("dtype", [torch.float32, BF])
def test_gemv_attention_decodes_a_padded_batch_as_each_row_alone(cache_dir, monkeypatch, dtype):
    """Two rows, one left-padded (its steps then attend under the additive mask), through gemv.c's attention,
    against each row alone, unpadded, through the plain model's uncached forward."""
    monkeypatch.setenv(A.ENV, "gemv")
    if dtype == BF and causal_not_buildable() is None:  # and the aligned prefill through causal.c, where it builds
        monkeypatch.setenv(A.CAUSAL_ENV, "gemv")
    model = _tiny(dtype)
    runner = DecodeRunner(model, "auto", batch=2, max_len=64)
    assert all(b.attn.one_query is gemv.attend for b in runner.model.transformer.h)
    seq = torch.randint(0, 50257, (2, 20), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[0, :3] = 0  # row 0: a 5-token prompt, left-padded to 8
    cache = KVCache(model.config, 2, 64, dtype=runner.cache_dtype)
    with torch.inference_mode():
        logits = [runner.prefill(seq[:, :8], cache, mask)]
        logits += [runner.decode(seq[:, t : t + 1], cache, None) for t in range(8, 20)]
        for row, start in ((0, 3), (1, 0)):
            ref = model(seq[row : row + 1, start:])[0][0, 7 - start :].float()  # (13, V)
            got = torch.stack([lg[row] for lg in logits]).float()  # (13, V)
            # bf16: within two bf16 steps of logits below 1 (a padded key seen moves row 0 by three)
            tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.008, rtol=0.0)
            torch.testing.assert_close(got, ref, **tol)


# ---- many queries: prefill and scoring (plan_causal) -------------------------------------------------------
needs_causal = causal_buildable()  # the CPU's flags and the switch, never the build's own result


@pytest.fixture
def causal_env(cache_dir, monkeypatch):
    monkeypatch.delenv(A.CAUSAL_ENV, raising=False)
    return cache_dir


@needs_causal
def test_many_queries_are_measured_once_then_cached(causal_env):
    model = _tiny()
    c = A.plan_causal(model)
    assert c.role == "causal attention" and set(c.us) == {"model", "gemv"} and c.kind == min(c.us, key=c.us.get)
    table = json.loads((causal_env / "kernels.json").read_text())[K.machine_key()]
    assert table["torch.bfloat16 | causal attention 4x16"]["kind"] == c.kind
    assert A.plan_causal(model).cached and not A.plan_causal(model, remeasure=True).cached
    assert all(b.attn.many_query is None for b in model.transformer.h)  # left as it was


def test_a_float32_model_has_one_candidate_and_measures_nothing(causal_env):
    c = A.plan_causal(_tiny(torch.float32))
    assert c.kind == "model" and not c.us and c.rejected == {"gemv": "causal.c runs bf16 only, not torch.float32"}
    assert not (causal_env / "kernels.json").exists()


def test_many_queries_forced_and_what_cannot_be_forced(causal_env, monkeypatch):
    monkeypatch.setenv(A.CAUSAL_ENV, "model")
    assert A.plan_causal(_tiny()) == K.Choice("causal attention", 1, "model")
    monkeypatch.setenv(A.CAUSAL_ENV, "gemv")
    with pytest.raises(ConfigError, match=r"^GPT2KIT_CAUSAL_ATTENTION='gemv' does not run here \(causal.c runs bf16 only"):
        A.plan_causal(_tiny(torch.float32))
    monkeypatch.setenv(A.CAUSAL_ENV, "float32")
    with pytest.raises(ConfigError, match=r"is not an attention kind; use one of \['model', 'gemv'\]\.$"):
        A.plan_causal(_tiny())


@needs_causal
def test_many_queries_with_a_wrong_output_are_rejected(causal_env, monkeypatch):
    monkeypatch.setattr(gemv, "causal", lambda q, k, v: torch.zeros_like(q))
    c = A.plan_causal(_tiny())
    assert c.kind == "model" and c.rejected == {"gemv": "its output differs from float64 SDPA's over 64 queries"}


def test_many_queries_run_the_kernel_in_inference_only():
    """The kernel stands in for plain causal SDPA without a gradient; training, recorded maps and a padded
    batch's mask run SDPA."""
    model = _tiny(torch.float32)
    calls = []
    for b in model.transformer.h:
        b.attn.many_query = lambda q, k, v: calls.append(q.shape) or torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(0))
    model.train()
    model(x)[0].sum().backward()
    assert calls == []
    model.eval()
    with torch.inference_mode():
        model(x)
        model(x[:, :1])  # one query: not this kernel's
    assert calls == [(2, 4, 9, 16)] * 2


@needs_causal
@pytest.mark.parametrize("causal", ["model", "gemv"])
def test_prefill_through_either_kind_equals_the_uncached_forward(causal_env, monkeypatch, causal):
    """A 40-token prompt (more than one tile of 32 queries) into the runner's cache, then decode steps: against
    the float32 model, within bf16's error; the copy's modules hold the kernel, the model's do not."""
    monkeypatch.setenv(A.CAUSAL_ENV, causal)
    monkeypatch.setenv(A.ENV, "model")
    model = _tiny()
    runner = DecodeRunner(model, "auto", max_len=64)
    assert all(b.attn.many_query is (gemv.causal if causal == "gemv" else None) for b in runner.model.transformer.h)
    assert all(b.attn.many_query is None for b in model.transformer.h)
    seq = torch.randint(0, 50257, (1, 48), generator=torch.Generator().manual_seed(7))
    cache = KVCache(model.config, 1, 64, dtype=runner.cache_dtype)
    with torch.inference_mode():
        logits = [runner.prefill(seq[:, :40], cache, None)]
        logits += [runner.decode(seq[:, t : t + 1], cache, None) for t in range(40, 48)]
        ref = _tiny(torch.float32)(seq)[0][0, 39:]  # (9, V)
    got = torch.stack([lg[0] for lg in logits]).float()
    assert (got - ref).abs().max() < 0.05 * ref.abs().max()


@GEMV
@pytest.mark.parametrize("dtype", [torch.float32, BF])
def test_gemv_decode_steps_write_the_cache_in_the_kernel_and_make_no_views(cache_dir, monkeypatch, dtype):
    """With `gemv` chosen, an aligned one-token step hands c_attn's output and the layer's cache to attend.c, which
    writes the new column itself: the cache's per-step views (KVCache.update) are never made. The logits are
    the ones test_cached_decode_equals_the_uncached_forward checks."""
    if dtype == BF and not bf16_in_build(""):
        pytest.skip("no AVX-512 BF16")
    monkeypatch.setenv(A.ENV, "gemv")
    monkeypatch.setenv("GPT2KIT_STEP_GRAPH", "0")  # every step in Python, where these calls are seen (not replayed)
    model = _tiny(dtype)
    runner = DecodeRunner(model, "auto", max_len=64)
    cache = KVCache(model.config, 1, 64, dtype=runner.cache_dtype)
    seq = torch.randint(0, 50257, (1, 12), generator=torch.Generator().manual_seed(9))
    steps, updates = [], []
    real_step, real_update = gemv.attend_step, KVCache.update
    monkeypatch.setattr(gemv, "attend_step", lambda *a: steps.append(a[2]) or real_step(*a))
    monkeypatch.setattr(KVCache, "update", lambda self, *a: updates.append(a[0]) or real_update(self, *a))
    for b in runner.model.transformer.h:
        A.apply(b.attn, "gemv")  # the patched function
    with torch.inference_mode():
        runner.prefill(seq[:, :8], cache, None)
        assert updates == [0, 1] and not steps  # the prompt: the cache's own write
        logits = [runner.decode(seq[:, t : t + 1], cache, None) for t in range(8, 12)]
        ref = model(seq)[0][0, 8:]  # (4, V)
    assert updates == [0, 1] and steps == [9, 9, 10, 10, 11, 11, 12, 12]
    tol = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.05, rtol=0.02)
    torch.testing.assert_close(torch.stack([lg[0] for lg in logits]).float(), ref.float(), **tol)
