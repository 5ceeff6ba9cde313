"""lm-evaluation-harness adapter: run any lm-eval task on gpt2kit models and checkpoints.

    python -m gpt2kit.eval.lm_eval_adapter run --model gpt2kit \\
        --model_args pretrained=./my-checkpoint,dtype=bfloat16 --tasks lambada_openai,hellaswag --device cuda

(`lm_eval` itself does not discover third-party model classes, so this module registers the class as
"gpt2kit" and then hands the command line to lm-eval's own CLI.) From Python: `register()` returns
the class, and `lm_eval.simple_evaluate(model="gpt2kit", model_args="pretrained=...")` works after it.

The class implements lm-eval's TemplateLM: `loglikelihood` goes through our batched scorer (same
numbers as HFLM, tested), `loglikelihood_rolling` through our rolling windows (<|endoftext|> prefix,
non-overlapping n_positions windows, as HFLM), and `generate_until` is greedy decoding through the
generation Engine (the one `gpt2kit generate` uses), stop strings included.
lm-eval is an optional dependency: it is imported only when this module's functions run.
"""

from __future__ import annotations

import functools

from gpt2kit.config import GPT2_EOT_ID


@functools.cache
def register():
    """Define the lm-eval model class, register it under "gpt2kit", and return it."""
    import torch
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model

    from gpt2kit.errors import ConfigError
    from gpt2kit.eval.loglikelihood import eval_mode, score_tokens
    from gpt2kit.eval.perplexity import window_requests
    from gpt2kit.generate.engine import Engine
    from gpt2kit.generate.params import SamplingParams
    from gpt2kit.pretrained import from_pretrained
    from gpt2kit.tokenizer import Tokenizer

    @register_model("gpt2kit")
    class Gpt2kitLM(TemplateLM):
        """model_args: pretrained (preset, hub id or folder), device, dtype, batch_size, max_gen_toks."""

        def __init__(self, pretrained="gpt2", device="auto", dtype="float32", batch_size=8, max_gen_toks=256,
                     max_batch_size=None, **unknown):  # fmt: skip
            # (lm-eval passes max_batch_size to every model: accepted, unused)
            if unknown:
                raise ConfigError(f"unknown gpt2kit model_args {', '.join(sorted(unknown))}: the adapter takes pretrained, "
                                  "device, dtype, batch_size and max_gen_toks, e.g. --model_args pretrained=./ckpt,dtype=bfloat16.")  # fmt: skip
            super().__init__()
            self.model = from_pretrained(pretrained, device=device or "auto", dtype=dtype)
            self.tokenizer = Tokenizer()
            self.batch_size = int(batch_size) if str(batch_size).isdigit() else 8  # "auto" -> 8
            self.max_gen_toks = int(max_gen_toks)
            self._engine: Engine | None = None  # built by the first generate_until

        @property
        def eot_token_id(self) -> int:
            return GPT2_EOT_ID

        @property
        def max_length(self) -> int:
            return self.model.config.n_positions

        def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> list[int]:
            return self.tokenizer.encode_ordinary(string)

        def tok_decode(self, tokens) -> str:
            return self.tokenizer.decode(tokens)

        def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
            s = score_tokens(self.model, [(ctx, cont) for _, ctx, cont in requests], self.batch_size, not disable_tqdm)
            return list(zip(s.logprob.tolist(), s.is_greedy.tolist()))

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            windows, owner = [], []
            for i, req in enumerate(requests):
                w = window_requests([GPT2_EOT_ID] + self.tok_encode(req.args[0]), self.max_length)
                windows += w
                owner += [i] * len(w)
            lp = score_tokens(self.model, windows, self.batch_size, not disable_tqdm, "rolling").logprob
            totals = torch.zeros(len(requests), dtype=torch.float64).index_add_(0, torch.tensor(owner, dtype=torch.long), lp)
            return totals.tolist()

        def generate_until(self, requests, disable_tqdm: bool = False):
            """Greedy continuations through the generation Engine, batched (batch_size rows); each stops at
            <|endoftext|> or its first `until` string (generate/stopping.py), which is not part of the text."""
            prompts, params = [], []
            for context, gen_kwargs in (req.args for req in requests):
                until = gen_kwargs.get("until") or [self.tokenizer.decode([GPT2_EOT_ID])]
                max_new = int(gen_kwargs.get("max_gen_toks", self.max_gen_toks))
                prompts.append(self.tok_encode(context)[-(self.max_length - max_new) :] or [GPT2_EOT_ID])
                params.append(SamplingParams(max_new_tokens=max_new, temperature=0.0, stop=until))
            if not prompts:
                return []
            if self._engine is None:
                self._engine = Engine(self.model, max_batch=self.batch_size, token_bytes=self.tokenizer.token_bytes_table)
            with eval_mode(self.model):
                return [c.text for c in self._engine.generate(prompts, params)]

    return Gpt2kitLM


def main(argv: list[str] | None = None) -> None:
    """`python -m gpt2kit.eval.lm_eval_adapter <lm_eval arguments>`: lm_eval's CLI with --model gpt2kit available."""
    import sys

    register()
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
