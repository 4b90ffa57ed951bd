"""Coverage of central posterior intervals, derived from the ranks so that it is exact.

Why from the ranks: a central interval taken with interpolated quantiles of S draws covers a
calibrated truth with probability nominal × (S − 1)/(S + 1) (0.882 for a nominal 0.90 with 100
draws), and a closed interval over-covers discrete quantities (1.0 for a constant). The rank
r of the truth among L draws is uniform on 0..L under calibration, whatever the quantity, so
its randomised PIT u = (r + U)/(L + 1), U ~ Uniform(0, 1), is exactly uniform on (0, 1). The
central interval of width c covers the truth when |u − 1/2| ≤ c/2, and the expected hit given
the rank,

    h_c(r) = length of [r, r + 1] ∩ [(L + 1)(1 − c)/2, (L + 1)(1 + c)/2],

has mean exactly c under calibration, for continuous and discrete quantities and any L.
Coverage is the mean of h_c over simulations: unbiased, and no random numbers are drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

#: Nominal levels of the coverage table and plot.
LEVELS = (0.5, 0.8, 0.9, 0.95)


def interval_hits(ranks: np.ndarray, L: np.ndarray | int, level: float) -> np.ndarray:
    """h_c(r): the probability that the central `level` interval covers the truth, given its
    rank r among L draws (1 inside, 0 outside, a fraction at the interval's edges)."""
    r = np.asarray(ranks, dtype=float)
    n = np.asarray(L, dtype=float) + 1
    lo, hi = n * (1 - level) / 2, n * (1 + level) / 2
    return np.clip(np.minimum(r + 1, hi) - np.maximum(r, lo), 0.0, 1.0)


def _clopper_pearson(k: float, n: float, confidence: float) -> tuple[float, float]:
    """Exact (Clopper–Pearson) interval; k and n may be non-integer (Korn–Graubard)."""
    a = 1 - confidence
    lo = 0.0 if k <= 0 else float(stats.beta.ppf(a / 2, k, n - k + 1))
    hi = 1.0 if k >= n else float(stats.beta.ppf(1 - a / 2, k + 1, n - k))
    return lo, hi


def coverage(
    hits: np.ndarray, confidence: float = 0.95, clusters: np.ndarray | None = None
) -> tuple[float, float, float]:
    """(estimate, lo, hi): mean of the hits (0/1 or fractional) with a Clopper–Pearson interval.

    Fractional hits vary less than 0/1 hits with the same mean, so the binomial interval is
    conservative for them. With `clusters` (pooled quantities, dependent within a simulation)
    the interval is Korn & Graubard's (1998): Clopper–Pearson at the effective sample size
    n* = min(n, p̂(1 − p̂)/v̂), v̂ the cluster-robust variance of p̂.
    """
    h = np.asarray(hits, dtype=float)
    n = h.size
    if n == 0:
        return math.nan, math.nan, math.nan
    est = float(h.mean())
    n_eff = float(n)
    if clusters is not None and 0 < est < 1:
        _, inv = np.unique(np.asarray(clusters), return_inverse=True)
        resid = np.bincount(inv.ravel(), weights=h - est)
        var = float((resid**2).sum()) / n**2
        if var > 0:
            n_eff = min(float(n), est * (1 - est) / var)
    lo, hi = _clopper_pearson(est * n_eff, n_eff, confidence)
    return est, lo, hi


def rank_coverage(
    ranks: np.ndarray,
    L: np.ndarray | int,
    level: float,
    confidence: float = 0.95,
    clusters: np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Coverage of the central `level` interval from ranks: (estimate, lo, hi)."""
    return coverage(interval_hits(ranks, L, level), confidence, clusters)


def coverage_curve(
    ranks: np.ndarray, L: np.ndarray | int, widths: Sequence[float] | np.ndarray
) -> np.ndarray:
    """Coverage at each central width (R SBC's coverage plots): mean h_w(r) per width."""
    r = np.asarray(ranks)
    return np.array([interval_hits(r, L, float(w)).mean() for w in widths])


def centrality_ranks(ranks: np.ndarray, L: int) -> np.ndarray:
    """Each rank's position when the L + 1 rank values are ordered from the centre outwards
    (ties: the lower value first). Uniform on 0..L under calibration, and the share of
    positions below m is the coverage of the m most central rank values: the ECDF of these
    positions is the coverage curve, and the γ band applies to it unchanged."""
    values = np.arange(L + 1)
    order = np.lexsort((values, np.abs(2 * values - L)))
    position = np.empty(L + 1, dtype=np.int64)
    position[order] = values
    return position[np.asarray(ranks, dtype=np.int64)]
