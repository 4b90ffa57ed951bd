"""The sections of a study's HTML report, each a function of the results and their
`Calibration`; all statistics come from `sbc.analysis` and all figures from `sbc.plots`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from sbc import __version__, plots
from sbc.analysis.quantities import pooled_name
from sbc.analysis.verdicts import Calibration, SplitVerdicts
from sbc.reports import html as h
from sbc.results import Results

#: Longer verdict tables keep failing, scalar and pooled rows in view and fold the rest.
MAX_TABLE_ROWS = 40
#: Distinct error messages listed for failed simulations.
TOP_ERRORS = 5
#: Simulations tried when looking for kept draws to draw a trace plot of.
TRACE_CANDIDATES = 5
#: Diagnostics whose flagged fits are tested apart from the rest, when some (not all) are.
SPLITS = (
    ("divergences", ("divergences",)),
    ("ESS per kept draw", ("ess_bulk_min", "ess_tail_min")),
    ("R-hat", ("rhat_max",)),
)


# -- summary and progress ------------------------------------------------------------------------


def summary(results: Results, cal: Calibration) -> str:
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


def progress_notice(results: Results) -> str:
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


def manifest_section(results: Results) -> str:
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
        ("Sampler", h.e(_pairs(study.get("sampler") or {}))),
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


def _backend_line(backend: dict[str, Any]) -> str:
    rest = {k: v for k, v in backend.items() if k not in ("type", "cmdstan_version")}
    text = str(backend.get("type", "?"))
    if backend.get("cmdstan_version"):
        text += f", CmdStan {backend['cmdstan_version']}"
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
    shown, folded = _fold_rows(v, ~v["calibrated"].astype(bool), v["kind"])
    n_tests = int(v["p_value"].notna().sum())
    parts = [
        "<h2>Verdicts</h2>",
        _verdict_explainer(n_tests, cal.alpha, pooled=bool((v["kind"] == "pooled").any())),
        _verdict_table(shown),
        _how_to_read(),
    ]
    if len(folded):
        parts.append(_folded(len(folded), _verdict_table(folded)))
    return "\n".join(parts)


def _fold_rows(
    table: pd.DataFrame, failing: pd.Series, kind: pd.Series | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows to show and rows to fold away: a long table keeps every failing and pooled row
    in view, then scalars, then the first groups of each group-level variable (as the plots
    do), up to MAX_TABLE_ROWS; both parts keep the table's order."""
    if len(table) <= MAX_TABLE_ROWS:
        return table, table.iloc[0:0]
    kinds = np.asarray(kind) if kind is not None else np.full(len(table), "scalar")
    keep = np.asarray(failing, dtype=bool) | (kinds == "pooled")
    # members of b[*,q] take turns: b[1,1], b[1,2], b[2,1], ... until the table is full
    group = table["quantity"].map(pooled_name)
    priority = np.where(kinds == "member", 1 + group.groupby(group).cumcount().to_numpy(), 0)
    order = np.lexsort((np.arange(len(table)), priority))
    room = MAX_TABLE_ROWS - int(keep.sum())
    if room > 0:
        keep[order[~keep[order]][:room]] = True
    return table[keep], table[~keep]


def _folded(n: int, table_html: str) -> str:
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


# -- sampler diagnostics and failures ------------------------------------------------------------


def diagnostics_section(results: Results, cal: Calibration) -> str:
    sims = results.simulations
    if sims.empty:
        return "<h2>Diagnostics</h2>\n<p>No simulation is stored yet.</p>"
    parts = ["<h2>Diagnostics</h2>", _diagnostics_table(cal), _failures(sims)]
    if not cal.table.empty:
        parts += [_split_section(cal, label, columns) for label, columns in SPLITS]
    return "\n".join(p for p in parts if p)


