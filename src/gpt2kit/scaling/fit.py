"""Fit L(x) = E + A x^(-alpha) to (x, loss) points, with bootstrap intervals. x is N (parameters) or C (FLOPs).

    fit = fit_power_law(n_params, losses)                 # PowerLawFit(E, A, alpha, r2, ...)
    boot = bootstrap(n_params, losses, n_boot=2000)       # refits on runs drawn with replacement
    boot.interval("alpha")                                # (lo, hi), 90 % by default
    lo, hi = boot.prediction_interval(x_new)              # where a new run's loss should land

No nonlinear optimiser: for a fixed alpha the model is linear in (E, A), so least squares gives them exactly.
The fit scans alpha over a log grid, takes the best, and refines it by golden-section search on the
sum of squared errors. This cannot diverge or stop at a bad start, which matters with 5-6 points.
E is kept >= 0 (a loss cannot fall below zero), A >= 0 (loss falls with size). `fix_E=0.0` fits
Kaplan et al.'s pure power law L = (x_c / x)^alpha.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gpt2kit.errors import InputError

ALPHA_RANGE = (1e-3, 3.0)


@dataclass(frozen=True)
class PowerLawFit:
    E: float
    A: float
    alpha: float
    r2: float  # 1 - SSE / SST, on the loss scale
    rmse: float
    n: int  # points fitted

    def predict(self, x) -> np.ndarray:
        return self.E + self.A * np.asarray(x, dtype=np.float64) ** (-self.alpha)

    def to_dict(self) -> dict:
        return {"E": self.E, "A": self.A, "alpha": self.alpha, "r2": self.r2, "rmse": self.rmse, "n": self.n}


def _solve(u: np.ndarray, y: np.ndarray, alphas: np.ndarray, fix_E: float | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least squares (E, A) for each fixed alpha on u = x / scale, with E >= 0 and A >= 0, in closed form.

    u, y: (n,); alphas: (k,) -> E, A_u, SSE: (k,) each."""
    f = u[None, :] ** (-alphas[:, None])  # (k, n)
    y = y[None, :]  # (1, n)
    if fix_E is None:
        fm, ym = f.mean(1, keepdims=True), y.mean(1, keepdims=True)
        A = ((f - fm) * (y - ym)).sum(1) / np.maximum(((f - fm) ** 2).sum(1), 1e-300)  # (k,)
        E = ym[:, 0] - A * fm[:, 0]
        E0 = E < 0  # the best E would be negative: refit with E = 0
        A0 = (f * y).sum(1) / (f * f).sum(1)
        A, E = np.where(E0, A0, A), np.where(E0, 0.0, E)
        flat = A < 0  # losses that do not fall with x: the best monotone fit is flat
        A, E = np.where(flat, 0.0, A), np.where(flat, ym[:, 0], E)
    else:
        E = np.full(len(alphas), float(fix_E))
        A = np.maximum(0.0, (f * (y - fix_E)).sum(1) / (f * f).sum(1))
    r = y - E[:, None] - A[:, None] * f  # (k, n)
    return E, A, (r * r).sum(1)


