"""The engine worker: one thread that owns the model and the generation Engine, and batches every request.

Continuous batching: requests are split into sequences (prompts x n choices) that wait in a bounded
queue; between two decode steps the worker moves waiting sequences into free KV-cache slots (one
left-padded prefill for all of them), then runs ONE batched `engine.step()` for every active slot, and
hands each request its new text. Finished, cancelled and timed-out sequences leave the batch at once,
so their slots are refilled on the next step. A sequence that fails inside a step (finish_reason
"error") fails its own request only; the others in the batch go on. Nothing here knows about HTTP:
the router submits token ids + SamplingParams and reads `Delta`s from an async iterator.

Threading: the model runs in the worker thread (a forward pass would block the event loop); results are
passed back with `loop.call_soon_threadsafe`, once per request per step. The asyncio side only appends
to the queue / marks cancellations under a lock and wakes the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from gpt2kit.errors import Gpt2kitError, InputError
from gpt2kit.generate.engine import Engine
from gpt2kit.generate.logprobs import TokenLogprob
from gpt2kit.generate.sampling import SamplingParams
from gpt2kit.generate.stopping import FinishReason

log = logging.getLogger("gpt2kit.serve")


class QueueFull(Gpt2kitError):
    """The wait queue is full: the caller should retry later (HTTP 503 + Retry-After)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeout(Gpt2kitError):
    """The request ran past its deadline and was cancelled (HTTP 408)."""


class WorkerError(Gpt2kitError):
    """The engine failed on this request (a bug, not bad input); the worker keeps serving others (HTTP 500)."""


@dataclass
class Delta:
    """New output of one choice: `text` to append, the token that made it (None on a final event
    without a token), and `finish_reason` ('stop', 'length', 'cancelled') on the choice's last delta."""

    index: int
    text: str
    token: int | None
    finish_reason: str | None = None
    logprob: TokenLogprob | None = None  # `token`'s logprob, when the request asked for logprobs
    prompt_logprobs: list[TokenLogprob | None] | None = None  # the prompt's, on the choice's first delta


@dataclass
class WorkerStats:
    """Counters since start (read by /metrics; ints are written by the worker thread only)."""

    steps: int = 0  # batched decode steps run
    step_rows: int = 0  # sum over steps of the sequences decoded in that step
    prompt_tokens: int = 0
    generated_tokens: int = 0
    sequences_finished: int = 0
    rejected: int = 0  # requests refused because the queue was full
    timeouts: int = 0
    engine_errors: int = 0
    queued: int = 0  # sequences waiting for a slot now
    running: int = 0  # sequences in a slot now


@dataclass
class _Seq:
    job: Job
    index: int  # choice index in the response: prompt_index * n + sample index
    sample: int  # sample index within its prompt (seed + sample)
    prompt: list[int]


