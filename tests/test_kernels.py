"""Linear kernels and their choice by measurement: every kernel this machine runs against the float32
`F.linear` reference, the inference copy against the model's own forward, the cache and the override."""

import json
import re

import pytest
import torch
import torch.nn.functional as F
import transformers

import gpt2kit
from conftest import tiny_gpt
from gpt2kit.errors import ConfigError
from gpt2kit.generate.decode import DecodeRunner
from gpt2kit.model import kernel_timing as KT
from gpt2kit.model import kernels as K
from gpt2kit.model import linear as L
from gpt2kit.model.gpt import record_attention
from gpt2kit.model.kernels import KernelLinear
from gpt2kit.model.kv_cache import KVCache

CPU = torch.device("cpu")
RUNNABLE = [k for k, c in L.KERNELS.items() if c.available(CPU, torch.float32)]
EXACT_RUNNABLE = [k for k in RUNNABLE if L.KERNELS[k].exact]


@pytest.fixture(scope="module")
def tiny():
    return tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=64)


@pytest.mark.parametrize("kind", RUNNABLE)
@pytest.mark.parametrize("rows", [1, 3, 8, 40])
def test_every_runnable_kernel_matches_the_fp32_reference(kind, rows):
    g = torch.Generator().manual_seed(rows)
    w, b, x = torch.randn(96, 64, generator=g), torch.randn(96, generator=g), torch.randn(rows, 64, generator=g)
    ref = F.linear(x, w, b)
    y = L.make_kernel(kind, w, b)(x)
    tol = 1e-4 if L.KERNELS[kind].exact else 0.03  # bf16 / int8 weights: ~3 significant digits
    assert y.shape == ref.shape and y.dtype == x.dtype
    assert (y - ref).abs().max().item() <= tol * ref.abs().max().item()
    # the bias is really added: the same product without it is far from the result
    assert (L.make_kernel(kind, w, None)(x) + b - y).abs().max().item() <= tol * ref.abs().max().item()


def test_kernel_linear_routes_rows_and_keeps_shapes():
    lin = torch.nn.Linear(64, 32)
    kl = KernelLinear(lin, "mkl", "linear", rows=4)
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(kl(x), lin(x), atol=1e-5, rtol=1e-5)
    assert kl.small is not kl.large and isinstance(kl.small, L._Mkl) and isinstance(kl.large, L._Linear)


@pytest.mark.parametrize("kind", EXACT_RUNNABLE)
def test_inference_copy_equals_the_model_prefill_and_decode(tiny, kind, monkeypatch):
    """Every exact kernel, forced, through the engine's runner: cached decode == the uncached forward."""
    monkeypatch.setenv("GPT2KIT_KERNEL", kind)
    runner = DecodeRunner(tiny, "auto", batch=2)
    assert set(K.kernels_in_use(runner.model).values()) == {(kind, kind)}
    seq = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(1))
    cache = KVCache(tiny.config, 2, 64)
    with torch.inference_mode():
        steps = [runner.prefill(seq[:, :6], cache, None)]
        steps += [runner.decode(seq[:, t : t + 1], cache, None) for t in range(6, 16)]
        full, _ = tiny(seq)
    for i, lg in enumerate(steps):
        torch.testing.assert_close(lg, full[:, 5 + i], atol=2e-5, rtol=1e-5)


def test_inference_copy_shares_the_model_and_leaves_it_alone(tiny):
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    copy = K.inference_copy(tiny, 1, "auto")
    assert copy is not tiny and copy.transformer.wte.weight is tiny.transformer.wte.weight
    assert all(isinstance(m, torch.nn.Linear) for m in (tiny.lm_head, tiny.transformer.h[0].mlp.c_fc))
    assert isinstance(copy.lm_head, KernelLinear) and isinstance(copy.transformer.h[1].attn.c_attn, KernelLinear)
    assert all(torch.equal(before[k], v) for k, v in tiny.state_dict().items())
    assert K.inference_copy(tiny, 1, "model") is tiny


