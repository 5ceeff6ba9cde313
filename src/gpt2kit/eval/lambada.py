"""LAMBADA (OpenAI's `lambada_test.jsonl`, one {"text": ...} a line): predict the last word of a passage.

Two protocols, because two different numbers are published for the same model and file:

  - "lm-eval" (lm-evaluation-harness `lambada_openai`; gpt2 124M: acc 0.3256, ppl 40.06). The passage is
    split on spaces; context = all words but the last, target = " " + last word (leading space
    included, and it may be several BPE tokens). acc = greedy decoding reproduces every target token;
    ppl = exp(-mean over passages of log p(target | context)), i.e. per *word*, not per token.
  - "paper-last-token" (the GPT-2 paper's reported 45.99 acc for 124M is reproduced by this one, not
    by whole-word matching). The passage (trailing whitespace stripped) is encoded as a whole; context
    = all tokens but the last, target = the last BPE token. acc = argmax == that token; ppl =
    exp(-mean log p(last token)). For a multi-token last word this only asks for its final piece,
    given its first pieces, which is why it scores higher.
"""

from __future__ import annotations

import math
import os

from gpt2kit.eval.loglikelihood import encode_pair, score_tokens
from gpt2kit.eval.results import EvalResult
from gpt2kit.textfiles import read_jsonl

PROTOCOLS = ("lm-eval", "paper-last-token")
WHAT = "LAMBADA (OpenAI's lambada_test.jsonl)"


def load_lambada(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    records = read_jsonl(path, {"text": str}, WHAT, limit)
    for r in records:
        if not r["text"].strip():
            from gpt2kit.errors import DataError

            raise DataError(f"{path}:{r['_line']}: field 'text' is empty; each LAMBADA line needs a passage.")
    return [r["text"] for r in records]


def lm_eval_request(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """lambada_openai: context "{{text.split(' ')[:-1]|join(' ')}}", target "{{' '+text.split(' ')[-1]}}"."""
    words = text.split(" ")
    return encode_pair(tokenizer, " ".join(words[:-1]), " " + words[-1])


def last_token_request(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """The paper's protocol: all tokens of the passage but the last predict the last one."""
    ids = tokenizer.encode_ordinary(text.rstrip())
    if len(ids) < 2:
        from gpt2kit.errors import InputError

        raise InputError(f"LAMBADA passage {text[:40]!r} has fewer than two tokens; nothing to predict from.")
    return ids[:-1], ids[-1:]


def evaluate_lambada(
    model,
    tokenizer,
    texts: list[str],
    protocols: tuple[str, ...] = PROTOCOLS,
    batch_size: int = 16,
    progress: bool = False,
    model_name: str = "",
) -> list[EvalResult]:
    """acc and ppl under each protocol, as result rows."""
    results = []
    for protocol in protocols:
        if protocol not in PROTOCOLS:
            from gpt2kit.errors import ConfigError

            raise ConfigError(f"unknown LAMBADA protocol {protocol!r}; choose from {PROTOCOLS}.")
        make = lm_eval_request if protocol == "lm-eval" else last_token_request
        scores = score_tokens(model, [make(tokenizer, t) for t in texts], batch_size, progress, f"lambada {protocol}")
        n = len(texts)
        acc = float(scores.is_greedy.double().mean())
        ppl = math.exp(-float(scores.logprob.mean()))
        for metric, value in (("acc", acc), ("ppl", ppl)):
            results.append(EvalResult("lambada", protocol, metric, value, model_name, n))
    return results