@dataclass(eq=False)
class Job:
    """One request as the worker sees it. Iterate `deltas()` from the event loop; `cancel()` to abandon it."""

    worker: Worker
    params: SamplingParams
    n_choices: int
    loop: asyncio.AbstractEventLoop
    deadline: float
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    slots: set[int] = field(default_factory=set)
    waiting: int = 0  # sequences still in the wait queue
    done: bool = False  # set by the worker when every choice finished, failed or was cancelled
    first_token_at: float | None = None

    async def deltas(self) -> AsyncIterator[Delta]:
        """Every Delta of every choice until all have finished; raises RequestTimeout/WorkerError/InputError."""
        remaining = self.n_choices
        while remaining:
            items = await self.queue.get()
            for item in items:
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    remaining -= 1
                yield item

    def cancel(self) -> None:
        """Free this request's slots and drop its waiting sequences (before the next step)."""
        self.worker._cancel(self)

    def _push(self, items: list) -> None:
        """Worker thread -> event loop. A closed loop means nobody listens any more: cancel."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, items)
        except RuntimeError:
            self.done = True
            self.worker._cancel(self)


class Worker:
    """Owns the Engine (and so the model); runs continuous batching in a background thread."""

    def __init__(
        self,
        engine: Engine,
        *,
        max_queue: int = 256,
        request_timeout: float = 600.0,
    ) -> None:
        self.engine = engine
        self.max_queue = max_queue
        self._admitting = 0
        self.request_timeout = request_timeout
        self.stats = WorkerStats()
        self._waiting: deque[_Seq] = deque()
        self._jobs: set[Job] = set()
        self._owner: dict[int, tuple[Job, int]] = {}  # slot -> (job, choice index)
        self._cancels: list[Job] = []
        self._cond = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Worker:
        if self._thread is None:
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="gpt2kit-engine-worker", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def context_len(self) -> int:
        return self.engine.max_len

    # ---- the asyncio side ---------------------------------------------------------------------------
    def submit(self, prompts: Sequence[Sequence[int]], params: SamplingParams, timeout: float | None = None) -> Job:
        """Queue prompts x params.n sequences; choice i of prompt p gets index p * n + i (OpenAI's order).
        Call from a running event loop. Raises QueueFull when they would not fit the wait queue."""
        loop = asyncio.get_running_loop()
        if not self.alive:
            raise WorkerError("the engine worker is not running; restart the server.")
        n = params.n
        job = Job(self, params, len(prompts) * n, loop, time.monotonic() + (timeout or self.request_timeout))
        seqs = [_Seq(job, p * n + i, i, list(ids)) for p, ids in enumerate(prompts) for i in range(n)]
        with self._cond:
            # slots free in the engine, less those already promised to sequences being admitted right now
            capacity = self.max_queue + len(self.engine.free_slots) - self._admitting
            if len(self._waiting) + len(seqs) > capacity:
                self.stats.rejected += 1
                raise QueueFull(
                    f"the server is busy: {len(self._waiting)} sequences are waiting (queue limit {self.max_queue}) "
                    f"and this request adds {len(seqs)}. Retry after a moment.",
                    retry_after=1,
                )
            job.waiting = len(seqs)
            self._waiting.extend(seqs)
            self._jobs.add(job)
            self.stats.queued = len(self._waiting)
            self._cond.notify()
        return job

    def _cancel(self, job: Job) -> None:
        with self._cond:
            if job in self._jobs:
                self._cancels.append(job)
                self._cond.notify()

    # ---- the worker thread ------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._stop or self._waiting or self._owner or self._cancels):
                    self._cond.wait(timeout=0.5)
                    self._expire()
                if self._stop:
                    break
                cancels, self._cancels = self._cancels, []
                for job in cancels:
                    self._drop(job)
                self._expire()
                admit = []
                free = len(self.engine.free_slots)
                while self._waiting and len(admit) < free:
                    admit.append(self._waiting.popleft())
                self._admitting = len(admit)  # out of the queue, not yet in a slot: still counted by submit
                self.stats.queued = len(self._waiting)
            if admit:
                try:
                    self._admit(admit)
                finally:
                    with self._cond:
                        self._admitting = 0
            if self._owner:
                self._step()
            self.stats.running = len(self._owner)
        self._fail_all(WorkerError("the server is shutting down."))

    def _admit(self, seqs: list[_Seq]) -> None:
        """Prefill waiting sequences into free slots: one batched prefill, or one by one if that fails
        (so a single bad prompt fails its own request only)."""
        for s in seqs:  # (worker thread: the only writer of job.waiting after submit)
            s.job.waiting -= 1
        try:
            slots = self.engine.add_many([s.prompt for s in seqs], [s.job.params for s in seqs], [s.job for s in seqs],
                                         indices=[s.sample for s in seqs], prompt_indices=[s.index for s in seqs])  # fmt: skip
            pairs = list(zip(seqs, slots))
        except Exception:  # noqa: BLE001 - isolate the culprit below
            pairs = []
            for s in seqs:
                try:
                    pairs.append((s, self.engine.add(s.prompt, s.job.params, s.job, index=s.sample)))
                except Exception as e:  # noqa: BLE001
                    self._fail(s.job, e if isinstance(e, InputError) else WorkerError(f"prefill failed: {type(e).__name__}: {e}"))
        for s, slot in pairs:
            if s.job.done:  # failed or cancelled meanwhile
                self.engine.remove(slot)
                continue
            self._owner[slot] = (s.job, s.index)
            s.job.slots.add(slot)
            self.stats.prompt_tokens += len(s.prompt)

    def _step(self) -> None:
        rows = len(self._owner)
        try:
            events = self.engine.step()
        except Exception as e:  # noqa: BLE001 - a bug must not kill the worker: fail the batch, go on
            log.exception("engine step failed")
            self.stats.engine_errors += 1
            for job in {j for j, _ in self._owner.values()}:
                self._fail(job, WorkerError(f"generation failed: {type(e).__name__}: {e}"))
            return
        self.stats.steps += 1
        self.stats.step_rows += rows
        out: dict[Job, list[Delta]] = {}
        failed: dict[Job, str] = {}
        now = time.monotonic()
        for ev in events:
            owner = self._owner.get(ev.slot)
            if owner is None:
                continue
            job, index = owner
            if ev.finish_reason is FinishReason.ERROR:  # this sequence failed: its request fails, nobody else's
                del self._owner[ev.slot]
                job.slots.discard(ev.slot)
                failed.setdefault(job, ev.error or "sampling failed")
                continue
            if ev.token is not None:
                self.stats.generated_tokens += 1
                if job.first_token_at is None:
                    job.first_token_at = now
            reason = None
            if ev.finished:
                reason = ev.finish_reason.value if ev.finish_reason is not None else "stop"
                del self._owner[ev.slot]
                job.slots.discard(ev.slot)
                self.stats.sequences_finished += 1
            if ev.text or reason is not None or ev.logprob is not None or ev.prompt_logprobs is not None:
                out.setdefault(job, []).append(Delta(index, ev.text, ev.token, reason, ev.logprob, ev.prompt_logprobs))
        for job, why in failed.items():
            log.warning("request failed alone, the batch goes on: %s", why)
            self.stats.engine_errors += 1
            out.pop(job, None)
            self._fail(job, WorkerError(f"generation failed for this request: {why}"))
        for job, items in out.items():
            job._push(items)
            if not job.slots and not job.waiting:
                with self._cond:
                    job.done = True
                    self._jobs.discard(job)

    def _expire(self) -> None:
        """(lock held) Cancel jobs past their deadline and tell their callers."""
        now = time.monotonic()
        for job in [j for j in self._jobs if j.deadline < now]:
            self.stats.timeouts += 1
            self._drop(job)
            job._push([RequestTimeout("the request took longer than its timeout and was cancelled; lower max_tokens or retry later.")])

    def _drop(self, job: Job) -> None:
        """(lock held) Remove a job everywhere: waiting sequences, slots (freed now), bookkeeping."""
        job.done = True
        self._jobs.discard(job)
        if job.waiting:
            self._waiting = deque(s for s in self._waiting if s.job is not job)
            job.waiting = 0
        for slot in list(job.slots):
            self.engine.remove(slot)
            self._owner.pop(slot, None)
        job.slots.clear()

    def _fail(self, job: Job, error: BaseException) -> None:
        with self._cond:
            self._drop(job)
        job._push([error])

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            jobs = list(self._jobs)
        for job in jobs:
            self._fail(job, error)


@contextlib.contextmanager
def running(worker: Worker):
    """`with running(Worker(engine)) as w:` starts the thread and always stops it."""
    worker.start()
    try:
        yield worker
    finally:
        worker.close()


def build_worker(model, token_bytes: Sequence[bytes], *, max_batch_size: int = 32, max_model_len: int | None = None,
                 max_queue: int = 256, request_timeout: float = 600.0) -> Worker:  # fmt: skip
    """An Engine over `model` (one KV cache of max_batch_size x max_model_len) wrapped in a Worker (not started)."""
    engine = Engine(model, max_batch=max_batch_size, max_len=max_model_len, token_bytes=token_bytes)
    return Worker(engine, max_queue=max_queue, request_timeout=request_timeout)