def fit_power_law(x, y, fix_E: float | None = None, grid: int = 400, refine: int = 40) -> PowerLawFit:
    """Least-squares fit of y = E + A x^-alpha (see the module docstring). x > 0, at least 3 distinct x
    (2 with fix_E)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    need = 2 if fix_E is not None else 3
    if x.shape != y.shape or x.ndim != 1 or len(np.unique(x)) < need or np.any(x <= 0) or not np.all(np.isfinite(y)):
        raise InputError(
            f"a power-law fit needs >= {need} distinct positive x with finite losses; got x={x.tolist()}, y={y.tolist()}."
        )
    scale = math.exp(float(np.log(x).mean()))  # fit on u = x / geometric mean: u^-alpha stays near 1
    u = x / scale
    alphas = np.geomspace(*ALPHA_RANGE, grid)
    sse = _solve(u, y, alphas, fix_E)[2]  # (grid,)
    i = int(np.argmin(sse))
    lo, hi = alphas[max(i - 1, 0)], alphas[min(i + 1, grid - 1)]
    sse_at = lambda a: float(_solve(u, y, np.array([a]), fix_E)[2][0])  # noqa: E731
    g = (math.sqrt(5) - 1) / 2
    m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
    s1, s2 = sse_at(m1), sse_at(m2)
    for _ in range(refine):  # golden-section search on [lo, hi] (SSE is smooth in alpha): one new SSE per step
        if s1 < s2:
            hi, m2, s2 = m2, m1, s1
            m1 = hi - g * (hi - lo)
            s1 = sse_at(m1)
        else:
            lo, m1, s1 = m1, m2, s2
            m2 = lo + g * (hi - lo)
            s2 = sse_at(m2)
    alpha = 0.5 * (lo + hi)
    E, A_u, s = (float(v[0]) for v in _solve(u, y, np.array([alpha]), fix_E))
    sst = float(((y - y.mean()) ** 2).sum())
    return PowerLawFit(E=E, A=float(A_u * scale**alpha), alpha=float(alpha), r2=1.0 - s / sst if sst > 0 else 1.0,
                       rmse=math.sqrt(s / len(y)), n=len(y))  # fmt: skip


@dataclass(frozen=True)
class Bootstrap:
    """Refits on resampled runs: E, A, alpha arrays (n_boot,), plus the residuals of the full fit."""

    fit: PowerLawFit
    E: np.ndarray
    A: np.ndarray
    alpha: np.ndarray
    residuals: np.ndarray  # (n,) y - fit.predict(x), scaled by sqrt(n / (n - 3)) for the fitted parameters
    seed: int
    level: float

    def interval(self, name: str) -> tuple[float, float]:
        """Percentile interval of a parameter at self.level (e.g. 0.9 -> 5th and 95th percentiles)."""
        q = 50 * (1 - self.level)
        v = getattr(self, name)
        return float(np.percentile(v, q)), float(np.percentile(v, 100 - q))

    def curves(self, x) -> np.ndarray:
        """(n_boot, len(x)): every bootstrap fit evaluated at x."""
        x = np.asarray(x, dtype=np.float64)
        return self.E[:, None] + self.A[:, None] * x[None, :] ** (-self.alpha[:, None])

    def band(self, x) -> tuple[np.ndarray, np.ndarray]:
        """The percentile band of the fitted curve at x (uncertainty of the law, not of one run)."""
        q = 50 * (1 - self.level)
        c = self.curves(x)
        return np.percentile(c, q, axis=0), np.percentile(c, 100 - q, axis=0)

    def prediction_interval(self, x_new: float) -> tuple[float, float]:
        """Where the loss of a new run at x_new should land: each bootstrap curve's value there plus a
        residual of the full fit drawn at random (a run scatters about the law as the fitted ones did)."""
        rng = np.random.default_rng(self.seed + 1)
        pred = self.curves([x_new])[:, 0] + rng.choice(self.residuals, size=len(self.E))
        q = 50 * (1 - self.level)
        return float(np.percentile(pred, q)), float(np.percentile(pred, 100 - q))

    def to_dict(self) -> dict:
        return {
            "level": self.level,
            "n_boot": len(self.E),
            **{f"{k}_interval": list(self.interval(k)) for k in ("E", "A", "alpha")},
        }


def bootstrap(x, y, n_boot: int = 1000, level: float = 0.9, seed: int = 0, fix_E: float | None = None) -> Bootstrap:
    """Case bootstrap over runs: draw len(x) runs with replacement, refit, n_boot times. Draws with fewer
    distinct sizes than the fit needs (3, or 2 with fix_E) are redrawn."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    fit = fit_power_law(x, y, fix_E=fix_E)
    need = 2 if fix_E is not None else 3
    rng = np.random.default_rng(seed)
    params = []
    while len(params) < n_boot:
        idx = rng.integers(0, len(x), size=len(x))
        if len(np.unique(x[idx])) < need:
            continue
        f = fit_power_law(x[idx], y[idx], fix_E=fix_E, grid=100, refine=25)
        params.append((f.E, f.A, f.alpha))
    E, A, alpha = (np.array(v) for v in zip(*params))
    dof = max(len(x) - need, 1)  # need = number of fitted parameters
    residuals = (y - fit.predict(x)) * math.sqrt(len(x) / dof)
    return Bootstrap(fit=fit, E=E, A=A, alpha=alpha, residuals=residuals, seed=seed, level=level)
