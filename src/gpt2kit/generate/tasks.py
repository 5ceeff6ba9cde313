"""Zero-shot tasks as the GPT-2 paper ran them ("Language Models are Unsupervised Multitask Learners", §3).

Each task is only a prompt format plus a decoding rule, on top of the Engine:

  summarize  article + "\\nTL;DR:", 100 tokens with top-k sampling, k = 2 ("which reduces repetition and
             encourages more abstractive summaries than greedy decoding"); the summary is the first 3
             generated sentences (§3.6).
  translate  few-shot pairs "english sentence = french sentence", then "english sentence =", greedy; the
             translation is the first generated sentence (§3.7). The paper's direction is English to French;
             the format works in either direction with matching example pairs.
  answer     example "Q: ... A: ..." pairs (to show the short-answer style), an optional context document
             first (CoQA-style), then "Q: question" and "A:", greedy, up to the end of the line (§3.5, §3.8).

With the small models the outputs are weak (the paper: 124M gets 0.x of gpt2-xl's scores); the protocol is
what matters, and with gpt2-xl it reproduces the paper's setup. The tokenizer is passed in (duck-typed).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from gpt2kit.errors import DataError, InputError
from gpt2kit.generate.engine import Completion
from gpt2kit.generate.params import SamplingParams
from gpt2kit.generate.text import GenerateOptions, TextGenerator, TokenizerLike
from gpt2kit.model.gpt import GPT

# A few English = French pairs in the paper's format (simple public-domain sentences written for gpt2kit).
EN_FR_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("The house is small.", "La maison est petite."),
    ("I would like a cup of coffee, please.", "Je voudrais une tasse de café, s'il vous plaît."),
    ("Where is the train station?", "Où est la gare ?"),
    ("We are going to the beach tomorrow.", "Nous allons à la plage demain."),
    ("She reads a book every week.", "Elle lit un livre chaque semaine."),
)

QA_EXAMPLES: tuple[tuple[str, str], ...] = (
    ("What is the capital of France?", "Paris"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare"),
    ("How many days are there in a week?", "Seven"),
)

_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+")


@dataclass
class TaskResult:
    text: str  # the task's answer, post-processed by the paper's rule
    prompt: str  # the exact prompt the model saw
    completion: Completion  # the raw generation (text, tokens, finish reason)


def first_sentences(text: str, n: int) -> str:
    """The first n sentences of `text` (split after . ! ? and closing quotes/brackets)."""
    parts = _SENTENCE_END.split(text.strip())
    return " ".join(p.strip() for p in parts[:n] if p.strip())


def _fit(tg: TextGenerator, head: str, tail: str, max_new: int) -> str:
    """head + tail, with head's END cut (at a token boundary) so that the prompt + max_new fits the context."""
    ctx = tg.model.config.n_positions
    tail_ids = tg.encode(tail)
    head_ids = tg.encode(head)
    budget = ctx - max_new - len(tail_ids)
    if budget < 1:
        raise InputError(f"the task prompt leaves no room: {len(tail_ids)} fixed tokens + {max_new} new tokens > context {ctx}.")
    if len(head_ids) > budget:
        head = tg.tokenizer.decode(head_ids[:budget]) if hasattr(tg.tokenizer, "decode") else head
    return head + tail


def summarize(model: GPT, tokenizer: TokenizerLike, article: str, *, max_new_tokens: int = 100, top_k: int = 2,
              sentences: int = 3, seed: int | None = None, options: GenerateOptions | None = None) -> TaskResult:  # fmt: skip
    """TL;DR summarization (GPT-2 paper §3.6): article + "\\nTL;DR:", top-k 2, first 3 sentences."""
    if not article.strip():
        raise InputError("summarize: the article is empty.")
    tg = TextGenerator(model, tokenizer, options)
    prompt = _fit(tg, article.strip(), "\nTL;DR:", max_new_tokens)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=1.0, top_k=top_k, seed=seed)
    (c,) = tg.complete([prompt], params)
    return TaskResult(first_sentences(c.text or "", sentences), prompt, c)


def translate(model: GPT, tokenizer: TokenizerLike, sentence: str, *, examples: Sequence[tuple[str, str]] = EN_FR_EXAMPLES,
              max_new_tokens: int = 64, options: GenerateOptions | None = None) -> TaskResult:  # fmt: skip
    """Few-shot translation (GPT-2 paper §3.7): "source = target" lines, then "sentence =", greedy,
    first generated sentence. Default examples are English = French."""
    if not sentence.strip():
        raise InputError("translate: the sentence is empty.")
    if not examples:
        raise InputError("translate: give at least one example pair (the format is learned from them).")
    tg = TextGenerator(model, tokenizer, options)
    shots = "".join(f"{src} = {dst}\n" for src, dst in examples)
    prompt = _fit(tg, shots, f"{sentence.strip()} =", max_new_tokens)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0, stop=("\n",))
    (c,) = tg.complete([prompt], params)
    return TaskResult(first_sentences(c.text or "", 1), prompt, c)


def answer(model: GPT, tokenizer: TokenizerLike, question: str, *, context: str | None = None,
           examples: Sequence[tuple[str, str]] = QA_EXAMPLES, max_new_tokens: int = 32,
           options: GenerateOptions | None = None) -> TaskResult:  # fmt: skip
    """Question answering (GPT-2 paper §3.5/§3.8): [context], example "Q: …\\nA: …" pairs, "Q: question\\nA:",
    greedy, the answer is the rest of the line."""
    if not question.strip():
        raise InputError("answer: the question is empty.")
    tg = TextGenerator(model, tokenizer, options)
    head = (context.strip() + "\n\n") if context and context.strip() else ""
    shots = "".join(f"Q: {q}\nA: {a}\n\n" for q, a in examples)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0, stop=("\n",))
    prompt = _fit(tg, head, shots + f"Q: {question.strip()}\nA:", max_new_tokens)
    (c,) = tg.complete([prompt], params)
    return TaskResult((c.text or "").strip(), prompt, c)


def parse_examples(text: str, source: str = "examples") -> list[tuple[str, str]]:
    """Example pairs from text: one pair per line, "source = target" (translate) or "question = answer".
    `source` names the text in errors (the file it came from)."""
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if " = " not in line:
            raise DataError(f"{source}:{n}: expected 'source = target', got {line[:80]!r}.")
        src, dst = line.split(" = ", 1)
        pairs.append((src.strip(), dst.strip()))
    if not pairs:
        raise DataError(f"{source} holds no example pairs ('source = target', one per line).")
    return pairs
