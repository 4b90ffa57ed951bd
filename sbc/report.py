"""One self-contained HTML page per study: `write_report(folder)`.

Why: whoever reviews a study should see at a glance whether the posterior is calibrated,
how sure the verdict is and what the sampler did, without running Python. The page
embeds its figures (base64 PNG) and CSS and needs neither the network nor JavaScript, so
it can be archived, mailed or opened straight from a CI artifact. It is written
atomically, so a reader never sees half a report, and it reads the results through
`sbc.load`, so it also works on a study that is still running.

All statistics come from `sbc.calibration` and all figures from `sbc.plots`; nothing is
recomputed or filtered here.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import tempfile
import textwrap
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.text import Text

from sbc import __version__, plots
from sbc import calibration as cal
from sbc.errors import SBCError
from sbc.results import Results, load

REPORT_NAME = "report.html"
#: Figures are rendered at 1.5× their CSS size so they stay sharp on high-density screens.
PNG_DPI = 144
CSS_DPI = 96
#: Small figures (one or two panels) are scaled up to about this width in CSS pixels.
MIN_CSS_WIDTH = 480
MAX_UPSCALE = 1.75
#: Longer verdict tables keep failing, scalar and pooled rows in view and fold the rest.
MAX_TABLE_ROWS = 40
#: Failing quantities named in the summary paragraph.
MAX_NAMED = 8
#: Distinct error messages listed for failed simulations.
TOP_ERRORS = 5
#: Simulations tried when looking for kept draws to draw a trace plot of.
TRACE_CANDIDATES = 5


def write_report(folder: Path | str, out: Path | None = None, alpha: float = 0.01) -> Path:
    """Write the study's HTML report (default `<folder>/report.html`) and return its path."""
    if not 0 < alpha < 1:
        raise SBCError(f"alpha must be between 0 and 1, got {alpha}")
    results = load(folder)
    path = Path(out) if out is not None else results.folder / REPORT_NAME
    _write_atomically(path, render(results, alpha))
    return path


def render(results: Results, alpha: float = 0.01) -> str:
    """The whole report as one HTML string."""
    sims = results.simulations
    ok = sims[sims["status"] == "ok"] if len(sims) else sims
    v = cal.verdicts(results.ranks, alpha) if len(results.ranks) else None
    body = [
        f"<h1>SBC report: {_e(results.name)}</h1>",
        _summary(results, v, alpha),
        _progress_notice(results),
        _manifest_section(results),
        _verdict_section(v, alpha),
        _plot_section(results.ranks),
        _diagnostics_section(results, ok, alpha, v),
        _trace_section(results, ok),
        _footer(results),
    ]
    return _page(f"SBC report: {results.name}", "\n".join(b for b in body if b))


# -- summary and progress ------------------------------------------------------------------------


def _summary(results: Results, v: pd.DataFrame | None, alpha: float) -> str:
    """One plain-language paragraph: the verdict first, then what qualifies it."""
    sims = results.simulations
    n_failed = int((sims["status"] == "failed").sum()) if len(sims) else 0
    if v is None or v.empty:
        text = (
            f"No simulation has succeeded yet ({len(sims)} stored, {n_failed} failed), "
            "so there are no ranks to test and no plots."
        )
        kind = "fail" if n_failed else "none"
        return f'<p class="summary {kind}">{_e(text)}</p>'
    failing = v[~v["calibrated"].astype(bool)]
    n_tests = int(v["p_value"].notna().sum())
    n_sims = int(results.ranks["sim"].nunique())
    family = f"Holm-adjusted over {n_tests} test{'s' * (n_tests != 1)}, {n_sims} simulations"
    if len(failing):
        text = (
            f"{len(failing)} of {_n(len(v), 'quantity', 'quantities')} fail calibration at "
            f"α = {alpha:g} ({family}) — {_failures_by_shape(failing)}."
        )
        kind = "fail"
    else:
        every = "the only quantity passes" if len(v) == 1 else f"all {len(v)} quantities pass"
        text = (
            f"No quantity departs from uniform ranks at α = {alpha:g}: {every} ({family}). "
            "Passing means no miscalibration was detected with this many simulations, not "
            "that none exists."
        )
        kind = "pass"
    notes = _summary_notes(sims, n_failed)
    return f'<p class="summary {kind}">{_e(" ".join([text, *notes]))}</p>'


