"""The sections of a study's HTML report, each a function of the results and their
`Calibration`; all statistics come from `sbc.analysis` and all figures from `sbc.plots`.
The sampler diagnostics and their splits are in `diagnostics.py`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sbc import __version__, plots
from sbc.analysis.quantities import pooled_name
from sbc.analysis.verdicts import Calibration
from sbc.reports import html as h
from sbc.results import StoredResults

#: Longer verdict tables keep failing, scalar and pooled rows in view and fold the rest.
MAX_TABLE_ROWS = 40
#: Simulations tried when looking for kept draws to draw a trace plot of.
TRACE_CANDIDATES = 5


# -- summary and progress ------------------------------------------------------------------------


def summary(results: StoredResults, cal: Calibration) -> str:
    """The verdict in one sentence, then what qualifies it."""
    sims = results.simulations
    n_failed = int((sims["status"] == "failed").sum()) if len(sims) else 0
    if cal.table.empty:
        text = (
            f"No simulation has succeeded yet ({len(sims)} stored, {n_failed} failed), "
            "so there are no ranks to test and no plots."
        )
        kind = "fail" if n_failed else "none"
        return f'<p class="summary {kind}">{h.e(text)}</p>'
    text = cal.headline()
    if cal.passed:
        text += (
            " Passing means no miscalibration was detected with this many simulations, "
            "not that none exists."
        )
    notes = _summary_notes(sims, n_failed)
    kind = "pass" if cal.passed else "fail"
    return f'<p class="summary {kind}">{h.e(" ".join([text, *notes]))}</p>'


def _summary_notes(sims: pd.DataFrame, n_failed: int) -> list[str]:
    """Caveats that belong next to the verdict: failures and divergent fits."""
    notes = []
    if n_failed:
        notes.append(f"{n_failed} of {len(sims)} simulations failed (see Diagnostics).")
    n_div = _n_divergent(sims)
    if n_div:
        n_ok = int((sims["status"] == "ok").sum())
        notes.append(
            f"{n_div} of {n_ok} fits had divergent transitions (see Diagnostics for the "
            "split by divergences)."
        )
    return notes


def progress_notice(results: StoredResults) -> str:
    """Say so when the study is partial: fewer stored than asked for, or the run unfinished."""
    m = results.manifest
    wanted = int(m.get("sims") or 0)
    stored = len(results.simulations)
    last, finished = m.get("last_run_started"), m.get("finished")
    unfinished = _unfinished(finished, last, stored < wanted)
    if stored >= wanted and not unfinished:
        return ""
    of = f" of {wanted}" if wanted else ""
    parts = [f"Partial results: {stored}{of} simulations are stored."]
    if unfinished:
        since = f" (started {last})" if last else ""
        parts.append(
            f"The last run{since} has not finished: it is still running, or it was stopped "
            "before the end; running the study again resumes it."
        )
    else:
        parts.append(f"The last run (finished {finished}) asked for fewer simulations.")
    parts.append("Everything below uses the simulations stored when this report was written.")
    return f'<p class="notice">{h.e(" ".join(parts))}</p>'


def _unfinished(finished: str | None, last: str | None, missing: bool) -> bool:
    """No `finished` mark, or one older than the last run. The runner's stamps have
    one-second resolution, so a tie is decided by whether simulations are missing."""
    if finished is None:
        return True
    if last is None:
        return False
    return _time(finished) < _time(last) or (_time(finished) == _time(last) and missing)


def _time(stamp: str) -> datetime:
    try:
        t = datetime.fromisoformat(stamp)
    except (TypeError, ValueError):
        return datetime.min.replace(tzinfo=UTC)
    return t if t.tzinfo else t.replace(tzinfo=UTC)


# -- the study manifest --------------------------------------------------------------------------


def manifest_section(results: StoredResults) -> str:
    """What was run, with what, when: enough to reproduce the study."""
    m = results.manifest
    study: dict[str, Any] = m.get("study") or {}
    ident: dict[str, Any] = m.get("identity") or {}
    sim = study.get("simulator") or {}
    items = [
        ("Name", h.e(results.name)),
        ("Description", h.e(study.get("description") or "—")),
        ("Study file", h.code(study.get("path"))),
        ("Stan program", _stan_line(study, ident)),
        ("Simulator", f"{h.code(sim.get('function'))} with {h.code(_json(sim.get('args', {})))}"),
        ("Quantities", _quantities_line(m, study)),
        ("Method", h.e(results.method)),
        ("Settings", h.e(_settings_line(m.get("backend") or {}, study))),
        ("Ranks", h.e(_ranks_line(results))),
        ("Backend", h.e(_backend_line(m.get("backend") or {}))),
        ("Simulations", h.e(f"{len(results.simulations)} stored of {m.get('sims', '?')}")),
        ("Seed", h.e(str(study.get("seed", "?")))),
        ("Keep draws", h.e("yes" if study.get("keep_draws") else "no")),
        ("Versions (run)", h.e(_pairs(m.get("versions") or {}))),
        ("Started", h.e(m.get("started") or "—")),
        ("Last run started", h.e(m.get("last_run_started") or "—")),
        ("Finished", h.e(m.get("finished") or "not finished")),
        ("Results", h.code(str(results.folder))),
    ]
    rows = "\n".join(f"<dt>{h.e(k)}</dt><dd>{v}</dd>" for k, v in items)
    parts = ["<h2>Study</h2>", f'<dl class="manifest">{rows}</dl>']
    if m.get("stan_source"):
        parts.append(
            "<details><summary>Stan program source</summary>"
            f"<pre>{h.e(m['stan_source'])}</pre></details>"
        )
    return "\n".join(parts)


def _stan_line(study: dict[str, Any], ident: dict[str, Any]) -> str:
    if not study.get("stan"):
        return h.e("none (the backend computes the posterior without Stan)")
    digest = ident.get("stan_source")
    suffix = f" — source sha256 {h.code(digest)}…" if digest else ""
    return h.code(study["stan"]) + suffix


def _quantities_line(m: dict[str, Any], study: dict[str, Any]) -> str:
    names = m.get("quantities") or []
    q = study.get("quantities") or {}
    text = f"{len(names)} ranked"
    if q.get("include"):
        text += f"; include = {', '.join(q['include'])}"
    if q.get("derived"):
        text += f"; derived: {_pairs(q['derived'])}"
    return h.e(text)


def _settings_line(backend: dict[str, Any], study: dict[str, Any]) -> str:
    """The method's settings as run (every one, defaults too; thinning for the ranks is on
    the Ranks line); for results written before backends recorded them, the sampler's."""
    sampler = {k: v for k, v in (study.get("sampler") or {}).items() if k != "thin"}
    return _pairs(backend.get("settings") or sampler)


