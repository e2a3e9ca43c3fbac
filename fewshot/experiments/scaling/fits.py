"""Power-law fits with bootstrap 95% intervals (scipy): L(x) = (x_c / x)^alpha + E.

x is N (non-embedding parameters), D (tokens) or C (FLOPs). The fit runs in log space,
L = exp(alpha (log x_c - log x)) + E, which keeps x_c's huge range well conditioned. With
a handful of points, resampling the points would often leave too few distinct ones, so the
intervals come from a residual bootstrap: refit to the fitted curve plus resampled residuals.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit
from scipy.special import expit

from fewshot.errors import FewshotError

BOOTSTRAP = 1000


def _law(log_x: np.ndarray, alpha: float, log_xc: float, e: float) -> np.ndarray:
    return np.exp(alpha * (log_xc - log_x)) + e


@dataclass(frozen=True)
class PowerLaw:
    alpha: float
    x_c: float
    e: float  # the irreducible loss
    alpha_ci95: tuple[float, float]
    e_ci95: tuple[float, float]
    samples: tuple[tuple[float, float, float], ...]  # bootstrap (alpha, log x_c, E), for predictions
    residuals: tuple[float, ...]  # of the fit, scaled up for the 3 fitted parameters

    def __call__(self, x: float | np.ndarray) -> float | np.ndarray:
        return _law(np.log(x), self.alpha, math.log(self.x_c), self.e)

    def band(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The curve's 95% bootstrap band at each x (for plots)."""
        draws = np.array([_law(np.log(x), a, c, e) for a, c, e in self.samples])
        return np.percentile(draws, 2.5, axis=0), np.percentile(draws, 97.5, axis=0)

    def predict(self, x: float, seed: int = 0) -> tuple[float, tuple[float, float]]:
        """The fitted loss at x and a 95% interval for a run measured there: the bootstrap
        spread of the curve plus a residual, since that run's loss is noisy too."""
        rng = np.random.default_rng(seed)
        noise = rng.choice(np.asarray(self.residuals), len(self.samples))
        draws = np.array([_law(np.log(x), a, c, e) for a, c, e in self.samples]) + noise
        return float(self(x)), (float(np.percentile(draws, 2.5)), float(np.percentile(draws, 97.5)))


def _fit_once(log_x: np.ndarray, loss: np.ndarray, start: tuple[float, float, float]) -> tuple[float, float, float]:
    """One least-squares fit with alpha > 0 and 0 <= E <= min(loss), held by a change of
    variables (alpha = e^u, E = min(loss) sigmoid(v)) so that the fast unbounded
    Levenberg-Marquardt solver applies: a bootstrap runs it a thousand times per law."""
    ceiling = float(loss.min())
    alpha, log_xc, e = start
    share = min(max(e / ceiling, 1e-6), 1 - 1e-6) if ceiling > 0 else 0.5

    def law(lx: np.ndarray, u: float, c: float, v: float) -> np.ndarray:
        return _law(lx, math.exp(min(u, 5.0)), c, ceiling * expit(v))

    with warnings.catch_warnings():  # "covariance could not be estimated": the intervals come from the bootstrap
        warnings.simplefilter("ignore", OptimizeWarning)
        (u, c, v), _ = curve_fit(law, log_x, loss, p0=(math.log(alpha), log_xc, math.log(share / (1 - share))), maxfev=5_000)
    found = (math.exp(min(u, 5.0)), float(c), float(ceiling * expit(v)))
    if not all(math.isfinite(p) for p in found):
        raise RuntimeError("the fit left the finite numbers")
    return found


