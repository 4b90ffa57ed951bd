"""Verdicts that gate a model change: `check` (one study) and `compare` (two, paired).

Both are built on `sbc.calibration.verdicts`; this module only decides what
counts as a failure and collects the reasons, so that the CLI, `sbc.testing`
and a notebook all reach the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from sbc import calibration
from sbc.errors import SBCError
from sbc.results import Results, load


@dataclass
class CheckOutcome:
    passed: bool
    verdicts: pd.DataFrame
    reasons: list[str] = field(default_factory=list)
    diagnostics: pd.DataFrame | None = None


def check(
    results: Results | str | Path,
    alpha: float = 0.01,
    max_divergent_share: float | None = None,
    max_failed_share: float | None = None,
) -> CheckOutcome:
    """Calibrated at level `alpha` (Holm over all quantities) and diagnostics within limits?"""
    res = results if isinstance(results, Results) else load(results)
    _need_ranks(res)
    table = calibration.verdicts(res.ranks, alpha=alpha)
    reasons = [
        f"{row.quantity}: {row.shape} (Holm-adjusted p = {row.p_holm:.2g})"
        for row in table.itertuples()
        if not row.calibrated
    ]
    sims = res.simulations
    summary = calibration.diagnostics_summary(sims)
    n = len(sims)
    if max_divergent_share is not None and n:
        share = float((pd.to_numeric(sims["divergences"], errors="coerce") > 0).sum()) / n
        if share > max_divergent_share:
            reasons.append(
                f"{share:.1%} of fits had divergences (limit {max_divergent_share:.1%})"
            )
    if max_failed_share is not None and n:
        share = float((sims["status"] == "failed").sum()) / n
        if share > max_failed_share:
            reasons.append(f"{share:.1%} of simulations failed (limit {max_failed_share:.1%})")
    return CheckOutcome(passed=not reasons, verdicts=table, reasons=reasons, diagnostics=summary)


def _need_ranks(res: Results) -> None:
    if res.ranks.empty:
        raise SBCError("no successful simulations to check yet", where=str(res.folder))


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per quantity present in both
    worse: list[str]  # quantities the candidate calibrates worse than the baseline
    n_paired: int


def compare(
    baseline: Results | str | Path, candidate: Results | str | Path, alpha: float = 0.01
) -> Comparison:
    """Paired comparison on the very same simulated datasets (same seed and simulator).

    A quantity is worse in the candidate if the candidate fails calibration (Holm at
    `alpha`) where the baseline passes. The paired columns compare the two fits of each
    dataset: the median ratio of posterior sds, and the change in the mean distance of
    the normalised rank from 1/2 (larger: ranks pile at the ends, posterior too narrow).
    """
    a = baseline if isinstance(baseline, Results) else load(baseline)
    b = candidate if isinstance(candidate, Results) else load(candidate)
    _same_datasets(a, b)
    shared = sorted(set(a.ranks["sim"]) & set(b.ranks["sim"]))
    if not shared:
        raise SBCError("the two studies share no successful simulation to compare")
    ra = a.ranks[a.ranks["sim"].isin(shared)]
    rb = b.ranks[b.ranks["sim"].isin(shared)]
    quantities = sorted(set(ra["quantity"]) & set(rb["quantity"]))
    ra, rb = ra[ra["quantity"].isin(quantities)], rb[rb["quantity"].isin(quantities)]
    va = calibration.verdicts(ra, alpha=alpha).set_index("quantity")
    vb = calibration.verdicts(rb, alpha=alpha).set_index("quantity")
    paired = _paired(ra, rb)
    rows = []
    for q in vb.index:
        if q not in va.index:
            continue
        rows.append(
            {
                "quantity": q,
                "baseline_p_holm": va.at[q, "p_holm"],
                "candidate_p_holm": vb.at[q, "p_holm"],
                "baseline": _word(va.loc[q]),
                "candidate": _word(vb.loc[q]),
                "sd_ratio": paired.get(q, {}).get("sd_ratio", np.nan),
                "rank_dev_change": paired.get(q, {}).get("rank_dev_change", np.nan),
                "better": _better(va.loc[q], vb.loc[q]),
            }
        )
    table = pd.DataFrame(rows)
    worse = [r["quantity"] for r in rows if r["better"] == "baseline"]
    return Comparison(table=table, worse=worse, n_paired=len(shared))


def _word(row: pd.Series) -> str:
    return "ok" if row["calibrated"] else row["shape"]


def _better(a: pd.Series, b: pd.Series) -> str:
    if a["calibrated"] and not b["calibrated"]:
        return "baseline"
    if b["calibrated"] and not a["calibrated"]:
        return "candidate"
    return "same"


def _paired(ra: pd.DataFrame, rb: pd.DataFrame) -> dict[str, dict[str, float]]:
    m = ra.merge(rb, on=["sim", "quantity"], suffixes=("_a", "_b"))
    m = m[m["quantity"].isin(ra["quantity"].unique())]
    out: dict[str, dict[str, float]] = {}
    for q, g in m.groupby("quantity"):
        dev_a = np.abs((g["rank_a"] + 0.5) / (g["L_a"] + 1) - 0.5)
        dev_b = np.abs((g["rank_b"] + 0.5) / (g["L_b"] + 1) - 0.5)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.median(g["sd_b"] / g["sd_a"])
        change = float(dev_b.mean() - dev_a.mean())
        out[str(q)] = {"sd_ratio": float(ratio), "rank_dev_change": change}
    return out


def _same_datasets(a: Results, b: Results) -> None:
    """Refuse to pair studies whose simulated datasets differ."""

    def key(r: Results) -> tuple:
        s = r.manifest.get("study", {})
        ident = r.manifest.get("identity", {})
        return (s.get("seed"), s.get("simulator"), ident.get("simulator_source"))

    if key(a) != key(b):
        raise SBCError(
            "the two studies did not simulate the same datasets (seed, simulator or its "
            f"arguments differ): {a.folder} vs {b.folder}"
        )
