"""Per-fit diagnostics against rules, and calibration split by them.

Why rules relative to L: ranks are computed among L thinned draws, and they are uniform
under calibration only if those draws are close to independent. What matters is therefore
not an absolute ESS but the ESS per kept draw: R's SBC package flags a fit when
min ESS_tail / L < 0.5 (`min_ess_to_rank`), and so does sbc, for bulk and tail ESS.
An absolute "ESS < 100" flagged 57 % of the shipped LMM study's fits at L = 100 without
saying which of them matter.

Rules (`Rule`), with where they come from:

- divergences > 0: any divergent transition means the sampler missed part of the posterior
  (Betancourt 2017, "A conceptual introduction to Hamiltonian Monte Carlo", section 6.2).
- treedepth_hits > 0: the trajectory was cut at max_treedepth; an efficiency warning that
  often comes with poor exploration (Stan Reference Manual, "MCMC sampling": tree depth).
- ebfmi_min < 0.3: energy Bayesian fraction of missing information, the threshold CmdStan's
  `diagnose` uses (Betancourt 2016, "Diagnosing suboptimal cotangent disintegrations in
  Hamiltonian Monte Carlo").
- ess_bulk_min / L < 0.5 and ess_tail_min / L < 0.5: the kept draws are far from
  independent (R SBC's `min_ess_to_rank`; Säilynoja, Bürkner & Vehtari 2022).
- rhat_max > √(1 + m/(L/2)) for m chains: the R-hat that an effective sample size of L/2
  implies (R̂² ≈ 1 + m/ESS, Vats & Knudson 2021, "Revisiting the Gelman–Rubin
  diagnostic"), i.e. the same requirement as the ESS rule, read off R-hat. For 2 chains
  and L = 100 that is 1.020; the 1.01 of Vehtari et al. (2021) corresponds to ESS ≈ 100
  per chain, more than a rank of L = 100 needs.

Nothing is dropped: flags are for showing next to the verdicts and for `split_verdicts`,
which tests the flagged and the clean fits separately.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from sbc.store import Diagnostic


@dataclass(frozen=True)
class Rule:
    """A fit is flagged when `column` (divided by L if `per_kept_draw`) is `flag_when` the
    threshold. `threshold` may be a function of (L, chains) for rules relative to L."""

    column: str
    flag_when: str  # ">" or "<"
    threshold: float | Callable[[float, float], float]
    per_kept_draw: bool = False
    why: str = ""

    def limit(self, L: float, chains: float) -> float:
        t = self.threshold
        return float(t(L, chains)) if callable(t) else float(t)

    def describe(self, L: float | None = None, chains: float | None = None) -> str:
        lhs = f"{self.column} / L" if self.per_kept_draw else self.column
        if callable(self.threshold):
            if L is None or chains is None:
                return f"{lhs} {self.flag_when} √(1 + chains/(L/2))"
            return f"{lhs} {self.flag_when} {self.limit(L, chains):.3g}"
        return f"{lhs} {self.flag_when} {self.threshold:g}"

    def flags(self, sims: pd.DataFrame, L: pd.Series, chains: float) -> pd.Series:
        """True/False per fit; NaN where the value (or L) is unknown."""
        if self.column not in sims:
            return pd.Series(np.nan, index=sims.index, dtype=object)
        values = pd.to_numeric(sims[self.column], errors="coerce").astype(float)
        Ls = pd.to_numeric(L.reindex(sims.index), errors="coerce").astype(float)
        if self.per_kept_draw:
            values = values / Ls
        limit = Ls.map(lambda x: self.limit(x, chains)) if callable(self.threshold) else None
        limit = limit if limit is not None else self.limit(math.nan, chains)
        flag = values > limit if self.flag_when == ">" else values < limit
        known = values.notna() & (Ls.notna() if callable(self.threshold) else True)
        return flag.astype(object).where(known, np.nan)


def _rhat_limit(L: float, chains: float) -> float:
    return math.sqrt(1 + chains / (L / 2)) if L > 0 and chains > 0 else math.nan


#: R-hat's rule depends on L and the chains, so backends declare `rhat_max` without one and
#: the analysis supplies it: R-hat is the same concept for every MCMC backend.
RHAT_RULE = Rule("rhat_max", ">", _rhat_limit, why="the R-hat an ESS of L/2 implies "
                 "(Vats & Knudson 2021)")  # fmt: skip

#: The rules for results written before backends declared theirs (sbc 0.1, CmdStan); the same
#: as the CmdStan sample backend declares (tests/backends/test_cmdstan_sample.py checks it).
DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("divergences", ">", 0, why="Betancourt (2017)"),
    Rule("treedepth_hits", ">", 0, why="Stan Reference Manual"),
    Rule("ebfmi_min", "<", 0.3, why="Betancourt (2016); CmdStan diagnose"),
    RHAT_RULE,
    Rule("ess_bulk_min", "<", 0.5, per_kept_draw=True, why="kept draws near-independent (R SBC)"),
    Rule("ess_tail_min", "<", 0.5, per_kept_draw=True, why="kept draws near-independent (R SBC)"),
)


def rules_for(declared: Sequence[Diagnostic] | None) -> tuple[Rule, ...]:
    """The rules of the diagnostics a backend declared (`Results.diagnostics`), in its order;
    `DEFAULT_RULES` for results that predate declarations."""
    if declared is None:
        return DEFAULT_RULES
    rules = []
    for d in declared:
        if d.name == RHAT_RULE.column and d.flag_when is None:
            rules.append(RHAT_RULE)
        elif d.flag_when is not None and d.threshold is not None:
            rules.append(Rule(d.name, d.flag_when, d.threshold, d.per_kept_draw, d.doc))
    return tuple(rules)


def kept_draws(ranks_df: pd.DataFrame, sims: pd.DataFrame) -> pd.Series:
    """L of each fit (indexed like `sims`): the largest L among its ranks."""
    by_sim = ranks_df.groupby("sim")["L"].max() if len(ranks_df) else pd.Series(dtype=float)
    return pd.Series(sims["sim"].map(by_sim).to_numpy(), index=sims.index)


def flag_table(
    sims: pd.DataFrame, L: pd.Series, chains: float, rules: Sequence[Rule] = DEFAULT_RULES
) -> pd.DataFrame:
    """One column of flags (True/False/NaN) per rule whose column the fits have."""
    return pd.DataFrame(
        {r.column: r.flags(sims, L, chains) for r in rules if r.column in sims}, index=sims.index
    )


def diagnostics_summary(
    sims: pd.DataFrame,
    L: pd.Series,
    chains: float,
    rules: Sequence[Rule] = DEFAULT_RULES,
) -> pd.DataFrame:
    """How many fits failed or were flagged by each rule: diagnostic, rule, flagged, known,
    total, share (= flagged/known). Flags count over fits with status 'ok'; "failed" over
    all simulations; "any" = ok fits flagged by at least one rule."""
    total = len(sims)
    ok_mask = sims["status"] == "ok" if "status" in sims else pd.Series(True, index=sims.index)
    ok = sims[ok_mask]
    flags = flag_table(ok, L, chains, rules)
    Lv = float(L[ok_mask].median()) if ok_mask.any() and L[ok_mask].notna().any() else None
    rows = [("failed", "status == 'failed'", int((~ok_mask).sum()), total, total)]
    for rule in rules:
        if rule.column not in flags:
            continue
        f = flags[rule.column]
        known = f.notna()
        rows.append(
            (
                rule.column,
                rule.describe(Lv, chains),
                int(f[known].astype(bool).sum()),
                int(known.sum()),
                len(ok),
            )
        )
    any_flag = flags.fillna(False).astype(bool).any(axis=1)
    any_known = flags.notna().any(axis=1)
    rows.append(
        ("any", "any of the above (ok fits)", int(any_flag.sum()), int(any_known.sum()), len(ok))
    )
    df = pd.DataFrame(rows, columns=["diagnostic", "rule", "flagged", "known", "total"])
    df["share"] = df["flagged"] / df["known"].where(df["known"] > 0)
    return df


def auto_thinning_summary(
    sims: pd.DataFrame, L: pd.Series, chains: float, max_draws: float | None = None
) -> dict[str, float] | None:
    """How ``thin_ranks = "auto"`` went over a study's successful fits (None if it was not
    used): fits continued and how often, draws per chain (continuations included), the
    stride chosen, and the smallest bulk or tail ESS of the ranked quantities per kept draw
    (``ess_ranked_min / L``: below 0.5 only for a fit that reached ``max_draws``, or that
    its ESS said could not reach the target: `sbc.thinning.GIVE_UP`)."""
    if "thin_every" not in sims:
        return None
    ok = sims[(sims["status"] == "ok") & sims["thin_every"].notna()]
    if ok.empty:
        return None
    ext = pd.to_numeric(ok.get("extensions"), errors="coerce").fillna(0)
    draws = pd.to_numeric(ok["n_draws"], errors="coerce") / chains
    every = pd.to_numeric(ok["thin_every"], errors="coerce")
    ess = pd.to_numeric(ok["ess_ranked_min"], errors="coerce") / L.reindex(ok.index)
    return {
        "fits": len(ok),
        "continued": int((ext > 0).sum()),
        "continuations": int(ext.sum()),
        "most_continuations": int(ext.max()),
        "draws_median": float(draws.median()),
        "draws_p90": float(draws.quantile(0.9)),
        "draws_max": float(draws.max()),
        "every_median": float(every.median()),
        "every_min": float(every.min()),
        "every_max": float(every.max()),
        "ess_median": float(ess.median()),
        "ess_p10": float(ess.quantile(0.1)),
        "ess_below_half": int((ess < 0.5).sum()),
        # below target before max_draws: the rule stopped them (nan: max_draws unknown)
        "stopped_early": float(((ess < 0.5) & (draws < max_draws)).sum())
        if max_draws is not None
        else math.nan,
    }


def rule_named(column: str, rules: Sequence[Rule] = DEFAULT_RULES) -> Rule:
    for rule in rules:
        if rule.column == column:
            return rule
    known = ", ".join(r.column for r in rules)
    raise ValueError(f"unknown diagnostic {column!r}; choose from {known}")


def chains_of(manifest: Mapping) -> float:
    """Chains per fit, from the study as run (1 if it does not say)."""
    return float(_study_table(manifest, "sampler").get("chains", 1) or 1)


def max_draws_of(manifest: Mapping) -> float | None:
    """``[thin_ranks_auto] max_draws`` of the study as run (None: not auto, or not said)."""
    value = _study_table(manifest, "thin_ranks_auto").get("max_draws")
    return float(value) if value is not None else None


def _study_table(manifest: Mapping, name: str) -> Mapping:
    """A table of the study as run, from the results' manifest ({} if it has none)."""
    study = manifest.get("study", {}) if manifest else {}
    return study.get(name) or {}
