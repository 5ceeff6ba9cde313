"""The engine worker: owns the model's Engine and maps HTTP-free requests onto its one Scheduler.

Continuous batching itself is generate/scheduler.py (the same loop `Engine.generate` uses): sequences
(prompts x n choices) wait in its queue, join free KV-cache slots between two decode steps (one left-padded
prefill for all of them), and leave the batch when finished, so their slots are refilled on the next step.
What the worker adds is the request side: a bounded queue (QueueFull -> 503), deadlines (RequestTimeout),
cancellation (a client that leaves), per-request failures (a sequence that fails inside a step, or whose
prompt cannot be admitted, fails its own request only; the others in the batch go on), and delivering each
request's new text as `Delta`s to an async iterator. Nothing here knows about HTTP.

Threads: the engine loop (`EngineLoop`) steps every worker of a server in turn, on ONE thread: the main
thread under `gpt2kit serve` (serve/app.py `serve()`), or a daemon thread started by `Worker.start()`
(BackgroundServer, tests). The asyncio side only appends to the queue / marks cancellations under a lock
and wakes the loop; results go back with `loop.call_soon_threadsafe`, once per request per step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

from gpt2kit.errors import Gpt2kitError, InputError
from gpt2kit.generate.engine import Engine
from gpt2kit.generate.logprobs import TokenLogprob
from gpt2kit.generate.params import SamplingParams
from gpt2kit.generate.scheduler import Pending, Scheduler
from gpt2kit.generate.sequence import TokenEvent
from gpt2kit.generate.stopping import FinishReason
from gpt2kit.hugepages import wants_huge_pages

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


@dataclass(eq=False)
class Job:
    """One request as the worker sees it. Iterate `deltas()` from the event loop; `cancel()` to abandon it."""

    worker: Worker
    params: SamplingParams
    n_choices: int
    loop: asyncio.AbstractEventLoop
    deadline: float
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    unfinished: int = 0  # choices not finished yet (engine loop thread only)
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
        """Engine loop thread -> event loop. A closed loop means nobody listens any more: cancel."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, items)
        except RuntimeError:
            self.done = True
            self.worker._cancel(self)


def _of(job: Job):
    """Matches the scheduler request ids (job, choice index) of one job."""
    return lambda rid: rid[0] is job


class Worker:
    """Owns the Engine (and so the model) and its Scheduler; stepped by an EngineLoop (module docstring)."""

    def __init__(self, engine: Engine, *, max_queue: int = 256, request_timeout: float = 600.0,
                 wake: threading.Condition | None = None) -> None:  # fmt: skip
        self.engine = engine
        self.scheduler = Scheduler(engine, on_reject=self._rejected)  # request ids: (job, choice index)
        self.max_queue = max_queue
        self.request_timeout = request_timeout
        self.stats = WorkerStats()
        self._jobs: set[Job] = set()
        self._cancels: list[Job] = []
        # the lock of this worker's state, and what wakes its engine loop: one Condition shared by every
        # worker of a server, so that one loop can wait for all of them
        self._cond = wake or threading.Condition()
        self._serving = False  # an engine loop is stepping this worker
        self._loop: EngineLoop | None = None
        self._thread: threading.Thread | None = None

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> Worker:
        """Step this worker on a daemon thread of its own (for callers that keep the main thread)."""
        if self._thread is None:
            self._loop = EngineLoop([self]).open()
            self._thread = threading.Thread(target=self._loop.run, name="gpt2kit-engine-loop", daemon=True)
            self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        if self._loop is not None:
            self._loop.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread, self._loop = None, None

    @property
    def alive(self) -> bool:
        return self._serving

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
        seqs = [Pending(list(ids), params, (job, p * n + i), i, p * n + i) for p, ids in enumerate(prompts) for i in range(n)]
        with self._cond:
            # beyond the slots free now (less those being filled right now), at most max_queue wait
            if self.scheduler.backlog + len(seqs) > self.max_queue:
                self.stats.rejected += 1
                raise QueueFull(
                    f"the server is busy: {self.scheduler.waiting} sequences are waiting (queue limit {self.max_queue}) "
                    f"and this request adds {len(seqs)}. Retry after a moment.",
                    retry_after=1,
                )
            job.unfinished = len(seqs)
            self._jobs.add(job)
            self.scheduler.submit(seqs)
            self.stats.queued = self.scheduler.waiting
            self._cond.notify_all()
        return job

    def _cancel(self, job: Job) -> None:
        with self._cond:
            if job in self._jobs:
                self._cancels.append(job)
                self._cond.notify_all()

    # ---- the engine loop thread ---------------------------------------------------------------------
    def _has_work(self) -> bool:
        """(lock held) Whether a tick would do anything."""
        return bool(self._cancels) or self.scheduler.has_work

    def _tick(self) -> None:
        """Cancellations and deadlines, then admit + one engine step."""
        with self._cond:
            cancels, self._cancels = self._cancels, []
            for job in cancels:
                self._drop(job)
            self._expire()
        if self.scheduler.has_work:
            self._step()
        sched = self.scheduler
        self.stats.queued, self.stats.running = sched.waiting, len(sched.running)
        self.stats.steps, self.stats.step_rows, self.stats.prompt_tokens = sched.steps, sched.step_rows, sched.prompt_tokens

    def _step(self) -> None:
        failing: dict[Job, str] = {}  # requests this step's events failed: failed once the step is over
        try:  # each step's events go out before its decode forward: they stream while the next token is made
            self.scheduler.step(emit=lambda events: self._deliver(events, failing))
        except Exception as e:  # noqa: BLE001 - a bug must not kill the loop: fail the batch, go on
            log.exception("engine step failed")
            self.stats.engine_errors += 1
            for job in {p.request_id[0] for p in self.scheduler.running.values()} - failing.keys():
                self._fail(job, WorkerError(f"generation failed: {type(e).__name__}: {e}"))
        finally:  # after the step: failing a request frees its other slots, which takes the engine's lock
            for job, why in failing.items():
                self._fail(job, WorkerError(f"generation failed for this request: {why}"))

    def _deliver(self, events: list[TokenEvent], failing: dict[Job, str]) -> None:
        """One step's events -> each request's Deltas, pushed to its event loop; a request that failed goes
        into `failing` (freeing its other slots must wait until the step is over)."""
        out: dict[Job, list[Delta]] = {}
        failed: dict[Job, str] = {}
        now = time.monotonic()
        for ev in events:
            job, index = ev.request_id
            if job.done:
                continue
            if ev.finish_reason is FinishReason.ERROR:  # this sequence failed: its request fails, nobody else's
                failed.setdefault(job, ev.error or "sampling failed")
                continue
            if ev.token is not None:
                self.stats.generated_tokens += 1
                if job.first_token_at is None:
                    job.first_token_at = now
            reason = None
            if ev.finished:
                reason = ev.finish_reason.value if ev.finish_reason is not None else "stop"
                job.unfinished -= 1
                self.stats.sequences_finished += 1
            if ev.text or reason is not None or ev.logprob is not None or ev.prompt_logprobs is not None:
                out.setdefault(job, []).append(Delta(index, ev.text, ev.token, reason, ev.logprob, ev.prompt_logprobs))
        for job, why in failed.items():  # failed by _step once the step is over
            log.warning("request failed alone, the batch goes on: %s", why)
            self.stats.engine_errors += 1
            out.pop(job, None)
            failing[job] = why
        for job, items in out.items():
            job._push(items)
            if job.unfinished == 0:
                with self._cond:
                    job.done = True
                    self._jobs.discard(job)

    def _rejected(self, pending: Pending, e: Exception) -> None:
        """The scheduler could not admit this sequence (its prompt failed to prefill): fail its request."""
        job = pending.request_id[0]
        if not job.done:
            self._fail(job, e if isinstance(e, InputError) else WorkerError(f"prefill failed: {type(e).__name__}: {e}"))

    def _expire(self) -> None:
        """(lock held) Cancel jobs past their deadline and tell their callers."""
        now = time.monotonic()
        for job in [j for j in self._jobs if j.deadline < now]:
            self.stats.timeouts += 1
            self._drop(job)
            job._push(
                [RequestTimeout("the request took longer than its timeout and was cancelled; lower max_tokens or retry later.")]
            )

    def _drop(self, job: Job) -> None:
        """(lock held) Remove a job everywhere: waiting sequences, slots (freed now), bookkeeping."""
        job.done = True
        self._jobs.discard(job)
        self.scheduler.drop(_of(job))

    def _fail(self, job: Job, error: BaseException) -> None:
        with self._cond:
            self._drop(job)
        job._push([error])

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            jobs = list(self._jobs)
        for job in jobs:
            self._fail(job, error)


