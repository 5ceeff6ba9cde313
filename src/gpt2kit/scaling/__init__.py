"""The scaling lab: train a ladder of GPT-2 sizes, fit L(N) = E + A N^-alpha and L(C), predict a size before training it.

ladder.py  shapes, token budgets, batch and learning-rate rules -> one TrainConfig per size
runner.py  trains each size with `train()` (resumable), measures it, predicts the held-out size
fit.py     the power-law fit and its bootstrap intervals
report.py  scaling.json / scaling.md / scaling.png, with the published exponents beside ours
"""

from typing import TYPE_CHECKING

from gpt2kit.lazy import exports

_WHERE = {
    "Bootstrap": "gpt2kit.scaling.fit", "PowerLawFit": "gpt2kit.scaling.fit", "bootstrap": "gpt2kit.scaling.fit",
    "fit_power_law": "gpt2kit.scaling.fit", "LADDER_PRESETS": "gpt2kit.scaling.ladder",
    "LadderConfig": "gpt2kit.scaling.ladder", "Rung": "gpt2kit.scaling.ladder",
    "parse_size": "gpt2kit.scaling.ladder", "plan_ladder": "gpt2kit.scaling.ladder",
    "Progress": "gpt2kit.scaling.runner", "RunResult": "gpt2kit.scaling.runner",
    "run_ladder": "gpt2kit.scaling.runner",
}  # fmt: skip
__getattr__, __dir__ = exports(__name__, _WHERE)  # imported on first use

if TYPE_CHECKING:
    from gpt2kit.scaling.fit import Bootstrap, PowerLawFit, bootstrap, fit_power_law
    from gpt2kit.scaling.ladder import LADDER_PRESETS, LadderConfig, Rung, parse_size, plan_ladder
    from gpt2kit.scaling.runner import Progress, RunResult, run_ladder

__all__ = ["LADDER_PRESETS", "Bootstrap", "LadderConfig", "PowerLawFit", "Progress", "Rung", "RunResult", "bootstrap",
           "fit_power_law", "parse_size", "plan_ladder", "run_ladder"]  # fmt: skip