def _ranks_line(results: StoredResults) -> str:
    """Which version of the ranks the report shows, and how that version was made."""
    info = results.version_info()
    text = f"version {results.ranks_version} of {len(results.rank_versions)}"
    made = "re-ranked from kept draws" if info.get("by") == "rerank" else "ranked by the run"
    thin = info.get("thin", "?")
    how = 'per fit (thin_ranks = "auto")' if thin == "auto" else f"by {thin}"
    text += f" ({made}, thinned {how}"
    if info.get("derived"):
        text += f"; derived: {', '.join(info['derived'])}"
    approximate = info.get("moments_from_kept_draws") or []
    if approximate:
        text += f"; mean and sd of {', '.join(approximate)} from the kept draws only"
    return text + ")"


def _backend_line(backend: dict[str, Any]) -> str:
    skip = ("type", "cmdstan_version", "method", "settings")
    rest = {k: v for k, v in backend.items() if k not in skip}
    text = str(backend.get("type", "?"))
    return text + (f" ({_pairs(rest)})" if rest else "")


def _pairs(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in d.items())


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# -- verdicts ------------------------------------------------------------------------------------

_VERDICT_HEADER = [
    "quantity",
    "n",
    "γ",
    "log(γ/γ_crit)",
    "p",
    "p (Holm)",
    "verdict",
    "90 % coverage [95 % CI]",
    "shape",
]
_VERDICT_NUMERIC = {1, 2, 3, 4, 5, 7}


