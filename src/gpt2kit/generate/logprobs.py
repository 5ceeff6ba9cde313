"""Per-token log-probabilities, as OpenAI defines them: the log-softmax of the model's RAW next-token
distribution (before penalties, logit bias, temperature, top-k/top-p), over the real vocabulary only.

Two producers, one record (`TokenLogprob`):

  - decode steps (`step_logprobs` + `unpack_step`): the engine asks only for the rows whose request set
    `SamplingParams.logprobs`, packs chosen-token logprob + top-k (logprob, id) pairs of all those rows
    with the step's drawn token ids into ONE float32 tensor, and moves it to the host in the step's single
    device->host transfer. Token ids are < 2**24, so float32 holds them exactly.
  - the prompt (`prompt_logprobs`): one uncached forward over the prompt; position t scores token t + 1,
    so the first prompt token has no logprob (None, as OpenAI's `echo` + `logprobs` returns it).

Shapes: B rows of the engine's logits, m rows that asked, k = the largest top-k asked this step, V vocab.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PROMPT_CHUNK = 256  # prompt positions whose (rows, V) float32 log-softmax is materialised at once


@dataclass(frozen=True)
class TokenLogprob:
    """One position: the token that was chosen (or given, in a prompt), its log-probability, and the
    `top` most likely alternatives as (token id, logprob), most likely first (may include the chosen one)."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


def step_logprobs(logits: torch.Tensor, rows: torch.Tensor, chosen: torch.Tensor, k: int) -> torch.Tensor:
    """(B, V) raw logits, (m,) row indices, (m,) chosen ids, top-k -> (m, 1 + 2k) float32 packed as
    [chosen logprob, k top logprobs, k top ids], all on the logits' device (no host sync)."""
    lp = torch.log_softmax(logits.index_select(0, rows).float(), dim=-1)  # (m, V)
    chosen_lp = lp.gather(1, chosen.view(-1, 1))  # (m, 1)
    if k == 0:
        return chosen_lp
    top_lp, top_ids = torch.topk(lp, k, dim=-1)  # (m, k), (m, k)
    return torch.cat([chosen_lp, top_lp, top_ids.float()], dim=1)  # (m, 1 + 2k)


def unpack_step(values: list[float], chosen: list[int], ks: list[int], k: int) -> list[TokenLogprob]:
    """Host side of `step_logprobs`: the flat list of its (m, 1 + 2k) values -> m TokenLogprobs, row i
    keeping its own top-ks[i] alternatives."""
    width = 1 + 2 * k
    out = []
    for i, (tok, ki) in enumerate(zip(chosen, ks)):
        row = values[i * width : (i + 1) * width]
        top = tuple((int(row[1 + k + j]), row[1 + j]) for j in range(ki))
        out.append(TokenLogprob(tok, row[0], top))
    return out


@torch.inference_mode()
def prompt_logprobs(model, ids: list[int], k: int, n_vocab: int) -> list[TokenLogprob | None]:
    """Logprob of every prompt token given the ones before it, with the top-k alternatives: one forward
    over the prompt (T <= n_positions). [T] ids -> [T] records, the first None."""
    T = len(ids)
    assert 1 <= T <= model.config.n_positions, "prompt_logprobs: the caller checks the prompt fits the context"
    device = model.lm_head.weight.device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    h = model.hidden_states(idx)[0, :-1]  # (T-1, C): position t predicts token t + 1
    targets = idx[0, 1:]  # (T-1,)
    parts = []
    for s in range(0, T - 1, PROMPT_CHUNK):
        logits = model.lm_head(h[s : s + PROMPT_CHUNK])[:, :n_vocab]  # (r, V)
        parts.append(step_logprobs(logits, torch.arange(logits.shape[0], device=device), targets[s : s + PROMPT_CHUNK], k))
    if not parts:
        return [None]
    values = torch.cat(parts).flatten().tolist()  # one device->host transfer
    return [None, *unpack_step(values, ids[1:], [k] * (T - 1), k)]