def _diagnostics_table(cal: Calibration) -> str:
    rows, classes = [], []
    why = {r.column: r.why for r in cal.rules}
    for r in cal.diagnostics.itertuples(index=False):
        known = int(r.known)
        share = h.pct(r.share) if known else "not reported"
        flagged = str(r.flagged) if known else "—"
        source = why.get(r.diagnostic, "")
        rows.append(
            [
                h.e(r.diagnostic),
                f"<code>{h.e(r.rule)}</code>",
                flagged,
                f"{known} of {r.total}",
                share,
                h.e(source),
            ]
        )
        classes.append("warnrow" if r.flagged else "")
    intro = (
        "How many fits each rule flags, over successful fits where the backend reports the "
        "value (failures over all simulations). Ranks are uniform under calibration only if "
        "the L kept draws are close to independent, so the effective sample size is judged "
        "per kept draw (ESS / L ≥ 0.5, as R's SBC package does) and the R-hat limit is the "
        "one that ESS implies. Nothing is filtered: every successful fit is in the verdicts "
        "above; the splits below test the flagged fits apart from the rest, which shows "
        "whether the flags matter for calibration."
    )
    d = cal.diagnostics.set_index("diagnostic")
    short = [c for c in ("ess_bulk_min", "ess_tail_min") if c in d.index and d.at[c, "known"]]
    worst = max((float(d.at[c, "share"]) for c in short), default=0.0)
    if worst > 0.25:
        intro += (
            f" {worst:.0%} of fits keep draws that are far from independent (ESS / L < 0.5): "
            "their ranks are uniform only approximately. The split by ESS per kept draw below "
            "says whether that shows at this number of simulations; if it does, sample longer "
            "or thin more (benchmarks/budget.py measures the trade-off)."
        )
    header = ["diagnostic", "rule", "flagged", "known", "share", "why"]
    return f'<p class="explain">{h.e(intro)}</p>' + h.table(
        header, rows, {2, 3, 4}, classes, css="compact"
    )


def _failures(sims: pd.DataFrame) -> str:
    failed = sims[sims["status"] == "failed"]
    if failed.empty:
        return "<p>No simulation failed.</p>"
    counts = Counter("(no message)" if h.missing(e) or not e else str(e) for e in failed["error"])
    top = counts.most_common(TOP_ERRORS)
    rows = [[f"<code>{h.e(msg)}</code>", str(n)] for msg, n in top]
    rest = len(failed) - sum(n for _, n in top)
    if rest:
        rows.append([h.e(f"{len(counts) - len(top)} other messages"), str(rest)])
    text = (
        f"{len(failed)} of {len(sims)} simulations failed; they have no ranks and are not "
        "in the verdicts. If failures depend on the simulated data, the remaining ranks "
        "can look miscalibrated (or calibrated) for that reason alone."
    )
    return f"<h3>Failed simulations</h3><p>{h.e(text)}</p>" + h.table(
        ["error (most common first)", "count"], rows, {1}, css="compact"
    )


_SPLIT_COLUMNS = (("n", "num"), ("p (Holm)", "num"), ("verdict", ""), ("90 % cov.", "num"))


def _split_section(cal: Calibration, label: str, columns: tuple[str, ...]) -> str:
    """Verdicts of fits a rule flags vs the rest, side by side, when it flags some but not
    all of them."""
    present = [c for c in columns if c in cal.simulations]
    if not present:
        return ""
    flags = cal.flags()[present]
    any_flag = flags.fillna(False).astype(bool).any(axis=1)
    ok = (cal.simulations["status"] == "ok").to_numpy()
    n_flagged = int(any_flag[ok].sum())
    if n_flagged == 0 or n_flagged == int(ok.sum()):
        if label == "divergences" and n_flagged == 0:
            return "<p>No fit had divergent transitions, so there is no split by them.</p>"
        return ""

    def flagged(sims: pd.DataFrame) -> pd.Series:
        known = flags.notna().any(axis=1)
        return any_flag.where(known, np.nan).reindex(sims.index)

    flagged.__name__ = " or ".join(
        r.describe(cal.kept_draws.median(), cal.chains) for r in cal.rules if r.column in present
    )
    sv = cal.split(flagged)
    unknown = f"; {sv.n_unknown} fits do not report it and are in neither" if sv.n_unknown else ""
    text = (
        f"Fits flagged by {label} ({sv.rule}: {sv.n_flagged}) and the others ({sv.n_clean}), "
        f"tested separately, each side with its own Holm family{unknown}. The split depends "
        "only on each fit's data and sampler run, never on the truth, so under a correct "
        "posterior both sides are calibrated: a quantity that fails only among flagged fits "
        "says those fits are wrong. This is extra evidence, not a filter. With few fits on "
        "one side, its tests have little power."
    )
    records = sv.table.to_dict("records")
    failing = pd.Series([_split_fails(r) for r in records], index=sv.table.index, dtype=bool)
    kind = sv.table["quantity"].map(
        dict(zip(cal.table["quantity"], cal.table["kind"], strict=True))
    )
    parts = [
        f"<h3>Split by {h.e(label)}</h3>",
        f"<p>{h.e(text)}</p>",
        f"<p><strong>{h.e(_split_result(sv))}</strong></p>",
    ]
    if not failing.any():  # nothing to see: the table stays one click away
        table = _split_table(sv.table, sv.n_flagged, sv.n_clean)
        parts.append(
            f"<details><summary>Both sides, quantity by quantity</summary>{table}</details>"
        )
        return "\n".join(parts)
    shown, folded = _fold_rows(sv.table, failing, kind)
    parts.append(_split_table(shown, sv.n_flagged, sv.n_clean))
    if len(folded):
        parts.append(_folded(len(folded), _split_table(folded, sv.n_flagged, sv.n_clean)))
    return "\n".join(parts)


