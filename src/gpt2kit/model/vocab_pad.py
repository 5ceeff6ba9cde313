"""A padded vocabulary for training: the token embedding / head with rows rounded up to a multiple of 64.

GPT-2's 50257 tokens make the head's matmuls (N x 768 x 50257) tile unevenly on GPUs; nanoGPT pads the
vocabulary to 50304 for a measurable speed-up. Here the padding is a training-time shape, not a different
model:
  - `pad_vocab(model, 64)` appends zero rows and records the real size in `config.n_vocab`;
  - the loss leaves the padded columns out of the softmax (`head_loss.lm_head_loss(n_valid=...)`), so
    the padded model computes exactly the unpadded model's loss and gradients, and the padded rows get
    no gradient (zero rows stay zero under AdamW: zero moments, decay of zero);
  - `unpadded(model)` is the same model at its real size, sharing storage: what checkpoints, export,
    evaluation and sampling see. Sampling slices logits to the tokenizer's 50257 anyway.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn

from gpt2kit.model.gpt import GPT


def pad_vocab(model: GPT, multiple: int) -> GPT:
    """The same model with wte/lm_head rows rounded up to a multiple of `multiple` (new rows zero).

    Returns `model` itself when nothing changes; otherwise a shallow copy that shares every other module
    with `model` (train the copy, not both)."""
    cfg = model.config
    real = cfg.real_vocab_size
    rows = -(-real // multiple) * multiple
    if rows == cfg.vocab_size:
        return model
    wte = model.transformer.wte.weight.detach()  # (V, C)
    padded = torch.zeros(rows, wte.shape[1], dtype=wte.dtype, device=wte.device)  # (V', C)
    padded[:real] = wte[:real]
    return _rebuild(model, cfg.replace(vocab_size=rows, n_vocab=real), padded)


def unpadded(model: GPT) -> GPT:
    """`model` at its real vocabulary (config.n_vocab rows), sharing every tensor with it (no copy).

    For saving, exporting and evaluating a model trained padded; returns `model` when it is not padded."""
    cfg = model.config
    if cfg.real_vocab_size == cfg.vocab_size:
        return model
    wte = model.transformer.wte.weight.detach()[: cfg.real_vocab_size]  # (n_vocab, C) view
    return _rebuild(model, cfg.replace(vocab_size=cfg.real_vocab_size, n_vocab=None), wte)


def _rebuild(model: GPT, config, wte: torch.Tensor) -> GPT:
    """A shallow copy of `model` (the same blocks, wpe and ln_f modules, adapters and all) with `config` and
    a new token embedding holding `wte`, tied to a new lm_head."""
    V, C = wte.shape
    emb = nn.Embedding(V, C, device="meta")
    emb.weight = nn.Parameter(wte, requires_grad=model.transformer.wte.weight.requires_grad)
    head = nn.Linear(C, V, bias=False, device="meta")
    head.weight = emb.weight  # tied: one (V, C) Parameter embeds and unembeds
    transformer = copy.copy(model.transformer)  # copy.copy shares the _modules dict: give each copy its own
    transformer._modules = dict(model.transformer._modules, wte=emb)
    new = copy.copy(model)
    new._modules = dict(model._modules, transformer=transformer, lm_head=head)
    new.config = config
    return new
