"""E-values for SBC ranks: the alternatives the sequential test bets on, the e-process of one
quantity (vectorised over many studies), and the e-Holm rule across quantities.

The monitor that a running study feeds is `sbc.analysis.sequential`; this module is its
arithmetic, also used by the power planner to simulate thousands of sequential studies
at once. docs/sequential.md derives it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from sbc.analysis.rank_model import rank_pmf
from sbc.errors import SBCError

DEFAULT_SCALES = tuple(math.exp(x) for x in (-0.5, -0.25, -0.1, 0.1, 0.25, 0.5))
#: Posterior shifts (in posterior sds) of the alternatives.
DEFAULT_SHIFTS = (-0.5, -0.2, 0.2, 0.5)
#: Bin counts of the histogram (nonparametric) alternatives.
DEFAULT_BINS = (2, 4, 8, 16)
#: e-values are capped at exp(LOG_CAP) when compared (far beyond any threshold).
LOG_CAP = 700.0


# ---------------------------------------------------------------------------------------------
# The alternatives: exact rank distributions of a wrong normal posterior (`rank_model`), and
# histograms
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Design:
    """The alternatives the e-process averages over, and their weights.

    Parametric part (weight 1 − histogram_weight, split equally): the exact rank
    distributions `rank_pmf(L, scale, 0)` for each of `scales` and `rank_pmf(L, 1, shift)`
    for each of `shifts` (a Bayesian mixture over this grid, so order-free).
    Histogram part (histogram_weight, split equally over `bins`): for B bins of rank values,
    the predictive distribution of a Dirichlet(prior_count, ..., prior_count) model of the
    bin probabilities, uniform within a bin. Bins need not have equal numbers of rank
    values: the factor p̂_b/π_b uses the exact null mass π_b of the bin.
    """

    scales: tuple[float, ...] = DEFAULT_SCALES
    shifts: tuple[float, ...] = DEFAULT_SHIFTS
    bins: tuple[int, ...] = DEFAULT_BINS
    histogram_weight: float = 0.2
    prior_count: float = 1.0

    def __post_init__(self) -> None:
        if not self.scales and not self.shifts and not self.bins:
            raise SBCError("the sequential design needs at least one alternative")
        if any(s <= 0 for s in self.scales) or any(b < 2 for b in self.bins):
            raise SBCError("design scales must be positive and bins at least 2")
        if not 0 <= self.histogram_weight <= 1 or self.prior_count <= 0:
            raise SBCError("histogram_weight must be in [0, 1] and prior_count positive")

    def grid(self) -> list[tuple[float, float]]:
        """(scale, shift) of each parametric alternative."""
        return [(float(s), 0.0) for s in self.scales] + [(1.0, float(d)) for d in self.shifts]

    def log_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """log weights of the parametric alternatives and of the histogram ones."""
        K, H = len(self.grid()), len(self.bins)
        w_hist = (self.histogram_weight if K else 1.0) if H else 0.0
        w_par = 1.0 - w_hist
        with np.errstate(divide="ignore"):
            lp = np.full(K, math.log(w_par / K) if K and w_par > 0 else -np.inf)
            lh = np.full(H, math.log(w_hist / H) if H and w_hist > 0 else -np.inf)
        return lp, lh


DEFAULT_DESIGN = Design()


@functools.lru_cache(maxsize=64)
def _param_table(L: int, design: Design) -> np.ndarray:
    """(K, L + 1): log of each parametric alternative's factor q_k(r)·(L + 1)."""
    grid = design.grid()
    if not grid:
        return np.zeros((0, L + 1))
    with np.errstate(divide="ignore"):
        tab = np.log(np.array([rank_pmf(L, s, d) for s, d in grid]) * (L + 1))
    tab.setflags(write=False)
    return tab


@functools.lru_cache(maxsize=256)
def _bins(L: int, B: int) -> tuple[np.ndarray, np.ndarray]:
    """(bin of each rank value 0..L, log null mass of each bin) for B bins of rank values."""
    edges = (np.arange(B + 1, dtype=np.int64) * (L + 1)) // B
    which = np.searchsorted(edges, np.arange(L + 1), side="right") - 1
    with np.errstate(divide="ignore"):
        log_pi = np.log(np.diff(edges) / (L + 1))
    which.setflags(write=False)
    log_pi.setflags(write=False)
    return which, log_pi


def _check_ranks(ranks: np.ndarray, L: int) -> np.ndarray:
    r = np.asarray(ranks)
    if not np.issubdtype(r.dtype, np.integer):
        raise ValueError("ranks must be integers")
    if r.ndim < 1 or r.shape[-1] == 0:
        raise ValueError("ranks need at least one simulation on their last axis")
    if r.min() < 0 or r.max() > L:
        raise ValueError(f"ranks must lie in 0..{L}")
    return r