def verdict_section(cal: Calibration) -> str:
    """The verdict table, failing rows highlighted, with how to read it."""
    v = cal.table
    if v.empty:
        return ""
    shown, folded = fold_rows(v, ~v["calibrated"].astype(bool), v["kind"])
    n_tests = int(v["p_value"].notna().sum())
    parts = [
        "<h2>Verdicts</h2>",
        _verdict_explainer(n_tests, cal.alpha, pooled=bool((v["kind"] == "pooled").any())),
        _verdict_table(shown),
        _how_to_read(),
    ]
    if len(folded):
        parts.append(folded(len(folded), _verdict_table(folded)))
    return "\n".join(parts)


def fold_rows(
    table: pd.DataFrame,
    failing: pd.Series,
    kind: pd.Series | None = None,
    limit: int = MAX_TABLE_ROWS,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows to show and rows to fold away: a long table keeps every failing and pooled row
    in view, then scalars, then the first groups of each group-level variable (as the plots
    do), up to `limit`; both parts keep the table's order."""
    if len(table) <= limit:
        return table, table.iloc[0:0]
    kinds = np.asarray(kind) if kind is not None else np.full(len(table), "scalar")
    keep = np.asarray(failing, dtype=bool) | (kinds == "pooled")
    # members of b[*,q] take turns: b[1,1], b[1,2], b[2,1], ... until the table is full
    group = table["quantity"].map(pooled_name)
    priority = np.where(kinds == "member", 1 + group.groupby(group).cumcount().to_numpy(), 0)
    order = np.lexsort((np.arange(len(table)), priority))
    room = limit - int(keep.sum())
    if room > 0:
        keep[order[~keep[order]][:room]] = True
    return table[keep], table[~keep]


def folded(n: int, table_html: str) -> str:
    return (
        f"<details><summary>The other {n} quantities (all calibrated)</summary>"
        f"{table_html}</details>"
    )


def _verdict_explainer(n_tests: int, alpha: float, pooled: bool) -> str:
    text = (
        f"A quantity fails when its p-value, Holm-adjusted over the "
        f"{h.n_of(n_tests, 'quantity', 'quantities')} tested, is below α = {alpha:g}: the "
        "chance that any calibrated quantity is "
        f"flagged is then at most {alpha:g}."
    )
    if pooled:
        text += (
            " Pooled rows such as b[*,q] (all groups of a group effect together, as the study "
            "declares) use a test that stays valid however the groups of one simulation "
            "depend on each other."
        )
    return f'<p class="explain">{h.e(text)}</p>'


_HOW_TO_READ = [
    "p: the γ test of uniform ranks (Säilynoja, Bürkner & Vehtari 2022), computed exactly; "
    "for pooled rows, the pooled test (an e-value valid under any dependence between the "
    "groups, Bonferroni-combined with the γ test on one group per simulation).",
    "log(γ/γ_crit) < 0: the ECDF leaves the 95 % simultaneous band drawn in the ECDF "
    "difference plot.",
    "90 % coverage: how often the central 90 % posterior interval contained the truth, "
    "computed from the ranks (exact under calibration, for discrete quantities too), with a "
    "95 % Clopper–Pearson interval (Korn–Graubard for pooled rows).",
    "Shape: from a fit of the ranks to a posterior shifted and scaled against the correct "
    "one; ∪ = too narrow, ∩ = too wide, biased down = truth above the draws.",
]


def _how_to_read() -> str:
    items = "".join(f"<li>{h.e(t)}</li>" for t in _HOW_TO_READ)
    return f'<ul class="explain">{items}</ul>'


def _verdict_table(v: pd.DataFrame) -> str:
    rows, classes = [], []
    for r in v.itertuples(index=False):
        passed = bool(r.calibrated)
        tag = ' <span class="tag">pooled</span>' if r.kind == "pooled" else ""
        if r.label:  # what it is in the model's words (formula models)
            tag += f' <span class="label">{h.e(r.label)}</span>'

        verdict = (
            '<span class="pass">✓ calibrated</span>'
            if passed
            else '<span class="fail">✗ fails</span>'
        )
        rows.append(
            [
                f"<code>{h.e(r.quantity)}</code>{tag}",
                str(r.n),
                h.general(r.gamma),
                h.ratio(r.log_gamma_ratio),
                h.p_value(r.p_value),
                h.p_value(r.p_holm),
                verdict,
                h.coverage(r.coverage90, r.lo90, r.hi90),
                "" if passed else h.e(r.shape),
            ]
        )
        classes.append("" if passed else "failrow")
    return h.table(_VERDICT_HEADER, rows, _VERDICT_NUMERIC, classes, css="verdicts")


# -- figures -------------------------------------------------------------------------------------

_PLOTS: list[tuple[str, Callable[[Calibration], Figure], str]] = [
    (
        "Rank histograms",
        plots.rank_histograms,
        "Bars outside the grey band are unusual under calibration. ∪ (mass at both ends) = "
        "posterior too narrow, ∩ = too wide, mass on the right = truth above the draws "
        "(posterior biased down), on the left = biased up.",
    ),
    (
        "ECDF difference",
        plots.ecdf_diff,
        "The ECDF of the fractional ranks minus the uniform CDF; a calibrated quantity stays "
        "inside the shaded band everywhere with probability 95 %. Above zero on the left and "
        "below on the right = posterior too narrow; the reverse = too wide; entirely above "
        "zero = biased up, below = biased down.",
    ),
    (
        "Coverage",
        plots.coverage_plot,
        "Coverage of central 50/80/90/95 % intervals, from the ranks (exact under "
        "calibration). Points below the diagonal = intervals too narrow (overconfident), "
        "above = too wide.",
    ),
    (
        "Coverage difference at every width",
        plots.coverage_diff_plot,
        "Coverage minus width of the central interval, for every width from 0 to 1, with a 95 % "
        "simultaneous band. Below zero: intervals of that width are too narrow "
        "(overconfident); above: too wide.",
    ),
    (
        "Posterior mean vs truth",
        plots.recovery_plot,
        "One point per simulation, with mean ± 1.645 posterior sd. On the diagonal with short "
        "bars: the data identify the quantity; a flat cloud: the posterior is the prior.",
    ),
    (
        "Contraction",
        plots.contraction_plot,
        "Posterior sd relative to the prior sd (the sd of the truths) against the z-score "
        "(posterior mean − truth)/posterior sd. Low: the data are informative; z mostly "
        "within ±2: no bias at that precision.",
    ),
]


def plot_section(cal: Calibration) -> str:
    if cal.ranks.empty:
        return ""
    parts = ["<h2>Plots</h2>"]
    for title, make, caption in _PLOTS:
        parts.append(h.figure(title, lambda make=make: make(cal), caption))
    return "\n".join(parts)


def _n_divergent(sims: pd.DataFrame) -> int:
    if sims.empty or "divergences" not in sims:
        return 0
    ok = sims[sims["status"] == "ok"]
    return int((pd.to_numeric(ok["divergences"], errors="coerce") > 0).sum())


# -- trace plot ----------------------------------------------------------------------------------


def trace_section(results: StoredResults) -> str:
    """Trace plot of the first fit with kept draws, when the study keeps draws."""
    sims = results.simulations
    ok = sims[sims["status"] == "ok"] if len(sims) else sims
    if ok.empty or not (results.manifest.get("study") or {}).get("keep_draws"):
        return ""
    for sim in ok["sim"].head(TRACE_CANDIDATES):
        draws = results.draws(int(sim))
        if draws:
            caption = (
                f"Kept (thinned) draws of simulation {int(sim)}, the first successful one "
                "with kept draws. "
                "Chains should overlap and look like stationary noise."
            )
            title = f"Trace plot of simulation {int(sim)}"
            figure = h.figure(title, lambda d=draws: plots.trace_plot(d), caption, heading=False)
            return f"<h2>Trace plot</h2>\n{figure}"
    return ""


# -- footer, page, writing -----------------------------------------------------------------------


def footer(results: StoredResults) -> str:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return (
        f"<footer>Generated {h.e(now)} by sbc {h.e(__version__)} from "
        f"{h.code(str(results.folder))}.</footer>"
    )
