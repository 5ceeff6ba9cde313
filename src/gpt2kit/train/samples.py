"""Periodic samples during training: a short continuation of a fixed prompt, with its own RNG.

The generator is a private `torch.Generator` seeded from (seed, step), so sampling never advances the
global RNG that dropout uses: a run with samples has exactly the losses of a run without them, and an
interrupted-and-resumed run samples the same text at the same step.
"""

from __future__ import annotations

import torch

from gpt2kit.config import GPT2_VOCAB_SIZE
from gpt2kit.model import GPT, KVCache


@torch.no_grad()
def sample_text(model: GPT, tokenizer, prompt: str, n_tokens: int, seed: int, step: int, device: torch.device,
                autocast=None, temperature: float = 0.8, top_k: int = 40) -> str:  # fmt: skip
    """The prompt's continuation (text only), top-k sampled; the model is left in the mode it was in."""
    was_training = model.training
    model.eval()
    ids = [tokenizer.eot_token, *tokenizer.encode_ordinary(prompt)]
    n_tokens = min(n_tokens, model.config.n_positions - len(ids))
    if n_tokens <= 0:
        return ""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1_000_003 + step)
    cache = KVCache(model.config, 1, len(ids) + n_tokens, device, next(model.parameters()).dtype)
    idx = torch.tensor([ids], device=device)  # (1, T)
    out = []
    ctx = autocast if autocast is not None else torch.autocast(device.type, enabled=False)
    for _ in range(n_tokens):
        with ctx:
            logits = model.lm_head(model.hidden_states(idx, cache)[:, -1])  # (1, V)
        logits = logits[:, :GPT2_VOCAB_SIZE].float() / temperature  # never sample padded-vocab rows
        v, i = torch.topk(logits, min(top_k, logits.size(-1)))  # (1, k)
        nxt = i.gather(-1, torch.multinomial(torch.softmax(v, -1), 1, generator=gen))  # (1, 1)
        out.append(nxt)
        idx = nxt
    model.train(was_training)
    return tokenizer.decode(torch.cat(out, 1)[0].tolist())
