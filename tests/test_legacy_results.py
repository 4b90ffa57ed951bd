"""Results written by sbc 0.1 (tests/data/legacy_v0_1: an exact-backend study of 60
simulations, stored with interval hits from draw quantiles) load and are re-analysed with
today's tests, without refitting and without touching the stored file."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import sbc
from sbc.checks import check
from sbc.reports import write_report

LEGACY = Path(__file__).parent / "data" / "legacy_v0_1"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_legacy_results_are_reanalysed_without_refitting(tmp_path):
    folder = tmp_path / "legacy"
    shutil.copytree(LEGACY, folder)
    before = digest(folder / "sbc.sqlite")
    res = sbc.load(folder)
    assert len(res.simulations) == 60 and set(res.ranks["quantity"]) == {"mu[1]", "mu[2]"}
    assert not any(c.startswith("hit") for c in res.ranks)  # biased draw-quantile hits: ignored
    outcome = check(folder)
    assert outcome.passed  # exact posterior: calibrated (fails with probability ≤ 1 %)
    v = outcome.verdicts.set_index("quantity")
    assert 0.75 < v.loc["mu[1]", "coverage90"] < 1.0  # from the ranks
    page = write_report(folder).read_text()
    assert "Calibrated: no quantity departs from uniform ranks" in page
    cli = subprocess.run([sys.executable, "-m", "sbc.cli", "check", str(folder)],
                         capture_output=True, text=True)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert digest(folder / "sbc.sqlite") == before  # read, never rewritten
