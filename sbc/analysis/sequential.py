"""Sequential SBC: stop a study as soon as a quantity is clearly miscalibrated, at any look,
with the probability of a false alarm still at most α.

Why it is valid (see docs/sequential.md for the long version):

- Under calibration the rank r ∈ {0..L} of a quantity is uniform, and simulations are
  independent, so given everything seen in earlier simulations, the next rank of every
  quantity is still uniform (ranks of different quantities *within* a simulation may be
  dependent; nothing here needs them not to be).
- For each quantity we multiply, simulation by simulation, factors q(r)/(1/(L + 1)), where
  q is a probability mass function on 0..L chosen from earlier simulations only. Each factor
  has conditional expectation Σ_r q(r) = 1 under calibration, so the running product E_n
  is a test martingale (non-negative, starts at 1, expectation 1 at every n). A weighted
  average of test martingales is one too: E_n is an average over several alternatives q
  (posterior too narrow / too wide by a range of factors, biased by a range of shifts,
  and Dirichlet-smoothed rank histograms with 2, 4, 8 and 16 bins, which have power
  against any non-uniformity).
- Pooled rows of group effects (b[*,q], declared by the study) use the pooled e-process of
  `sbc.analysis.pooled`: per simulation one bet on the mean over the members, valid under
  any dependence between the members.
- Ville's inequality: P(sup_n E_n ≥ 1/α) ≤ α. The bound holds for the supremum over *all*
  n, so looking after every simulation, every k-th, or at data-dependent times, and
  stopping at the first rejection, all keep the false-alarm rate at most α.
- Many quantities: the e-Holm closed testing procedure. For a set S of quantities the mean
  of their e-processes is a test martingale when all of S are calibrated; quantity q is
  rejected when that mean is ≥ 1/α for every S containing q. The family-wise error rate
  is at most α under any dependence between quantities (a false rejection needs the mean
  over the true nulls to reach 1/α), and every Bonferroni rejection (E_q ≥ Q/α) is also
  an e-Holm rejection. Per quantity this is the threshold
  thr_q = max_k (k/α − sum of the k − 1 smallest other e-values) ∈ [1/α, Q/α].

Determinism: the runner stores simulations in completion order, which depends on the
number of workers. The monitor therefore processes simulations in simulation-index order,
buffering early arrivals until the gap before them is filled (failed simulations are
skipped in their place), so streaming, replaying a store and resuming all reach the same
decision at the same look.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special, stats

from sbc.analysis.pooled import PooledBets
from sbc.analysis.quantities import common_ranks, order_quantities, parse_quantity, pooled_name
from sbc.analysis.rank_model import rank_pmf
from sbc.analysis.shape import (
    BIASED_DOWN,
    BIASED_UP,
    TOO_NARROW,
    TOO_WIDE,
    UNCLEAR,
    fit_shape,
    shape_words,
)
from sbc.errors import SBCError

#: Posterior-sd factors of the alternatives: exp(±0.1), exp(±0.25), exp(±0.5).
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


# ---------------------------------------------------------------------------------------------
# The monitor
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    """The first look at which a quantity was rejected: where a `--stop-early` study stops."""

    quantity: str  # the rejected quantity with the largest e-value
    look: int  # 1-based look number (a look every `look_every` ranked simulations)
    n_sims: int  # ranked simulations used (the first n_sims in simulation-index order)
    e_value: float  # that quantity's e-value E_q
    threshold: float  # its e-Holm threshold at that look (between 1/α and Q/α)
    rejected: tuple[str, ...]  # every quantity rejected at that look, largest e-value first
    last_sim: int  # simulation index of the last simulation used
    alpha: float
    shape: str  # the shape of the miscalibration in words (as in `sbc check`)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for the study manifest)."""
        return {**dataclasses.asdict(self), "rejected": list(self.rejected)}

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> Rejection:
        """Back from `to_dict` (extra keys, e.g. look_every, are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        kept = {k: v for k, v in fields.items() if k in names}
        return cls(**{**kept, "rejected": tuple(kept.get("rejected", ()))})

    def message(self) -> str:
        others = [q for q in self.rejected if q != self.quantity]
        also = f" (also rejected: {', '.join(others)})" if others else ""
        return (
            f"stopped early: {self.quantity} is not calibrated{also}, at look {self.look} "
            f"after {self.n_sims} simulations (e-value {self.e_value:.3g} ≥ threshold "
            f"{self.threshold:.3g}; false-alarm rate ≤ {self.alpha:g} at any number of "
            f"looks); shape: {self.shape}"
        )


class SequentialMonitor:
    """Anytime-valid calibration tests for a study whose simulations arrive one by one.

    quantities: the scalar quantities ranked in every simulation (the family). `pool`: the
    variables (as the study declares them, e.g. ["b"]) whose components b[j,q] are also
    monitored as pooled rows b[*,q], with the pooled e-process of `sbc.analysis.pooled`
    (valid under any dependence between the members).
    L: rank resolution, used when a row has no "L" (rows' own L is used otherwise).
    alpha: family-wise false-alarm rate over all looks. look_every: test after every k-th
    ranked simulation (looks never hurt validity; fewer looks only delay detection).

    Feed simulations with `update` (rows of one or more simulations), `skip` (a failed
    simulation) or `add` (a `SimulationResult`), in any order; `decision()` is the first
    `Rejection` or None. `from_ranks` / `from_store` replay a stored study.
    """

    def __init__(
        self,
        quantities: Sequence[str],
        L: int | None = None,
        alpha: float = 0.01,
        look_every: int = 1,
        *,
        pool: Sequence[str] = (),
        design: Design = DEFAULT_DESIGN,
    ):
        names = list(dict.fromkeys(quantities))
        if not names:
            raise SBCError("the sequential monitor needs at least one quantity")
        if not 0 < alpha < 1:
            raise SBCError(f"alpha must be between 0 and 1, got {alpha}")
        if int(look_every) != look_every or look_every < 1:
            raise SBCError(f"look_every must be a positive integer, got {look_every}")
        if L is not None and L < 1:
            raise SBCError(f"L must be at least 1, got {L}")
        self.quantities = names
        self.L = L
        self.alpha = float(alpha)
        self.look_every = int(look_every)
        self.design = design
        self._qindex = {q: i for i, q in enumerate(names)}
        pooled: dict[str, list[int]] = {}
        for i, q in enumerate(names):
            base, idx = parse_quantity(q)
            if base in set(pool) and idx:
                pooled.setdefault(pooled_name(q), []).append(i)
        self.units = order_quantities([*names, *pooled], pool, names)
        self._members = [
            np.array(pooled[u]) if u in pooled else np.array([self._qindex[u]]) for u in self.units
        ]
        self._scalar_units = np.array([k for k, u in enumerate(self.units) if u not in pooled])
        self._scalar_q = np.array([self._members[k][0] for k in self._scalar_units], dtype=int)
        self._pooled_units = [k for k, u in enumerate(self.units) if u in pooled]
        self._bets = {k: PooledBets() for k in self._pooled_units}
        U = len(self.units)
        self._lp, self._lh = design.log_weights()
        self._log_param = np.zeros((U, len(self._lp)))
        self._log_hist = np.zeros((U, len(design.bins)))
        self._counts = [np.zeros((U, B)) for B in design.bins]
        self._seen = np.zeros(U)
        self._log: list[tuple[int, np.ndarray, np.ndarray]] = []  # (sim, ranks, L) per sim
        self._next = 0
        self._pending: dict[int, Any] = {}
        self.n_sims = 0
        self.looks = 0
        self._rejection: Rejection | None = None

    # -- construction from stored results ---------------------------------------------------
    @classmethod
    def from_ranks(
        cls,
        ranks_df: pd.DataFrame,
        quantities: Sequence[str] | None = None,
        L: int | None = None,
        alpha: float = 0.01,
        look_every: int = 1,
        *,
        failed: Iterable[int] = (),
        pool: Sequence[str] = (),
        design: Design = DEFAULT_DESIGN,
    ) -> SequentialMonitor:
        """Replay a ranks table (columns sim, quantity, rank, L): the state a monitor fed the
        same simulations would have, whatever their order. `failed` lists simulations that
        failed (skipped in their place); any other missing index holds the monitor back
        until it arrives, exactly as when streaming."""
        if quantities is None:
            if ranks_df.empty:
                raise SBCError("no ranks to replay and no quantities given")
            quantities = list(dict.fromkeys(ranks_df["quantity"]))
        mon = cls(quantities, L, alpha, look_every, pool=pool, design=design)
        for sim in failed:
            mon.skip(int(sim))
        if not ranks_df.empty:
            mon.update(ranks_df)
        return mon

    @classmethod
    def from_store(
        cls,
        store: Any,
        quantities: Sequence[str] | None = None,
        alpha: float = 0.01,
        look_every: int = 1,
        *,
        retry_failed: bool = False,
        **kwargs: Any,
    ) -> SequentialMonitor:
        """Replay an open `sbc.store.Store` (or anything with .ranks() and .simulations()).

        Failed simulations are skipped in their place unless `retry_failed` (then the runner
        retries them, and the monitor waits for their new results)."""
        sims = store.simulations()
        failed = [] if retry_failed else sims.loc[sims["status"] == "failed", "sim"].tolist()
        return cls.from_ranks(
            store.ranks(), quantities, alpha=alpha, look_every=look_every, failed=failed, **kwargs
        )

    # -- feeding ------------------------------------------------------------------------------
    def update(self, rows: pd.DataFrame | Sequence[Mapping[str, Any]], sim: int | None = None):
        """Feed the ranks of one simulation (`sim` given, rows without a "sim" key, e.g. a
        `SimulationResult.ranks`) or of several (rows with a "sim" column/key). Rows need
        "quantity" and "rank", and "L" unless the monitor was given L. All rows of a simulation
        come in one call; rows of quantities outside the family are ignored. Returns the
        decision so far."""
        if isinstance(rows, pd.DataFrame):
            records = rows.to_dict("records")
        else:
            records = [dict(r) for r in rows]
        if sim is not None:
            self._receive(int(sim), records)
            return self.decision()
        if any("sim" not in r for r in records):
            raise SBCError("rows without a 'sim' need update(rows, sim=...)")
        by_sim: dict[int, list[dict[str, Any]]] = {}
        for r in records:
            by_sim.setdefault(int(r["sim"]), []).append(r)
        for s in sorted(by_sim):
            self._receive(s, by_sim[s])
        return self.decision()

    def skip(self, sim: int) -> Rejection | None:
        """A failed simulation: the monitor moves past its index without ranks."""
        self._receive(int(sim), None)
        return self.decision()

    def add(self, result: Any) -> Rejection | None:
        """Feed a `sbc.store.SimulationResult` (status 'ok' -> its ranks, else skipped)."""
        if result.status == "ok":
            return self.update(result.ranks, sim=result.sim)
        return self.skip(result.sim)

    def _receive(self, sim: int, rows: list[dict[str, Any]] | None) -> None:
        if sim < 0:
            raise SBCError(f"simulation indices start at 0, got {sim}")
        if sim < self._next or sim in self._pending:
            raise SBCError(f"simulation {sim} was already given to the sequential monitor")
        self._pending[sim] = rows
        while self._next in self._pending:
            rows = self._pending.pop(self._next)
            if rows:
                self._step(self._next, rows)
            self._next += 1

    # -- one simulation -----------------------------------------------------------------------
    def _step(self, sim: int, rows: list[dict[str, Any]]) -> None:
        Qn = len(self.quantities)
        r = np.full(Qn, -1, dtype=np.int64)
        Ls = np.zeros(Qn, dtype=np.int64)
        for row in rows:
            i = self._qindex.get(row["quantity"])
            if i is None:
                continue
            L = row.get("L", self.L)
            if L is None or pd.isna(L):
                raise SBCError(f"a rank of {row['quantity']} has no L (give the monitor L)")
            L, rank = int(L), int(row["rank"])
            if not 0 <= rank <= L:
                raise SBCError(f"rank {rank} of {row['quantity']} is outside 0..{L}")
            r[i], Ls[i] = rank, L
        present = r >= 0
        if not present.any():
            return
        K, H = len(self._lp), len(self.design.bins)
        plog = np.zeros((Qn, K))
        bins = np.zeros((H, Qn), dtype=np.int64)
        log_pi = np.zeros((H, Qn))
        for L in np.unique(Ls[present]):
            at = present & (Ls == L)
            plog[at] = _param_table(int(L), self.design)[:, r[at]].T
            for j, B in enumerate(self.design.bins):
                which, lpi = _bins(int(L), B)
                bins[j, at] = which[r[at]]
                log_pi[j, at] = lpi[bins[j, at]]
        a = self.design.prior_count
        # scalar units, all at once
        u = self._scalar_units[present[self._scalar_q]]
        q = self._scalar_q[present[self._scalar_q]]
        if u.size:
            self._log_param[u] += plog[q]
            for j, B in enumerate(self.design.bins):
                c = self._counts[j]
                p_hat = (c[u, bins[j, q]] + a) / (self._seen[u] + a * B)
                self._log_hist[u, j] += np.log(p_hat) - log_pi[j, q]
                c[u, bins[j, q]] += 1.0
            self._seen[u] += 1.0
        # pooled units: one bet per simulation on the mean over the members
        for k in self._pooled_units:
            m = self._members[k][present[self._members[k]]]
            if m.size:
                self._bets[k].update(r[m], Ls[m])
                self._seen[k] += m.size
        self._log.append((sim, r.copy(), Ls.copy()))
        self.n_sims += 1
        if self.n_sims % self.look_every == 0:
            self._look()

    # -- looks and decisions ------------------------------------------------------------------
    def log_e_values(self) -> np.ndarray:
        """log E per unit (quantities and pooled rows, in `units` order), now."""
        parts = np.concatenate(
            [self._log_param + self._lp[None, :], self._log_hist + self._lh[None, :]], axis=1
        )
        out = special.logsumexp(parts, axis=1)
        for k, bets in self._bets.items():
            out[k] = bets.log_e()
        return out

    def _table(self) -> pd.DataFrame:
        log_e = self.log_e_values()
        e = np.exp(np.minimum(log_e, LOG_CAP))
        thr = eholm_thresholds(e, self.alpha)
        return pd.DataFrame(
            {
                "quantity": self.units,
                "kind": [
                    "pooled" if k in self._pooled_units else "scalar"
                    for k in range(len(self.units))
                ],
                "n": self._seen.astype(int),
                "e_value": e,
                "log10_e": log_e / math.log(10),
                "threshold": thr,
                "rejected": e >= thr,
            }
        )

    def _look(self) -> None:
        self.looks += 1
        table = self._table()
        if self._rejection is not None or not table["rejected"].any():
            return
        hit = table[table["rejected"]]
        hit = hit.sort_values(["log10_e", "quantity"], ascending=[False, True])
        top = hit.iloc[0]
        self._rejection = Rejection(
            quantity=str(top["quantity"]),
            look=self.looks,
            n_sims=self.n_sims,
            e_value=float(top["e_value"]),
            threshold=float(top["threshold"]),
            rejected=tuple(hit["quantity"]),
            last_sim=self._log[-1][0],
            alpha=self.alpha,
            shape=self._shape(str(top["quantity"])),
        )

    def _shape(self, unit: str) -> str:
        """The shape in `sbc check`'s words (`shape.fit_shape` on the ranks so far, tests at
        level alpha), else the alternative of the e-process that carries the most evidence."""
        k = self.units.index(unit)
        members = self._members[k]
        sims = np.array([s for s, _, _ in self._log])
        r = np.stack([x for _, x, _ in self._log])[:, members]
        Ls = np.stack([x for _, _, x in self._log])[:, members]
        ok = r >= 0
        ranks, L = common_ranks(pd.DataFrame({"rank": r[ok], "L": Ls[ok]}))
        clusters = np.broadcast_to(sims[:, None], r.shape)[ok] if members.size > 1 else None
        shape = shape_words(fit_shape(ranks, L, clusters), self.alpha)
        if shape != UNCLEAR or k in self._bets:
            return shape
        parts = np.concatenate([self._log_param[k] + self._lp, self._log_hist[k] + self._lh])
        best = int(np.argmax(parts))
        grid = self.design.grid()
        if best >= len(grid):
            return f"{UNCLEAR} (closest alternative: {self.design.bins[best - len(grid)]} bins)"
        scale, shift = grid[best]
        if scale != 1.0:
            words = TOO_NARROW if scale < 1 else TOO_WIDE
            return f"posterior {words} (closest alternative: sd × {scale:.2g})"
        words = BIASED_UP if shift > 0 else BIASED_DOWN
        return f"posterior {words} (closest alternative: shift {shift:+.2g} sd)"

    def decision(self) -> Rejection | None:
        """The first look at which a quantity was rejected, or None (keep going)."""
        return self._rejection

    def status(self) -> pd.DataFrame:
        """Per quantity (and pooled row), now: n ranks, e-value (and log10), e-Holm threshold
        and whether it is above it. Between looks this is informational only: decisions
        are taken at looks."""
        return self._table()

    @property
    def next_sim(self) -> int:
        """The first simulation index not yet processed (all before it are)."""
        return self._next

    @property
    def pending(self) -> list[int]:
        """Simulations received ahead of a gap, waiting for it to be filled."""
        return sorted(self._pending)


def false_alarm_bound(alarms: int, studies: int, confidence: float = 0.95) -> float:
    """One-sided Clopper–Pearson upper confidence bound for a false-alarm rate."""
    if alarms >= studies:
        return 1.0
    return float(stats.beta.ppf(confidence, alarms + 1, studies - alarms))