def _log_e_blocks(flat: np.ndarray, L: int, design: Design, chunk: int):
    """(start, log E of rows start..start+s) for blocks of rank sequences (rows)."""
    n = flat.shape[1]
    tab = _param_table(L, design)
    lp, lh = design.log_weights()
    a = design.prior_count
    width = max(len(lp), max(design.bins, default=1), 1)
    step = max(1, chunk // max(1, n * width))
    m = np.arange(1, n + 1)
    for i in range(0, flat.shape[0], step):
        block = flat[i : i + step].astype(np.int64)
        parts = []
        if len(lp):
            logs = np.cumsum(tab[:, block], axis=-1)  # (K, s, n)
            parts.append(special.logsumexp(logs + lp[:, None, None], axis=0))
        for j, B in enumerate(design.bins):
            which, log_pi = _bins(L, B)
            b = which[block]
            counts = np.zeros((*block.shape, B), dtype=np.int32)
            np.put_along_axis(counts, b[..., None], 1, axis=-1)
            # ranks in r_i's bin before step i: the Dirichlet predictive p̂_{i-1}(b_i)
            before = np.take_along_axis(counts.cumsum(axis=1), b[..., None], -1)[..., 0] - 1
            step_log = np.log((before + a) / (m - 1 + a * B)) - log_pi[b]
            parts.append(np.cumsum(step_log, axis=-1) + lh[j])
        yield i, special.logsumexp(np.stack(parts), axis=0)


def log_e_process(
    ranks: np.ndarray, L: int, design: Design = DEFAULT_DESIGN, chunk: int = 4_000_000
) -> np.ndarray:
    """log E_n after each of n = 1, 2, ... simulations, vectorised: ranks (..., n) -> (..., n).

    The same numbers as `SequentialMonitor` for one scalar quantity with a constant L
    (closed form of the Dirichlet predictive product; the parametric part is a sum of
    logs), for simulating many studies at once.
    """
    r = _check_ranks(ranks, L)
    flat = r.reshape(-1, r.shape[-1])
    out = np.empty(flat.shape, dtype=float)
    for i, block in _log_e_blocks(flat, L, design, chunk):
        out[i : i + block.shape[0]] = block
    return out.reshape(r.shape)


def detection_times(
    ranks: np.ndarray,
    L: int,
    log_threshold: float,
    look_every: int = 1,
    design: Design = DEFAULT_DESIGN,
    chunk: int = 4_000_000,
) -> np.ndarray:
    """Per rank sequence (rows of a 2-d array), the first look n (a multiple of `look_every`)
    with log E_n ≥ log_threshold, or n_max + 1 if none: one quantity tested alone at a
    fixed threshold (e.g. Bonferroni's log(Q/α)). Memory stays per block."""
    r = _check_ranks(ranks, L)
    flat = r.reshape(-1, r.shape[-1])
    n = flat.shape[1]
    out = np.full(flat.shape[0], n + 1, dtype=np.int64)
    for i, block in _log_e_blocks(flat, L, design, chunk):
        hit = block[:, look_every - 1 :: look_every] >= log_threshold
        first = np.where(hit.any(axis=1), (hit.argmax(axis=1) + 1) * look_every, n + 1)
        out[i : i + block.shape[0]] = first
    return out.reshape(r.shape[:-1])


def first_rejections(
    ranks: np.ndarray,
    L: int,
    alpha: float,
    look_every: int = 1,
    design: Design = DEFAULT_DESIGN,
) -> np.ndarray:
    """Vectorised `SequentialMonitor` (scalar quantities, no pooled rows, constant L) for many
    studies: ranks (studies, sims, Q) -> (studies, Q), the first look n at which e-Holm
    rejects each quantity (sims + 1 if never). A `--stop-early` study stops at the row
    minimum, flagging the quantities that attain it."""
    r = _check_ranks(ranks, L)
    n = r.shape[1]
    log_e = log_e_process(np.swapaxes(r, 1, 2), L, design)  # (S, Q, n)
    looks = np.arange(look_every - 1, n, look_every)
    e = np.exp(np.minimum(np.swapaxes(log_e[:, :, looks], 1, 2), LOG_CAP))  # (S, looks, Q)
    hit = e >= eholm_thresholds(e, alpha)
    return np.where(hit.any(axis=1), (hit.argmax(axis=1) + 1) * look_every, n + 1)


def eholm_thresholds(e_values: np.ndarray, alpha: float) -> np.ndarray:
    """Per quantity, the e-value at or above which e-Holm rejects it, given the others.

    q is rejected iff for every set S ∋ q, mean_{j ∈ S} E_j ≥ 1/α, i.e. iff
    E_q ≥ max_{k=1..Q} (k/α − sum of the k − 1 smallest e-values other than E_q).
    Vectorised over leading axes: (..., Q) -> (..., Q); always within [1/α, Q/α].
    """
    e = np.asarray(e_values, dtype=float)
    Q = e.shape[-1]
    order = np.argsort(e, axis=-1, kind="stable")
    srt = np.take_along_axis(e, order, axis=-1)
    csum = np.concatenate([np.zeros((*e.shape[:-1], 1)), np.cumsum(srt, axis=-1)], axis=-1)
    m = np.arange(Q)  # k - 1 others
    p = np.arange(Q)  # sorted position of the quantity
    lower = m[None, :] <= p[:, None]  # (p, m): the m smallest others all sit below p
    idx = np.where(lower, m[None, :], m[None, :] + 1)
    s_others = np.take_along_axis(csum[..., None, :], np.broadcast_to(idx, (*e.shape, Q)), -1)
    s_others = s_others - np.where(lower, 0.0, srt[..., :, None])
    with np.errstate(invalid="ignore"):
        thr_sorted = np.max((m + 1) / alpha - s_others, axis=-1)
    out = np.empty_like(thr_sorted)
    np.put_along_axis(out, order, thr_sorted, axis=-1)
    return out


def false_alarm_bound(alarms: int, studies: int, confidence: float = 0.95) -> float:
    """One-sided Clopper–Pearson upper confidence bound for a false-alarm rate."""
    if alarms >= studies:
        return 1.0
    return float(stats.beta.ppf(confidence, alarms + 1, studies - alarms))
