"""The verdict on a study, computed once: `Calibration`, which `check`, `compare`, the plots,
the report and `assert_calibrated` all read.

Per quantity: the γ test (exact p-value; independent ranks across simulations), or for a
pooled row of group effects the pooled test (valid under any dependence within a
simulation); Holm over every row at level α; coverage of the central 90 % interval from the
ranks (exact under calibration); and, for failing rows, the shape of the failure in words.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from sbc.analysis import coverage as cov
from sbc.analysis import diagnostics as diag
from sbc.analysis.pooled import pooled_test
from sbc.analysis.quantities import Panel, common_ranks, quantity_panels
from sbc.analysis.shape import CALIBRATED, shape_diagnosis
from sbc.analysis.uniformity import chi_square_test, gamma_test, holm

VERDICT_COLUMNS = [
    "quantity",
    "label",  # what the quantity is in the model's words, if the study says (formula models)
    "kind",
    "n",
    "n_sims",
    "L",
    "gamma",
    "log_gamma_ratio",
    "p_value",
    "p_chi2",
    "p_holm",
    "calibrated",
    "coverage90",
    "lo90",
    "hi90",
    "shape",
]
#: Failing quantities named in a headline.
HEADLINE_NAMES = 5


def _row(panel: Panel) -> dict:
    ranks, L = common_ranks(panel.rows)
    est, lo, hi = cov.rank_coverage(ranks, L, 0.9, 0.95, panel.clusters)
    if panel.clusters is None:
        g = gamma_test(ranks, L)
        gamma, ratio, p = g.gamma, g.log_gamma_ratio, g.p_value
        p_chi2 = chi_square_test(ranks, L).p_value
    else:  # γ and chi-square assume independent ranks
        gamma = ratio = p_chi2 = math.nan
        p = pooled_test(ranks, L, panel.clusters, panel.members).p_value
    return {
        "quantity": panel.name,
        "kind": panel.kind,
        "n": int(ranks.size),
        "n_sims": int(panel.rows["sim"].nunique()),
        "L": L,
        "gamma": gamma,
        "log_gamma_ratio": ratio,
        "p_value": p,
        "p_chi2": p_chi2,
        "coverage90": est,
        "lo90": lo,
        "hi90": hi,
        "_ranks": ranks,
        "_clusters": panel.clusters,
    }


def verdict_table(
    ranks_df: pd.DataFrame,
    alpha: float = 0.01,
    pool: Sequence[str] = (),
    order: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per quantity (and pooled row), in study order: `VERDICT_COLUMNS`.

    gamma, log_gamma_ratio (band α = 0.05, as drawn) and p_chi2 (a second opinion outside
    the Holm family) are NaN for pooled rows; p_value is the γ test's or the pooled test's;
    p_holm is Holm over every row's p_value; calibrated = p_holm ≥ alpha; coverage90 with
    its Clopper–Pearson 95 % interval (Korn–Graubard for pooled rows); shape in words for
    failing rows ("calibrated" otherwise); label from `labels` (quantity -> words; "" if none).
    """
    rows = [_row(panel) for panel in quantity_panels(ranks_df, pool, order)]
    if not rows:
        return pd.DataFrame(columns=VERDICT_COLUMNS)
    out = pd.DataFrame(rows)
    out["label"] = [(labels or {}).get(q, "") for q in out["quantity"]]
    out["p_holm"] = holm(out["p_value"].to_numpy())
    out["calibrated"] = out["p_holm"] >= alpha
    out["shape"] = [
        CALIBRATED if ok else shape_diagnosis(r, L, alpha, clusters=c)
        for ok, r, L, c in zip(
            out["calibrated"], out["_ranks"], out["L"], out["_clusters"], strict=True
        )
    ]
    return out[VERDICT_COLUMNS].reset_index(drop=True)


def coverage_table(
    ranks_df: pd.DataFrame,
    confidence: float = 0.95,
    pool: Sequence[str] = (),
    order: Sequence[str] | None = None,
    levels: Sequence[float] = cov.LEVELS,
) -> pd.DataFrame:
    """Per quantity and nominal level: n, estimate (from the ranks), lo, hi."""
    rows = []
    for panel in quantity_panels(ranks_df, pool, order):
        ranks, L = common_ranks(panel.rows)
        for level in levels:
            est, lo, hi = cov.rank_coverage(ranks, L, level, confidence, panel.clusters)
            rows.append(
                {
                    "quantity": panel.name,
                    "nominal": level,
                    "n": int(ranks.size),
                    "estimate": est,
                    "lo": lo,
                    "hi": hi,
                }
            )
    return pd.DataFrame(rows, columns=["quantity", "nominal", "n", "estimate", "lo", "hi"])


