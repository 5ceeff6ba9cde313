"""WikiText (`wiki.test.raw` of wikitext-2-raw-v1 or wikitext-103-raw-v1): document-level perplexity.

Protocol = lm-evaluation-harness `wikitext` (gpt2 124M: word_perplexity ≈ 37.37):
  1. The raw file is split into articles the way EleutherAI/wikitext_document_level does: a line whose
     heading markers, after "= = =" -> "===" and "= =" -> "==", read "= Title =" starts a new article.
  2. Each article is detokenized (lm-eval's `wikitext_detokenizer`: " @-@ " -> "-", " , " -> ", ", ...).
  3. Each article is scored on its own with rolling windows (<|endoftext|> first, non-overlapping windows
     of n_positions tokens, every token scored once; `stride` < n_positions adds overlap).
  4. word_perplexity = exp(total NLL / total words), byte_perplexity = exp(total NLL / total bytes),
     bits_per_byte = total NLL / ln 2 / total bytes, where words and bytes are counted on the
     *original* (not detokenized) article text, as lm-eval does.
"""

from __future__ import annotations

import math
import os
import re

from gpt2kit.config import GPT2_EOT_ID
from gpt2kit.errors import DataError
from gpt2kit.eval.loglikelihood import score_tokens
from gpt2kit.eval.perplexity import count_words, window_requests
from gpt2kit.eval.results import EvalResult
from gpt2kit.textfiles import read_text

WHAT = "WikiText raw text (wiki.test.raw)"


def split_articles(raw: str) -> list[str]:
    """wiki.*.raw -> article pages, as EleutherAI/wikitext_document_level builds its 'page' field."""
    pages, current = [], []
    for line in raw.split("\n"):
        heading = line.replace("= = =", "===").replace("= =", "==").strip()
        if heading.startswith("= ") and heading.endswith(" ="):
            page = "\n".join(current)
            if page.strip():
                pages.append(page)
            current = []
        current.append(line)
    page = "\n".join(current)
    if page.strip():
        pages.append(page)
    return pages


def detokenize(string: str) -> str:
    """lm-evaluation-harness's wikitext_detokenizer, step for step."""
    string = string.replace("s '", "s'")
    string = re.sub(r"/' [0-9]/", r"/'[0-9]/", string)
    string = string.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    for p in (":", ";", ".", "!", "?", ","):
        string = string.replace(f" {p} ", f"{p} ")
    string = re.sub(r"\(\s*([^\)]*?)\s*\)", r"(\1)", string)
    string = re.sub(r"\[\s*([^\]]*?)\s*\]", r"[\1]", string)
    string = re.sub(r"{\s*([^}]*?)\s*}", r"{\1}", string)
    string = re.sub(r"\"\s*([^\"]*?)\s*\"", r'"\1"', string)
    string = re.sub(r"'\s*([^']*?)\s*'", r"'\1'", string)
    string = string.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
    string = string.replace(" " + chr(176) + " ", chr(176))
    string = string.replace(" \n", "\n").replace("\n ", "\n")
    string = string.replace(" N ", " 1 ")
    return string.replace(" 's", "'s")


def load_wikitext(path: str | os.PathLike, limit: int | None = None) -> list[str]:
    pages = split_articles(read_text(path, WHAT))
    if not any(line.strip().startswith("= ") for line in pages[0].split("\n")):
        raise DataError(
            f"{path}: no ' = Title = ' article heading found; this does not look like WikiText's wiki.*.raw "
            "(use the *raw* files, e.g. wikitext-2-raw-v1/wiki.test.raw; for any other text use `eval perplexity`)."
        )
    return pages[:limit] if limit is not None else pages


def evaluate_wikitext(
    model, tokenizer, pages: list[str], stride: int | None = None, batch_size: int = 8, progress: bool = False,
    model_name: str = "",
) -> list[EvalResult]:  # fmt: skip
    requests, owner = [], []  # every window of every article, scored in one batched pass
    for i, page in enumerate(pages):
        windows = window_requests([GPT2_EOT_ID] + tokenizer.encode_ordinary(detokenize(page)), model.config.n_positions, stride)
        requests += windows
        owner += [i] * len(windows)
    scores = score_tokens(model, requests, batch_size, progress, "wikitext windows")
    nll = -float(scores.logprob.sum())
    words = sum(count_words(page) for page in pages)
    n_bytes = sum(len(page.encode("utf-8")) for page in pages)
    n = len(pages)
    protocol = "lm-eval-rolling" if stride is None else f"lm-eval-rolling-stride{stride}"
    return [
        EvalResult("wikitext", protocol, "word_perplexity", math.exp(nll / words), model_name, n),
        EvalResult("wikitext", protocol, "byte_perplexity", math.exp(nll / n_bytes), model_name, n),
        EvalResult("wikitext", protocol, "bits_per_byte", nll / n_bytes / math.log(2), model_name, n),
    ]
