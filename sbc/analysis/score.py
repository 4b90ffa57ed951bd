"""Score identities: do a simulator and a model describe the same joint distribution?

`sbc precheck` draws (θ, y) from the simulator, maps θ to the program's unconstrained
coordinates u and takes g = ∇_u log p(u, y), the gradient of the program's log density
(its Jacobian included). If the simulator draws from the program's joint distribution,
integration by parts in u_i alone, with everything else held fixed, gives for every
function w, c, s > 0 of the other coordinates u_{-i} (and of y)

    E[ w · g_i | u_{-i}, y ] = 0                                              (score)
    E[ w · (ψ(t) g_i + ψ'(t) / s) | u_{-i}, y ] = 0,  t = (u_i - c) / s,  ψ = tanh   (Stein)

when the boundary terms p → 0 and ψ p → 0 vanish (docs/precheck.md). The score identity
sees a shifted or tilted density (a missing Jacobian shifts it by a constant); the Stein
identity, with a bounded odd ψ, sees a wrong scale, which leaves the score's mean at zero.

Scores are heavy-tailed: where a scale parameter is small (σ, τ near 0) ∂ log p / ∂u is
huge, with infinite variance and often an infinite mean, so a plain t-test has almost no
power. Every summand X is therefore studentised by an estimate of its conditional standard
deviation given u_{-i}: X² regressed by non-negative least squares on the "scale features"
1, e^{-2 u_k}, e^{2 u_k} of the other coordinates (the conditional variance of a score is
a sum of such terms when u_k is a log-scale: the LMM's Var(∂_b log p) = Σ z²/σ² + 1/τ²).
The regression, the centre c and the scale s are fitted on the other folds of a K-fold
split (cross-fitting), so the weights are functions of u_{-i} and of independent draws
only and the identities hold exactly for the weighted summands; the studentised summands
are close to unit variance, and their t-statistic close to N(0, 1) (measured in
benchmarks/precheck_size.py). Holm over every (coordinate, identity) pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import optimize, stats

from sbc.analysis.uniformity import holm

IDENTITIES = ("score", "stein")
COLUMNS = [
    "coordinate",
    "score_est", "score_se", "score_z",
    "stein_est", "stein_se", "stein_z",
    "p_holm", "consistent",
]  # fmt: skip


@dataclass(frozen=True)
class IdentityTest:
    """One identity at one coordinate: its studentised (weighted) mean, 0 if consistent."""

    estimate: float  # Σ w X / Σ w
    se: float
    z: float
    p: float  # two-sided, N(0, 1); NaN if the summands are all 0 (nothing to test)


@dataclass(frozen=True)
class ScoreCheck:
    """The identities at every unconstrained coordinate, and the verdict (Holm at `alpha`)."""

    table: pd.DataFrame  # COLUMNS, one row per coordinate
    alpha: float
    n: int  # simulated draws

    @property
    def consistent(self) -> bool:
        return bool(self.table["consistent"].all())

    def failing(self) -> list[str]:
        """Coordinates that fail, smallest Holm-adjusted p first."""
        bad = self.table[~self.table["consistent"]].sort_values("p_holm", kind="stable")
        return list(bad["coordinate"])


def score_check(
    u: np.ndarray,
    grad: np.ndarray,
    names: Sequence[str],
    alpha: float = 0.01,
    folds: int = 5,
    max_features: int = 20,
) -> ScoreCheck:
    """Both identities at every coordinate of draws `u` (n, d) with gradients `grad` (n, d)."""
    u = np.asarray(u, dtype=float)
    grad = np.asarray(grad, dtype=float)
    n, d = u.shape
    if grad.shape != (n, d) or len(names) != d:
        raise ValueError(f"u {u.shape}, grad {grad.shape} and {len(names)} names disagree")
    if n < 2 * folds:
        raise ValueError(f"{n} draws are too few for {folds}-fold cross-fitting")
    fold = np.arange(n) % folds
    features, ranks = scale_features(u), standardised_ranks(u)
    rows, p = [], np.empty((d, len(IDENTITIES)))
    for i in range(d):
        others = np.delete(np.arange(d), i)
        tests = [
            identity_test(x, ranks[:, others], fold, features[:, others], max_features)
            for x in identity_summands(u[:, i], grad[:, i], fold)
        ]
        rows.append([names[i], *(v for t in tests for v in (t.estimate, t.se, t.z))])
        p[i] = [t.p for t in tests]
    adjusted = holm(p.ravel()).reshape(p.shape)
    table = pd.DataFrame(rows, columns=COLUMNS[:7])
    table["p_holm"] = np.fmin(adjusted[:, 0], adjusted[:, 1])  # NaN only if both are
    table["consistent"] = ~(table["p_holm"] <= alpha)
    return ScoreCheck(table=table, alpha=alpha, n=n)


def identity_summands(
    u_i: np.ndarray, g_i: np.ndarray, fold: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(score, Stein) summands of one coordinate: g_i and tanh(t) g_i + (1 - tanh²(t)) / s,
    with t = (u_i - c) / s for the median c and scaled MAD s of the other folds' u_i."""
    c = np.empty_like(u_i)
    s = np.empty_like(u_i)
    for k in np.unique(fold):
        rest = u_i[fold != k]
        c[fold == k] = np.median(rest)
        spread = 1.4826 * np.median(np.abs(rest - np.median(rest)))
        s[fold == k] = spread if spread > 0 else (np.std(rest) or 1.0)
    psi = np.tanh((u_i - c) / s)
    return g_i, psi * g_i + (1.0 - psi**2) / s