@dataclass
class SplitVerdicts:
    """Verdicts for fits flagged by a rule vs the rest, side by side."""

    rule: str
    n_flagged: int
    n_clean: int
    n_unknown: int  # ok fits where the rule could not be evaluated (in neither table)
    flagged: pd.DataFrame
    clean: pd.DataFrame
    table: pd.DataFrame  # quantity + per-side columns suffixed _flagged / _clean


_SPLIT_FIELDS = ["n", "p_value", "p_holm", "calibrated", "coverage90", "shape"]


@dataclass
class Calibration:
    """Everything a study's verdict rests on, computed once from its stored rows."""

    ranks: pd.DataFrame
    simulations: pd.DataFrame
    alpha: float = 0.01
    pool: tuple[str, ...] = ()
    order: tuple[str, ...] | None = None
    chains: float = 1.0
    max_draws: float | None = None  # thin_ranks = "auto"'s limit per chain, if used
    rules: tuple[diag.Rule, ...] = diag.DEFAULT_RULES
    labels: Mapping[str, str] = field(default_factory=dict)  # quantity -> the model's words
    _cache: dict = field(default_factory=dict, repr=False)

    @classmethod
    def from_results(
        cls, results, alpha: float = 0.01, pool: Sequence[str] | None = None
    ) -> Calibration:
        """From a `sbc.Results`: pooling and order as the study declared them (`pool`
        overrides, e.g. for results written before studies declared it)."""
        m = results.manifest or {}
        return cls(
            ranks=results.ranks,
            simulations=results.simulations,
            alpha=alpha,
            pool=tuple(results.pool if pool is None else pool),
            order=tuple(m["quantities"]) if m.get("quantities") else None,
            chains=diag.chains_of(m),
            max_draws=diag.max_draws_of(m),
            rules=diag.rules_for(results.diagnostics),
            labels=results.labels,
        )

    # -- computed once ----------------------------------------------------------------------
    def _cached(self, key: str, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def table(self) -> pd.DataFrame:
        """The verdict table (`verdict_table`)."""
        return self._cached(
            "table",
            lambda: verdict_table(self.ranks, self.alpha, self.pool, self.order, self.labels),
        )

    @property
    def coverage(self) -> pd.DataFrame:
        return self._cached(
            "coverage", lambda: coverage_table(self.ranks, pool=self.pool, order=self.order)
        )

    @property
    def kept_draws(self) -> pd.Series:
        return self._cached("L", lambda: diag.kept_draws(self.ranks, self.simulations))

    @property
    def diagnostics(self) -> pd.DataFrame:
        """Fits failed or flagged per rule (`diagnostics.diagnostics_summary`)."""
        return self._cached(
            "diagnostics",
            lambda: diag.diagnostics_summary(
                self.simulations, self.kept_draws, self.chains, self.rules
            ),
        )

    @property
    def auto_thinning(self) -> dict[str, float] | None:
        """How thin_ranks = "auto" went (`diagnostics.auto_thinning_summary`), or None."""
        return self._cached(
            "auto_thinning",
            lambda: diag.auto_thinning_summary(
                self.simulations, self.kept_draws, self.chains, self.max_draws
            ),
        )

    def flags(self) -> pd.DataFrame:
        """Per fit, True/False/NaN for each rule."""
        return diag.flag_table(self.simulations, self.kept_draws, self.chains, self.rules)

    # -- the verdict ---------------------------------------------------------------------------
    @property
    def passed(self) -> bool:
        return bool(self.table["calibrated"].all()) if len(self.table) else False

    @property
    def n_sims(self) -> int:
        return int(self.ranks["sim"].nunique()) if len(self.ranks) else 0

    def failing(self) -> pd.DataFrame:
        """Failing rows, worst first (smallest Holm-adjusted p)."""
        t = self.table
        bad = t[~t["calibrated"].astype(bool)]
        return bad.sort_values(["p_holm", "p_value"], kind="stable")

    def headline(self) -> str:
        """The verdict in one sentence."""
        t = self.table
        if t.empty:
            return "No successful simulation yet: nothing to test."
        n_tests = int(t["p_value"].notna().sum())
        family = f"Holm over {n_tests} test{'s' * (n_tests != 1)}, {self.n_sims} simulations"
        bad = self.failing()
        if bad.empty:
            return (
                f"Calibrated: no quantity departs from uniform ranks at α = {self.alpha:g} "
                f"({family})."
            )
        named = [
            f"{r.quantity} ({r.shape}, p = {r.p_holm:.2g})"
            for r in bad.head(HEADLINE_NAMES).itertuples()
        ]
        more = len(bad) - len(named)
        tail = f"; and {more} more" if more else ""
        return (
            f"Not calibrated: {len(bad)} of {len(t)} quantities fail at "
            f"α = {self.alpha:g} ({family}), worst first: {'; '.join(named)}{tail}."
        )

    def reasons(self) -> list[str]:
        """One line per failing quantity, worst first."""
        return [
            f"{r.quantity}: {r.shape} (Holm-adjusted p = {r.p_holm:.2g})"
            for r in self.failing().itertuples()
        ]

    # -- split by a diagnostic -----------------------------------------------------------------
    def split(self, by: str | Callable[[pd.DataFrame], pd.Series] = "divergences") -> SplitVerdicts:
        """Calibration of fits flagged by a rule (a rule's column, or a function of the
        simulations table returning booleans, NaN = unknown) vs the rest.

        The split is a function of each fit's data and sampler run only, never of the truth,
        so under a correct posterior both subsets are still calibrated: a difference between
        them is evidence that the flagged fits are wrong. Each side is its own Holm family."""
        key = f"split:{by}" if isinstance(by, str) else None
        if key and key in self._cache:
            return self._cache[key]
        sims = self.simulations
        if callable(by):
            flag = pd.Series(by(sims), index=sims.index)
            rule = getattr(by, "__name__", "custom rule")
        else:
            r = diag.rule_named(by, self.rules)
            flag = r.flags(sims, self.kept_draws, self.chains)
            Lv = self.kept_draws.median() if self.kept_draws.notna().any() else None
            rule = r.describe(Lv, self.chains)
        by_sim = dict(zip(sims["sim"], flag, strict=True))
        ranked = self.ranks["sim"].unique()
        known = [(s, bool(by_sim[s])) for s in ranked if s in by_sim and not pd.isna(by_sim[s])]
        flagged = {s for s, f in known if f}
        clean = {s for s, f in known if not f}
        sides = {}
        for side, members in (("flagged", flagged), ("clean", clean)):
            sub = self.ranks[self.ranks["sim"].isin(members)]
            sides[side] = verdict_table(sub, self.alpha, self.pool, self.order, self.labels)
        table = pd.DataFrame({"quantity": self.table["quantity"]})
        for side, v in sides.items():
            part = v[["quantity", *_SPLIT_FIELDS]].rename(
                columns={c: f"{c}_{side}" for c in _SPLIT_FIELDS}
            )
            table = table.merge(part, on="quantity", how="left")
        out = SplitVerdicts(
            rule,
            len(flagged),
            len(clean),
            len(ranked) - len(known),
            sides["flagged"],
            sides["clean"],
            table,
        )
        if key:
            self._cache[key] = out
        return out


def calibrate(
    ranks: pd.DataFrame,
    simulations: pd.DataFrame | None = None,
    alpha: float = 0.01,
    pool: Sequence[str] = (),
    order: Sequence[str] | None = None,
    manifest: Mapping | None = None,
) -> Calibration:
    """A `Calibration` from DataFrames (the notebook-friendly spelling)."""
    sims = (
        simulations
        if simulations is not None
        else pd.DataFrame({"sim": np.unique(ranks["sim"]) if len(ranks) else [], "status": "ok"})
    )
    return Calibration(
        ranks=ranks,
        simulations=sims,
        alpha=alpha,
        pool=tuple(pool),
        order=tuple(order) if order else None,
        chains=diag.chains_of(manifest or {}),
        max_draws=diag.max_draws_of(manifest or {}),
    )
