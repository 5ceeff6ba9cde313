"""The scaling lab: train a ladder of GPT-2 sizes, fit L(N) = E + A N^-alpha and L(C), predict a size before training it.

ladder.py  shapes, token budgets, batch and learning-rate rules -> one TrainConfig per size
runner.py  trains each size with `train()` (resumable), measures it, predicts the held-out size
fit.py     the power-law fit and its bootstrap intervals
report.py  scaling.json / scaling.md / scaling.png, with the published exponents beside ours
"""

from gpt2kit.scaling.fit import Bootstrap, PowerLawFit, bootstrap, fit_power_law
from gpt2kit.scaling.ladder import LADDER_PRESETS, LadderConfig, Rung, parse_size, plan_ladder
from gpt2kit.scaling.runner import Progress, RunResult, run_ladder

__all__ = ["LADDER_PRESETS", "Bootstrap", "LadderConfig", "PowerLawFit", "Progress", "Rung", "RunResult", "bootstrap",
           "fit_power_law", "parse_size", "plan_ladder", "run_ladder"]  # fmt: skip