def test_choices_are_measured_once_then_cached(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    first = K.plan_kernels(tiny, 1, "auto")
    assert {(c.role, c.rows) for c in first} == {(r, n) for r in K.ROLES for n in (1, K.SHORT_ROWS, K.PREFILL_ROWS)}
    assert not any(c.cached for c in first)
    for c in first:  # decode: every other kind timed, with its time over the chosen one's, round for round
        assert set(c.us) <= set(K.EXACT) and c.kind in c.us
        assert set(c.paired) == (set(c.us) - {c.kind} if c.rows == 1 else set()) and all(r > 0 for r in c.paired.values())
    store = json.loads((tmp_path / "kernels.json").read_text())
    assert list(store) == [K.machine_key()] and "torch " + torch.__version__ in K.machine_key()
    second = K.plan_kernels(tiny, 1, "auto")
    assert all(c.cached for c in second) and [c.kind for c in second] == [c.kind for c in first]
    (tmp_path / "kernels.json").write_text("{not json")  # a damaged cache is measured again, not an error
    assert not any(c.cached for c in K.plan_kernels(tiny, 1, "auto"))


def test_a_kernel_with_wrong_numbers_is_never_chosen(tiny, monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))

    class DropsBias(L._Mkl):
        def __call__(self, x):
            return torch.mm(x, self.wt)  # forgets the bias, and is "fast"

    monkeypatch.setitem(L.KERNELS, "mkl", DropsBias)
    monkeypatch.setattr(KT, "_time", lambda ks, x, gelu=False, best=None, first=None: 0.0 if isinstance(ks[0], DropsBias) else 1.0)
    # no trial call on a slice: timed on the real clock against the fake 1 us best, a call a busy machine slows past
    # 50 ms would be recorded as far slower (never chosen) before its numbers are checked
    monkeypatch.setattr(KT, "_scout", lambda *a: None)
    for c in K.plan_kernels(tiny, 1, "auto"):
        if c.role != "lm_head":  # the head has no bias: dropping nothing is not an error there
            assert c.kind != "mkl" and "differs from the float32 reference" in c.rejected["mkl"]


def test_forcing_a_kernel(tiny, monkeypatch):
    monkeypatch.setenv("GPT2KIT_KERNEL", "nonsense")
    with pytest.raises(ConfigError, match="GPT2KIT_KERNEL"):
        K.plan_kernels(tiny, 1, "auto")
    monkeypatch.setenv("GPT2KIT_KERNEL", "linear")
    assert {c.kind for c in K.plan_kernels(tiny, 1, "auto")} == {"linear"}


@pytest.mark.parametrize("weights", ["bf16", "int8"])
def test_approximate_kernels_only_when_asked(tiny, weights, monkeypatch, tmp_path):
    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    exact = K.plan_kernels(tiny, 1, "auto")
    assert all(L.KERNELS[c.kind].exact for c in exact)
    approx = [c for c in K.plan_kernels(tiny, 1, weights) if c.rows == 1]
    for c in approx:  # decode takes an approximate kernel (exact ones are not even timed), unless none runs here
        none_runs = set(K.APPROX[weights]) <= set(c.rejected)
        assert none_runs or (c.kind in K.APPROX[weights] and set(c.us) <= set(K.APPROX[weights]))


def test_trained_builtin_model_decode_equals_its_forward():
    """The shipped, trained weights (real biases and LayerNorms): the engine's cached path == the plain forward."""
    model = gpt2kit.from_pretrained("builtin").eval()
    ids = gpt2kit.Tokenizer().encode_ordinary("It is a truth universally acknowledged, that a single man")
    seq = torch.tensor([ids])
    runner = DecodeRunner(model, "auto")
    cache = KVCache(model.config, 1, 64)
    with torch.inference_mode():
        steps = [runner.prefill(seq[:, :4], cache, None)]
        steps += [runner.decode(seq[:, t : t + 1], cache, None) for t in range(4, seq.shape[1])]
        full, _ = model(seq)
    for i, lg in enumerate(steps):
        torch.testing.assert_close(lg, full[:, 3 + i], atol=1e-4, rtol=1e-5)


