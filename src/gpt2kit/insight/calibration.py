"""Turning a detector score into a probability: AUROC, a logistic fit, and the calibration file.

The calibration file (`detect_calibration.json`, made by runs/detect_calibrate.py) holds, per passage
length in tokens, a logistic fit p(machine) = sigmoid(coef * score + intercept) of the Fast-DetectGPT
criterion on the calibration texts, with the AUROCs measured there, and a fingerprint of the model it was
made with (its shape and a few embedding values): a probability is only given for that model.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources

import torch

CALIBRATION_FILE = "detect_calibration.json"
PROBE_ROWS = (0, 11, 262, 4683, 50256)  # embedding rows read for the fingerprint
PROBE_COLS = 8
PROBE_ATOL = 2e-2  # a bf16/fp16 copy of the same weights still matches; another model does not


def auroc(positive: list[float], negative: list[float]) -> float:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counting half."""
    pos, neg = torch.tensor(positive, dtype=torch.float64), torch.tensor(negative, dtype=torch.float64)
    if pos.numel() == 0 or neg.numel() == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None]).double().sum()
    eq = (pos[:, None] == neg[None]).double().sum()
    return float((gt + 0.5 * eq) / (pos.numel() * neg.numel()))


def fit_logistic(x: list[float], y: list[int], l2: float = 1.0, steps: int = 50) -> tuple[float, float]:
    """Logistic regression of y (0/1) on one feature x by Newton's method -> (coef, intercept). The ridge
    penalty l2 on the slope keeps it finite when the two sides do not overlap (at 256 tokens they barely
    do): without it the fit becomes a step and every probability 0 or 1."""
    X = torch.stack([torch.tensor(x, dtype=torch.float64), torch.ones(len(x), dtype=torch.float64)], dim=1)  # (n, 2)
    Y = torch.tensor(y, dtype=torch.float64)
    w = torch.zeros(2, dtype=torch.float64)
    reg = torch.diag(torch.tensor([l2, 0.0], dtype=torch.float64))
    for _ in range(steps):
        p = torch.sigmoid(X @ w)
        grad = X.T @ (p - Y) + reg @ w
        hess = X.T @ (X * (p * (1 - p))[:, None]) + reg + 1e-9 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        w = w - step
        if float(step.abs().max()) < 1e-10:
            break
    return float(w[0]), float(w[1])


def model_fingerprint(model) -> dict:
    """The model's shape and a few embedding values, to recognise it (in any dtype) later."""
    c = model.config
    wte = model.transformer.wte.weight.detach()
    rows = [r for r in PROBE_ROWS if r < wte.shape[0]]
    probe = wte[rows, :PROBE_COLS].float().cpu().flatten().tolist()
    return {"n_layer": c.n_layer, "n_embd": c.n_embd, "n_head": c.n_head, "n_positions": c.n_positions, "probe": probe}


def same_model(a: dict, b: dict) -> bool:
    shape = ("n_layer", "n_embd", "n_head", "n_positions")
    if any(a.get(k) != b.get(k) for k in shape) or len(a["probe"]) != len(b["probe"]):
        return False
    return all(math.isclose(x, y, rel_tol=PROBE_ATOL, abs_tol=PROBE_ATOL) for x, y in zip(a["probe"], b["probe"]))


@dataclass(frozen=True)
class Calibration:
    model_name: str
    fingerprint: dict
    sampler: str  # the sampling settings of the machine-written side the fit used
    fits: dict[int, tuple[float, float]]  # passage length -> (coef, intercept)
    table: list[dict]  # the AUROC rows measured (length, sampler, fast_detect, gltr_top10, log_rank, ...)

    def probability(self, score: float, n_tokens: int) -> tuple[float, int]:
        """p(machine-written) from the fit of the calibrated length nearest n_tokens (on a log scale)."""
        length = min(self.fits, key=lambda L: abs(math.log(L) - math.log(max(n_tokens, 1))))
        coef, intercept = self.fits[length]
        return 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, coef * score + intercept)))), length

    def to_json(self) -> dict:
        return {"model_name": self.model_name, "fingerprint": self.fingerprint, "sampler": self.sampler,
                "fits": {str(k): {"coef": a, "intercept": b} for k, (a, b) in self.fits.items()},
                "auroc": self.table}  # fmt: skip

    @classmethod
    def from_json(cls, d: dict) -> Calibration:
        fits = {int(k): (v["coef"], v["intercept"]) for k, v in d["fits"].items()}
        return cls(d["model_name"], d["fingerprint"], d["sampler"], fits, d.get("auroc", []))


def load_calibration() -> Calibration | None:
    """The calibration shipped in the package, or None when there is none."""
    path = resources.files("gpt2kit.insight") / CALIBRATION_FILE
    if not path.is_file():
        return None
    return Calibration.from_json(json.loads(path.read_text(encoding="utf-8")))
