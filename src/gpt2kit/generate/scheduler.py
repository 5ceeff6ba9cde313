"""The scheduler: continuous batching over one Engine. The only loop that admits, steps and retires sequences.

    sched = Scheduler(engine)                                # one per engine
    sched.submit(requests([ids1, ids2], SamplingParams(n=2)))  # sequences wait in a queue
    events = sched.step()      # admit waiting sequences into free slots (one left-padded prefill for all),
                               # then ONE engine.step() for every active slot; finished slots free up
    sched.step(emit=deliver)   # the same, handing the events to deliver() before the step's decode forward
    sched.cancel(match)        # matching sequences end at the next step (finish_reason "cancelled")
    sched.drop(match)          # matching sequences leave now, waiting or running, with no event

Both users drive the same loop: `Engine.stream` / `Engine.generate` (the CLI, training samples, lm-eval)
iterate `run()` until their sequences are done, and the server's worker calls `step()` from its engine loop
and maps the events onto requests (queueing limits, deadlines, HTTP errors stay in serve/worker.py).

Admission failures: by default the exception propagates (a bad prompt fails the whole `generate` call, as
a caller expects). With `on_reject=callback` the scheduler admits the batch row by row when the batched
prefill fails, and hands each sequence that cannot be admitted to `callback(pending, exception)`, so one
bad request fails alone while the others are admitted.

Threads: `submit` may be called from any thread (the wait queue has its own lock); everything else is
called by the one thread that steps the engine.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpt2kit.errors import ConfigError
from gpt2kit.generate.params import SamplingParams
from gpt2kit.generate.sequence import TokenEvent

if TYPE_CHECKING:
    from gpt2kit.generate.engine import Engine


@dataclass
class Pending:
    """One sequence to generate: a prompt (token ids) with its sampling parameters."""

    prompt: list[int]
    params: SamplingParams
    request_id: object = None  # carried on every TokenEvent of this sequence
    index: int = 0  # sample index within its prompt (its generator is seeded with seed + index)
    prompt_index: int = 0  # copied to its Completion


def requests(prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams] | None = None,
             request_id: object = None) -> list[Pending]:  # fmt: skip
    """prompts x params.n sequences, ordered by prompt, then sample index."""
    per_prompt = per_prompt_params(params, len(prompts))
    return [Pending(list(p), sp, request_id, i, pi) for pi, (p, sp) in enumerate(zip(prompts, per_prompt)) for i in range(sp.n)]


def per_prompt_params(params: SamplingParams | Sequence[SamplingParams] | None, n: int) -> list[SamplingParams]:
    """One SamplingParams per prompt: the default, the one given for all, or a list of n."""
    if params is None:
        return [SamplingParams()] * n
    if isinstance(params, SamplingParams):
        return [params] * n
    params = list(params)
    if len(params) != n:
        raise ConfigError(f"got {n} prompts but {len(params)} SamplingParams; give one, or one per prompt.")
    return params


class Scheduler:
    """A wait queue in front of one Engine: `step()` admits into free slots, steps, retires (module docstring)."""

    def __init__(self, engine: Engine, *, bos: bool = False,
                 on_reject: Callable[[Pending, Exception], None] | None = None) -> None:  # fmt: skip
        self.engine = engine
        self.bos = bos  # prepend <|endoftext|> to every prompt
        self.on_reject = on_reject
        self.running: dict[int, Pending] = {}  # slot -> the sequence in it
        self.steps = 0  # engine steps taken
        self.step_rows = 0  # sum over steps of the sequences stepped
        self.prompt_tokens = 0  # prompt tokens admitted
        self._waiting: deque[Pending] = deque()
        self._incoming: list[Pending] = []  # out of the queue, being prefilled now
        self._lock = threading.Lock()

    # ---- the queue (any thread) -----------------------------------------------------------------------
    def submit(self, seqs: Iterable[Pending]) -> None:
        with self._lock:
            self._waiting.extend(seqs)

    @property
    def waiting(self) -> int:
        """Sequences waiting for a slot."""
        return len(self._waiting)

    @property
    def backlog(self) -> int:
        """Waiting sequences beyond what the free slots will take at the next admission (can be negative)."""
        with self._lock:
            return len(self._waiting) + len(self._incoming) - len(self.engine.free_slots)

    @property
    def has_work(self) -> bool:
        return bool(self._waiting or self.running)

    # ---- the stepping thread --------------------------------------------------------------------------
    def step(self, emit: Callable[[list[TokenEvent]], None] | None = None) -> list[TokenEvent]:
        """Admit, then one engine step; the events of this scheduler's sequences (also handed to `emit` as
        soon as they are drawn, before the step's decode forward: Engine.step)."""
        self.admit()
        return self.advance(emit)

    def admit(self) -> None:
        """Move waiting sequences into free slots: one batched prefill, or row by row with `on_reject`."""
        with self._lock:
            free = len(self.engine.free_slots)
            while self._waiting and len(self._incoming) < free:
                self._incoming.append(self._waiting.popleft())
        if not self._incoming:
            return
        try:
            batch = list(self._incoming)
            try:
                slots = self.engine.add_many([p.prompt for p in batch], [p.params for p in batch], [p.request_id for p in batch],
                                             bos=self.bos, indices=[p.index for p in batch],
                                             prompt_indices=[p.prompt_index for p in batch])  # fmt: skip
            except Exception:
                if self.on_reject is None:
                    raise
            else:
                self._incoming.clear()
                for p, slot in zip(batch, slots):
                    self._place(p, slot)
                return
            while self._incoming:  # isolate the culprit: a rejected callback may drop more of `_incoming`
                p = self._incoming.pop(0)
                try:
                    [slot] = self.engine.add_many([p.prompt], [p.params], [p.request_id], bos=self.bos, indices=[p.index],
                                                  prompt_indices=[p.prompt_index])  # fmt: skip
                except Exception as e:  # noqa: BLE001 - this sequence alone fails
                    self.on_reject(p, e)
                else:
                    self._place(p, slot)
        finally:
            with self._lock:
                self._incoming.clear()

    def advance(self, emit: Callable[[list[TokenEvent]], None] | None = None) -> list[TokenEvent]:
        """One engine step for every running sequence; finished ones leave `running`. `emit`: Engine.step's."""
        if not self.running:
            return []
        rows, events = len(self.running), []

        def settle(drawn: list[TokenEvent]) -> None:  # before the step's forward
            events.extend(ev for ev in drawn if ev.slot in self.running)
            self.steps += 1
            self.step_rows += rows
            for ev in events:
                if ev.finished:
                    del self.running[ev.slot]
            if emit is not None:
                emit(events)

        self.engine.step(settle)
        return events

    def cancel(self, match: Callable[[object], bool]) -> None:
        """Sequences whose request_id matches: waiting ones leave, running ones end at the next step."""
        self._remove_waiting(match)
        for slot, p in self.running.items():
            if match(p.request_id):
                self.engine.cancel(slot)

    def drop(self, match: Callable[[object], bool]) -> None:
        """Sequences whose request_id matches leave now (their slots are freed), with no event."""
        self._remove_waiting(match)
        for slot in [s for s, p in self.running.items() if match(p.request_id)]:
            self.engine.remove(slot)
            del self.running[slot]

    def run(self, cancel: Callable[[], bool] | None = None) -> Iterator[TokenEvent]:
        """Step until every sequence has finished, yielding events. `cancel()` true: all end at the next
        step. Closing the iterator early frees every slot."""
        try:
            while self.has_work:
                self.admit()
                if cancel is not None and cancel():
                    self.cancel(lambda _: True)
                yield from self.advance()
        finally:
            self.drop(lambda _: True)

    def _place(self, p: Pending, slot: int) -> None:
        self.running[slot] = p
        self.prompt_tokens += len(p.prompt)

    def _remove_waiting(self, match: Callable[[object], bool]) -> None:
        with self._lock:
            self._waiting = deque(p for p in self._waiting if not match(p.request_id))
            self._incoming = [p for p in self._incoming if not match(p.request_id)]


def contiguous_block(free: list[int], n: int) -> int | None:
    """The first row of n consecutive free rows, or None."""
    if n == 1:
        return free[0] if free else None
    run_start, run_len, prev = None, 0, None
    for b in free:
        if prev is not None and b == prev + 1:
            run_len += 1
        else:
            run_start, run_len = b, 1
        if run_len == n:
            return run_start
        prev = b
    return None
