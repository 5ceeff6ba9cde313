"""What a model is and what it costs: config, exact parameter count, weight and KV-cache memory."""

from __future__ import annotations

from pathlib import Path

from gpt2kit.config import HUB_IDS, PRESETS, GPTConfig


def model_config(name_or_path: str) -> tuple[GPTConfig, str]:
    """The config of a preset (no download), a local folder, or a hub model (config.json only)."""
    if name_or_path in PRESETS and not Path(name_or_path).is_dir():
        return PRESETS[name_or_path], f"preset {name_or_path} (weights: hf.co/{HUB_IDS[name_or_path]})"
    from gpt2kit.pretrained import resolve_model_folder

    folder = resolve_model_folder(name_or_path)
    return GPTConfig.from_json_file(folder / "config.json"), str(folder)


def model_report(name_or_path: str) -> dict:
    config, source = model_config(name_or_path)
    n = config.num_params()
    kv_per_token = 2 * config.n_layer * config.n_embd  # one k and one v vector of width C per layer
    return {
        "model": name_or_path,
        "source": source,
        "config": config.to_dict(),
        "parameters": f"{n:,} ({n / 1e6:.1f}M, head tied to wte)",
        "weights fp32": _gib(4 * n),
        "weights bf16/fp16": _gib(2 * n),
        "kv cache fp32": f"{_gib(4 * kv_per_token)} per token; {_gib(4 * kv_per_token * config.n_positions)} per full {config.n_positions}-token row",
    }


def kernel_report(name_or_path: str = "builtin", batch: int = 1, dtype: str = "fp32", weights: str = "auto",
                  remeasure: bool = False) -> dict:  # fmt: skip
    """Which linear kernel this machine runs fastest for each of the model's weight shapes (measured now, or
    read from the per-machine cache), with every candidate's time and why any was left out, the one kind each
    role's prompts run (and its time over the best at each prompt row count), how its decode attention runs (over a
    cache of one full-context row per batch row), and how much of the model the decode products are timed on."""

    from gpt2kit import hugepages
    from gpt2kit.model import gemv, packed_store
    from gpt2kit.model.attention_plan import float32_cache_fits, plan_attention, plan_causal
    from gpt2kit.model.kernels import decode_sweep, kernel_cache_path, machine_key, plan_kernels, prompt_kinds
    from gpt2kit.pretrained import from_pretrained

    model = from_pretrained(name_or_path, device="cpu", dtype=dtype)
    choices = plan_kernels(model, batch, weights, remeasure=remeasure)
    prompts = prompt_kinds({(c.role, c.rows): c for c in choices}, batch)
    fits = float32_cache_fits(model, batch, model.config.n_positions)
    choices += [plan_attention(model, batch, fits, remeasure=remeasure), plan_causal(model, remeasure=remeasure)]
    return {
        "model": name_or_path,
        "machine": machine_key(),
        "cache": str(kernel_cache_path()),
        "huge_pages": hugepages.status(),
        "gemv": gemv.status(),
        "packed_store": packed_store.status(),
        "decode_step": decode_step_status(model, batch, weights),
        "decode_prefetch": prefetch_status(model, batch, weights),
        "decode_sweep": decode_sweep(model, weights),
        "choices": [
            {"role": c.role, "rows": c.rows, "chosen": c.kind, "us": c.us, "paired": c.paired,
             "rejected": c.rejected, "cached": c.cached}  # fmt: skip
            for c in choices
        ],
        "prompts": [{"role": role, "chosen": kind, "over_best": over} for role, (kind, over) in prompts.items()],
    }


def decode_step_status(model, batch: int, weights: str) -> str:
    """One line: whether this model's decode steps (batch rows, one token each) replay from a recording in C
    (model/step_graph.py), found by recording one, or why they run in Python. The step is recorded on a one-layer
    model of the same widths, dtype and vocabulary (what decides it: the kernels and attention chosen for those
    shapes), so a large model's weights are not packed a second time for it."""
    import torch

    from gpt2kit.generate.decode import DecodeRunner
    from gpt2kit.generate.step_choice import cached_step
    from gpt2kit.model import GPT
    from gpt2kit.model.kv_cache import KVCache
    from gpt2kit.model.step_graph import StepGraph

    dtype = next(model.parameters()).dtype
    one_layer = GPT(model.config.replace(n_layer=1)).to(dtype).eval()
    chosen = cached_step(model, batch, weights)  # whole steps timed by a run of this model (generate/step_choice.py)
    runner = DecodeRunner(one_layer, weights, batch=batch, max_len=4, step=chosen.kind if chosen else "measured",
                          prefetch="measured")  # fmt: skip
    if runner.no_graphs:
        return f"runs in Python: {runner.no_graphs}"
    cache = KVCache(one_layer.config, batch, 4, dtype=runner.cache_dtype)
    tokens = torch.zeros(batch, 1, dtype=torch.long)
    runner.prefill(tokens, cache, None, logits=False)
    runner.decode(tokens, cache, None)
    [graph] = runner.graphs.values()
    line = "replayed in C from a recording of its first step" if isinstance(graph, StepGraph) else f"runs in Python: {graph}"
    if chosen and chosen.us:
        times = ", ".join(f"{kind} {us / 1e3:.2f} ms" for kind, us in chosen.us.items())
        line += f" (whole steps timed, {times}: kept {chosen.kind})"
    elif chosen and "measured" in chosen.rejected:  # replayed untimed: the measurements left the other way no lead
        line += f" (the measured kernels' step: {chosen.rejected['measured']})"
    elif runner.step:  # the measured kernels leave it unrecordable: a run of the model times it replayed too
        line += " (a first generation times whole steps replayed with gemv.c's kernels against these)"
    return line


def prefetch_status(model, batch: int, weights: str) -> str:
    """One line: how this model's replayed decode steps prefetch their weights (generate/step_prefetch.py), as a run
    of it chose by timing whole steps, or that none has yet."""
    from gpt2kit.generate.step_prefetch import cached_prefetch

    chosen = cached_prefetch(model, batch, weights)
    if chosen is None:
        return "not chosen yet (a first generation whose steps replay times whole steps with each way)"
    times = ", ".join(f"{way} {us / 1e3:.2f} ms" for way, us in chosen.us.items())
    return f"{chosen.kind} (whole replayed steps timed, {times})"


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.1f} MiB" if nbytes < 2**30 else f"{nbytes / 2**30:,.2f} GiB"
