"""Evaluation: perplexity (sliding windows), LAMBADA, HellaSwag, WikiText, and in-training hooks.

Everything is built on `loglikelihood.score_tokens` (lm-evaluation-harness's loglikelihood contract,
batched). The protocols are documented in each module and in docs/evaluation.md.
"""

from typing import TYPE_CHECKING

from gpt2kit.lazy import exports

_WHERE = {
    "hellaswag_scores": "gpt2kit.eval.hellaswag", "load_hellaswag": "gpt2kit.eval.hellaswag",
    "evaluate_lambada": "gpt2kit.eval.lambada", "load_lambada": "gpt2kit.eval.lambada",
    "encode_pair": "gpt2kit.eval.loglikelihood", "score_tokens": "gpt2kit.eval.loglikelihood",
    "files_perplexity": "gpt2kit.eval.perplexity", "text_perplexity": "gpt2kit.eval.perplexity",
    "val_perplexity": "gpt2kit.eval.perplexity", "EvalResult": "gpt2kit.eval.results",
    "format_table": "gpt2kit.eval.results", "write_json": "gpt2kit.eval.results",
    "EvalConfig": "gpt2kit.eval.runner", "evaluate": "gpt2kit.eval.runner", "run_eval": "gpt2kit.eval.runner",
}  # fmt: skip
__getattr__, __dir__ = exports(__name__, _WHERE)  # imported on first use

if TYPE_CHECKING:
    from gpt2kit.eval.hellaswag import hellaswag_scores, load_hellaswag
    from gpt2kit.eval.lambada import evaluate_lambada, load_lambada
    from gpt2kit.eval.loglikelihood import encode_pair, score_tokens
    from gpt2kit.eval.perplexity import files_perplexity, text_perplexity, val_perplexity
    from gpt2kit.eval.results import EvalResult, format_table, write_json
    from gpt2kit.eval.runner import EvalConfig, evaluate, run_eval

__all__ = [
    "EvalConfig", "EvalResult", "encode_pair", "evaluate", "evaluate_lambada", "files_perplexity", "format_table",
    "hellaswag_scores", "load_hellaswag", "load_lambada", "run_eval", "score_tokens", "text_perplexity",
    "val_perplexity", "write_json",
]  # fmt: skip
