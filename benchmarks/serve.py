"""Serving throughput and latency: N concurrent streaming clients against `gpt2kit serve` (continuous
batching), versus the same requests run one at a time through transformers' `generate` and through
gpt2kit's own Engine (the like-for-like figure for 1 client), in the same run. The server is `gpt2kit serve`
in its own process and the clients are another, as a user runs them; each side is a fresh process, the sides
alternate --repeat times, and the medians go to benchmarks/results/serve.jsonl.

    python benchmarks/serve.py                                  # CPU: 124M random weights, 1/8/32 clients
    python benchmarks/serve.py --device cuda --clients 1 8 32 64
    python benchmarks/serve.py --clients 1 --busy 1             # a busy machine: another process spinning on a core

Every request: a 32-token prompt, greedy, exactly --max-tokens new tokens (<|endoftext|> is suppressed
on both sides, so the token counts are equal). Each of N clients sends its requests one after another,
ceil(--baseline-requests / N) of them: one client sends the very requests that `generate` runs, so that the
like-for-like ratio compares the same work. `serve_over_generate` is the median over the rounds of each
round's server / generate figure (the two run back to back); `serve_over_generate_by_request` pairs them
request by request (`paired`: a generate process and the server, both warmed up, take each request in turn),
which a VM's memory phases, moving whole runs by 10-20 %, move least. The clients are http.client threads
(`run_clients`), and each line carries their CPU per token: they share the server's cores. Reported per client count: total generated tokens/s,
p50/p99 time to first token (request sent -> first text chunk) and p50/p99 per-token latency
((last chunk - first chunk) / (tokens - 1), per request). The transformers baseline runs
--baseline-requests requests sequentially (batch 1, KV cache, SDPA) and reports tokens/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import harness  # noqa: E402


def percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def make_prompts(n: int, length: int = 32) -> list[list[int]]:
    g = torch.Generator().manual_seed(1234)
    return [torch.randint(0, 50000, (length,), generator=g).tolist() for _ in range(n)]


def one_request(conn, prompt: list[int], max_tokens: int) -> dict:
    """One streamed completion on an open keep-alive connection; chunk times as the client sees them."""
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "logit_bias": {"50256": -100}}  # fmt: skip
    t0 = time.perf_counter()
    first = last = None
    tokens = 0
    conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    for line in r:  # one SSE line at a time, as the server flushes them (chunked transfer decoding)
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        if chunk["choices"] and chunk["choices"][0]["text"]:
            last = time.perf_counter()
            first = first or last
    return {"ttft": first - t0, "per_token": (last - first) / max(1, tokens - 1), "tokens": tokens, "wall": last - t0}


def run_clients(port: int, prompts: list[list[int]], max_tokens: int, clients: int | None = None) -> dict:
    """`clients` streaming clients (default one a prompt), each a thread with its own keep-alive connection,
    sending its share of `prompts` in turn. The client is the standard library's http.client: it reads a
    chunk for ~40x less CPU than an asyncio client (httpx took ~0.85 ms of CPU a token here), CPU that the
    client, sharing the machine's cores, would take from the server it measures."""
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    n = clients or len(prompts)

    def one_client(mine: list[list[int]]) -> list[dict]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
        try:
            return [one_request(conn, p, max_tokens) for p in mine]
        finally:
            conn.close()

    cpu0, t0 = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        results = [r for rs in pool.map(one_client, [prompts[i::n] for i in range(n)]) for r in rs]
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    tokens = sum(r["tokens"] for r in results)
    return {
        "clients": n, "requests": len(prompts), "tokens": tokens, "wall_s": wall, "tok_per_s": tokens / wall,
        "client_cpu_ms_per_token": 1e3 * cpu / tokens,
        "ttft_p50_ms": 1e3 * percentile([r["ttft"] for r in results], 50),
        "ttft_p99_ms": 1e3 * percentile([r["ttft"] for r in results], 99),
        "tpot_p50_ms": 1e3 * percentile([r["per_token"] for r in results], 50),
        "tpot_p99_ms": 1e3 * percentile([r["per_token"] for r in results], 99),
    }  # fmt: skip


