"""The HTML report: verdicts and plots of real (exact-backend) studies, partial studies,
failures, self-containedness, atomic writing, and a headless Chromium render."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
from conftest import exact_study

import sbc
from sbc import reports as report
from sbc.reports import html, sections, write_report
from sbc.store import Store

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
DATA_PNG = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


class _Tables(HTMLParser):
    """Rows of the tables with a given class: (row class, [cell texts])."""

    def __init__(self, css: str):
        super().__init__()
        self.css = css
        self.depth = 0  # > 0 inside a wanted table
        self.rows: list[tuple[str, list[str]]] = []
        self.cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            if self.depth or self.css in (a.get("class") or "").split():
                self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append((a.get("class") or "", []))
        elif self.depth and tag == "td":
            self.cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1
        elif tag == "td" and self.cell is not None:
            self.rows[-1][1].append("".join(self.cell).strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def table_rows(page: str, css: str) -> dict[str, tuple[str, list[str]]]:
    """{first cell (the quantity): (row class, cells)} of every body row of `css` tables."""
    parser = _Tables(css)
    parser.feed(page)
    return {cells[0]: (cls, cells) for cls, cells in parser.rows if cells}


def with_keys(path: Path, **keys: str) -> Path:
    """Add top-level keys (TOML literals) to a study file written by `exact_study`."""
    lines = "".join(f"{k} = {v}\n" for k, v in keys.items())
    path.write_text(path.read_text().replace("[backend]", lines + "[backend]", 1))
    return path


def embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(b64, validate=True) for b64 in DATA_PNG.findall(page)]


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """A calibrated study (with kept draws) and a miscalibrated one (posterior 0.7× too narrow),
    150 simulations each, and their reports."""
    tmp = tmp_path_factory.mktemp("report")
    out = {}
    good = with_keys(
        exact_study(tmp, "calibrated", sims=150),
        keep_draws="true",
        description='"Exact <posterior> & friends"',
    )
    bad = exact_study(tmp, "narrow", sims=150, backend={"sd_scale": 0.7})
    for name, path in (("calibrated", good), ("narrow", bad)):
        folder = sbc.run(path, workers=1, progress=False)
        written = write_report(folder)  # a Results: it is also the path of its folder
        out[name] = (written, written.read_text(encoding="utf-8"))
    return out


def test_report_is_written_where_expected(studies):
    for name, (path, page) in studies.items():
        assert path.name == "report.html" and path.parent.name == name
        assert page.startswith("<!DOCTYPE html>")
        assert f"<h1>SBC report: {name}</h1>" in page
        # no temporary file left next to it
        assert [p.name for p in path.parent.glob(".report.html.*")] == []


def test_verdict_table_marks_failing_quantities_only_when_miscalibrated(studies):
    _, good = studies["calibrated"]
    _, bad = studies["narrow"]
    good_rows = table_rows(good, "verdicts")
    bad_rows = table_rows(bad, "verdicts")
    assert set(good_rows) == set(bad_rows) == {"mu[1]", "mu[2]"}
    for cls, cells in good_rows.values():
        assert cls != "failrow" and "calibrated" in cells[6] and cells[8] == ""
    for cls, cells in bad_rows.values():
        assert cls == "failrow" and "fails" in cells[6]
        assert "too narrow" in cells[8]
    assert 'class="summary pass"' in good and "no quantity departs from uniform ranks" in good
    assert 'class="summary fail"' in bad and "Not calibrated: 2 of 2 quantities fail" in bad
    assert "Holm over 2 tests" in bad
    assert "computed exactly" in bad  # how to read the p-values
    assert "Partial results" not in good and "Partial results" not in bad


def test_report_is_self_contained_with_valid_pngs(studies):
    for name, (_, page) in studies.items():
        images = embedded_pngs(page)
        plots_drawn = len(sections._PLOTS)
        expected = plots_drawn + 1 if name == "calibrated" else plots_drawn  # + trace plot
        assert len(images) == page.count("<img ") == expected
        for png in images:
            assert png.startswith(PNG_MAGIC)
            width, height = (int.from_bytes(png[i : i + 4], "big") for i in (16, 20))
            assert width > 200 and height > 100
        assert "http://" not in page and "https://" not in page
        assert "<script" not in page.lower() and "<link" not in page.lower()
        for attr in re.findall(r'(?:src|href)="([^"]*)"', page):
            assert attr.startswith("data:image/png;base64,"), attr[:40]


def test_user_text_is_escaped_and_manifest_shown(studies):
    _, page = studies["calibrated"]
    assert "Exact &lt;posterior&gt; &amp; friends" in page
    assert "<posterior>" not in page
    assert "sbc.simulators.normal:simulate" in page
    assert "Trace plot" in page
    _, bad = studies["narrow"]
    assert "sd_scale = 0.7" in bad


def test_interrupted_study_says_it_is_partial(tmp_path, monkeypatch):
    """A study that ran 10 simulations, then was asked for 40 and interrupted (Ctrl-C) after
    5 more: the manifest says 40, 15 are stored, and `finished` predates the last run."""
    path = exact_study(tmp_path, "partial", sims=40)
    folder = sbc.run(path, sims=10, workers=1, progress=False)
    first = sbc.load(folder).manifest
    assert first["sims"] == 10 and "finished" in first
    assert sections.progress_notice(sbc.load(folder)) == ""

    add_many = Store.add_many
    calls = []

    def interrupted(self, results, **kwargs):
        for result in results:
            if len(calls) == 5:
                raise KeyboardInterrupt  # as if the user pressed Ctrl-C between two results
            calls.append(result.sim)
            add_many(self, [result], **kwargs)

    monkeypatch.setattr(Store, "add_many", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sbc.run(path, workers=1, progress=False)
    monkeypatch.undo()
    res = sbc.load(folder)  # read again: `folder` is the Results of the first run, as it was
    assert res.manifest["sims"] == 40 and len(res.simulations) == 15
    page = write_report(res).read_text()
    assert "Partial results: 15 of 40 simulations are stored." in page
    assert "has not finished" in page


GATED_SIMULATOR = """
import os, time
from pathlib import Path
from sbc.simulators.normal import simulate as base

