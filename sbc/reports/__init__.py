"""One self-contained HTML page per study: `write_report(folder)`.

Why: whoever reviews a study should see at a glance whether the posterior is calibrated,
how sure the verdict is and what the sampler did, without running Python. The page embeds
its figures (base64 PNG) and CSS and needs neither the network nor JavaScript, so it can be
archived, mailed or opened straight from a CI artifact. It is written atomically, so a
reader never sees half a report, and it reads the results through `sbc.load`, so it also
works on a study that is still running.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sbc.analysis.verdicts import Calibration
from sbc.errors import SBCError
from sbc.reports import html as h
from sbc.reports import sections as sec
from sbc.reports.diagnostics import diagnostics_section
from sbc.results import StoredResults, as_results

REPORT_NAME = "report.html"


def write_report(
    folder: Path | str | StoredResults,
    out: Path | None = None,
    alpha: float = 0.01,
    pool: Sequence[str] | None = None,
    ranks_version: int | None = None,
) -> Path:
    """Write the study's HTML report (default `<folder>/report.html`) and return its path;
    `ranks_version`: which version of the ranks (default: the newest)."""
    if not 0 < alpha < 1:
        raise SBCError(f"alpha must be between 0 and 1, got {alpha}")
    results = as_results(folder, ranks_version)
    path = Path(out) if out is not None else results.folder / REPORT_NAME
    h.write_atomically(path, render(results, alpha, pool))
    return path


def render(results: StoredResults, alpha: float = 0.01, pool: Sequence[str] | None = None) -> str:
    """The whole report as one HTML string."""
    cal = Calibration.from_results(results, alpha=alpha, pool=pool)
    body = [
        f"<h1>SBC report: {h.e(results.name)}</h1>",
        sec.summary(results, cal),
        sec.progress_notice(results),
        sec.manifest_section(results),
        sec.verdict_section(cal),
        sec.plot_section(cal),
        diagnostics_section(results, cal),
        sec.trace_section(results),
        sec.footer(results),
    ]
    return h.page(f"SBC report: {results.name}", "\n".join(b for b in body if b))