def _failures_by_shape(failing: pd.DataFrame) -> str:
    """'posterior too narrow (∪): tau[1], tau[2]; …', naming at most MAX_NAMED quantities."""
    by_shape: dict[str, list[str]] = {}
    for q, shape in zip(failing["quantity"], failing["shape"], strict=True):
        by_shape.setdefault(str(shape), []).append(str(q))
    parts, budget = [], MAX_NAMED
    for shape, names in by_shape.items():
        shown = names[: max(budget, 1)]
        budget -= len(shown)
        more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
        parts.append(f"{shape}: {', '.join(shown)}{more}")
    return "; ".join(parts)


def _summary_notes(sims: pd.DataFrame, n_failed: int) -> list[str]:
    """Caveats that belong next to the verdict: failures and divergent fits."""
    notes = []
    if n_failed:
        notes.append(f"{n_failed} of {len(sims)} simulations failed (see Diagnostics).")
    n_div = _n_divergent(sims)
    if n_div:
        n_ok = int((sims["status"] == "ok").sum())
        notes.append(
            f"{n_div} of {n_ok} fits had divergent transitions "
            "(see the split by divergences below)."
        )
    return notes


def _progress_notice(results: Results) -> str:
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
    return f'<p class="notice">{_e(" ".join(parts))}</p>'


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


def _manifest_section(results: Results) -> str:
    """What was run, with what, when: enough to reproduce the study."""
    m = results.manifest
    study: dict[str, Any] = m.get("study") or {}
    ident: dict[str, Any] = m.get("identity") or {}
    sim = study.get("simulator") or {}
    items = [
        ("Name", _e(results.name)),
        ("Description", _e(study.get("description") or "—")),
        ("Study file", _code(study.get("path"))),
        ("Stan program", _stan_line(study, ident)),
        ("Simulator", f"{_code(sim.get('function'))} with {_code(_json(sim.get('args', {})))}"),
        ("Quantities", _quantities_line(m, study)),
        ("Sampler", _e(_pairs(study.get("sampler") or {}))),
        ("Backend", _e(_backend_line(m.get("backend") or {}))),
        ("Simulations", _e(f"{len(results.simulations)} stored of {m.get('sims', '?')}")),
        ("Seed", _e(str(study.get("seed", "?")))),
        ("Keep draws", _e("yes" if study.get("keep_draws") else "no")),
        ("Versions (run)", _e(_pairs(m.get("versions") or {}))),
        ("Started", _e(m.get("started") or "—")),
        ("Last run started", _e(m.get("last_run_started") or "—")),
        ("Finished", _e(m.get("finished") or "not finished")),
        ("Results", _code(str(results.folder))),
    ]
    rows = "\n".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in items)
    parts = ["<h2>Study</h2>", f'<dl class="manifest">{rows}</dl>']
    if m.get("stan_source"):
        parts.append(
            "<details><summary>Stan program source</summary>"
            f"<pre>{_e(m['stan_source'])}</pre></details>"
        )
    return "\n".join(parts)


def _stan_line(study: dict[str, Any], ident: dict[str, Any]) -> str:
    if not study.get("stan"):
        return _e("none (the backend computes the posterior without Stan)")
    digest = ident.get("stan_source")
    suffix = f" — source sha256 {_code(digest)}…" if digest else ""
    return _code(study["stan"]) + suffix


def _quantities_line(m: dict[str, Any], study: dict[str, Any]) -> str:
    names = m.get("quantities") or []
    q = study.get("quantities") or {}
    text = f"{len(names)} ranked"
    if q.get("include"):
        text += f"; include = {', '.join(q['include'])}"
    if q.get("derived"):
        text += f"; derived: {_pairs(q['derived'])}"
    return _e(text)


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


def _verdict_section(v: pd.DataFrame | None, alpha: float) -> str:
    """The verdict table, failing rows highlighted, with how to read it."""
    if v is None or v.empty:
        return ""
    shown, folded = _fold_rows(v, ~v["calibrated"].astype(bool), v["kind"])
    n_tests = int(v["p_value"].notna().sum())
    parts = [
        "<h2>Verdicts</h2>",
        _verdict_explainer(n_tests, alpha, pooled=bool((v["kind"] == "pooled").any())),
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
    group = table["quantity"].map(cal.pooled_name)
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
        f"{_n(n_tests, 'quantity', 'quantities')} tested, is below α = {alpha:g}: the "
        "chance that any calibrated quantity is "
        f"flagged is then at most {alpha:g}."
    )
    if pooled:
        text += (
            " Pooled rows b[*,q] (all groups of a group-level effect together) use a "
            "cluster-robust test, because ranks from the same simulation are dependent."
        )
    return f'<p class="explain">{_e(text)}</p>'


