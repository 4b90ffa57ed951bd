"""Convergence diagnostics of one fit, vectorised over parameters.

Rank-normalised split R-hat, bulk and tail ESS (Vehtari, Gelman, Simpson, Carpenter and
Bürkner 2021) and E-BFMI, with the definitions of arviz-stats and of R's posterior package;
`tests/backends/test_convergence.py` checks every value against arviz-stats.

Why not call arviz-stats: its array functions run Python code per parameter. On the mixed
model's 36 parameters that took 56 ms per fit, the largest cost sbc added to a fit, and
importing it (with scipy.stats) took about 0.8 s in every worker; this module needs numpy and
scipy.special only (benchmarks/README.md has the figures).

Arrays are (parameters, chains, draws). A parameter with a NaN draw gets NaN, as do all
parameters when there are fewer than 4 draws per chain (or, for R-hat, fewer than 2 chains).
"""

from __future__ import annotations

import numpy as np
from scipy.fft import next_fast_len
from scipy.special import ndtri

MIN_DRAWS = 4


def convergence(x: np.ndarray, prob: float = 0.05) -> tuple[np.ndarray, ...]:
    """(R-hat, bulk ESS, tail ESS) of each parameter, as a fit's diagnostics need them: the
    rank-normalised split chains that R-hat and bulk ESS share are computed once."""
    x = np.asarray(x, dtype=float)
    nan = np.full(len(x), np.nan)
    if x.shape[2] < MIN_DRAWS:
        return nan, nan, nan
    split = _split_chains(x)
    z = _z_scale(split)
    r = _rhat_rank(split, z) if x.shape[1] >= 2 else nan
    return tuple(_nan_where_nan(x, v) for v in (r, _ess(z), _ess_tail(x, prob)))


def rhat(x: np.ndarray) -> np.ndarray:
    """Rank-normalised split R-hat: the larger of the bulk and the folded (tail) R-hat."""
    x = np.asarray(x, dtype=float)
    if x.shape[1] < 2 or x.shape[2] < MIN_DRAWS:
        return np.full(len(x), np.nan)
    split = _split_chains(x)
    return _nan_where_nan(x, _rhat_rank(split, _z_scale(split)))


def ess_bulk(x: np.ndarray) -> np.ndarray:
    """Bulk effective sample size: ESS of the rank-normalised split chains."""
    x = np.asarray(x, dtype=float)
    if x.shape[2] < MIN_DRAWS:
        return np.full(len(x), np.nan)
    return _nan_where_nan(x, _ess(_z_scale(_split_chains(x))))


def ess_tail(x: np.ndarray, prob: float = 0.05) -> np.ndarray:
    """Tail effective sample size: the smaller ESS of the indicators of the prob and
    1 - prob quantiles."""
    x = np.asarray(x, dtype=float)
    if x.shape[2] < MIN_DRAWS:
        return np.full(len(x), np.nan)
    return _nan_where_nan(x, _ess_tail(x, prob))


def ebfmi(energy: np.ndarray) -> np.ndarray:
    """E-BFMI of each chain of `energy` (chains, draws)."""
    energy = np.asarray(energy, dtype=float)
    return np.square(np.diff(energy, axis=1)).mean(axis=1) / np.var(energy, axis=1, ddof=1)


# -- the pieces --------------------------------------------------------------------------------


