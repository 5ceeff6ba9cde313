"""/metrics: request, token, queue and latency counters in Prometheus' text format (no client library).

Two sources: an ASGI middleware that times every HTTP request (status, latency) and the router's calls
to `observe_ttft`, and the worker's `WorkerStats` (steps, tokens, queue depth), read when scraped.
`gpt2kit_engine_steps_total` next to `gpt2kit_generation_tokens_total` shows batching at work: with
concurrent requests there are far fewer decode steps than generated tokens.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict

from gpt2kit.serve.worker import WorkerStats

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class Histogram:
    """A Prometheus histogram: cumulative bucket counts, sum and count, per label value."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0] * (len(buckets) + 1))
        self.sums: dict[str, float] = defaultdict(float)

    def observe(self, label: str, value: float) -> None:
        self.counts[label][bisect.bisect_left(self.buckets, value)] += 1
        self.sums[label] += value

    def render(self, name: str, label_name: str) -> list[str]:
        lines = []
        for label, counts in sorted(self.counts.items()):
            running = 0
            for bound, c in zip((*self.buckets, float("inf")), counts):
                running += c
                le = "+Inf" if bound == float("inf") else repr(bound)
                lines.append(f'{name}_bucket{{{label_name}="{label}",le="{le}"}} {running}')
            lines.append(f'{name}_sum{{{label_name}="{label}"}} {self.sums[label]:.6f}')
            lines.append(f'{name}_count{{{label_name}="{label}"}} {running}')
        return lines


class Metrics:
    """HTTP-side counters; `render(stats)` adds the worker's and returns the exposition text."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency = Histogram()
        self.ttft = Histogram()
        self.in_flight = 0

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(path, status)] += 1
            self.latency.observe(path, seconds)

    def observe_ttft(self, endpoint: str, seconds: float) -> None:
        with self._lock:
            self.ttft.observe(endpoint, seconds)

    def render(self, stats: WorkerStats) -> str:
        out: list[str] = []

        def metric(name: str, kind: str, help: str, lines: list[str]) -> None:
            out.extend([f"# HELP {name} {help}", f"# TYPE {name} {kind}", *lines])

        with self._lock:
            metric("gpt2kit_http_requests_total", "counter", "HTTP requests by path and status code.",
                   [f'gpt2kit_http_requests_total{{path="{p}",status="{s}"}} {n}' for (p, s), n in sorted(self.requests.items())])  # fmt: skip
            metric("gpt2kit_http_requests_in_flight", "gauge", "HTTP requests being served now.", [f"gpt2kit_http_requests_in_flight {self.in_flight}"])
            metric("gpt2kit_request_latency_seconds", "histogram", "Time from request to the end of the response.",
                   self.latency.render("gpt2kit_request_latency_seconds", "path"))  # fmt: skip
            metric("gpt2kit_time_to_first_token_seconds", "histogram", "Time from request to the first generated token.",
                   self.ttft.render("gpt2kit_time_to_first_token_seconds", "endpoint"))  # fmt: skip
        s = stats
        for name, kind, help, value in (
            ("gpt2kit_prompt_tokens_total", "counter", "Prompt tokens prefilled.", s.prompt_tokens),
            ("gpt2kit_generation_tokens_total", "counter", "Tokens generated.", s.generated_tokens),
            ("gpt2kit_engine_steps_total", "counter", "Batched decode steps run.", s.steps),
            ("gpt2kit_engine_step_rows_total", "counter", "Sum over steps of the sequences decoded together.", s.step_rows),
            ("gpt2kit_sequences_finished_total", "counter", "Sequences (choices) finished.", s.sequences_finished),
            ("gpt2kit_requests_rejected_total", "counter", "Requests refused with 503 because the queue was full.", s.rejected),
            ("gpt2kit_request_timeouts_total", "counter", "Requests cancelled at their timeout.", s.timeouts),
            ("gpt2kit_engine_errors_total", "counter", "Engine steps that failed (a bug; the worker went on).", s.engine_errors),
            ("gpt2kit_queue_depth", "gauge", "Sequences waiting for a batch slot.", s.queued),
            ("gpt2kit_running_sequences", "gauge", "Sequences in the batch now.", s.running),
        ):
            metric(name, kind, help, [f"{name} {value}"])
        return "\n".join(out) + "\n"


class MetricsMiddleware:
    """Pure ASGI middleware (not BaseHTTPMiddleware, which breaks streaming cancellation): counts every
    HTTP request by route path and final status, and times it to the end of its response body."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [500]

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_flight -= 1
            path = scope.get("path", "")
            known = ("/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")
            self.metrics.observe_request(path if path in known else "other", status[0], time.perf_counter() - t0)