def test_recorded_attention_equals_transformers(tiny_hf_dir):
    model = gpt2kit.from_pretrained(tiny_hf_dir).eval()
    hf = transformers.GPT2LMHeadModel.from_pretrained(tiny_hf_dir, attn_implementation="eager").eval()
    idx = torch.randint(0, 50257, (2, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), record_attention(model) as maps:
        logits, _ = model(idx)
        ref = hf(idx, output_attentions=True)
    assert len(maps) == model.config.n_layer and all(len(m) == 1 for m in maps)
    for ours, theirs in zip(maps, ref.attentions):
        torch.testing.assert_close(ours[0], theirs, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=1e-4)
    assert all(b.attn.record is None for b in model.transformer.h)  # recording ends with the block


def test_info_kernels_shows_the_measured_choice(capsys, tmp_path, monkeypatch):
    from gpt2kit.cli.__main__ import main

    monkeypatch.setenv("GPT2KIT_CACHE_DIR", str(tmp_path))
    assert main(["info", "--kernels", "--json"]) in (0, None)
    report = json.loads(capsys.readouterr().out)
    assert report["machine"] == K.machine_key() and report["cache"] == str(tmp_path / "kernels.json")
    assert {c["role"] for c in report["choices"]} == {*K.ROLES, "attention", "causal attention"}  # a float32 model's
    causal = report["choices"][-1]  # decode attention is measured too; its many queries have one candidate, SDPA
    assert causal["role"] == "causal attention" and causal["chosen"] == "model" and not causal["us"]
    assert causal["rejected"] == {"gemv": "causal.c runs bf16 only, not torch.float32"}
    assert all(c["chosen"] in c["us"] and not c["cached"] for c in report["choices"][:-1])
    from gpt2kit.model import gemv

    why = gemv.unavailable(torch.float32)
    assert report["gemv"] == (f"not available: {why}" if why else gemv.status()) and "\n" not in report["gemv"]
    if why is None:  # built: where, and for which weights
        assert report["gemv"].startswith("built for this CPU (float32") and report["gemv"].endswith(".so")
    assert main(["info", "--kernels"]) in (0, None)
    out = capsys.readouterr().out
    assert "lm_head" in out and "(cached)" in out and f"gemv.c:     {report['gemv']}" in out
    assert report["decode_step"].startswith(("replayed in C", "runs in Python: ")) and f"decode step: {report['decode_step']}" in out
    assert report["decode_prefetch"].startswith("not chosen yet") and f"decode prefetch: {report['decode_prefetch']}" in out  # no run yet
    store = re.escape(str(tmp_path / "packed"))  # where the store is and what it holds (this run adds to it), or why not
    assert re.fullmatch(rf"({store}: \d+ weights, \d+ of \d+ MiB|off: .+)", report["packed_store"])
    assert re.search(rf"\npacked weights: ({store}: \d+ weights, \d+ of \d+ MiB|off: .+)\n", out)
    sw = report["decode_sweep"]  # the built-in model: 6 blocks of 1.77M float32 weights, a 50257 x 384 head
    budget, head_row = 2 * K.machine.largest_cache_bytes(), 384 * 4
    head_rows = min(50257, 64 * -(-budget // 4 // (64 * head_row)))  # a quarter of the pass, the blocks the rest
    assert sw == {"blocks": min(6, -(-(budget - head_rows * head_row) // (4 * 1_769_472))), "n_layer": 6, "head_rows": head_rows,
                  "vocab": 50257, "bytes": budget, "weight_bytes": 4}  # fmt: skip
    assert f"decode products timed on the first {sw['blocks']} of 6 blocks and {sw['head_rows']:,} of the head's 50,257 rows" in out
    # every role's prompts: one kind, timed at each prompt row count, the nearest the best at both
    by = {(c["role"], c["rows"]): c for c in report["choices"]}
    assert [p["role"] for p in report["prompts"]] == list(K.ROLES)
    for p in report["prompts"]:
        counts = [by[(p["role"], rows)] for rows in K.prompt_counts(1)]
        over = {str(c["rows"]): round(c["us"][p["chosen"]] / min(c["us"].values()), 3) for c in counts}
        assert json.loads(json.dumps(p["over_best"])) == over and f"{p['role']:<16} -> {p['chosen']:<12}" in out


def test_bf16_is_said_to_be_emulated_only_where_it_is(monkeypatch):
    from gpt2kit import device

    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    note = device.bf16_emulation_note(CPU, torch.bfloat16)
    assert note and "emulated" in note and "\n" not in note
    assert device.bf16_emulation_note(CPU, torch.float32) is None
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    assert device.bf16_emulation_note(CPU, torch.bfloat16) is None


def test_static_cache_decode_equals_the_eager_engine(tiny):
    """The fixed-shape decode step (every step attends all max_len columns, unwritten ones masked: the shape
    a CUDA graph needs) gives the dynamic cache's logits and tokens, left-padded batches included."""
    prompts = [torch.randint(0, 50257, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (3, 9)]
    from gpt2kit.generate import Engine, SamplingParams

    p = SamplingParams(max_new_tokens=10, temperature=0, ignore_eos=True)
    eager, static = Engine(tiny, max_batch=2, max_len=32), Engine(tiny, max_batch=2, max_len=32, static_cache=True)
    assert static.cache.static and not eager.cache.static
    assert [c.token_ids for c in static.generate(prompts, p)] == [c.token_ids for c in eager.generate(prompts, p)]
    seq = torch.tensor([prompts[1]])
    caches = [KVCache(tiny.config, 1, 32), KVCache(tiny.config, 1, 32, static=True)]
    with torch.inference_mode():
        outs = [[eager.runner.prefill(seq[:, :4], c, None)] + [eager.runner.decode(seq[:, t : t + 1], c, None) for t in range(4, 9)]
                for c in caches]  # fmt: skip
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_a_model_with_lora_layers_decodes_as_it_is_and_asks_for_a_merge_for_approximate_weights(tiny):
    from gpt2kit.model.lora import inject_lora

    tuned = tiny_gpt(n_layer=2, n_embd=64, n_head=4, n_positions=64)
    inject_lora(tuned, r=2, alpha=4)
    assert K.inference_copy(tuned, 1, "auto") is tuned
    runner = DecodeRunner(tuned, "auto")
    assert runner.model is tuned and runner.attention is None
    with pytest.raises(ConfigError, match=r"^int8 weights need the LoRA adapters merged into the model first "
                       r"\(adapter\.merged_copy, or `gpt2kit merge`\)\.$"):  # fmt: skip
        K.inference_copy(tuned, 1, "int8")
