"""What a notebook shows for `Results` (`_repr_html_`): the verdict in one sentence and a
compact table, failing quantities first in view; the full story is `results.report()`.

Inline styles only: a notebook's own stylesheet applies to everything else, and the
snippet must look the same in Jupyter, VS Code and a rendered .ipynb on a website.
"""

from __future__ import annotations

from sbc.analysis.verdicts import Calibration
from sbc.reports import html as h
from sbc.reports.sections import fold_rows
from sbc.results import StoredResults

#: Rows of the compact verdict table before the rest is folded away.
MAX_ROWS = 12

_BOX = "padding:.5em .8em;border-left:5px solid {};background:{};margin:.4em 0"
_COLOURS = {"pass": ("#2e7d32", "#e8f5e9"), "fail": ("#c62828", "#fdecea"),
            "none": ("#868e96", "#f1f3f5")}  # fmt: skip


def summary_html(results: StoredResults, cal: Calibration) -> str:
    """A title line, the headline sentence, and the verdict table (failing rows kept)."""
    sims = results.simulations
    failed = int((sims["status"] == "failed").sum()) if len(sims) else 0
    version = (
        f", ranks version {results.ranks_version} of {len(results.rank_versions)}"
        if len(results.rank_versions) > 1
        else ""
    )
    title = (
        f"<b>SBC results: {h.e(results.name)}</b> — {len(sims)} simulations"
        f"{f' ({failed} failed)' if failed else ''}{h.e(version)}, in {h.code(results.folder)}"
    )
    kind = "none" if cal.table.empty else ("pass" if cal.passed else "fail")
    text = cal.headline() if not cal.table.empty else "No successful simulation yet."
    box = _BOX.format(*_COLOURS[kind])
    parts = [f"<div>{title}</div>", f'<div style="{box}">{h.e(text)}</div>']
    if not cal.table.empty:
        parts.append(_table(cal))
    return '<div class="sbc-results">' + "\n".join(parts) + "</div>"


def _table(cal: Calibration) -> str:
    v = cal.table
    shown, folded = fold_rows(v, ~v["calibrated"].astype(bool), v["kind"], MAX_ROWS)
    rows = []
    for r in shown.itertuples(index=False):
        ok = bool(r.calibrated)
        colour = "#2e7d32" if ok else "#c62828"
        verdict = f'<span style="color:{colour};font-weight:600">{"✓" if ok else "✗"}</span>'
        rows.append([
            h.code(r.quantity),
            verdict,
            h.p_value(r.p_holm),
            h.coverage(r.coverage90, r.lo90, r.hi90),
            "" if ok else h.e(r.shape),
        ])  # fmt: skip
    header = ["quantity", "", "p (Holm)", "90 % coverage [95 % CI]", "shape"]
    table = h.table(header, rows, numeric={2, 3})
    if len(folded):
        table += f"<div><i>… and {len(folded)} more quantities, all calibrated</i></div>"
    return table
