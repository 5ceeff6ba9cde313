"""The next-token inspector: what the model would say next, and what a sampler would keep of it.

`next_tokens(model, tokenizer, text, params)` runs one forward over the text and returns the `top` most
likely next tokens with their probability and cumulative probability under the model's RAW distribution
(softmax of the logits over the real vocabulary), and, for the given `SamplingParams`, the probability each
keeps after the sampler's own steps (`generate.sampling.process_logits`: penalties, bias, temperature,
top-k, top-p, min-p). The sampler's math lives only there; this module only shows its result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from gpt2kit.config import GPT2_EOT_ID
from gpt2kit.errors import InputError
from gpt2kit.generate.params import SamplingParams
from gpt2kit.generate.sampling import process_logits
from gpt2kit.insight.tokens import token_label


@dataclass(frozen=True)
class Candidate:
    rank: int  # 1 = most likely
    token_id: int
    label: str  # readable token text (token_label)
    prob: float  # raw model probability
    cum_prob: float  # total raw probability of ranks 1..rank
    sampler_prob: float  # probability of being drawn with the given sampling settings (0 = removed)


@dataclass(frozen=True)
class NextTokens:
    context_ids: list[int]
    candidates: list[Candidate]
    entropy_bits: float  # of the raw distribution
    sampler_kept: int  # how many tokens the sampler can draw from
    sampler_kept_mass: float  # raw probability mass of those tokens
    sampling: dict = field(default_factory=dict)  # the settings shown (temperature, top_k, top_p, min_p)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def next_token_logits(model, ids: list[int], n_vocab: int = 50257) -> torch.Tensor:
    """[T] token ids -> (V,) float32 logits of the token after them (the last n_positions ids are read);
    V = the real vocabulary (padded rows of a wider head are cut off)."""
    if not ids:
        raise InputError("no tokens to continue from: give some text (or use bos=True for an empty prompt).")
    was_training = model.training
    model.eval()
    try:
        device = model.lm_head.weight.device
        idx = torch.tensor([ids[-model.config.n_positions :]], dtype=torch.long, device=device)  # (1, T)
        h = model.hidden_states(idx)[:, -1]  # (1, C): only the last position is needed
        return model.lm_head(h)[0, :n_vocab].float().cpu()  # (V,)
    finally:
        model.train(was_training)


def next_tokens(
    model, tokenizer, text: str, params: SamplingParams | None = None, top: int = 10, bos: bool = False
) -> NextTokens:
    """The `top` most likely next tokens after `text` (see the module docstring). bos: put <|endoftext|>
    in front (an empty text always gets it)."""
    if top < 1:
        raise InputError(f"--top must be >= 1, got {top}.")
    params = params or SamplingParams()
    ids = tokenizer.encode_ordinary(text)
    if bos or not ids:
        ids = [GPT2_EOT_ID] + ids
    logits = next_token_logits(model, ids, tokenizer.n_vocab)  # (V,)
    probs = torch.softmax(logits, dim=-1)  # (V,)
    processed = process_logits(logits, params)  # (V,) -inf = never drawn
    if params.greedy:
        sampler = torch.zeros_like(probs)
        sampler[torch.argmax(processed)] = 1.0
    else:
        sampler = torch.softmax(processed, dim=-1)
    kept = sampler > 0
    top_p, top_ids = torch.topk(probs, min(top, probs.shape[0]))  # (top,), (top,)
    cum = torch.cumsum(top_p.double(), dim=0)
    cands = [
        Candidate(r + 1, int(t), token_label(tokenizer.token_bytes(int(t))), float(p), float(c), float(sampler[t]))
        for r, (t, p, c) in enumerate(zip(top_ids, top_p, cum))
    ]
    entropy = float(-(probs * torch.log2(probs.clamp_min(1e-45))).sum())
    shown = {"temperature": params.temperature, "top_k": params.top_k, "top_p": params.top_p, "min_p": params.min_p}
    return NextTokens(ids, cands, entropy, int(kept.sum()), float(probs[kept].sum()), shown)