_HOW_TO_READ = [
    "p: the γ test of uniform ranks (Säilynoja, Bürkner & Vehtari 2022); for pooled rows, "
    "a cluster-robust ECDF test (no γ).",
    "log(γ/γ_crit) < 0: the ECDF leaves the 95 % simultaneous band drawn in the ECDF "
    "difference plot.",
    "90 % coverage: share of simulations whose central 90 % posterior interval contained "
    "the truth, with a 95 % Clopper–Pearson interval (Korn–Graubard for pooled rows).",
    "Shape: ∪ = posterior too narrow, ∩ = too wide; biased down = truth above the draws.",
]


def _how_to_read() -> str:
    items = "".join(f"<li>{_e(t)}</li>" for t in _HOW_TO_READ)
    return f'<ul class="explain">{items}</ul>'


def _verdict_table(v: pd.DataFrame) -> str:
    rows, classes = [], []
    for r in v.itertuples(index=False):
        passed = bool(r.calibrated)
        tag = ' <span class="tag">pooled</span>' if r.kind == "pooled" else ""
        verdict = (
            '<span class="pass">✓ calibrated</span>'
            if passed
            else '<span class="fail">✗ fails</span>'
        )
        rows.append(
            [
                f"<code>{_e(r.quantity)}</code>{tag}",
                str(r.n),
                _g(r.gamma),
                _ratio(r.log_gamma_ratio),
                _p(r.p_value),
                _p(r.p_holm),
                verdict,
                _coverage(r.coverage90, r.lo90, r.hi90),
                "" if passed else _e(r.shape),
            ]
        )
        classes.append("" if passed else "failrow")
    return _table(_VERDICT_HEADER, rows, _VERDICT_NUMERIC, classes, css="verdicts")


# -- figures -------------------------------------------------------------------------------------

_PLOTS: list[tuple[str, Callable[[pd.DataFrame], Figure], str]] = [
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
        "Empirical vs nominal coverage of central 50/80/90/95 % intervals. Points below the "
        "diagonal = intervals too narrow (overconfident), above = too wide.",
    ),
]


def _plot_section(ranks: pd.DataFrame) -> str:
    if ranks.empty:
        return ""
    parts = ["<h2>Plots</h2>"]
    for title, make, caption in _PLOTS:
        parts.append(_figure(title, lambda make=make: make(ranks), caption))
    return "\n".join(parts)


def _figure(title: str, make: Callable[[], Figure], caption: str, heading: bool = True) -> str:
    """A titled figure; a figure that cannot be drawn says why instead of sinking the report."""
    try:
        img = _img(make(), title)
    except Exception as exc:  # shown on the page, never swallowed
        return f'<p class="notice">Could not draw {_e(title)}: {_e(_one_line(exc))}</p>'
    head = f"<h3>{_e(title)}</h3>\n" if heading else ""
    return f"{head}<figure>{img}<figcaption>{_e(caption)}</figcaption></figure>"


def _img(fig: Figure, alt: str) -> str:
    """An <img> with the figure inline as a base64 PNG, sized in CSS pixels; figures of one
    or two panels are shown (and rendered) larger so their text stays readable."""
    _wrap_suptitle(fig)
    natural = fig.get_figwidth() * CSS_DPI
    scale = min(MAX_UPSCALE, max(1.0, MIN_CSS_WIDTH / natural))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI * scale, bbox_inches="tight", facecolor="white")
    data = buf.getvalue()
    width = round(int.from_bytes(data[16:20], "big") * CSS_DPI / PNG_DPI)  # IHDR width
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" width="{width}" alt="{_e(alt)}">'


def _wrap_suptitle(fig: Figure) -> None:
    """Break a figure title that is wider than the figure (one or two panels) into lines,
    so the picture is not stretched to the width of its title."""
    title = fig.get_suptitle()
    texts = [t for t in fig.findobj(Text) if title and t.get_text() == title]
    if not texts:
        return
    text = texts[0]
    chars = int(fig.get_figwidth() * 72 / (0.55 * text.get_fontsize()))  # ≈ 0.55 em a glyph
    if len(title) > chars:
        text.set_text("\n".join(textwrap.wrap(title, max(chars, 20))))