def simulate(rng, *, gate, main_pid, **args):
    truth, data = base(rng, **args)
    if os.getpid() != main_pid:  # in the (single) worker: hold after 5 simulations
        calls = Path(gate + ".calls")
        with calls.open("a") as fh:
            fh.write("x\\n")
        if len(calls.read_text().splitlines()) > 5:
            deadline = time.monotonic() + 60
            while os.path.exists(gate) and time.monotonic() < deadline:
                time.sleep(0.01)
    return truth, data
"""


def test_report_on_a_study_while_it_runs(tmp_path, monkeypatch):
    """The runner is writing (5 of 40 stored, the 6th held by a gate file) while the report
    reads the same SQLite file: the report is whole and says the run has not finished."""
    import sbc.execution.pools

    # one simulation per task, as real fits get (cheap ones go in batches, and a batch
    # holding the gated 6th simulation would hold back the results of the others in it)
    monkeypatch.setattr(sbc.execution.pools, "MAX_BATCH", 1)
    gate = tmp_path / "gate"
    gate.touch()
    (tmp_path / "gated.py").write_text(GATED_SIMULATOR)
    path = exact_study(tmp_path, "live", sims=40)
    args = f'args = {{ K = 2, N = 5, gate = "{gate}", main_pid = {os.getpid()} }}'
    text = path.read_text().replace("sbc.simulators.normal:simulate", "gated.py:simulate")
    path.write_text(text.replace("args = { K = 2, N = 5 }", args))
    folder = tmp_path / "results" / "live"
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sbc.run(path, workers=1, progress=False)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not errors:
            with contextlib.suppress(sbc.SBCError):
                if len(sbc.load(folder).simulations) == 5:
                    break
            time.sleep(0.05)
        assert not errors, errors
        page = write_report(folder).read_text()
    finally:
        gate.unlink()
        thread.join(120)
    assert not thread.is_alive() and not errors, errors
    assert page.rstrip().endswith("</html>")
    assert "Partial results: 5 of 40 simulations are stored." in page
    assert "has not finished" in page
    assert "5 stored of 40" in page and len(embedded_pngs(page)) == len(sections._PLOTS)
    res = sbc.load(folder)
    assert len(res.simulations) == 40 and sections.progress_notice(res) == ""


@pytest.mark.parametrize(
    ("finished", "last", "missing", "unfinished"),
    [
        (None, "2026-01-01T10:00:00+00:00", False, True),
        ("2026-01-01T09:00:00+00:00", "2026-01-01T10:00:00+00:00", False, True),
        ("2026-01-01T10:00:05+00:00", "2026-01-01T10:00:00+00:00", True, False),
        # same second (one-second stamps): missing simulations decide
        ("2026-01-01T10:00:00+00:00", "2026-01-01T10:00:00+00:00", True, True),
        ("2026-01-01T10:00:00+00:00", "2026-01-01T10:00:00+00:00", False, False),
    ],
)
def test_unfinished_runs(finished, last, missing, unfinished):
    assert sections._unfinished(finished, last, missing) is unfinished


def test_failures_and_zero_successes(tmp_path):
    """Every fit fails (the data lack y): the report says so, lists the error, draws nothing."""
    (tmp_path / "nodata.py").write_text(
        "from sbc.simulators.normal import simulate as base\n\n"
        "def simulate(rng, **args):\n"
        "    truth, data = base(rng, **args)\n"
        "    del data['y']\n"
        "    return truth, data\n"
    )
    path = exact_study(tmp_path, "broken", sims=6)
    path.write_text(
        path.read_text().replace("sbc.simulators.normal:simulate", "nodata.py:simulate")
    )
    folder = sbc.run(path, workers=1, progress=False)
    page = write_report(folder, out=tmp_path / "elsewhere" / "r.html").read_text()
    assert not (folder / "report.html").exists()
    assert "No simulation has succeeded yet (6 stored, 6 failed)" in page
    assert "<img" not in page and 'class="verdicts"' not in page
    errors = table_rows(page, "compact")
    (message,) = [m for m in errors if "KeyError" in m]
    assert errors[message][1][1] == "6"


def test_divergent_fits_get_a_side_by_side_split(studies):
    """Divergences come from CmdStan; here some fits are marked divergent in the table."""
    path, _ = studies["narrow"]
    res = sbc.load(path.parent)
    sims = res.simulations.copy()
    sims.loc[sims["sim"] % 3 == 0, "divergences"] = 4
    page = report.render(dataclasses.replace(res, simulations=sims))
    n_div = int((sims["sim"] % 3 == 0).sum())
    assert f"{n_div} of 150 fits had divergent transitions" in page
    assert f"flagged ({n_div} fits)" in page
    assert f"not flagged ({150 - n_div} fits)" in page
    assert "Split by divergences" in page
    assert "not a filter" in page
    rows = table_rows(page, "split")
    assert set(rows) == {"mu[1]", "mu[2]"}
    assert all(len(cells) == 9 for _, cells in rows.values())
    # nothing was filtered: the main table still uses all 150 simulations
    assert all(cells[1] == "150" for _, cells in table_rows(page, "verdicts").values())


def test_write_is_atomic(studies, monkeypatch):
    """A write that dies half-way leaves the previous report whole and no temporary file."""
    path, before = studies["calibrated"]

    def dies(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(report, "render", lambda *a, **k: "<html>new</html>" * 1000)
    monkeypatch.setattr(html.os, "fsync", dies)
    with pytest.raises(OSError, match="disk full"):
        write_report(path.parent)
    assert path.read_text(encoding="utf-8") == before
    assert [p.name for p in path.parent.glob(".report.html.*")] == []
    monkeypatch.undo()
    with pytest.raises(sbc.SBCError):
        write_report(path.parent, alpha=1.5)


def test_long_tables_fold_passing_rows_but_never_failing_ones():
    import pandas as pd

    n = sections.MAX_TABLE_ROWS + 25
    v = pd.DataFrame(
        {
            "quantity": [f"q{i}" for i in range(n)],
            "kind": ["member"] * n,
            "calibrated": [i % 10 != 7 for i in range(n)],
        }
    )
    v.loc[3, "kind"] = "pooled"
    shown, folded = sections.fold_rows(v, ~v["calibrated"], v["kind"])
    assert len(shown) == sections.MAX_TABLE_ROWS and len(shown) + len(folded) == n
    assert folded["calibrated"].all() and "q3" in set(shown["quantity"])
    assert set(v.loc[~v["calibrated"], "quantity"]) <= set(shown["quantity"])


# -- headless Chromium -----------------------------------------------------------------------


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def _chromium_run(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp / 'profile'}",
    ]
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp / "cfg"), "XDG_CACHE_HOME": str(tmp / "c")}
    return subprocess.run(
        [exe, *flags, *args], capture_output=True, text=True, timeout=90, env=env, check=False
    )


def test_chromium_renders_the_report(studies, tmp_path):
    exe = _chromium()
    if exe is None:
        pytest.skip("Chromium not installed (apt-get install chromium) - render test skipped")
    path, page = studies["narrow"]
    url = path.resolve().as_uri()
    shot = tmp_path / "shot.png"
    done = _chromium_run(exe, tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", url)
    assert shot.is_file(), done.stderr[-2000:]
    img = mpimg.imread(shot)[..., :3]
    assert img.shape[0] >= 1000 and img.shape[1] >= 1000
    non_white = (img < 0.95).any(axis=2).mean()
    assert non_white > 0.05 and img.std() > 0.05  # text, tables and plots, not a blank page
    # the plots were decoded and drawn: the ECDF band and histogram bars are the only large
    # bluish areas on the page
    r, b = img[..., 0], img[..., 2]
    assert ((b - r) > 0.15).mean() > 0.01

    dom = _chromium_run(exe, tmp_path, "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "SBC report: narrow" in dom.stdout
    assert dom.stdout.count("<img ") == page.count("<img ") == len(sections._PLOTS)
    assert len(DATA_PNG.findall(dom.stdout)) == len(sections._PLOTS)
    for title in ("Coverage difference at every width", "Posterior mean vs truth", "Contraction"):
        assert f'alt="{title}"' in dom.stdout  # R SBC's pictures, drawn in the page

    # the whole page, down to the last picture: its lower part (coverage difference,
    # posterior mean vs truth, contraction) is drawn, not blank
    tall = tmp_path / "tall.png"
    _chromium_run(exe, tmp_path, f"--screenshot={tall}", "--window-size=1200,7000", url)
    img = mpimg.imread(tall)[..., :3]
    content = np.nonzero((img < 0.9).any(axis=(1, 2)))[0]
    lower = img[content.max() - 1500 : content.max()]
    assert ((lower[..., 2] - lower[..., 0]) > 0.15).mean() > 0.002  # bands, points, bars


def test_png_helper_sizes_images_in_css_pixels():
    """Images are sharp (1.5 device pixels per CSS pixel) and small figures are drawn bigger."""
    from matplotlib.figure import Figure

    sizes = {}
    for inches in (2.7, 12.0):
        fig = Figure(figsize=(inches, 2), layout="constrained")
        fig.subplots().plot(np.arange(3))
        tag = html.image(fig, 'a "quoted" <alt>')
        assert 'alt="a &quot;quoted&quot; &lt;alt&gt;"' in tag
        css = int(re.search(r'width="(\d+)"', tag).group(1))
        (png,) = embedded_pngs(tag)
        pixels = int.from_bytes(png[16:20], "big")
        assert abs(pixels - css * html.PNG_DPI / html.CSS_DPI) <= 2
        sizes[inches] = css
    assert 0.9 * html.MIN_CSS_WIDTH <= sizes[2.7] <= 1.1 * html.MIN_CSS_WIDTH
    assert abs(sizes[12.0] - 12.0 * html.CSS_DPI) <= 0.05 * 12.0 * html.CSS_DPI