def transformers_sequential(folder: str, prompts: list[list[int]], max_tokens: int, device: str, dtype: torch.dtype) -> dict:
    import transformers

    model = transformers.GPT2LMHeadModel.from_pretrained(folder, torch_dtype=dtype, attn_implementation="sdpa").to(device).eval()
    kw = dict(max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, pad_token_id=50256)
    with torch.inference_mode():
        model.generate(torch.tensor([prompts[0]], device=device), **{**kw, "max_new_tokens": 4, "min_new_tokens": 4})  # warm-up
        t0 = time.perf_counter()
        tokens = 0
        for p in prompts:
            out = model.generate(torch.tensor([p], device=device), **kw)
            tokens += out.shape[1] - len(p)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    return {"requests": len(prompts), "tokens": tokens, "wall_s": wall, "tok_per_s": tokens / wall}


@contextlib.contextmanager
def served(args):
    """`gpt2kit serve` in its own process, as a user runs it, for --n clients; yields its port once it answers."""
    import socket
    import subprocess
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "gpt2kit", "serve", "--model", args.folder, "--port", str(port), "--device", args.device,
           "--dtype", args.dtype, "--max-batch-size", str(args.n), "--max-model-len", str(32 + args.max_tokens + 1),
           "--max-tokens-limit", str(args.max_tokens), "--huge-pages", args.huge_pages, "--log-level", "warning"]  # fmt: skip
    env = harness.worker_env(**({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {}))
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).status == 200:
                    break
            except OSError:  # refused while it starts (urllib's URLError is an OSError)
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gpt2kit serve did not start: {' '.join(cmd)}")
            time.sleep(0.2)
        run_clients(port, [[50256] * 32] * 2, 4)  # warm-up (the kernel choice for this batch size included)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=60)


def paired(args, prompts: list[list[int]]) -> dict:
    """The like-for-like figure, request by request: a `generate` process (the Engine, batch 1) and the server with
    one client, both started and warmed up, take the same request in turn, the first of each pair alternating;
    each pair's ratio is the server's tokens/s over generate's. Pairs a few seconds apart met the same phase of a
    VM's memory speed, which moves whole runs by 10-20 % (three runs of each side, back to back, put the ratio at
    0.92 and at 1.01 the same hour)."""
    import http.client
    import subprocess

    argv = [sys.executable, __file__, "--side", "generate-loop", "--folder", args.folder, "--max-tokens", str(args.max_tokens),
            "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads),
            "--baseline-requests", str(args.baseline_requests)]  # fmt: skip
    gen = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=harness.worker_env())
    try:
        if gen.stdout.readline().strip() != "ready":
            raise RuntimeError("the generate process did not start")

        def generated(i: int) -> float:
            gen.stdin.write(f"{i}\n")
            gen.stdin.flush()
            row = json.loads(gen.stdout.readline())
            return row["tokens"] / row["wall_s"]

        with served(args) as port:

            def server(i: int) -> float:  # a connection of its own: the server closes one idle for 5 s (uvicorn's
                # keep-alive), as it was while a slow generate request ran on a busy machine
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
                r = one_request(conn, prompts[i], args.max_tokens)
                conn.close()
                return r["tokens"] / r["wall"]

            pairs = []
            for i in range(args.baseline_requests):
                first, second = (generated, server) if i % 2 == 0 else (server, generated)
                a, b = first(i), second(i)
                g, s = (a, b) if first is generated else (b, a)
                pairs.append({"generate": g, "server": s, "ratio": s / g})
    finally:
        gen.stdin.close()
        gen.wait(timeout=60)
    return {"pairs": pairs}


def _generate_loop(args, prompts: list[list[int]]) -> None:
    """The paired measurement's generate process: warmed up, it runs request i for each i read on stdin."""
    engine, params = _engine(args)
    print("ready", flush=True)
    for line in sys.stdin:
        p = prompts[int(line)]
        t0 = time.perf_counter()
        tokens = sum(len(c.token_ids) for c in engine.generate([p], params))
        print(json.dumps({"tokens": tokens, "wall_s": time.perf_counter() - t0}), flush=True)


def _engine(args):
    """gpt2kit's Engine for one row, warmed up (its kernel choice made), and the benchmark's sampling parameters."""
    from gpt2kit import from_pretrained
    from gpt2kit.device import resolve_dtype
    from gpt2kit.generate import Engine, SamplingParams

    engine = Engine(from_pretrained(args.folder, device=args.device, dtype=resolve_dtype(args.dtype)), max_batch=1)
    engine.generate([[50256] * 32], SamplingParams(max_new_tokens=4, temperature=0))  # warm-up, kernel choice
    return engine, SamplingParams(max_new_tokens=args.max_tokens, temperature=0, ignore_eos=True)


