"""The report's diagnostics section: how many fits each rule flags, the failures, and the
verdicts of flagged fits tested apart from the others (one split per rule)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from sbc.analysis.verdicts import Calibration, SplitVerdicts
from sbc.reports import html as h
from sbc.reports.sections import fold_rows
from sbc.results import StoredResults
from sbc.thinning import GIVE_UP

#: Distinct error messages listed for failed simulations.
TOP_ERRORS = 5

#: Diagnostics whose flagged fits are tested apart from the rest, when some (not all) are.
SPLITS = (
    ("divergences", ("divergences",)),
    ("ESS per kept draw", ("ess_bulk_min", "ess_tail_min")),
    ("R-hat", ("rhat_max",)),
    ("ELBO convergence", ("not_converged", "elbo_below_best")),
    ("Pareto k̂", ("pareto_k",)),
)


# -- sampler diagnostics and failures ------------------------------------------------------------


def diagnostics_section(results: StoredResults, cal: Calibration) -> str:
    sims = results.simulations
    if sims.empty:
        return "<h2>Diagnostics</h2>\n<p>No simulation is stored yet.</p>"
    parts = [
        "<h2>Diagnostics</h2>",
        _diagnostics_table(cal),
        _auto_thinning(results, cal),
        _failures(sims),
    ]
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


def _auto_thinning(results: StoredResults, cal: Calibration) -> str:
    """What thin_ranks = "auto" did: fits continued, draws used, strides, ESS per kept draw."""
    a = cal.auto_thinning
    if a is None:
        return ""
    settings = (results.manifest.get("study") or {}).get("thin_ranks_auto") or {}
    L = int(cal.kept_draws.median())
    target = settings.get("min_ess_per_draw", "?")
    cap = settings.get("max_draws", "?")
    n = int(a["fits"])
    rows = [
        ["fits continued (no new warm-up)",
         f"{a['continued']} of {n} ({h.pct(a['continued'] / n)})"],
        ["continuations",
         f"{a['continuations']} in all, at most {a['most_continuations']} for one fit"],
        ["draws per chain, continuations included",
         f"median {a['draws_median']:.0f}, 90th percentile {a['draws_p90']:.0f}, "
         f"largest {a['draws_max']:.0f} (limit {cap})"],
        ["stride (every k-th draw of each chain ranked)",
         f"median {a['every_median']:.0f} (from {a['every_min']:.0f} to {a['every_max']:.0f})"],
        ["ESS per kept draw (ess_ranked_min / L)",
         f"median {a['ess_median']:.2f}, 10th percentile {a['ess_p10']:.2f}; below 0.5: "
         f"{a['ess_below_half']} of {n}" + _stopped_early(a)],
    ]  # fmt: skip
    text = (
        f'thin_ranks = "auto": each fit keeps L = {L} draws, as far apart as its chains allow. '
        f"A fit whose ranked quantities had a bulk or tail ESS below {target} x L after the "
        f"planned draws was continued as the same Markov chains (adapted step size and metric, "
        f"from their last draws) until they had, or until {cap} draws per chain. A fit whose "
        f"ESS said that even {GIVE_UP:g} x {cap} draws would not reach the target was not "
        "continued (a sampler stuck, in a funnel for instance: it would end below target "
        "either way, after the dearest draws of the study). Only these fits and those that "
        "reached the limit keep draws with ESS / L below the target; the diagnostics table "
        "flags them."
    )
    return (
        f"<h3>Auto thinning</h3><p>{h.e(text)}</p>"
        + h.table(["", "value"], [[h.e(k), h.e(v)] for k, v in rows], css="compact auto")
    )


def _stopped_early(a: dict) -> str:
    stopped = a.get("stopped_early", math.nan)
    if not stopped > 0:  # none, or max_draws unknown (NaN)
        return ""
    return f" ({stopped:.0f} not continued: their ESS projected more than {GIVE_UP:g} x the limit)"


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
    shown, folded = fold_rows(sv.table, failing, kind)
    parts.append(_split_table(shown, sv.n_flagged, sv.n_clean))
    if len(folded):
        parts.append(folded(len(folded), _split_table(folded, sv.n_flagged, sv.n_clean)))
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