class EngineLoop:
    """Steps one or more workers (one per served model) in turn on the thread that calls `run()`; they must
    share one wake Condition. `stop()` only sets a flag, so it is safe in a signal handler: the loop sees
    it within one step, or within `poll_s` when idle."""

    poll_s = 0.5  # idle wait: deadlines are checked and a stop is seen at least this often

    def __init__(self, workers: Sequence[Worker]) -> None:
        assert workers and all(w._cond is workers[0]._cond for w in workers), "the workers of one loop share a wake Condition"
        self.workers = list(workers)
        self._cond = workers[0]._cond
        self._stop = False

    def open(self) -> EngineLoop:
        """Mark the workers as served (requests are accepted from now on; they wait for `run()`)."""
        for w in self.workers:
            w._serving = True
        return self

    def stop(self) -> None:
        self._stop = True

    @property
    def stopping(self) -> bool:
        return self._stop

    def run(self, until: Callable[[], bool] | None = None) -> None:
        """Step until `stop()` (or until `until()` is true); then fail every request still pending."""
        self.open()
        try:
            while not (self._stop or (until is not None and until())):
                with self._cond:
                    if not any(w._has_work() for w in self.workers):
                        self._cond.wait(self.poll_s)
                        for w in self.workers:
                            w._expire()
                        continue
                for w in self.workers:
                    w._tick()
        finally:
            for w in self.workers:
                w._serving = False
                w._fail_all(WorkerError("the server is shutting down."))


@contextlib.contextmanager
def running(worker: Worker):
    """`with running(Worker(engine)) as w:` starts the engine loop thread and always stops it."""
    worker.start()
    try:
        yield worker
    finally:
        worker.close()


def build_worker(model, token_bytes: Sequence[bytes], *, max_batch_size: int = 32, max_model_len: int | None = None,
                 max_queue: int = 256, request_timeout: float = 600.0, wake: threading.Condition | None = None,
                 huge_pages: str = "auto") -> Worker:  # fmt: skip
    """An Engine over `model` (one KV cache of max_batch_size x max_model_len) wrapped in a Worker (not started).
    Workers stepped by one EngineLoop share `wake`. A server lives on, so "auto" huge pages are on."""
    engine = Engine(model, max_batch=max_batch_size, max_len=max_model_len, token_bytes=token_bytes,
                    huge_pages=wants_huge_pages(huge_pages, None))  # fmt: skip
    return Worker(engine, max_queue=max_queue, request_timeout=request_timeout, wake=wake)
