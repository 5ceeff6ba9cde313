"""`--compile auto` on the CPU: compile the model only where that makes a step faster, measured in the run.

On a GPU torch.compile's fused kernels win. On a CPU it depends on the CPU, the dtype and the shape: on a
2-core Xeon (Sapphire Rapids) a cpu-small step of 16 x 256 tokens took 1.17-1.23 s compiled against
1.27-1.29 eager in bf16, but 1.89-1.98 compiled against 1.84-1.87 eager in fp32. So a long CPU run with
`auto` times its first steps both ways and keeps the faster: SKIP untimed then TIMED timed steps eager, then
the same compiled (its first calls compile and warm up, untimed), then the rest of the run on the winner.
Every step of the trial is a real training step; only the compiling costs extra (20-30 s on 2 cores, which
`auto` spends only on runs of 200+ steps).

The choice is recorded in each checkpoint (meta "compiled"), and a run resumed after the trial takes it from
there without a new one, so that it runs the same kernels, and rounds the same way, as the uninterrupted run.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

SKIP, TIMED = 2, 4  # per side: untimed steps (compilation, allocator warm-up), then timed ones
SPAN = 2 * (SKIP + TIMED)  # the steps a trial takes


class CompileTrial:
    """The model the training loop calls, eager or compiled, while the trial runs and after it.

    meta: the checkpoint a run resumes from (its "compiled" is the choice once the trial was over), or None."""

    def __init__(self, model: torch.nn.Module, say: Callable[[str], None], meta: dict | None = None) -> None:
        decided = meta.get("compiled") if meta and meta.get("step", 0) >= SPAN else None
        self.model, self.say = model, say
        self.seconds: dict[str, float] = {}  # "eager" / "compiled" -> seconds a step
        self.steps, self._t0 = 0, 0.0
        self.decided = decided is not None
        self.runner = torch.compile(model) if decided else model  # what the loop calls next

    @property
    def compiled(self) -> bool:
        return self.runner is not self.model

    def step_done(self) -> torch.nn.Module:
        """Call after each optimizer step: returns the model to call for the next one."""
        if self.decided:
            return self.runner
        now, k = time.perf_counter(), self.steps % (SKIP + TIMED)
        side = "compiled" if self.compiled else "eager"
        self.steps += 1
        if k == SKIP - 1:
            self._t0 = now  # the timed steps start after this one
        elif k == SKIP + TIMED - 1:
            self.seconds[side] = (now - self._t0) / TIMED
            if side == "eager":
                self.runner = torch.compile(self.model)
            else:
                self._decide()
        return self.runner

    def _decide(self) -> None:
        eager, compiled = self.seconds["eager"], self.seconds["compiled"]
        if eager <= compiled:
            self.runner = self.model
        self.decided = True
        self.say(
            f"compile (auto): {1000 * eager:,.0f} ms a step eager, {1000 * compiled:,.0f} ms compiled on this machine; "
            f"the rest of the run {'compiled' if self.compiled else 'eager'} (--compile on/off decides it yourself)"
        )