def _split_chains(x: np.ndarray) -> np.ndarray:
    """Each chain's first and last halves as two chains (the middle draw of an odd count is
    dropped): (P, C, n) -> (P, 2C, n // 2)."""
    half = x.shape[2] // 2
    return np.concatenate((x[:, :, :half], x[:, :, x.shape[2] - half :]), axis=1)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Normal scores of each parameter's average ranks over all its draws (Blom's c = 3/8)."""
    flat = _flat(x)
    size = flat.shape[1]
    return ndtri((_average_ranks(flat) - 3 / 8) / (size - 2 * 3 / 8 + 1)).reshape(x.shape)


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n along each row, ties given their average rank (scipy.stats.rankdata's
    default, without importing scipy.stats)."""
    order = np.argsort(a, axis=1, kind="stable")
    ordered = np.take_along_axis(a, order, axis=1)
    n = a.shape[1]
    position = np.broadcast_to(np.arange(n), a.shape)
    starts = np.ones(a.shape, dtype=bool)  # where a run of equal values begins
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones(a.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    first = np.maximum.accumulate(np.where(starts, position, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, position, n)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(a.shape)
    np.put_along_axis(ranks, order, (first + last) / 2 + 1, axis=1)
    return ranks


def _rhat_rank(split: np.ndarray, z: np.ndarray) -> np.ndarray:
    """The larger of the R-hats of the split chains' normal scores `z` and of their folded
    (distance from the median) normal scores."""
    median = np.median(_flat(split), axis=1)
    folded = _z_scale(np.abs(split - median[:, None, None]))
    return np.maximum(_rhat_basic(z), _rhat_basic(folded))


def _ess_tail(x: np.ndarray, prob: float) -> np.ndarray:
    flat = _flat(x)
    low, high = (
        _ess(_split_chains(x <= np.quantile(flat, p, axis=1)[:, None, None]).astype(float))
        for p in (prob, 1 - prob)
    )
    return np.minimum(low, high)


def _rhat_basic(x: np.ndarray) -> np.ndarray:
    """R-hat of (P, C, n) from between- and within-chain variances."""
    n = x.shape[2]
    between = n * np.var(x.mean(axis=2), axis=1, ddof=1)
    within = np.mean(np.var(x, axis=2, ddof=1), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # a constant parameter: NaN
        return np.sqrt((between / within + n - 1) / n)


def _ess(x: np.ndarray) -> np.ndarray:
    """ESS of (P, C, n) with Geyer's initial positive and monotone sequences (Stan's)."""
    P, C, n = x.shape
    rows = np.arange(P)
    m = next_fast_len(2 * n)
    spectrum = np.fft.rfft(x - x.mean(axis=2, keepdims=True), n=m, axis=2)
    spectrum *= np.conjugate(spectrum)
    acov = np.fft.irfft(spectrum, n=m, axis=2)[:, :, :n] / n
    mean_acov = acov.mean(axis=1)  # (P, lags)
    mean_var = mean_acov[:, 0] * n / (n - 1.0)
    var_plus = mean_var * (n - 1.0) / n
    if C > 1:
        var_plus = var_plus + np.var(x.mean(axis=2), axis=1, ddof=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = 1.0 - (mean_var[:, None] - mean_acov) / var_plus[:, None]
    rho[:, 0] = 1.0
    # Autocorrelations are summed in pairs (rho[2k], rho[2k+1]) up to the last pair K that
    # fits, stopping after the first pair whose sum is not positive; sums of the pairs kept
    # are made non-increasing (each the minimum of those before it).
    K = max(0, (n - 3) // 2)
    pairs = rho[:, 0 : 2 * K + 2 : 2] + rho[:, 1 : 2 * K + 2 : 2]  # (P, K + 1)
    stops = pairs <= 0
    last = np.minimum(K, np.where(stops.any(axis=1), stops.argmax(axis=1), K))
    kept = np.arange(K + 1)[None, :] < last[:, None]
    monotone = np.minimum.accumulate(pairs, axis=1)
    # the even autocorrelation after the last kept pair counts once, if it is positive or
    # belongs to a pair with a non-negative sum
    tail = rho[rows, 2 * last]
    tail = np.where((pairs[rows, last] >= 0) | (tail > 0), tail, 0.0)
    tau = -1.0 + 2.0 * np.where(kept, monotone, 0.0).sum(axis=1) + tail
    tau = np.maximum(tau, 1 / np.log10(C * n))
    ess = C * n / tau
    flat = _flat(x)
    constant = np.ptp(flat, axis=1) < np.finfo(float).resolution
    return np.where(constant, float(C * n), ess)


def _flat(x: np.ndarray) -> np.ndarray:
    """(P, C, n) -> (P, C x n); also for P = 0, where reshape(P, -1) cannot infer C x n."""
    return x.reshape(len(x), x.shape[1] * x.shape[2])


def _nan_where_nan(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    return np.where(np.isnan(x).any(axis=(1, 2)), np.nan, values)


__all__ = ["convergence", "ebfmi", "ess_bulk", "ess_tail", "rhat"]
