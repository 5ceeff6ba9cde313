"""Evaluations that a TrainConfig asks for, as hooks the loop runs at every eval interval.

A hook takes the plain model (the loop has put it in eval mode under no_grad and autocast) and returns a
dict of metrics, which the loop logs beside the validation loss. Data files are read here, before training
starts, so a bad path fails at once rather than at the first evaluation.
"""

from __future__ import annotations

from collections.abc import Callable

from gpt2kit.model.gpt import GPT

EvalHook = Callable[[GPT], dict]


def config_eval_hooks(cfg) -> list[EvalHook]:
    """The hooks `cfg` (a TrainConfig) turns on: HellaSwag scoring with `eval_hellaswag`."""
    hooks: list[EvalHook] = []
    if cfg.eval_hellaswag:
        from gpt2kit.eval.hellaswag import hellaswag_scores, load_hellaswag
        from gpt2kit.tokenizer import Tokenizer

        examples = load_hellaswag(cfg.eval_hellaswag, limit=cfg.eval_hellaswag_limit)
        tokenizer = Tokenizer()

        def hellaswag(model: GPT) -> dict:
            scores = hellaswag_scores(model, tokenizer, examples)
            return {"hellaswag_acc": scores["acc"], "hellaswag_acc_norm": scores["acc_norm"]}

        hooks.append(hellaswag)
    return hooks
