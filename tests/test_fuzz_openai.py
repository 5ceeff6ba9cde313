"""The bounded conformance fuzz: tools/fuzz_openai.py (Schemathesis with OpenAI's own OpenAPI document)
against `gpt2kit serve` with the built-in model, POST /completions and POST /chat/completions.

A short run (the spec's examples, Schemathesis' boundary-coverage phase, and 25 random cases per
operation and mode): no response >= 500, every 2xx body and stream chunk valid against OpenAI's
response schemas, no traceback in the server's log. The full run (~5,000 requests) is
`python tools/fuzz_openai.py`; its figures are in docs/serving.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import fuzz_openai  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(600),
    pytest.mark.skipif(not fuzz_openai.spec_path().is_file(),
                       reason=f"needs OpenAI's OpenAPI document at {fuzz_openai.spec_path()} (set GPT2KIT_OPENAPI)"),  # fmt: skip
    pytest.mark.skipif(importlib.util.find_spec("schemathesis") is None, reason="needs schemathesis (the dev extra)"),
]


def test_openai_schema_fuzz_finds_no_server_error_and_no_nonconforming_response(tmp_path):
    summary = fuzz_openai.run({"createCompletion": 25, "createChatCompletion": 25}, seed=0, workers=1, out=tmp_path, min_requests=300)
    print(summary)
    report = "\n".join(f.read_text()[-4000:] for f in sorted(tmp_path.glob("schemathesis_*.txt")))
    assert summary["responses_5xx"] == 0, summary
    assert summary["server_tracebacks"] == 0, (tmp_path / "server.log").read_text()[-3000:]
    assert not any(summary["schemathesis_exit"].values()), report
    assert summary["requests"] >= 300 and summary["responses_2xx"] >= 10, summary
    assert summary["ok"]