# -- sampler diagnostics and failures ------------------------------------------------------------


def _diagnostics_section(
    results: Results, ok: pd.DataFrame, alpha: float, v: pd.DataFrame | None
) -> str:
    sims = results.simulations
    if sims.empty:
        return "<h2>Diagnostics</h2>\n<p>No simulation is stored yet.</p>"
    return "\n".join(
        [
            "<h2>Diagnostics</h2>",
            _diagnostics_table(sims),
            _failures(sims),
            _split_section(results.ranks, sims, ok, alpha, v),
        ]
    )


def _diagnostics_table(sims: pd.DataFrame) -> str:
    d = cal.diagnostics_summary(sims)
    rows, classes = [], []
    for r in d.itertuples(index=False):
        known = int(r.known)
        share = _pct(r.share) if known else "not reported"
        rule = f"<code>{_e(r.rule)}</code>"
        flagged = str(r.flagged) if known else "—"
        rows.append([_e(r.diagnostic), rule, flagged, f"{known} of {r.total}", share])
        classes.append("warnrow" if r.flagged else "")
    intro = (
        "How many fits raised each sampler warning, counted over successful fits where the "
        "backend reports the value (failures over all simulations). Nothing is filtered: "
        "every successful fit is in the verdicts above."
    )
    header = ["diagnostic", "rule", "flagged", "known", "share"]
    return f'<p class="explain">{_e(intro)}</p>' + _table(
        header, rows, {2, 3, 4}, classes, css="compact"
    )


def _failures(sims: pd.DataFrame) -> str:
    failed = sims[sims["status"] == "failed"]
    if failed.empty:
        return "<p>No simulation failed.</p>"
    counts = Counter("(no message)" if _missing(e) or not e else str(e) for e in failed["error"])
    top = counts.most_common(TOP_ERRORS)
    rows = [[f"<code>{_e(msg)}</code>", str(n)] for msg, n in top]
    rest = len(failed) - sum(n for _, n in top)
    if rest:
        rows.append([_e(f"{len(counts) - len(top)} other messages"), str(rest)])
    text = (
        f"{len(failed)} of {len(sims)} simulations failed; they have no ranks and are not "
        "in the verdicts. If failures depend on the simulated data, the remaining ranks "
        "can look miscalibrated (or calibrated) for that reason alone."
    )
    return f"<h3>Failed simulations</h3><p>{_e(text)}</p>" + _table(
        ["error (most common first)", "count"], rows, {1}, css="compact"
    )


_SPLIT_COLUMNS = (("n", "num"), ("p (Holm)", "num"), ("verdict", ""), ("90 % cov.", "num"))


def _split_section(
    ranks: pd.DataFrame, sims: pd.DataFrame, ok: pd.DataFrame, alpha: float, v: pd.DataFrame | None
) -> str:
    """Verdicts of divergent vs non-divergent fits, side by side, when some fits diverged."""
    if ok.empty or v is None:
        return ""
    if not _n_divergent(sims):
        return "<p>No fit had divergent transitions, so there is no split to show.</p>"
    sv = cal.split_verdicts(ranks, sims, "divergences", alpha)
    unknown = (
        f"; {sv.n_unknown} fits report no divergence count and are in neither"
        if sv.n_unknown
        else ""
    )
    text = (
        f"Fits with divergent transitions ({sv.rule}: {sv.n_flagged}) and without "
        f"({sv.n_clean}), tested separately, each side with its own Holm family{unknown}. "
        "The split depends only on each fit's data and sampler run, never on the truth, so "
        "under a correct posterior both sides are calibrated: a quantity that fails only "
        "among divergent fits says those fits are wrong. This is extra evidence, not a "
        "filter: the verdicts above use every successful fit. With few fits on one side, "
        "its tests have little power."
    )
    records = sv.table.to_dict("records")
    failing = pd.Series([_split_fails(r) for r in records], index=sv.table.index, dtype=bool)
    kind = sv.table["quantity"].map(dict(zip(v["quantity"], v["kind"], strict=True)))
    shown, folded = _fold_rows(sv.table, failing, kind)
    parts = [
        "<h3>Split by divergences</h3>",
        f"<p>{_e(text)}</p>",
        f"<p><strong>{_e(_split_result(sv))}</strong></p>",
        _split_table(shown, sv.n_flagged, sv.n_clean),
    ]
    if len(folded):
        parts.append(_folded(len(folded), _split_table(folded, sv.n_flagged, sv.n_clean)))
    return "\n".join(parts)