def identity_test(
    x: np.ndarray,
    others: np.ndarray,
    fold: np.ndarray,
    features: np.ndarray | None = None,
    max_features: int = 20,
) -> IdentityTest:
    """Is E[x] = 0, with each summand studentised by its conditional sd given `others`?

    The weights w = 1/sd are cross-fitted (the draws of fold k weighted by a fit to the
    other folds), so E[w x] = 0 whenever E[x | others] = 0. `others` may be given as their
    `standardised_ranks` when `features` (their `scale_features`) are given too.
    """
    x = np.asarray(x, dtype=float)
    if not np.any(x):
        return IdentityTest(0.0, 0.0, np.nan, np.nan)
    if features is None:
        features, others = scale_features(others), standardised_ranks(others)
    w = 1.0 / np.sqrt(conditional_variance(x**2, others, features, fold, max_features))
    y = w * x
    n = len(x)
    estimate = float(np.sum(y) / np.sum(w))
    se = float(np.std(y, ddof=1) / np.sqrt(n) / np.mean(w))
    if not se > 0:
        return IdentityTest(estimate, se, np.nan, np.nan)
    z = estimate / se
    return IdentityTest(estimate, se, float(z), float(2 * stats.norm.sf(abs(z))))


def conditional_variance(
    x2: np.ndarray,
    ranks: np.ndarray,
    features: np.ndarray,
    fold: np.ndarray,
    max_features: int = 20,
) -> np.ndarray:
    """E[x² | others], cross-fitted: a non-negative combination of 1, e^{∓2 u_k}.

    Fitted by NNLS, then twice more with each row divided by its fitted variance (the
    noise of x² is proportional to it), on the other folds' draws; at most `max_features`
    coordinates u_k, those whose rank correlation with x² is largest there (`ranks`: the
    others' `standardised_ranks`; `features`: their `scale_features`).
    """
    out = np.empty_like(x2)
    floor = 1e-12 * max(float(np.mean(x2)), 1e-300)
    n = len(x2)
    for k in np.unique(fold):
        train, test = fold != k, fold == k
        keep = _screen(ranks[train], x2[train], max_features)
        A = np.column_stack([np.ones(n), features[:, keep, 0], features[:, keep, 1]])
        coef = _nnls(A[train], x2[train], np.ones(int(train.sum())))
        for _ in range(2):
            coef = _nnls(A[train], x2[train], 1.0 / np.maximum(A[train] @ coef, floor))
        out[test] = A[test] @ coef
    return np.maximum(out, floor)


def scale_features(u: np.ndarray) -> np.ndarray:
    """(n, d, 2): e^{-2 (u_k - m_k)} and e^{2 (u_k - m_k)}, m_k the median (clipped: no
    overflow): the terms a conditional variance is made of when u_k is a log-scale."""
    centred = np.clip(u - np.median(u, axis=0), -30.0, 30.0)
    return np.stack([np.exp(-2 * centred), np.exp(2 * centred)], axis=-1)


def standardised_ranks(u: np.ndarray) -> np.ndarray:
    """Each column's ranks, centred and scaled (0 for a constant column): for screening."""
    r = stats.rankdata(u, axis=0)
    sd = r.std(axis=0)
    return np.where(sd > 0, (r - r.mean(axis=0)) / np.where(sd > 0, sd, 1.0), 0.0)


def _screen(ranks: np.ndarray, x2: np.ndarray, max_features: int) -> np.ndarray:
    """Indices of the coordinates most related to the size of x (|rank correlation| with x²)."""
    varying = np.flatnonzero(np.any(ranks != 0, axis=0))
    if len(varying) <= max_features:
        return varying
    r = stats.rankdata(x2)
    r = (r - r.mean()) / (r.std() or 1.0)
    rho = np.abs(ranks[:, varying].T @ r)
    return np.sort(varying[np.argsort(-rho, kind="stable")[:max_features]])


def _nnls(A: np.ndarray, b: np.ndarray, row_weight: np.ndarray) -> np.ndarray:
    """min ‖diag(row_weight) (A c - b)‖ over c ≥ 0, with columns scaled for conditioning."""
    scale = np.max(np.abs(A), axis=0)
    scale[scale == 0] = 1.0
    coef, _ = optimize.nnls(
        A / scale * row_weight[:, None], b * row_weight, maxiter=50 * A.shape[1]
    )
    return coef / scale