def fit_power_law(x: Sequence[float], loss: Sequence[float], bootstrap: int = BOOTSTRAP, seed: int = 0) -> PowerLaw:
    """Fit L(x) = (x_c/x)^alpha + E; needs at least 4 points (3 parameters and a residual)."""
    x, loss = np.asarray(x, dtype=float), np.asarray(loss, dtype=float)
    if len(x) < 4 or len(set(x.tolist())) < 4:
        raise FewshotError(f"a power-law fit needs at least 4 distinct points, got {len(set(x.tolist()))}")
    if np.any(x <= 0) or not np.all(np.isfinite(loss)):
        raise FewshotError("a power-law fit needs positive x and finite losses")
    log_x = np.log(x)
    starts = [(0.1, float(log_x.max()) + 5, 0.9 * float(loss.min())), (0.5, float(log_x.mean()), 0.5 * float(loss.min())),
              (0.05, float(log_x.max()) + 20, 0.0)]
    best, best_error = None, math.inf
    for start in starts:  # the surface has flat valleys: take the best of a few starts
        try:
            found = _fit_once(log_x, loss, start)
        except (RuntimeError, ValueError, OverflowError):
            continue
        error = float(np.sum((_law(log_x, *found) - loss) ** 2))
        if error < best_error:
            best, best_error = found, error
    if best is None:
        raise FewshotError("the power-law fit did not converge")
    fitted = _law(log_x, *best)
    residuals = loss - fitted
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(bootstrap):
        try:
            samples.append(_fit_once(log_x, fitted + rng.choice(residuals, len(residuals)), best))
        except (RuntimeError, ValueError, OverflowError):
            continue
    if len(samples) < bootstrap // 2:
        raise FewshotError("the power-law fit is unstable: most bootstrap refits failed")
    draws = np.array(samples)
    interval = lambda column: (float(np.percentile(draws[:, column], 2.5)), float(np.percentile(draws[:, column], 97.5)))  # noqa: E731
    inflated = residuals * math.sqrt(len(x) / (len(x) - 3))
    return PowerLaw(best[0], math.exp(best[1]), best[2], interval(0), interval(2), tuple(map(tuple, samples)),
                    tuple(float(r) for r in inflated))


@dataclass(frozen=True)
class Optimum:
    """The best size at one compute budget (Hoffmann et al.'s IsoFLOP profiles)."""

    n: float
    n_ci95: tuple[float, float]
    loss: float


def isoflop_optimum(n: Sequence[float], loss: Sequence[float], bootstrap: int = BOOTSTRAP, seed: int = 0) -> Optimum:
    """Fit loss = a (log N - log N*)^2 + L* over one budget's runs; N* with a bootstrap interval."""
    log_n, loss = np.log(np.asarray(n, dtype=float)), np.asarray(loss, dtype=float)
    if len(set(log_n.tolist())) < 3:
        raise FewshotError("an IsoFLOP profile needs at least 3 sizes at the budget")
    coefficients = np.polyfit(log_n, loss, 2)
    if coefficients[0] <= 0:
        raise FewshotError("the IsoFLOP profile has no minimum (the losses do not turn up at both ends); "
                           "add sizes on both sides of the best one")
    vertex = lambda c: -c[1] / (2 * c[0])  # noqa: E731
    if not log_n.min() <= vertex(coefficients) <= log_n.max():
        raise FewshotError("the IsoFLOP profile has no minimum within the sizes tried; add sizes beyond the best one")
    fitted = np.polyval(coefficients, log_n)
    residuals = loss - fitted
    rng = np.random.default_rng(seed)
    residuals = residuals * math.sqrt(len(loss) / max(1, len(loss) - 3))  # 3 fitted coefficients
    draws = []
    for _ in range(bootstrap):
        c = np.polyfit(log_n, fitted + rng.choice(residuals, len(residuals)), 2)
        if c[0] > 0:
            draws.append(vertex(c))
    best = vertex(coefficients)
    low, high = (np.percentile(draws, 2.5), np.percentile(draws, 97.5)) if draws else (best, best)
    return Optimum(math.exp(best), (math.exp(low), math.exp(high)), float(np.polyval(coefficients, best)))


@dataclass(frozen=True)
class Exponent:
    """y = k x^a, fitted as a line in log-log space."""

    a: float
    k: float
    a_ci95: tuple[float, float]


def fit_exponent(x: Sequence[float], y: Sequence[float], bootstrap: int = BOOTSTRAP, seed: int = 0) -> Exponent:
    log_x, log_y = np.log(np.asarray(x, dtype=float)), np.log(np.asarray(y, dtype=float))
    if len(set(log_x.tolist())) < 2:
        raise FewshotError("an exponent needs at least 2 distinct points")
    a, b = np.polyfit(log_x, log_y, 1)
    fitted = a * log_x + b
    residuals = log_y - fitted
    rng = np.random.default_rng(seed)
    slopes = [np.polyfit(log_x, fitted + rng.choice(residuals, len(residuals)), 1)[0] for _ in range(bootstrap)]
    return Exponent(float(a), float(math.exp(b)), (float(np.percentile(slopes, 2.5)), float(np.percentile(slopes, 97.5))))
