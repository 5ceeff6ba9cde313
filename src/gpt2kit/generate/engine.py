"""The generation engine: a batch of sequence slots over one preallocated KV cache, advanced one token at a time.

The engine knows nothing about text encoding: it takes prompts as token ids and produces token ids. If it is
given the tokenizer's token-bytes table (`token_bytes[id] -> bytes`) it also streams UTF-8-safe text and
supports stop strings and the banned-phrase filter; it never imports the tokenizer itself.

Step API (what a continuous-batching server drives; requests join and leave between steps):

    engine = Engine(model, max_batch=8, token_bytes=table)     # one KVCache (L, B, nh, T_max, hs);
                               # weights="auto"|"model"|"bf16"|"int8" picks the decode path (decode.py)
    slot = engine.add(prompt_ids, SamplingParams(...), request_id="a")   # prefill now -> slot index
    slots = engine.add_many([ids1, ids2], [p1, p2])            # one left-padded prefill for several
    events = engine.step()     # one token per active slot: [TokenEvent(slot, request_id, token, text,
                               #   finished, finish_reason, completion)]; finished slots are freed
    engine.cancel(slot)        # finishes it at the next step with finish_reason "cancelled"
    engine.remove(slot)        # free it now, no event
    engine.free_slots, engine.active_slots, engine.has_capacity

Each `step()` first draws one token for every active slot from the logits the previous step (or the
prefill) left, applies the stopping rules, then runs ONE batched decode forward for the slots that go on
(only the contiguous row range that holds them, so a half-empty batch costs less). There is one
device->host transfer per step (the new token ids, needed for stopping and streaming), never one per row.

High-level API, through the one scheduler (scheduler.py: a wait queue, admission into free slots, steps):

    engine.generate(prompts, params) -> list[Completion]      # all prompts, n samples each, queued when
    engine.stream(prompts, params, cancel=event) -> Iterator[TokenEvent]    # more than max_batch
    generate(model, prompts, params, token_bytes=table)        # builds an Engine sized to the job

Semantics:
  - Positions are per row and derived from the attention mask, so each row of a left-padded batch, or a
    request that joins a running batch, computes exactly what it would alone.
  - <|endoftext|> (unless ignore_eos) and stop_token_ids end a sequence and are not part of the output;
    a stop string ends it and the text stops right before it (the tokens keep the one that completed it).
  - Context: without `sliding_window`, prompt + max_new_tokens - 1 must fit in the cache (n_positions);
    with it, a row that fills the cache is re-prefilled with its last `window_keep` tokens (positions
    restart at 0, as GPT-2's learned positions require) and generation goes on. Longer prompts keep their
    last `window_keep` tokens.
  - Each request has its own torch.Generator (seed, or random); sample i of n uses seed + i.
  - Logits are sliced to the real vocabulary (`n_vocab`, 50257), so padded rows of a 50304-wide head are
    never sampled.
  - `SamplingParams.logprobs = k` puts on each TokenEvent (and in Completion.logprobs) the chosen token's
    logprob and the top-k alternatives, from the RAW logits (before penalties/temperature/top-k), computed
    on the device for the asking rows only and carried by the step's one transfer (logprobs.py).
    `prompt_logprobs = k` scores the prompt with one forward at add time (first event, Completion).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from gpt2kit.errors import ConfigError, InputError
from gpt2kit.generate import threads
from gpt2kit.generate.content_filter import VocabIndex
from gpt2kit.generate.decode import DecodeRunner
from gpt2kit.generate.logprobs import TokenLogprob
from gpt2kit.generate.params import SamplingParams
from gpt2kit.generate.sampling import NO_TOKEN
from gpt2kit.generate.scheduler import Scheduler, contiguous_block, per_prompt_params, requests
from gpt2kit.generate.sequence import Completion, TokenEvent, _Sequence, new_sequence, score_prompts
from gpt2kit.generate.step_draw import draw_step
from gpt2kit.generate.stopping import FinishReason
from gpt2kit.hugepages import Collapsed, wants_huge_pages
from gpt2kit.model.gpt import GPT
from gpt2kit.model.kv_cache import KVCache

GPT2_EOT_ID = 50256
INPUTS_KEPT = 64  # decode inputs kept, by row range (`Engine._step_inputs`)
__all__ = ["Completion", "Engine", "TokenEvent", "generate"]


class Engine:
    """Token-level batched generation over one preallocated KVCache (see the module docstring)."""

    def __init__(
        self,
        model: GPT,
        *,
        max_batch: int = 8,
        max_len: int | None = None,
        token_bytes: Sequence[bytes] | None = None,
        eot_id: int = GPT2_EOT_ID,
        window_keep: int | None = None,
        weights: str = "auto",
        static_cache: bool = False,
        huge_pages: bool = False,
    ) -> None:
        cfg = model.config
        if not (isinstance(max_batch, int) and max_batch >= 1):
            raise ConfigError(f"Engine max_batch must be an integer >= 1, got {max_batch!r}.")
        self.max_len = min(max_len or cfg.n_positions, cfg.n_positions)
        if self.max_len < 2:
            raise ConfigError(f"Engine max_len must be >= 2, got {max_len!r}.")
        self.window_keep = window_keep if window_keep is not None else self.max_len // 2
        if not (1 <= self.window_keep < self.max_len):
            raise ConfigError(f"Engine window_keep must be in [1, max_len={self.max_len}), got {window_keep!r}.")
        self.model = model.eval()
        self.config = cfg
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        # prefills and steps with the cores other processes leave free (generate/threads.py); made before the runner,
        # whose kernel choice and packing are then its first window of the others' load
        self.governor = threads.shared() if self.device.type == "cpu" else threads.ThreadGovernor(enabled=False)
        self.token_bytes = token_bytes
        # Sample only real tokens: a head padded to 50304 rows has 47 that no tokenizer id maps to.
        self.n_vocab = min(cfg.vocab_size, len(token_bytes)) if token_bytes is not None else cfg.vocab_size
        self.eot_id = eot_id
        self.max_batch = max_batch
        # static_cache: every step attends all max_len columns (masked), so a decode step has one fixed shape
        self.runner = DecodeRunner(model, weights, batch=max_batch, max_len=self.max_len, huge_pages=huge_pages)
        self.cache = KVCache(cfg, max_batch, self.max_len, device=self.device, dtype=self.runner.cache_dtype, static=static_cache)
        # huge_pages: the memory a decode step reads moved into 2 MiB pages now (a one-time cost; decode.py)
        self.huge_pages = self.runner.collapse_hot(self.cache) if huge_pages else Collapsed(skipped="not asked for")
        self._logits = torch.zeros(max_batch, self.n_vocab, device=self.device, dtype=torch.float32)  # (B, V)
        self._host_logits = self._logits.numpy() if self.device.type == "cpu" else None  # its view, made once (draw_step)
        self._slots: list[_Sequence | None] = [None] * max_batch
        self._inputs: dict[tuple[int, int], tuple] = {}  # a decode step's inputs by row range (`_step_inputs`)
        self.vocab_index: VocabIndex | None = None  # built by the first request with banned phrases
        self._lock = threading.Lock()  # add/step/cancel may come from different threads in a server

    # ---- slots ------------------------------------------------------------------------------------
    @property
    def active_slots(self) -> list[int]:
        return [b for b, s in enumerate(self._slots) if s is not None]

    @property
    def free_slots(self) -> list[int]:
        return [b for b, s in enumerate(self._slots) if s is None]

    @property
    def has_capacity(self) -> bool:
        return any(s is None for s in self._slots)

    def add(self, prompt: Sequence[int], params: SamplingParams | None = None, request_id: object = None, *,
            bos: bool = False, index: int = 0) -> int:  # fmt: skip
        """Prefill one request into a free slot; its first token is drawn by the next `step()`."""
        return self.add_many([prompt], [params or SamplingParams()], [request_id], bos=bos, indices=[index])[0]

    def add_many(
        self,
        prompts: Sequence[Sequence[int]],
        params: Sequence[SamplingParams],
        request_ids: Sequence[object] | None = None,
        *,
        bos: bool = False,
        indices: Sequence[int] | None = None,
        prompt_indices: Sequence[int] | None = None,
    ) -> list[int]:
        """Prefill several requests; into one contiguous block of free rows with ONE left-padded forward
        when there is one, else row by row. Returns their slots. `bos` prepends <|endoftext|>."""
        n = len(prompts)
        if len(params) != n:
            raise ConfigError(f"got {n} prompts but {len(params)} SamplingParams; give one per prompt.")
        request_ids = list(request_ids) if request_ids is not None else [None] * n
        indices = list(indices) if indices is not None else [0] * n
        prompt_indices = list(prompt_indices) if prompt_indices is not None else list(range(n))
        seqs = [new_sequence(self, p, sp, rid, bos, i, pi)
                for p, sp, rid, i, pi in zip(prompts, params, request_ids, indices, prompt_indices)]  # fmt: skip
        with self.governor.step():
            score_prompts(self, seqs)
        with self._lock, self.governor.step():
            free = self.free_slots
            if len(free) < n:
                raise InputError(f"the engine has {len(free)} free slots, {n} requests were added; wait for a step to free some.")
            block = contiguous_block(free, n)
            T = max(len(s.context) for s in seqs)  # a left-padded prefill gives every row T columns
            if any(not s.params.sliding_window and T + s.params.max_new_tokens - 1 > self.max_len for s in seqs):
                block = None  # padding would push a row past the cache: prefill row by row instead
            slots = list(range(block, block + n)) if block is not None else free[:n]
            if block is not None:
                self._prefill(block, [s.context for s in seqs])
            else:
                for b, s in zip(slots, seqs):
                    self._prefill(b, [s.context])
            for b, s in zip(slots, seqs):
                self._slots[b] = s
        return slots

    def cancel(self, slot: int) -> None:
        """End the sequence in `slot` at the next step (finish_reason 'cancelled', text so far kept)."""
        s = self._slots[slot]
        if s is not None:
            s.cancelled = True

    def remove(self, slot: int) -> None:
        """Free `slot` now, without a final event."""
        with self._lock:
            self._free(slot)

    # ---- one decode step --------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self, emit: Callable[[list[TokenEvent]], None] | None = None) -> list[TokenEvent]:
        """Draw one token per active slot, apply stopping, then run one decode forward for the survivors.
        `emit(events)`, when given, gets the step's events before that forward (a server streams them out
        while the next token is computed: a first token leaves right after its prompt's prefill)."""
        with self._lock:
            active = [(b, s) for b, s in enumerate(self._slots) if s is not None]
            if not active:
                if emit is not None:
                    emit([])
                return []
            with self.governor.step():  # the decode forward alone is timed (a step with none is far shorter)
                drawn, logprobs = self._draw(active)  # one host transfer for the whole batch
            events = []
            for (b, s), tok, lp in zip(active, drawn, logprobs):
                ev = self._advance(b, s, tok, lp)
                events.append(ev)
                if ev.finished:
                    self._free(b)
            go_on = [(b, s) for b, s in active if self._slots[b] is s]
            if emit is not None:
                emit(events)
            if go_on:
                with self.governor.step(timed=True):
                    self._decode(go_on)
            return events

    def _draw(self, active: list[tuple[int, _Sequence]]) -> tuple[list[int], list[TokenLogprob | None]]:
        return draw_step(self._logits, active, self._host_logits)  # one host transfer for the whole batch

    def _advance(self, b: int, s: _Sequence, tok: int, lp: TokenLogprob | None = None) -> TokenEvent:
        """Apply one drawn token to a sequence: stopping rules, text, counters, logprobs."""
        ev = self._advance_token(b, s, tok, lp)
        if not s.started:  # the prompt's logprobs travel with the sequence's first event
            s.started = True
            ev.prompt_logprobs = s.prompt_logprobs
        return ev

    def _advance_token(self, b: int, s: _Sequence, tok: int, lp: TokenLogprob | None) -> TokenEvent:
        p = s.params
        if s.cancelled:
            return self._finish(b, s, FinishReason.CANCELLED, None, token=None)
        if tok == NO_TOKEN:  # every token was excluded (or the logits were NaN), or sampling raised
            s.error = (
                s.error
                or "no token can be drawn: every token's logit is -inf or NaN (banned, biased to -inf, or a broken model)."
            )
            return self._finish(b, s, FinishReason.ERROR, s.error, token=None)
        if len(s.output) >= p.max_new_tokens:  # max_new_tokens == 0
            return self._finish(b, s, FinishReason.LENGTH, None, token=None)
        if (tok == self.eot_id and not p.ignore_eos) or tok in p.stop_token_ids:
            return self._finish(b, s, FinishReason.STOP, tok, token=None)
        s.output.append(tok)
        s.pending = tok
        if s.logprobs is not None:
            s.logprobs.append(lp)
        if s.context_counts is not None:
            s.context_counts[tok] += 1
            s.output_counts[tok] += 1
        text = ""
        if self.token_bytes is not None:
            data = self.token_bytes[tok]
            if s.phrase_filter is not None:
                s.phrase_filter.feed(data)
            emit, hit = s.stop.feed(data)
            text = s.detok.add_bytes(emit)
            if hit is not None:
                return self._finish(b, s, FinishReason.STOP, hit, token=tok, text=text, lp=lp)
        if len(s.output) >= p.max_new_tokens:
            return self._finish(b, s, FinishReason.LENGTH, None, token=tok, text=text, lp=lp)
        s.text_parts.append(text)
        return TokenEvent(b, s.request_id, tok, text, logprob=lp)

    def _finish(
        self, b: int, s: _Sequence, reason: FinishReason, stop_reason, *, token: int | None, text: str = "",
        lp: TokenLogprob | None = None,
    ) -> TokenEvent:  # fmt: skip
        if s.detok is not None:
            if reason is not FinishReason.STOP or not isinstance(stop_reason, str):
                text += s.detok.add_bytes(s.stop.flush())  # release bytes held for a stop string that never came
            text += s.detok.flush()
        s.text_parts.append(text)
        completion = Completion(
            request_id=s.request_id, prompt_ids=s.prompt, token_ids=list(s.output),
            text="".join(s.text_parts) if s.detok is not None else None,
            finish_reason=reason, stop_reason=stop_reason, index=s.index, prompt_index=s.prompt_index,
            logprobs=list(s.logprobs) if s.logprobs is not None else None, prompt_logprobs=s.prompt_logprobs,
            error=s.error,
        )  # fmt: skip
        return TokenEvent(b, s.request_id, token, text, True, reason, completion, logprob=lp, error=s.error)

    def _free(self, b: int) -> None:
        if self._slots[b] is not None:
            self._slots[b] = None
            self.cache.reset_row(b)

    # ---- forward passes ---------------------------------------------------------------------------
    def _prefill(self, start: int, contexts: list[list[int]]) -> None:
        """Left-padded prefill of rows start..start+n-1 from scratch; their next-token logits -> self._logits."""
        n = len(contexts)
        for b in range(start, start + n):
            self.cache.reset_row(b)
        T = max(len(c) for c in contexts)
        idx = torch.zeros(n, T, dtype=torch.long)
        mask = torch.zeros(n, T, dtype=torch.long)
        for i, c in enumerate(contexts):
            idx[i, T - len(c) :] = torch.tensor(c, dtype=torch.long)
            mask[i, T - len(c) :] = 1
        padded = bool((mask == 0).any())
        view = self.cache.rows(start, start + n)
        with torch.inference_mode():
            logits = self.runner.prefill(idx.to(self.device), view, mask.to(self.device) if padded else None)  # (n, V')
            self._logits[start : start + n] = logits[:, : self.n_vocab]

    def _decode(self, go_on: list[tuple[int, _Sequence]]) -> None:
        """Feed each surviving row its pending token: one forward over the row range [lo, hi]."""
        for b, s in go_on:  # sliding window: a full row is re-read from its last window_keep tokens
            if self.cache.row_length(b) + 1 > self.max_len:
                keep = s.context[-self.window_keep :]
                s.context = keep
                self.cache.reset_row(b)
                self.runner.prefill(torch.tensor([keep], device=self.device), self.cache.row(b), None, logits=False)
        lo, hi = go_on[0][0], go_on[-1][0] + 1
        host, ids, out = self._step_inputs(lo, hi)
        mask = None
        if len(go_on) < hi - lo:  # idle rows inside the range: fed a masked dummy token
            ids[:] = 0
            real = [0] * (hi - lo)
            for b, _ in go_on:
                real[b - lo] = 1
            mask = torch.tensor(real, dtype=torch.long, device=self.device)[:, None]  # (hi-lo, 1)
        for b, s in go_on:  # written in place through numpy: no torch operation a row, nor one a step
            ids[b - lo, 0] = s.pending
            s.context.append(s.pending)
        tokens = host if self.device.type == "cpu" else host.to(self.device)  # (hi-lo, 1)
        self.runner.decode(tokens, self.cache.rows(lo, hi), mask, out=out)  # (hi-lo, V) logits into out
        if mask is not None:  # the dummy writes used a column of each idle row: give it back
            for b in range(lo, hi):
                if self._slots[b] is None:
                    self.cache.reset_row(b)

    def _step_inputs(self, lo: int, hi: int) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
        """A decode step's inputs for rows [lo, hi), made once per range: its ids, a (hi-lo, 1) long host tensor, with
        a numpy view of it, and `self._logits[lo:hi]`, which the step's logits are written into. Right after a step's
        weight stream every torch operation finds its code evicted: making these each step took ~0.17 ms a token
        (124M fp32, batch 1, 2-core Zen 3 VM)."""
        made = self._inputs.get((lo, hi))
        if made is None:
            if len(self._inputs) >= INPUTS_KEPT:
                self._inputs.clear()
            host = torch.zeros(hi - lo, 1, dtype=torch.long)  # (hi-lo, 1)
            made = self._inputs[(lo, hi)] = (host, host.numpy(), self._logits[lo:hi])
        return made

    # ---- high level -------------------------------------------------------------------------------
    def stream(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        bos: bool = False,
        cancel: threading.Event | Callable[[], bool] | None = None,
    ) -> Iterator[TokenEvent]:
        """Generate for every prompt (params.n samples each), yielding TokenEvents as tokens are made.

        Requests beyond the free slots wait in the scheduler's queue and join as slots free up (continuous
        batching, scheduler.py). `cancel` (an Event or a callable) ends everything at the next step;
        breaking out of the iterator frees the slots. Use it while nothing else drives this engine's steps."""
        sched = Scheduler(self, bos=bos)
        sched.submit(requests(prompts, params))
        yield from sched.run(cancel.is_set if isinstance(cancel, threading.Event) else cancel)

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams] | None = None,
                 **kw) -> list[Completion]:  # fmt: skip
        """All completions, ordered by prompt, then sample index (keywords as `stream`)."""
        done = [ev.completion for ev in self.stream(prompts, params, **kw) if ev.finished]
        return sorted(done, key=lambda c: (c.prompt_index, c.index))  # type: ignore[union-attr]


def generate(
    model: GPT,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams] | None = None,
    *,
    token_bytes: Sequence[bytes] | None = None,
    max_batch: int = 8,
    bos: bool = False,
    weights: str = "auto",
    huge_pages: str = "auto",
) -> list[Completion]:
    """One-shot: an Engine sized to this job (batch, cache length, huge pages for long runs), then `Engine.generate`."""
    params_list = per_prompt_params(params, len(prompts))
    batch = max(1, min(max_batch, sum(p.n for p in params_list)))
    # rows prefilled together are left-padded to the longest prompt
    need = max((len(p) for p in prompts), default=1) + int(bos) + max((sp.max_new_tokens for sp in params_list), default=1)
    slide = any(sp.sliding_window for sp in params_list)
    max_len = model.config.n_positions if slide else min(model.config.n_positions, max(need, 2))
    steps = max((sp.max_new_tokens for sp in params_list), default=0)
    engine = Engine(model, max_batch=batch, max_len=max_len, token_bytes=token_bytes, weights=weights,
                    huge_pages=wants_huge_pages(huge_pages, steps))  # fmt: skip
    return engine.generate(prompts, params_list, bos=bos)
