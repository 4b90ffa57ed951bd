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
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import special

from sbc.analysis.evalues import (
    DEFAULT_DESIGN,
    LOG_CAP,
    Design,
    _bins,
    _param_table,
    eholm_thresholds,
)
from sbc.analysis.pooled import PooledBets
from sbc.analysis.quantities import common_ranks, order_quantities, parse_quantity, pooled_name
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
