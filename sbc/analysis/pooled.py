"""Pooled ranks: is a family of exchangeable quantities (all b[j,q] over groups j) uniform, when
the ranks within a simulation are dependent in an unknown way?

Why not a normal approximation: ranks of b[1,q]..b[J,q] from one fit share that fit's data
and hyperparameters, so they are dependent even when the posterior is exact (strongly so when
groups are weakly identified). A cluster-robust normal test (sbc ≤ 0.1) was anti-conservative
exactly where Holm looks: when a tail event is rare and clustered, its null-centred variance
collapses together with the deviation, and P(p ≤ 3.4e-4) was 10–16 times nominal.

The test here is valid for any dependence within a simulation, at every level, with finite
S (docs/statistics.md derives it). Two valid p-values, Bonferroni-combined (p = 2·min):

1. An e-value. For a bet function g on ranks with null mean Σ_r g(r)/(L + 1) = 0 and
   g ≥ −1, the per-simulation average ḡ_s = mean_j g(r_sj) has null mean 0 whatever the
   dependence between members (linearity of expectation), and simulations are independent, so
   E_n = Π_{s≤n} (1 + λ ḡ_s) is a test martingale for every λ ∈ [0, 1]; so is any fixed-weight
   average over bets g and λ. Ville's inequality gives P(max_n E_n ≥ 1/α) ≤ α, so
   p = min(1, 1/max_n E_n) is valid. The bets: the rank likelihood ratios of posteriors too
   narrow/wide/shifted (`rank_model.rank_pmf`) and linear location and spread scores, each
   scaled to min −1, at λ = 1, 1/2, 1/4. Averaging over members shrinks ḡ's variance when
   members are nearly independent, so the same bets earn more: the test adapts to the
   dependence it meets without estimating it. Simulations enter in simulation-index order.
2. The γ test on one member per simulation (member s mod J_s of simulation s, a choice that
   does not look at the ranks): S independent uniform ranks, so the γ p-value is exact. It
   keeps the test's power when members are so dependent that pooling adds little.

Power cost: see benchmarks/null_calibration.py (the README there has the table).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from scipy import special, stats

from sbc.analysis.rank_model import rank_pmf
from sbc.analysis.uniformity import check_ranks, gamma_test, grid

#: Posterior-sd factors and shifts (in posterior sds) of the likelihood-ratio bets.
BET_SCALES = (math.exp(-0.3), math.exp(-0.1), math.exp(0.1), math.exp(0.3))
BET_SHIFTS = (-0.3, -0.1, 0.1, 0.3)
#: Fractions of the largest safe bet; every (bet, λ) pair has the same weight.
BET_FRACTIONS = (1.0, 0.5, 0.25)


@functools.lru_cache(maxsize=64)
def bet_table(L: int) -> np.ndarray:
    """(A, L + 1): bet functions g with null mean 0 and minimum −1 (read-only)."""
    u = (np.arange(L + 1) + 0.5) / (L + 1)
    funcs = []
    for h in (u - 0.5, np.abs(u - 0.5)):  # location and spread, both directions
        h = h - h.mean()
        funcs += [h, -h]
    for scale in BET_SCALES:
        funcs.append(rank_pmf(L, scale, 0.0) * (L + 1) - 1)
    for shift in BET_SHIFTS:
        funcs.append(rank_pmf(L, 1.0, shift) * (L + 1) - 1)
    G = np.array(funcs)
    G -= G.mean(axis=1, keepdims=True)  # exact null mean 0 (quadrature rounding)
    lows = -G.min(axis=1, keepdims=True)
    # a bet that is constant at this L (spread when L = 1) stays 0: it never bets
    G = np.divide(G, lows, out=np.zeros_like(G), where=lows > 1e-12)
    G.setflags(write=False)
    return G


def simulation_matrix(
    ranks: np.ndarray, clusters: np.ndarray, members: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(S, J) ranks, −1 where a member is missing, rows in increasing cluster (simulation)
    order and columns in increasing member order; and the sorted cluster labels."""
    c = np.asarray(clusters)
    m = np.zeros(c.size, dtype=np.int64) if members is None else np.asarray(members)
    sims, row = np.unique(c, return_inverse=True)
    if members is None:  # position within the simulation, in the given order
        order = np.argsort(row, kind="stable")
        starts = np.searchsorted(row[order], np.arange(sims.size))
        m = np.empty(c.size, dtype=np.int64)
        m[order] = np.arange(c.size) - starts[row[order]]
    labels, col = np.unique(m, return_inverse=True)
    out = np.full((sims.size, labels.size), -1, dtype=np.int64)
    out[row.ravel(), col.ravel()] = ranks
    return out, sims