def _split_result(sv: cal.SplitVerdicts) -> str:
    """The split in one sentence: how many quantities fail on each side."""
    sides = []
    for label, v in (("with divergences", sv.flagged), ("without", sv.clean)):
        bad = (~v["calibrated"].astype(bool)).sum() if len(v) else 0
        sides.append(f"{bad} of {len(v)} quantities fail among fits {label}")
    return "; ".join(sides) + "."


def _split_table(table: pd.DataFrame, n_flagged: int, n_clean: int) -> str:
    rows, classes = [], []
    for r in table.to_dict("records"):
        cells = [f"<code>{_e(r['quantity'])}</code>"]
        cells += _split_cells(r, "flagged") + _split_cells(r, "clean")
        rows.append(cells)
        classes.append("failrow" if _split_fails(r) else "")
    head = _split_head(n_flagged, n_clean)
    return _table([], rows, {1, 2, 4, 5, 6, 8}, classes, head_html=head, css="split")


def _split_head(n_flagged: int, n_clean: int) -> str:
    """Two header rows: the side (with/without divergences) over its four columns."""
    sub = "".join(f'<th class="{c}">{_e(h)}</th>' for h, c in _SPLIT_COLUMNS)
    return (
        '<thead><tr><th rowspan="2">quantity</th>'
        f'<th colspan="4" class="side">with divergences ({n_flagged} fits)</th>'
        f'<th colspan="4" class="side">without ({n_clean} fits)</th></tr>'
        f"<tr>{sub}{sub}</tr></thead>"
    )


def _split_fails(r: dict[str, Any]) -> bool:
    return _fails(r.get("calibrated_flagged")) or _fails(r.get("calibrated_clean"))


def _fails(calibrated: Any) -> bool:
    """A split side's verdict is a failure (not a pass, and not missing for want of fits)."""
    return not _missing(calibrated) and not bool(calibrated)


def _split_cells(r: dict[str, Any], side: str) -> list[str]:
    calibrated = r.get(f"calibrated_{side}")
    if _missing(calibrated):
        return ["0", "—", "no fits", "—"]
    verdict = (
        '<span class="pass">✓</span>'
        if calibrated
        else f'<span class="fail">✗ {_e(r[f"shape_{side}"])}</span>'
    )
    n = r[f"n_{side}"]
    return [str(int(n)), _p(r[f"p_holm_{side}"]), verdict, _pct(r[f"coverage90_{side}"])]


def _n_divergent(sims: pd.DataFrame) -> int:
    if sims.empty or "divergences" not in sims:
        return 0
    ok = sims[sims["status"] == "ok"]
    return int((pd.to_numeric(ok["divergences"], errors="coerce") > 0).sum())


# -- trace plot ----------------------------------------------------------------------------------


def _trace_section(results: Results, ok: pd.DataFrame) -> str:
    """Trace plot of the first fit with kept draws, when the study keeps draws."""
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
            figure = _figure(title, lambda d=draws: plots.trace_plot(d), caption, heading=False)
            return f"<h2>Trace plot</h2>\n{figure}"
    return ""


# -- footer, page, writing -----------------------------------------------------------------------


def _footer(results: Results) -> str:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    return (
        f"<footer>Generated {_e(now)} by sbc {_e(__version__)} from "
        f"{_code(str(results.folder))}.</footer>"
    )


_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f3f4f6; color: #1f2430; line-height: 1.5;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 28px 36px 40px; background: #fff;
  box-sizing: border-box; min-height: 100vh; }
