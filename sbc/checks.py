"""Verdicts that gate a model change: `check` (one study) and `compare` (two, paired).

Both read a `Calibration` (sbc.analysis.verdicts); this module only decides what counts as a
failure and collects the reasons, so that the CLI, `sbc.testing` and a notebook all reach
the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sbc.analysis.verdicts import Calibration
from sbc.errors import SBCError
from sbc.results import StoredResults, as_results, load


@dataclass
class CheckOutcome:
    passed: bool
    verdicts: pd.DataFrame
    reasons: list[str] = field(default_factory=list)
    diagnostics: pd.DataFrame | None = None
    calibration: Calibration | None = field(default=None, repr=False)
    method: str = ""  # the inference method that produced the draws

    @property
    def headline(self) -> str:
        return self.calibration.headline() if self.calibration is not None else ""


def _results(results: StoredResults | str | Path, version: int | None) -> StoredResults:
    res = as_results(results, version)
    if res.ranks.empty:
        raise SBCError("no successful simulations to check yet", where=str(res.folder))
    return res


def check(
    results: StoredResults | str | Path,
    alpha: float = 0.01,
    max_divergent_share: float | None = None,
    max_failed_share: float | None = None,
    pool: Sequence[str] | None = None,
    ranks_version: int | None = None,
) -> CheckOutcome:
    """Calibrated at level `alpha` (Holm over all quantities) and diagnostics within limits?

    `pool` overrides the group effects the study declared (for results written before
    studies declared them); `ranks_version` chooses a version of the ranks (default: the
    newest, or the one of the `Results` given)."""
    if not 0 < alpha < 1:
        raise SBCError(f"alpha must be between 0 and 1, got {alpha}")
    res = _results(results, ranks_version)
    cal = Calibration.from_results(res, alpha=alpha, pool=pool)
    reasons = cal.reasons()
    sims = res.simulations
    n = len(sims)
    if max_divergent_share is not None and n and "divergences" in sims:
        share = float((pd.to_numeric(sims["divergences"], errors="coerce") > 0).sum()) / n
        if share > max_divergent_share:
            reasons.append(f"{share:.1%} of fits had divergences (limit {max_divergent_share:.1%})")
    if max_failed_share is not None and n:
        share = float((sims["status"] == "failed").sum()) / n
        if share > max_failed_share:
            reasons.append(f"{share:.1%} of simulations failed (limit {max_failed_share:.1%})")
    return CheckOutcome(not reasons, cal.table, reasons, cal.diagnostics, cal, res.method)


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per quantity present in both
    worse: list[str]  # quantities the candidate calibrates worse than the baseline
    n_paired: int
    baseline: Path | None = None
    candidate: Path | None = None


def datasets_key(manifest_or_study: Any) -> tuple:
    """What fixes a study's simulated datasets: its seed, simulator and arguments. Two studies
    with the same key simulated the very same datasets, so their fits can be paired."""
    if isinstance(manifest_or_study, dict):
        study = manifest_or_study.get("study", {})
        return study.get("seed"), _plain(study.get("simulator"))
    s = manifest_or_study
    return s.seed, _plain(s.simulator.describe())


def _plain(value: Any) -> Any:
    """JSON-like values, so a key from a study file equals the one from its manifest."""
    import json

    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _same_datasets(
    key_a: tuple, key_b: tuple, what_a: object, what_b: object, verb: str = "did not"
) -> None:
    if key_a != key_b:
        raise SBCError(
            f"the two studies {verb} simulate the same datasets (seed, simulator or its "
            f"arguments differ): {what_a} vs {what_b}"
        )


def _results_or_run(
    path: StoredResults | str | Path, progress: bool, version: int | None
) -> StoredResults:
    """A results folder as given, or a study file's results (run or resumed first)."""
    if not isinstance(path, StoredResults) and Path(path).suffix == ".toml":
        from sbc.execution.run import run

        return load(run(path, progress=progress), version)
    return as_results(path, version)


def compare(
    baseline: StoredResults | str | Path,
    candidate: StoredResults | str | Path,
    alpha: float = 0.01,
    pool: Sequence[str] | None = None,
    progress: bool = False,
    ranks_version: int | None = None,
) -> Comparison:
    """Paired comparison on the very same simulated datasets (same seed and simulator).

    Study files are run (or resumed) first, after checking that they simulate the same
    datasets. A quantity is worse in the candidate if the candidate fails calibration (Holm
    at `alpha`) where the baseline passes. The paired columns compare the two fits of each
    dataset: the median ratio of posterior sds, and the change in the mean distance of the
    normalised rank from 1/2 (larger: ranks pile at the ends, posterior too narrow).
    """
    given = [x for x in (baseline, candidate) if not isinstance(x, StoredResults)]
    if any(Path(x).suffix == ".toml" for x in given):  # refused before running either study
        _same_datasets(_key_of(baseline), _key_of(candidate), baseline, candidate, "do not")
    a = _results_or_run(baseline, progress, ranks_version)
    b = _results_or_run(candidate, progress, ranks_version)
    _same_datasets(datasets_key(a.manifest), datasets_key(b.manifest), a.folder, b.folder)
    sources = [(m.get("identity") or {}).get("simulator_source") for m in (a.manifest, b.manifest)]
    if None not in sources:  # the simulator's code, when both recorded it
        _same_datasets((sources[0],), (sources[1],), a.folder, b.folder)
    shared = sorted(set(a.ranks["sim"]) & set(b.ranks["sim"]))
    if not shared:
        raise SBCError("the two studies share no successful simulation to compare")
    ra = a.ranks[a.ranks["sim"].isin(shared)]
    rb = b.ranks[b.ranks["sim"].isin(shared)]
    quantities = set(ra["quantity"]) & set(rb["quantity"])
    ra, rb = ra[ra["quantity"].isin(quantities)], rb[rb["quantity"].isin(quantities)]
    va = _verdicts(a, ra, alpha, pool)
    vb = _verdicts(b, rb, alpha, pool)
    paired = _paired(ra, rb)
    rows = []
    for q in vb.index:
        if q not in va.index:
            continue
        rows.append(
            {
                "quantity": q,
                "label": vb.at[q, "label"],  # what it is in the candidate's words, if known
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
    return Comparison(table, worse, len(shared), a.folder, b.folder)


def _key_of(x: StoredResults | str | Path) -> tuple:
    if isinstance(x, StoredResults):
        return datasets_key(x.manifest)
    if Path(x).suffix == ".toml":
        from sbc.study import load_study

        return datasets_key(load_study(x))
    return datasets_key(load(x).manifest)


def _verdicts(
    res: StoredResults, ranks: pd.DataFrame, alpha: float, pool: Sequence[str] | None
) -> pd.DataFrame:
    shared = StoredResults(res.folder, res.manifest, res.simulations, ranks)
    return Calibration.from_results(shared, alpha=alpha, pool=pool).table.set_index("quantity")


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
    out: dict[str, dict[str, float]] = {}
    for q, g in m.groupby("quantity"):
        dev_a = np.abs((g["rank_a"] + 0.5) / (g["L_a"] + 1) - 0.5)
        dev_b = np.abs((g["rank_b"] + 0.5) / (g["L_b"] + 1) - 0.5)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.median(g["sd_b"] / g["sd_a"])
        change = float(dev_b.mean() - dev_a.mean())
        out[str(q)] = {"sd_ratio": float(ratio), "rank_dev_change": change}
    return out
