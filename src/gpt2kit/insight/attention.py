"""Attention maps of a text, taken from the model's own forward (`model.gpt.record_attention`): for every
layer and head, how much each token's query attends to each earlier token."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpt2kit.config import GPT2_EOT_ID
from gpt2kit.errors import InputError
from gpt2kit.eval.loglikelihood import eval_mode
from gpt2kit.insight.tokens import token_label
from gpt2kit.model.gpt import record_attention


@dataclass(frozen=True)
class AttentionMaps:
    ids: list[int]  # (T,) the tokens read
    labels: list[str]  # (T,) readable token text
    maps: torch.Tensor  # (L, nh, T, T) float32 on the CPU: maps[l, h, i, j] = attention of token i to token j

    def select(self, layer: int | None, head: int | str) -> torch.Tensor:
        """layer None = all layers; head an index, or "mean" over heads -> (L or 1, T, T)."""
        L, nh = self.maps.shape[:2]
        if layer is not None and not 0 <= layer < L:
            raise InputError(f"--layer {layer} does not exist: the model has layers 0..{L - 1} (or use 'all').")
        if head != "mean" and not (isinstance(head, int) and 0 <= head < nh):
            raise InputError(f"--head {head} does not exist: the model has heads 0..{nh - 1} (or use 'mean').")
        maps = self.maps if layer is None else self.maps[layer : layer + 1]  # (L', nh, T, T)
        return maps.mean(dim=1) if head == "mean" else maps[:, head]  # (L', T, T)


def attention_maps(model, tokenizer, text: str, bos: bool = False) -> AttentionMaps:
    """One forward over the text's tokens (<|endoftext|> first with bos) with the attention recorded."""
    ids = tokenizer.encode_ordinary(text)
    if bos or not ids:
        ids = [GPT2_EOT_ID] + ids
    if len(ids) > model.config.n_positions:
        raise InputError(f"the text has {len(ids)} tokens, more than the model's context {model.config.n_positions}: shorten it.")
    idx = torch.tensor([ids], dtype=torch.long, device=model.lm_head.weight.device)  # (1, T)
    with eval_mode(model), record_attention(model) as maps:
        model.hidden_states(idx)
    stacked = torch.stack([layer[-1][0] for layer in maps]).float().cpu()  # (L, nh, T, T)
    return AttentionMaps(ids, [token_label(tokenizer.token_bytes(t)) for t in ids], stacked)