class PooledBets:
    """The pooled e-process, fed one simulation at a time (the sequential monitor uses it as
    is; `pooled_e_values` is the same computation for a whole table)."""

    def __init__(self) -> None:
        self.lam = np.asarray(BET_FRACTIONS)
        self.log_wealth = np.zeros((len(BET_SCALES) + len(BET_SHIFTS) + 4, self.lam.size))
        self.n = 0
        self.max_log_e = 0.0

    def update(self, member_ranks: np.ndarray, Ls: np.ndarray) -> float:
        """Add one simulation's member ranks (rank i on 0..Ls[i]); returns log E_n.

        Each member's bet uses the table of its own L: every g_L has null mean 0, so the
        product stays a test martingale whatever L each simulation kept."""
        r = np.asarray(member_ranks, dtype=np.int64)
        if r.size:
            Ls = np.broadcast_to(np.asarray(Ls, dtype=np.int64), r.shape)
            g = np.stack([bet_table(int(L))[:, ri] for ri, L in zip(r, Ls, strict=True)], 1)
            with np.errstate(divide="ignore"):
                self.log_wealth += np.log1p(g.mean(axis=1)[:, None] * self.lam[None, :])
            self.n += 1
        log_e = self.log_e()
        self.max_log_e = max(self.max_log_e, log_e)
        return log_e

    def log_e(self) -> float:
        return float(special.logsumexp(self.log_wealth) - math.log(self.log_wealth.size))


def pooled_log_e_process(matrix: np.ndarray, L: int) -> np.ndarray:
    """log E_n after each simulation n = 1..S of rank matrices shaped (..., S, J), −1 where a
    member is missing; leading axes are independent studies (for benchmarks)."""
    G = bet_table(L)
    present = matrix >= 0
    counts = present.sum(axis=-1)  # (..., S)
    lam = np.asarray(BET_FRACTIONS)
    log_w = []
    for g in G:  # one bet at a time keeps memory at the size of the input
        gbar = np.where(present, g[np.maximum(matrix, 0)], 0.0).sum(axis=-1)
        gbar = np.where(counts > 0, gbar / np.maximum(counts, 1), 0.0)
        with np.errstate(divide="ignore"):
            log_w.append(np.cumsum(np.log1p(gbar[..., None, :] * lam[:, None]), axis=-1))
    stacked = np.concatenate(log_w, axis=-2)  # (..., A·F, S)
    return special.logsumexp(stacked, axis=-2) - math.log(stacked.shape[-2])