def worker(args) -> None:
    """One side in this fresh process: 'transformers' (sequential generate), 'generate' (gpt2kit's Engine,
    batch 1, sequential: what `gpt2kit generate` does per prompt), 'server' (--n streaming clients) or 'paired'
    (generate and one client in turn, request by request)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    from gpt2kit.device import resolve_dtype

    prompts = make_prompts(args.n * -(-args.baseline_requests // args.n))
    if args.side == "generate-loop":
        _generate_loop(args, prompts)
        return
    if args.side == "transformers":
        row = transformers_sequential(args.folder, prompts[: args.baseline_requests], args.max_tokens, args.device, resolve_dtype(args.dtype))
    elif args.side == "generate":
        engine, params = _engine(args)
        t0 = time.perf_counter()
        tokens = sum(len(c.token_ids) for p in prompts[: args.baseline_requests] for c in engine.generate([p], params))
        wall = time.perf_counter() - t0
        row = {"requests": args.baseline_requests, "tokens": tokens, "wall_s": wall, "tok_per_s": tokens / wall}
    elif args.side == "paired":
        row = paired(args, prompts)
    else:  # `gpt2kit serve` in its own process, as a user runs it; the clients live in this one
        with served(args) as port:
            requests = args.n * -(-args.baseline_requests // args.n)  # each client sends ceil(baseline / n), in turn
            row = run_clients(port, prompts[:requests], args.max_tokens, args.n)
    print(json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--baseline-requests", type=int, default=4, help="requests timed one at a time (transformers, generate)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--huge-pages", default="auto", choices=harness.hugepages.HUGE_PAGE_MODES, help="the server's --huge-pages (auto: on)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--busy", type=int, default=0, help="other processes spinning on a core each while the sides run (a busy machine)")
    ap.add_argument("--busy-duty", type=float, default=1.0,
                    help="the share of each 10 ms the --busy processes spin, sleeping the rest (1: all the time)")
    ap.add_argument("--side", choices=["transformers", "generate", "server", "paired", "generate-loop"], help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        worker(args)
        return
    from gpt2kit import GPT, GPTConfig, save_pretrained

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(GPT(GPTConfig()).eval(), tmp, tokenizer_files=False)  # random-weight GPT-2 124M
        common = [__file__, "--folder", tmp, "--max-tokens", str(args.max_tokens), "--device", args.device, "--dtype", args.dtype,
                  "--baseline-requests", str(args.baseline_requests), "--threads", str(args.threads), "--huge-pages", args.huge_pages]  # fmt: skip
        sides = {"transformers": [*common, "--side", "transformers"], "generate": [*common, "--side", "generate"]}
        sides |= {f"server-{n}": [*common, "--side", "server", "--n", str(n)] for n in args.clients}
        if 1 in args.clients:  # the like-for-like ratio, request by request
            sides["paired"] = [*common, "--side", "paired"]
        with harness.busy(args.busy, args.busy_duty):
            runs = harness.alternate(sides, args.repeat)
    med = {name: harness.median(r, "tok_per_s") for name, r in runs.items() if name != "paired"}
    by_request = [p["ratio"] for r in runs.get("paired", []) for p in r["pairs"]]  # every round's request pairs
    for n in args.clients:
        server = runs[f"server-{n}"]
        line = harness.record(
            "serve", sys.argv, args.threads,
            {"transformers sequential": {"figure": round(med["transformers"], 1), "unit": "tok/s"},
             "gpt2kit generate sequential": {"figure": round(med["generate"], 1), "unit": "tok/s"},
             f"gpt2kit serve, {n} clients": {"figure": round(med[f"server-{n}"], 1), "unit": "tok/s",
                                             "runs": [round(r["tok_per_s"], 1) for r in server]}},
            round(med[f"server-{n}"] / med["transformers"], 3),
            config=dict(clients=n, max_tokens=args.max_tokens, dtype=args.dtype, device=args.device, busy=args.busy,
                    **({"busy_duty": args.busy_duty} if args.busy_duty != 1 else {})),
            serve_over_generate=round(harness.paired_ratio(server, runs["generate"], "tok_per_s"), 3),
            **({"serve_over_generate_by_request": round(statistics.median(by_request), 3), "request_pairs": len(by_request)}
               if n == 1 else {}),
            generate_runs=[round(r["tok_per_s"], 1) for r in runs["generate"]],
            client_cpu_ms_per_token=round(harness.median(server, "client_cpu_ms_per_token"), 3),
            latency_ms={k: round(harness.median(server, k), 1) for k in ("ttft_p50_ms", "ttft_p99_ms", "tpot_p50_ms", "tpot_p99_ms")},
        )  # fmt: skip
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