def _split_result(sv: SplitVerdicts) -> str:
    """The split in one sentence: how many quantities fail on each side."""
    sides = []
    for label, v in (("the flagged fits", sv.flagged), ("the others", sv.clean)):
        bad = (~v["calibrated"].astype(bool)).sum() if len(v) else 0
        sides.append(f"{bad} of {len(v)} quantities fail among {label}")
    return "; ".join(sides) + "."


def _split_table(table: pd.DataFrame, n_flagged: int, n_clean: int) -> str:
    rows, classes = [], []
    for r in table.to_dict("records"):
        cells = [f"<code>{h.e(r['quantity'])}</code>"]
        cells += _split_cells(r, "flagged") + _split_cells(r, "clean")
        rows.append(cells)
        classes.append("failrow" if _split_fails(r) else "")
    head = _split_head(n_flagged, n_clean)
    return h.table([], rows, {1, 2, 4, 5, 6, 8}, classes, head_html=head, css="split")


def _split_head(n_flagged: int, n_clean: int) -> str:
    """Two header rows: the side (with/without divergences) over its four columns."""
    sub = "".join(f'<th class="{c}">{h.e(label)}</th>' for label, c in _SPLIT_COLUMNS)
    return (
        '<thead><tr><th rowspan="2">quantity</th>'
        f'<th colspan="4" class="side">flagged ({n_flagged} fits)</th>'
        f'<th colspan="4" class="side">not flagged ({n_clean} fits)</th></tr>'
        f"<tr>{sub}{sub}</tr></thead>"
    )


def _split_fails(r: dict[str, Any]) -> bool:
    return _fails(r.get("calibrated_flagged")) or _fails(r.get("calibrated_clean"))


def _fails(calibrated: Any) -> bool:
    """A split side's verdict is a failure (not a pass, and not missing for want of fits)."""
    return not h.missing(calibrated) and not bool(calibrated)


def _split_cells(r: dict[str, Any], side: str) -> list[str]:
    calibrated = r.get(f"calibrated_{side}")
    if h.missing(calibrated):
        return ["0", "—", "no fits", "—"]
    verdict = (
        '<span class="pass">✓</span>'
        if calibrated
        else f'<span class="fail">✗ {h.e(r[f"shape_{side}"])}</span>'
    )
    n = r[f"n_{side}"]
    return [str(int(n)), h.p_value(r[f"p_holm_{side}"]), verdict, h.pct(r[f"coverage90_{side}"])]


def _n_divergent(sims: pd.DataFrame) -> int:
    if sims.empty or "divergences" not in sims:
        return 0
    ok = sims[sims["status"] == "ok"]
    return int((pd.to_numeric(ok["divergences"], errors="coerce") > 0).sum())


# -- trace plot ----------------------------------------------------------------------------------


def trace_section(results: Results) -> str:
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


def footer(results: Results) -> str:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return (
        f"<footer>Generated {h.e(now)} by sbc {h.e(__version__)} from "
        f"{h.code(str(results.folder))}.</footer>"
    )