def single_member_ranks(matrix: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """Per simulation, the rank of member (sim mod present members): a choice that does not
    look at the ranks, so the S picked ranks are independent and uniform under the null."""
    present = matrix >= 0
    order = np.argsort(~present, axis=-1, kind="stable")  # present members first, in order
    n_present = present.sum(axis=-1)
    pos = np.asarray(sims) % np.maximum(n_present, 1)
    cols = np.take_along_axis(order, pos[..., None], axis=-1)
    return np.take_along_axis(matrix, cols, axis=-1)[..., 0]


class PooledResult(NamedTuple):
    """The pooled test: its p-value and the two valid p-values it combines."""

    p_value: float  # min(1, 2·min(p_e, p_single))
    p_e: float  # 1 / max_n E_n of the pooled e-process
    p_single: float  # γ test on one member per simulation
    e_max: float  # max_n E_n
    n_sims: int


def pooled_test(
    ranks: np.ndarray, L: int, clusters: np.ndarray, members: np.ndarray | None = None
) -> PooledResult:
    """Uniformity of pooled ranks that may be dependent within a cluster (simulation).

    `clusters`: the simulation of each rank (integers: the member compared alone is chosen
    by simulation index); `members`: which member (e.g. group j) each rank belongs to
    (default: order of appearance within its simulation)."""
    r = check_ranks(ranks, L)
    matrix, sims = simulation_matrix(r, clusters, members)
    log_e = pooled_log_e_process(matrix, L)
    e_max_log = float(max(0.0, log_e.max()))
    p_e = min(1.0, math.exp(-e_max_log))
    p_single = gamma_test(single_member_ranks(matrix, sims.astype(np.int64)), L).p_value
    p = min(1.0, 2.0 * min(p_e, p_single))
    return PooledResult(p, p_e, p_single, math.exp(min(e_max_log, 700.0)), int(sims.size))


# ---------------------------------------------------------------------------------------------
# Bands for pictures of pooled ranks, valid under any dependence
# ---------------------------------------------------------------------------------------------


def _upper_mean_bound(S: int, z: float, beta: float) -> float:
    """Smallest c with sup over dependence of P(mean of binomial counts ≥ c) ≤ beta, where
    each member's count over S simulations is Binomial(S, z).

    A mean of identically distributed counts is below one count in convex order, so
    P(X̄ ≥ c) ≤ min_{a<c} E(X − a)₊/(c − a) with X ~ Binomial(S, z) (Markov's inequality
    on (X̄ − a)₊ and Jensen)."""
    x = np.arange(S + 1)
    pmf = stats.binom.pmf(x, S, z)
    a = np.arange(S + 1)
    excess = np.array([(pmf[k:] * (x[k:] - k)).sum() for k in a])  # E(X − a)+ at integers

    def bound(c: float) -> float:
        ok = a < c
        return float(np.min(excess[ok] / (c - a[ok]))) if ok.any() else 1.0

    lo, hi = S * z, float(S)
    if bound(hi) > beta:
        return float(S)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if bound(mid) > beta else (lo, mid)
    return hi


def pooled_band(
    S: int, L: int, K: int, alpha: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(z, lower, upper): a simultaneous (1 − α) band for the pooled ECDF at resolution K,
    valid under any dependence within a simulation (convex-order bounds at each of the
    K − 1 points, union bound over points and sides). Wider than a band for independent
    ranks; for pictures, the verdict uses `pooled_test`."""
    _, z = grid(L, K)
    beta = alpha / (2 * (K - 1))
    upper = np.array([_upper_mean_bound(S, float(zk), beta) for zk in z]) / S
    lower = 1 - np.array([_upper_mean_bound(S, 1 - float(zk), beta) for zk in z]) / S
    zz = np.concatenate([[0.0], z, [1.0]])
    return zz, np.concatenate([[0.0], lower, [1.0]]), np.concatenate([[0.0], upper, [1.0]])


def pooled_histogram_band(
    S: int, J: float, p: np.ndarray, level: float = 0.99
) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise `level` band of the pooled count in bins of null mass p (J members per
    simulation on average), valid under any dependence within a simulation."""
    beta = (1 - level) / 2
    upper = np.array([_upper_mean_bound(S, float(pb), beta) for pb in p]) * J
    lower = (S - np.array([_upper_mean_bound(S, 1 - float(pb), beta) for pb in p])) * J
    return np.maximum(lower, 0.0), upper


def pooled_n_eval(S: int, L: int) -> int:
    """Evaluation points for pictures of pooled ranks: min(L + 1, 20, max(3, S // 10))."""
    return min(L + 1, 20, max(3, S // 10))
