"""Conformance fuzz: Schemathesis, driven by OpenAI's own OpenAPI document, against `gpt2kit serve`.

    python tools/fuzz_openai.py                       # > 5,000 requests (random: 3,500 /completions, 900 chat; + coverage)
    python tools/fuzz_openai.py --max-examples 100    # a few hundred (what tests/test_fuzz_openai.py runs)

It starts `gpt2kit serve` (the built-in model, max_tokens <= 8, so generation stays cheap) on a free
loopback port, then runs `schemathesis run` on ../shared/openai-openapi/openapi.json (or $GPT2KIT_OPENAPI)
restricted to POST /completions and POST /chat/completions, base URL http://127.0.0.1:PORT/v1, in all
three generation phases (the spec's examples, boundary coverage, random fuzzing) and both modes (valid
and invalid requests). tools/fuzz_openai_hooks.py pins `model` to the served name and counts responses.

Checks: `not_a_server_error` (no status >= 500), `response_schema_conformance` (every documented 2xx
body matches OpenAI's response schema) and `sse_events_conform` (every event of a 2xx stream matches
OpenAI's chunk schema). Everything else OpenAI's document describes that gpt2kit does not do (tools,
audio, `best_of` > n, ...) must be a clean 4xx. Exit status 0 only if all checks pass, no response was
>= 500, the server logged no traceback and at least --min-requests requests were sent. Figures are in
docs/serving.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT.parent / "shared" / "openai-openapi" / "openapi.json"
OPERATIONS = ("createCompletion", "createChatCompletion")  # POST /completions, POST /chat/completions


def spec_path() -> Path:
    return Path(os.environ.get("GPT2KIT_OPENAPI", DEFAULT_SPEC))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log_path: Path, port: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "gpt2kit.cli", "serve", "--device", "cpu", "--port", str(port), "--max-tokens-limit", "8",
           "--default-max-tokens", "8", "--max-n", "4", "--log-level", "warning"]  # fmt: skip
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def wait_ready(url: str, proc: subprocess.Popen, log_path: Path, limit_s: float = 120.0) -> str:
    """Wait for /health, return the served model's name."""
    deadline = time.monotonic() + limit_s
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"gpt2kit serve exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return httpx.get(url + "/v1/models", timeout=5).json()["data"][0]["id"]
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"gpt2kit serve did not come up in {limit_s:.0f} s")
        time.sleep(0.3)


def run(max_examples: dict[str, int], seed: int, workers: int, out: Path, min_requests: int) -> dict:
    """Fuzz both operations (`max_examples`: random cases per operation id) and return the figures."""
    spec = spec_path()
    if not spec.is_file():
        raise SystemExit(f"OpenAI's OpenAPI document is not at {spec}: set $GPT2KIT_OPENAPI to its path.")
    out.mkdir(parents=True, exist_ok=True)
    server_log = out / "server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(server_log, port)
    try:
        model = wait_ready(url, proc, server_log)
        # One Schemathesis process per operation, side by side: drawing from OpenAI's large request
        # schemas is CPU-bound Hypothesis work (threads would share one core), the server is not the limit.
        runs = {}
        t0 = time.monotonic()
        for op in OPERATIONS:
            env = {**os.environ, "SCHEMATHESIS_HOOKS": "fuzz_openai_hooks", "GPT2KIT_FUZZ_MODEL": model,
                   "GPT2KIT_FUZZ_TALLY": str(out / f"tally_{op}.json"), "GPT2KIT_FUZZ_SPEC": str(spec),
                   "PYTHONPATH": os.pathsep.join([str(ROOT / "tools"), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
            cmd = [sys.executable, "-m", "schemathesis.cli", "run", str(spec), "--url", url + "/v1", "--include-operation-id", op,
                   "--checks", "not_a_server_error,response_schema_conformance,sse_events_conform",
                   "--max-examples", str(max_examples[op]), "--seed", str(seed), "--workers", str(workers),
                   "--phases", "examples,coverage,fuzzing", "--mode", "all", "--request-timeout", "120",
                   "--suppress-health-check", "all", "--continue-on-failure", "--no-color"]  # fmt: skip
            (out / op).mkdir(exist_ok=True)
            (out / f"tally_{op}.json").unlink(missing_ok=True)
            with open(out / f"schemathesis_{op}.txt", "w") as log:
                runs[op] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=out / op)
        exits = {op: r.wait() for op, r in runs.items()}
        seconds = time.monotonic() - t0
    finally:
        for r in locals().get("runs", {}).values():
            if r.poll() is None:
                r.kill()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    counts = Counter()
    for op in OPERATIONS:
        tally = out / f"tally_{op}.json"
        counts.update(json.loads(tally.read_text()) if tally.exists() else {})
    status = Counter()
    paths = Counter()
    for key, n in counts.items():
        if key.startswith("path "):
            paths[key[len("path ") :]] += n
        elif not key.startswith("why "):
            status[int(key.split()[0])] += n
    log_text = server_log.read_text()
    summary = {
        "requests": sum(status.values()),
        "by_path": dict(sorted(paths.items())),
        "by_status": dict(sorted(status.items())),
        "by_status_and_type": {k: n for k, n in sorted(counts.items()) if k[0].isdigit()},
        "responses_2xx": sum(n for s, n in status.items() if 200 <= s < 300),
        "responses_5xx": sum(n for s, n in status.items() if s >= 500),
        "schemathesis_exit": exits,
        "server_tracebacks": log_text.count("Traceback"),
        "seconds": round(seconds, 1),
        "max_examples": max_examples,
        "seed": seed,
    }
    only_ours = set(paths) <= {"/completions", "/chat/completions"}
    summary["ok"] = (not any(exits.values()) and summary["responses_5xx"] == 0 and summary["server_tracebacks"] == 0
                     and summary["requests"] >= min_requests and only_ours)  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-examples", type=int, default=3500, help="random (fuzzing-phase) test cases for /completions")
    p.add_argument("--chat-max-examples", type=int, default=900,
                   help="the same for /chat/completions, whose request schema costs Hypothesis ~5x more per case")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1,
                   help="concurrent Schemathesis workers (threads; with 2, Hypothesis hit a CPython AST-parsing race once)")  # fmt: skip
    p.add_argument("--min-requests", type=int, default=0, help="fail unless at least this many requests were sent")
    p.add_argument("--out", type=Path, default=None, help="folder for summary.json, the Schemathesis output and the server log")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="gpt2kit-fuzz-"))
    examples = {"createCompletion": args.max_examples, "createChatCompletion": args.chat_max_examples}
    summary = run(examples, args.seed, args.workers, out, args.min_requests)
    print(json.dumps(summary, indent=2))
    if not summary["ok"]:
        print(f"FAILED: see {out}/schemathesis_*.txt and {out}/server.log", file=sys.stderr)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