h1 { font-size: 1.7rem; margin: 0 0 .8rem; }
h2 { font-size: 1.3rem; margin: 2.2rem 0 .6rem; padding-bottom: .25rem;
  border-bottom: 2px solid #e5e7eb; }
h3 { font-size: 1.05rem; margin: 1.6rem 0 .4rem; }
p { margin: .5rem 0; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: .85em; }
.summary { font-size: 1.05rem; padding: .8rem 1rem; border-left: 6px solid #868e96;
  border-radius: 4px; background: #f1f3f5; }
.summary.pass { background: #e8f5e9; border-color: #2e7d32; }
.summary.fail { background: #fdecea; border-color: #c62828; }
.notice { background: #fff8e1; border-left: 6px solid #f9a825; padding: .6rem 1rem;
  border-radius: 4px; }
.explain { color: #4b5563; font-size: .9rem; }
dl.manifest { display: grid; grid-template-columns: max-content 1fr; gap: .25rem 1.2rem;
  margin: .5rem 0; font-size: .92rem; }
dl.manifest dt { font-weight: 600; color: #4b5563; }
dl.manifest dd { margin: 0; overflow-wrap: anywhere; }
details { margin: .6rem 0; }
summary { cursor: pointer; color: #1d4ed8; }
pre { background: #f6f8fa; border: 1px solid #e5e7eb; padding: .8rem; overflow: auto;
  max-height: 40em; }
.table-wrap { overflow-x: auto; margin: .5rem 0 1rem; }
table { border-collapse: collapse; width: 100%; font-size: .87rem; }
th, td { padding: 5px 9px; text-align: left; vertical-align: top;
  border-bottom: 1px solid #e5e7eb; }
th { background: #eef1f5; font-weight: 600; white-space: nowrap; }
th.side { text-align: center; }
th.side + th.side { border-left: 2px solid #d1d5db; }
table.split td:nth-child(6), table.split tr:last-child th:nth-child(5) {
  border-left: 2px solid #d1d5db; }
tbody tr:nth-child(even) { background: #f8fafc; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.failrow, tbody tr.failrow:nth-child(even) { background: #fdecea; }
tr.warnrow, tbody tr.warnrow:nth-child(even) { background: #fff8e1; }
span.fail { color: #b71c1c; font-weight: 600; }
span.pass { color: #2e7d32; font-weight: 600; }
span.tag { font-size: .75em; color: #4b5563; background: #e5e7eb; border-radius: 3px;
  padding: 0 4px; margin-left: 4px; }
table.verdicts td:last-child { min-width: 12em; }
table.compact { width: auto; min-width: 60%; }
ul.explain { margin: .2rem 0 1rem; padding-left: 1.3rem; }
figure { margin: .5rem 0 1.5rem; }
figure img { display: block; max-width: 100%; height: auto; margin: 0 auto; }
figcaption { font-size: .88rem; color: #4b5563; margin-top: .4rem; }
footer { margin-top: 2.5rem; padding-top: .6rem; border-top: 1px solid #e5e7eb;
  font-size: .8rem; color: #6b7280; }
@media print { body { background: #fff; } main { padding: 0; } }
"""


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_e(title)}</title>\n<style>{_CSS}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _write_atomically(path: Path, text: str) -> None:
    """Temp file in the same folder, fsync, rename: readers see the old page or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


# -- small HTML helpers --------------------------------------------------------------------------


def _table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: Iterable[int] = (),
    classes: Sequence[str] | None = None,
    head_html: str | None = None,
    css: str = "",
) -> str:
    """A table from cells that are already HTML; header labels are escaped here."""
    num = set(numeric)
    ths = "".join(
        f'<th class="num">{_e(h)}</th>' if i in num else f"<th>{_e(h)}</th>"
        for i, h in enumerate(header)
    )
    head = head_html or f"<thead><tr>{ths}</tr></thead>"
    body = []
    for k, cells in enumerate(rows):
        cls = classes[k] if classes else ""
        tds = "".join(
            f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>"
            for i, c in enumerate(cells)
        )
        body.append(f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    return (
        f'<div class="table-wrap"><table class="{css}">{head}'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _code(text: Any) -> str:
    return f"<code>{_e(text)}</code>" if text not in (None, "") else "—"


def _n(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def _missing(x: Any) -> bool:
    return x is None or (np.isscalar(x) and bool(pd.isna(x)))


def _p(x: Any) -> str:
    if _missing(x):
        return "—"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def _g(x: Any) -> str:
    return "—" if _missing(x) else f"{x:.3g}"


def _ratio(x: Any) -> str:
    if _missing(x):
        return "—"
    if math.isinf(x):
        return "−∞" if x < 0 else "∞"
    return f"{x:+.2f}".replace("-", "−")


def _pct(x: Any) -> str:
    return "—" if _missing(x) else f"{100 * x:.0f} %"


def _coverage(est: Any, lo: Any, hi: Any) -> str:
    if _missing(est):
        return "—"
    return f"{100 * est:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}]"


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"
