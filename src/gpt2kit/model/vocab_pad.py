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

import torch

from gpt2kit.model.gpt import GPT


def pad_vocab(model: GPT, multiple: int) -> GPT:
    """The same model with wte/lm_head rows rounded up to a multiple of `multiple` (new rows zero).

    Returns `model` itself when nothing changes. The result lives on the model's device, in its mode."""
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
    """A GPT of `config` holding model's tensors, with `wte` (tied to lm_head) as its token embedding."""
    with torch.device("meta"):
        shell = GPT(config)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    state["transformer.wte.weight"] = state["lm_head.weight"] = wte
    shell.load_state_dict(state, assign=True)
    shell.lm_head.weight = shell.transformer.wte.weight  # tied again: one (V, C) Parameter
    for p, q in zip(shell.parameters(), model.parameters()):
        p.requires_grad_(q.requires_grad)
    return shell.train(model.training)
