"""One token for every active row of an engine step, from the (B, V) logits the step's forward left.

Greedy rows without penalties (plain, or with a logit bias or banned ids) are drawn together by
sampling.greedy_tokens: the same steps as row by row, one numpy argmax a row on a CPU. Every
other row (sampled, penalised, with a banned-phrase filter) goes through `process_logits` and `draw` alone,
with its own generator; if that raises, the row gets NO_TOKEN and an error, and its neighbours go on. The
rows that asked for logprobs get them from the raw logits, packed with the drawn ids into the step's one
device -> host transfer.
"""

from __future__ import annotations

import numpy as np
import torch

from gpt2kit.generate.logprobs import TokenLogprob, step_logprobs, unpack_step
from gpt2kit.generate.sampling import NO_TOKEN, draw, greedy_tokens, process_logits
from gpt2kit.generate.sequence import _Sequence


def draw_step(
    logits: torch.Tensor, active: list[tuple[int, _Sequence]], host: np.ndarray | None = None
) -> tuple[list[int], list[TokenLogprob | None]]:
    """(B, V) logits and the active (row, sequence) pairs -> one token id per pair (NO_TOKEN where nothing can
    be drawn or the row's sampling failed: its `error` says why) and each pair's logprobs (None unless asked).
    host: the logits' numpy view where they are float32 on the CPU (sampling.greedy_tokens)."""
    device, n = logits.device, len(active)
    greedy = [i for i, (_, s) in enumerate(active) if s.batchable_greedy]
    drawn = _draw_greedy(logits, [active[i] for i in greedy], host)
    if drawn is not None and len(greedy) == n and all(s.params.logprobs is None for _, s in active):
        return drawn.tolist(), [None] * n  # one transfer
    toks: list[torch.Tensor | None] = [None] * n
    for i, tok in zip(greedy, drawn if drawn is not None else []):
        toks[i] = tok
    for i, (b, s) in enumerate(active):
        if toks[i] is not None:
            continue
        try:  # a failure here ends this sequence alone (finish_reason "error"), never its neighbours
            banned = s.banned
            if s.phrase_filter is not None:
                extra = s.phrase_filter.banned_ids(device)
                banned = extra if banned is None else torch.cat([banned, extra])
            row = process_logits(logits[b], s.params, s.context_counts, s.output_counts, banned)
            toks[i] = draw(row, s.params, s.generator)  # NO_TOKEN when nothing can be drawn
        except Exception as e:  # noqa: BLE001 - reported on the sequence's last event
            s.error = f"sampling failed: {type(e).__name__}: {e}"
            toks[i] = torch.tensor(NO_TOKEN, device=device)
    drawn = torch.stack(toks)  # (n,) long, on the device
    asked = [i for i, (_, s) in enumerate(active) if s.params.logprobs is not None]
    if not asked:
        return drawn.tolist(), [None] * n
    # Logprobs of the raw logits, for the rows that asked only, packed with the drawn ids so the
    # step still makes one device->host transfer (ids < 2**24 are exact in float32).
    m, ks = len(asked), [active[i][1].params.logprobs for i in asked]
    k = max(ks)
    ix = torch.tensor(asked + [active[i][0] for i in asked], device=device)  # (2m,): positions, rows
    packed = step_logprobs(logits, ix[m:], drawn.index_select(0, ix[:m]).clamp(min=0), k)  # (m, 1 + 2k)
    flat = torch.cat([drawn.float(), packed.flatten()]).tolist()
    tokens = [int(t) for t in flat[:n]]
    out: list[TokenLogprob | None] = [None] * n
    for i, rec in zip(asked, unpack_step(flat[n:], [tokens[i] for i in asked], ks, k)):
        out[i] = rec
    return tokens, out


def _draw_greedy(logits: torch.Tensor, rows: list[tuple[int, _Sequence]], host: np.ndarray | None) -> torch.Tensor | None:
    """The greedy (row, sequence) pairs (plain, or with a logit bias or banned ids) in one pass: (m,) long, or
    None when there are none or the pass fails (each is then drawn alone, failing alone)."""
    if not rows:
        return None
    seqs = [s for _, s in rows]
    try:
        return greedy_tokens(logits, [s.params.logit_bias for s in seqs], [s.banned for s in seqs], [b for b, _ in rows], host)
    except Exception:  # noqa: BLE001 - the caller draws these rows one by one
        return None
