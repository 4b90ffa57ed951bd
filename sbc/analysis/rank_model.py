"""The exact distribution of a rank when the posterior is wrong in a normal way.

If the correct posterior of a quantity is N(m, s²) (so the truth, given the data, is N(m, s²)
too) and the fitted one is N(m + δs, (κs)²), then with z = (truth − m)/s ~ N(0, 1) each of L
independent draws is below the truth with probability Φ((z − δ)/κ), and

    P(rank = r) = ∫ Binomial(r; L, Φ(w)) · κ φ(δ + κ w) dw        (z = δ + κ w).

κ < 1: posterior too narrow (∪); κ > 1: too wide (∩); δ > 0: draws too high (low ranks).
This family is what the exact backends' `sd_scale` and `shift` produce, what the sequential
test and the power planner bet on, and the model the shape of a failure is estimated in.

The binomial factor does not depend on (δ, κ), so it is tabulated once per L on a fixed grid
of w; a pmf, and its derivatives in (δ, log κ), are then one matrix-vector product each.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import special, stats

#: w-grid of the quadrature: wide enough for κ down to 0.2 and shifts up to ±8, fine enough
#: for L up to 10 000 (the binomial factor's width in w is about 2.5/√L).
_W_MAX = 40.0


#: Largest L whose table is cached (its size is about 8000·√L/25 × (L + 1) floats).
TABLE_MAX_L = 300


def _w_grid(L: int) -> np.ndarray:
    h = min(0.01, 0.25 / np.sqrt(L))
    return np.arange(-_W_MAX, _W_MAX + h / 2, h)


def _binomial_rows(L: int, w: np.ndarray) -> np.ndarray:
    """(L + 1, len(w)): Binomial(r; L, Φ(w_i))·Δw."""
    r = np.arange(L + 1)[:, None]
    log_u, log_1mu = special.log_ndtr(w), special.log_ndtr(-w)
    log_choose = special.gammaln(L + 1) - special.gammaln(r + 1) - special.gammaln(L - r + 1)
    return np.exp(log_choose + r * log_u[None, :] + (L - r) * log_1mu[None, :]) * (w[1] - w[0])


@functools.lru_cache(maxsize=16)
def _binomial_table(L: int) -> tuple[np.ndarray, np.ndarray]:
    """(w grid, (L + 1, n) matrix Binomial(r; L, Φ(w_i))·Δw), for L ≤ TABLE_MAX_L."""
    if L > TABLE_MAX_L:
        raise ValueError(f"L = {L} is above {TABLE_MAX_L}: coarsen the ranks first")
    w = _w_grid(L)
    table = _binomial_rows(L, w)
    w.setflags(write=False)
    table.setflags(write=False)
    return w, table


def rank_pmf_and_scores(L: int, shift: float, log_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """P(rank = r), r = 0..L, and ∂ log P/∂(δ, log κ), shaped (L + 1,) and (L + 1, 2)."""
    w, table = _binomial_table(L)
    kappa = float(np.exp(log_scale))
    # only where the density of w is not negligible: |δ + κw| ≤ 9
    lo, hi = np.searchsorted(w, [(-9.0 - shift) / kappa, (9.0 - shift) / kappa])
    lo, hi = min(int(lo), w.size - 2), max(int(hi), min(int(lo), w.size - 2) + 2)
    w, table = w[lo:hi], table[:, lo:hi]
    x = shift + kappa * w
    dens = kappa * stats.norm.pdf(x)  # density of w
    pmf, d_shift, d_log_scale = (
        table @ np.stack([dens, -x * dens, dens * (1.0 - x * kappa * w)], 1)
    ).T
    total = pmf.sum()
    pmf = np.maximum(pmf / total, 1e-300)
    scores = np.stack([d_shift, d_log_scale], axis=1) / total / pmf[:, None]
    # the normalisation is exact up to quadrature error; keep scores centred under pmf
    scores -= (pmf[:, None] * scores).sum(axis=0)
    return pmf, scores


@functools.lru_cache(maxsize=512)
def rank_pmf(L: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    """P(rank = r), r = 0..L, under posterior sd × `scale` and shift `shift` posterior sds
    (read-only; sums to 1)."""
    if L < 1 or scale <= 0:
        raise ValueError("L must be ≥ 1 and scale > 0")
    if scale == 1.0 and shift == 0.0:
        pmf = np.full(L + 1, 1.0 / (L + 1))
    elif L <= TABLE_MAX_L:
        pmf = rank_pmf_and_scores(L, shift, float(np.log(scale)))[0]
        pmf = pmf / pmf.sum()
    else:  # no table: the same quadrature in chunks of the w grid
        w = _w_grid(L)
        pmf = np.zeros(L + 1)
        for chunk in np.array_split(w, max(1, w.size * (L + 1) // 2_000_000)):
            dens = scale * stats.norm.pdf(shift + scale * chunk)
            pmf += _binomial_rows(L, chunk) @ dens if chunk.size > 1 else 0.0
        pmf = pmf / pmf.sum()
    pmf.setflags(write=False)
    return pmf
