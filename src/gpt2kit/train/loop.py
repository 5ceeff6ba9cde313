"""The training loop: one linear loop for pretraining from scratch and for fine-tuning.

    result = train(TrainConfig(data="data/corpora", model="cpu-small", max_steps=2000))

What differs between pretraining and fine-tuning is only where the weights start (`model` preset vs
`init_from`) and the data (shards vs prompt/completion JSONL with IGNORE_INDEX over prompts).

One optimizer step = `accum` micro-batches of (B, T) on each of `world` processes; batch size is given in
tokens and accum is derived (and must divide exactly). Evaluation, samples and checkpoints run on
`step % eval_interval == 0 or last step` (and when the time budget or early stopping ends the run). The
only host syncs per step are the log-interval reads of the loss, so the loop keeps a GPU busy.

Exact resume: a checkpoint holds the weights, optimizer, schedule step, loader position and every RNG
state, captured after the step's eval (which draws from no global RNG: samples use their own
generator), so a resumed run performs bit-for-bit the steps the uninterrupted run would (on CPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2kit.atomic import check_writable
from gpt2kit.device import bf16_emulation_note, enable_tf32, resolve_device, resolve_dtype, seed_everything
from gpt2kit.errors import ConfigError, Gpt2kitError, warn
from gpt2kit.eval.perplexity import batches_nll
from gpt2kit.model import GPT
from gpt2kit.model.vocab_pad import pad_vocab, unpadded
from gpt2kit.train import checkpoint as ckpt
from gpt2kit.train import distributed as D
from gpt2kit.train.compile_trial import SPAN, CompileTrial
from gpt2kit.train.config import TrainConfig
from gpt2kit.train.eval_hooks import EvalHook, config_eval_hooks
from gpt2kit.train.inputs import make_loaders
from gpt2kit.train.metrics import MetricsLog, estimate_mfu, flops_per_token, format_eta, plot_losses
from gpt2kit.train.optim import get_lr, make_optimizer, set_lr


class NonFiniteLossError(Gpt2kitError, RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class TrainResult:
    step: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    stopped_by: str  # "max_steps", "max_minutes" or "early_stop"


def train(cfg: TrainConfig, eval_hooks: Sequence[EvalHook] = (), log: Callable[[str], None] = print,
          on_step: Callable[[int, int], None] | None = None) -> TrainResult:  # fmt: skip
    """Train (or fine-tune) as `cfg` says; returns where it ended. Works alone or under torchrun.

    on_step(step, max_steps), if given, is called after every optimizer step (for a caller's progress bar)."""
    if D.env_info().is_main:  # one process checks: the check's own folders would race between ranks
        check_writable(Path(cfg.out_dir) / "metrics.jsonl")  # an out_dir that is a file or read-only: one line now
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    info = D.init_distributed(device.type)
    device = D.local_device(device, info)
    say = log if info.is_main else (lambda *_: None)
    out = Path(cfg.out_dir)
    ckpt_root = out / "checkpoints"
    eval_hooks = [*eval_hooks, *config_eval_hooks(cfg)]
    try:
        return _train(cfg, eval_hooks, say, info, device, out, ckpt_root, on_step)
    finally:
        D.teardown(info)
        torch.set_num_threads(threads)


def _train(cfg, eval_hooks, say, info, device, out, ckpt_root, on_step=None) -> TrainResult:
    # ---- weights ---------------------------------------------------------------------------------
    resume_from = None
    if cfg.resume:
        resume_from = ckpt.latest_checkpoint(ckpt_root)
        if resume_from is None:
            raise ConfigError(f"--resume: no checkpoint in {ckpt_root}. Start the run without --resume first.")
    elif ckpt.list_checkpoints(ckpt_root):
        raise ConfigError(f"{out} already holds checkpoints. Pass --resume to continue that run, or choose another --out-dir.")
    seed_everything(cfg.seed)  # same init on every rank
    meta = ckpt.read_meta(resume_from) if resume_from else None
    model = _load_model(cfg, cfg.init_from if cfg.lora_r else resume_from or cfg.init_from)
    if cfg.pad_vocab:  # before the optimizer: its moments (and a resumed optimizer state) have the padded shape
        model = pad_vocab(model, cfg.pad_vocab)
    if cfg.lora_r:  # frozen base + adapters; a LoRA checkpoint holds the adapters only, the base is init_from
        _add_adapters(model, cfg, resume_from, say)
    model.to(device).train()
    T = cfg.block_size or model.config.n_positions
    if T > model.config.n_positions:
        raise ConfigError(
            f"block_size {T} exceeds the model's context n_positions={model.config.n_positions}; use --block-size {model.config.n_positions} or less."
        )

    # ---- numerics --------------------------------------------------------------------------------
    dtype = _train_dtype(cfg.dtype, device)
    if device.type == "cuda":
        enable_tf32()
    if (note := bf16_emulation_note(device, dtype)) and info.is_main:
        warn(note)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    # ---- data and batch --------------------------------------------------------------------------
    train_loader, val_loader, data_kind = make_loaders(cfg, T, info, log=say)
    micro_tokens = cfg.micro_batch * T * info.world
    batch_tokens = cfg.batch_tokens or micro_tokens
    if batch_tokens % micro_tokens:
        lo, hi = batch_tokens // micro_tokens * micro_tokens, -(-batch_tokens // micro_tokens) * micro_tokens
        raise ConfigError(
            f"batch_tokens={batch_tokens:,} is not a multiple of micro_batch x block_size x processes = "
            f"{cfg.micro_batch} x {T} x {info.world} = {micro_tokens:,}, so gradient accumulation would not be a whole "
            f"number of micro-batches. Use --batch-tokens {max(lo, micro_tokens):,} or {hi:,}, or change --micro-batch/--block-size."
        )
    accum = batch_tokens // micro_tokens

    # ---- optimizer, wrappers ---------------------------------------------------------------------
    fsdp = cfg.fsdp and info.enabled
    if fsdp:  # shard first: fully_shard swaps the parameters for DTensors, which the optimizer must hold
        D.wrap_model(model, info, device, fsdp=True)
    optimizer = make_optimizer(model, cfg, device)
    step, best_val, bad_evals = 0, math.inf, 0
    if meta is not None:
        optim_state, rng_state = ckpt.load_training_state(resume_from)
        if fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(model, optimizer, optim_state["optimizer"], options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(optim_state["optimizer"])
        if optim_state.get("scaler"):
            scaler.load_state_dict(optim_state["scaler"])
        train_loader.load_state_dict(meta["loader"])
        step, best_val, bad_evals = meta["step"], meta.get("best_val_loss") or math.inf, meta.get("bad_evals", 0)
        say(f"resumed from {resume_from} at step {step}")
    use_compile = cfg.use_compile(device.type)
    trial = None  # --compile auto on the CPU: eager and compiled steps timed, the faster kept (compile_trial.py)
    if cfg.measures_compile(device.type) and not info.enabled:
        trial = CompileTrial(model, say, meta)
    runner = trial.runner if trial else torch.compile(model) if use_compile else model
    if not fsdp:
        runner = D.wrap_model(runner, info, device, fsdp=False)  # DDP around the compiled module (nanoGPT's order)
    if meta is not None:
        ckpt.restore_rng(rng_state)  # last: building the model and loaders must not shift the RNG streams

    n_params = model.num_params()
    token_flops = flops_per_token(n_params, model.config.n_layer, model.config.n_embd, T)
    say(f"model: {n_params / 1e6:.1f}M parameters, T={T}, {dtype} on {device}{' x' + str(info.world) if info.enabled else ''}"
        f"{', compiled' if use_compile and not trial else ', compile timed' if trial and not trial.decided else ''}; batch {batch_tokens:,} tokens = {cfg.micro_batch} x {T} x {info.world} x {accum} accum")  # fmt: skip
    logger = MetricsLog(out, cfg.tensorboard, cfg.wandb_project, cfg.to_dict()) if info.is_main else None
    if logger and meta is not None:  # records a killed run wrote after its last checkpoint are not this run's
        logger.truncate_after(step)
    tokenizer = None
    if cfg.sample_tokens and info.is_main and not fsdp:  # (FSDP: rank 0 alone holds a shard, not the model)
        from gpt2kit.tokenizer import Tokenizer

        tokenizer = Tokenizer()

    # ---- the loop --------------------------------------------------------------------------------
    t_start = time.perf_counter()
    deadline = t_start + cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    loss_sum, loss_count, t_log, steps_since_log = torch.zeros((), device=device), 0, time.perf_counter(), 0
    last_loss, val_loss, last_ckpt, stopped_by = None, None, None, "max_steps"
    start_step = step
    # fit_to_time: fitted once after warm-up, then again at each eval from the recent rate (which changes when
    # other jobs share the device); the checkpoints save fit_to_time=False, so a resume keeps the schedule.
    fitting, max_steps_cap, fit_from = cfg.fit_to_time and cfg.max_minutes > 0, cfg.max_steps, None
    fit0 = start_step + (SPAN if trial and not trial.decided else 0)  # the compile trial's steps are not timed for the fit
    while step < cfg.max_steps:
        lr = get_lr(
            step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps, max_steps=cfg.max_steps, schedule=cfg.schedule
        )
        set_lr(optimizer, lr)
        for micro in range(accum):
            x, y = train_loader.next_batch()  # (B, T) each, on the host
            if device.type == "cuda":  # pinned host memory: the copy overlaps the previous step's kernels
                x, y = x.pin_memory(), y.pin_memory()
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sync = micro == accum - 1 or not hasattr(runner, "no_sync")  # DDP all-reduces on the last micro-step only
            with contextlib.nullcontext() if sync else runner.no_sync(), autocast:
                _, loss = runner(x, y)
            loss_sum += loss.detach()
            loss_count += 1
            scaler.scale(loss / accum).backward()
        grad_norm = None
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        runner = trial.step_done() if trial else runner
        steps_since_log += 1
        if on_step is not None:
            on_step(step, cfg.max_steps)
        if fitting and step == fit0 + _FIT_FROM:
            fit_from = (step, time.perf_counter())  # the steps before this one paid for compilation and warm-up
        if fitting and (step == fit0 + _FIT_AT or step > fit0 + _FIT_AT and step % cfg.eval_interval == 0):
            cfg = _fit_schedule(cfg, step, fit_from, max_steps_cap, deadline, info, device, say)
            fit_from = (step, time.perf_counter())  # the next fit uses the rate since this one (it may change)
        last_step = step == cfg.max_steps
        out_of_time = time.perf_counter() > deadline
        if info.enabled and deadline < math.inf:  # every rank must agree to stop: decide at log steps, together
            check = step % cfg.log_interval == 0
            out_of_time = check and bool(D.all_reduce_mean(torch.tensor(float(out_of_time), device=device), info) > 0)
        if out_of_time and not last_step:
            stopped_by, last_step = "max_minutes", True

        # ---- log (the only per-interval host sync); also at every eval, so no checkpoint saves a NaN model
        if step % cfg.log_interval == 0 or step % cfg.eval_interval == 0 or last_step or step == start_step + 1:
            mean_loss = D.all_reduce_mean(loss_sum / loss_count, info).item()
            last_loss = mean_loss
            if not math.isfinite(mean_loss):
                good = ckpt.latest_checkpoint(ckpt_root)
                raise NonFiniteLossError(
                    f"the training loss is {mean_loss} at step {step}. The last good checkpoint is kept: {good or 'none yet'}. "
                    "---> HINT: lower --lr, raise --warmup-steps, keep --grad-clip 1.0, or use bf16 rather than fp16."
                )
            dt = time.perf_counter() - t_log
            tok_s = steps_since_log * batch_tokens / dt
            mfu = estimate_mfu(token_flops, tok_s, device)
            eta = min((cfg.max_steps - step) * dt / steps_since_log, deadline - time.perf_counter())
            norm = float(grad_norm) if grad_norm is not None else None
            if logger:
                logger.log("train", step, loss=mean_loss, lr=lr, grad_norm=norm, tok_per_s=round(tok_s, 1),
                           ms=round(1000 * dt / steps_since_log, 2), tokens=step * batch_tokens,
                           **({"mfu": round(mfu, 4)} if mfu is not None else {}))  # fmt: skip
            say(f"step {step:>6}/{cfg.max_steps} | loss {mean_loss:.4f} | lr {lr:.2e} | norm {norm if norm is None else round(norm, 3)} | "
                f"{tok_s:,.0f} tok/s | {1000 * dt / steps_since_log:.0f} ms" + (f" | MFU {100 * mfu:.1f}%" if mfu else "") + f" | ETA {format_eta(eta)}")  # fmt: skip
            loss_sum.zero_()
            loss_count, steps_since_log, t_log = 0, 0, time.perf_counter()

        # ---- eval, sample, checkpoint ------------------------------------------------------------
        if step % cfg.eval_interval == 0 or last_step:
            if val_loader is not None:
                val_loss = evaluate(runner, val_loader, cfg.eval_batches, device, autocast, info)
                improved = val_loss < best_val
                best_val, bad_evals = (val_loss, 0) if improved else (best_val, bad_evals + 1)
                say(f"step {step:>6} | val loss {val_loss:.4f}{' (best)' if improved else ''}")
                if logger:
                    logger.log("val", step, loss=val_loss)
            extra = _run_hooks(unpadded(model), eval_hooks, device, autocast) if info.is_main and not fsdp else {}
            if logger and extra:
                logger.log("eval", step, **extra)
            if tokenizer is not None:
                text = _sample(model, tokenizer, cfg, step, device, autocast)
                say(f"sample: {text!r}")
                logger.log("sample", step, text=text)
            if cfg.early_stop and bad_evals >= cfg.early_stop:
                stopped_by, last_step = "early_stop", True
            last_ckpt = _save(cfg, model, runner, optimizer, scaler, train_loader, info, ckpt_root, step, batch_tokens,
                              last_loss, val_loss, best_val, bad_evals, data_kind)  # fmt: skip
            if logger:
                plot_losses(out)
            if last_step:
                break
    if logger:
        logger.close()
    if stopped_by != "max_steps":
        say(
            f"stopped at step {step}: {'time budget of ' + str(cfg.max_minutes) + ' min' if stopped_by == 'max_minutes' else 'val loss stopped improving'}"
        )
    best = ckpt.best_checkpoint(ckpt_root) if info.is_main else None
    say(f"done: step {step}, last checkpoint {last_ckpt}" + (f", best {best}" if best else ""))
    return TrainResult(step, last_loss, val_loss, best_val if math.isfinite(best_val) else None, last_ckpt, best, stopped_by)


# fit_to_time first times steps _FIT_FROM.._FIT_AT of the run: the first steps include torch.compile's
# compilation (tens of seconds on a GPU), which would make the schedule far too short if they were counted.
_FIT_FROM, _FIT_AT = 5, 25


def _fit_schedule(cfg: TrainConfig, step, fit_from, cap, deadline, info, device, say) -> TrainConfig:
    """Set max_steps (at most `cap`) to what the rest of the time budget allows at the rate measured since
    fit_from = (step, time); 10 % of the remaining time is kept for evals and checkpoints."""
    per_step = (time.perf_counter() - fit_from[1]) / max(step - fit_from[0], 1)
    fits = step + int(0.9 * (deadline - time.perf_counter()) / per_step)
    fits = int(D.all_reduce_mean(torch.tensor(float(fits), device=device), info).item())  # the same on every rank
    new = max(step + 1, min(cap, fits))
    warmup = min(cfg.warmup_steps, max(step, new // 10))  # a short run must not end inside its warmup
    if abs(new - cfg.max_steps) > 0.01 * cfg.max_steps:
        say(f"fit_to_time: {per_step:.3f} s/step, so the schedule goes from {cfg.max_steps} to {new} steps"
            + (f" (warmup {cfg.warmup_steps} -> {warmup})" if warmup != cfg.warmup_steps else ""))  # fmt: skip
    return dataclasses.replace(cfg, max_steps=new, warmup_steps=warmup, fit_to_time=False)


def evaluate(runner, loader, max_batches: int, device, autocast, info) -> float:
    """Token-weighted mean loss over the loader's fixed evaluation batches, over all ranks (`batches_nll`)."""
    runner.eval()
    nll, n = batches_nll(runner, loader.eval_batches(max_batches), autocast=autocast, device=device)
    runner.train()
    nll, n = D.all_reduce_mean(torch.stack([nll, n]), info).tolist()  # means of the ranks' sums: the same ratio
    return nll / max(n, 1)


def _run_hooks(model, hooks, device, autocast) -> dict:
    metrics = {}
    if hooks:
        model.eval()
        with torch.no_grad(), autocast:
            for hook in hooks:
                metrics.update(hook(model))
        model.train()
    return metrics


def _sample(model, tokenizer, cfg, step, device, autocast) -> str:
    from gpt2kit.train.samples import sample_text

    return sample_text(model, tokenizer, cfg.sample_prompt, cfg.sample_tokens, cfg.seed, step, device, autocast)


def _save(cfg, model, runner, optimizer, scaler, loader, info, root, step, batch_tokens, train_loss, val_loss, best_val,
          bad_evals, data_kind) -> Path | None:  # fmt: skip
    model_state = optim_state = None
    if cfg.fsdp and info.enabled:  # gather full tensors on every rank, keep them on rank 0
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(model, options=opts)
        optim_state = get_optimizer_state_dict(model, optimizer, options=opts)
    path = None
    if info.is_main:
        meta = {
            "tokens": step * batch_tokens,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "best_val_loss": best_val if math.isfinite(best_val) else None,
            "bad_evals": bad_evals,
            "loader": loader.state_dict(),
            "data_kind": data_kind,
            "world_size": info.world,
            "train_config": cfg.resolved().to_dict(),  # absolute paths: --resume works from any directory
            "torch_version": torch.__version__,
            "compiled": hasattr(getattr(runner, "module", runner), "_orig_mod"),  # the step's model (DDP's inside)
        }
        state = {
            "optimizer": optim_state or optimizer.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
        }
        path = ckpt.save_checkpoint(root, step, model, state, meta, model_state=model_state)
        ckpt.prune(root, cfg.keep_last)
    D.barrier(info)
    return path


def _load_model(cfg: TrainConfig, source) -> GPT:
    """From scratch (cfg.model), or the weights of a checkpoint / HF folder / preset, dropout override applied."""
    if source is None:
        return GPT(cfg.model_config())
    from gpt2kit.pretrained import from_pretrained

    model = from_pretrained(source)
    if cfg.dropout is not None and cfg.dropout != model.config.dropout:
        fresh = GPT(model.config.replace(dropout=cfg.dropout))
        fresh.load_state_dict(model.state_dict())
        model = fresh
    for p in model.parameters():  # imported Conv1D weights are transposed views; FSDP and fused kernels want contiguous
        p.data = p.data.contiguous()
    return model.train()


def _add_adapters(model: GPT, cfg: TrainConfig, resume_from: Path | None, say) -> None:
    from gpt2kit.adapter import load_adapter
    from gpt2kit.model.lora import inject_lora

    if resume_from is not None:
        load_adapter(model, resume_from, dropout=cfg.lora_dropout)
    else:
        inject_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_target_list)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    say(f"LoRA: r={cfg.lora_r}, alpha={cfg.lora_alpha:g} on {cfg.lora_targets}: {n_train:,} trainable parameters "
        f"({100 * n_train / model.num_params():.2f}% of {model.num_params():,}), the rest frozen")  # fmt: skip


def _train_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtype = resolve_dtype(name)
    if dtype == torch.float16 and device.type != "cuda":
        raise ConfigError("fp16 training needs a CUDA GPU (it uses a GradScaler); on the CPU use fp32 or bf16.")
    return dtype
