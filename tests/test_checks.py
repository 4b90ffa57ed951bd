"""check, compare and assert_calibrated on the exact backend, where the truth is known."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
from conftest import exact_study

import sbc
import sbc.checks
from sbc.analysis.verdicts import calibrate
from sbc.backends.exact import ExactNormalBackend
from sbc.errors import SBCError
from sbc.execution.task import Task, run_simulation
from sbc.simulate import PythonSimulator
from sbc.testing import assert_calibrated


def exact_ranks(study: int, sims: int, sd_scale: float) -> pd.DataFrame:
    """The ranks table of one exact-backend study, computed in-process (no worker pool).

    The same `run_simulation` the runner sends to workers; study `study` of a series uses
    master seed 1000 + study, so each study is an independent replicate.
    """
    backend = ExactNormalBackend(chains=1, draws_per_chain=100, sd_scale=sd_scale)
    rows = []
    for sim in range(sims):
        simulator = PythonSimulator("sbc.simulators.normal:simulate", {"K": 3, "N": 10})
        task = Task(sim=sim, master_seed=1000 + study, simulator=simulator, backend=backend,
                    thin=1, quantities=(), derived={}, keep_draws=False,
                    tmp_root="/tmp")  # fmt: skip
        result = run_simulation(task)
        rows += [{"sim": sim, **r} for r in result.ranks]
    return pd.DataFrame(rows)


def passes(ranks: pd.DataFrame, alpha: float = 0.01) -> bool:
    return calibrate(ranks, alpha=alpha).passed


def test_check_passes_calibrated_and_fails_narrow_posteriors_across_100_studies():
    """The issue's acceptance figures: 100 studies of 200 simulations, 3 quantities each.

    Calibrated: Holm keeps the familywise false-alarm rate at most alpha = 0.01, so the
    number of failing studies is at most Binomial(100, 0.01): P(more than 3) = 0.018.
    sd x 0.7: each quantity is rejected with probability about 0.99 at N = 200 (measured
    in tests/analysis/test_uniformity.py), so fewer than 90 failing studies has probability
    far below 1e-9. The seeds are fixed, so the outcome is deterministic.
    """
    calibrated = sum(passes(exact_ranks(s, 200, 1.0)) for s in range(100))
    narrow = sum(not passes(exact_ranks(s, 200, 0.7)) for s in range(100))
    assert calibrated >= 97, calibrated
    assert narrow >= 90, narrow


def test_check_cli_exit_codes_and_assert_calibrated(tmp_path):
    good = sbc.run(exact_study(tmp_path, "good", sims=200), progress=False)
    bad = sbc.run(exact_study(tmp_path, "bad", sims=200, backend={"sd_scale": 0.6}),
                  progress=False)  # fmt: skip
    cli = [sys.executable, "-m", "sbc.cli"]
    ok = subprocess.run([*cli, "check", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Calibrated: no quantity departs from uniform ranks" in ok.stdout
    no = subprocess.run([*cli, "check", str(bad)], capture_output=True, text=True)
    assert no.returncode == 1
    assert "Not calibrated: " in no.stdout and "mu[1] (posterior too narrow" in no.stdout
    assert_calibrated(good)
    with pytest.raises(AssertionError, match="posterior too narrow"):
        assert_calibrated(bad)
    # a diagnostics limit fails a calibrated study: every exact fit "diverges" 0 times
    assert subprocess.run([*cli, "check", str(good), "--max-divergent-share", "0"]).returncode == 0


def test_compare_flags_the_worse_candidate_and_refuses_different_datasets(tmp_path):
    base = sbc.run(exact_study(tmp_path, "base", sims=200), progress=False)
    cand = sbc.run(exact_study(tmp_path, "cand", sims=200, backend={"sd_scale": 0.6}),
                   progress=False)  # fmt: skip
    result = sbc.checks.compare(base, cand)
    assert result.n_paired == 200
    assert set(result.worse) == {"mu[1]", "mu[2]"}
    row = result.table.set_index("quantity").loc["mu[1]"]
    assert row["sd_ratio"] == pytest.approx(0.6)  # paired: same datasets, sd scaled
    assert row["rank_dev_change"] > 0  # ranks move to the ends
    assert not sbc.checks.compare(base, base).worse
    proc = subprocess.run([sys.executable, "-m", "sbc.cli", "compare", str(base), str(cand)],
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 1 and "worse calibrated on: mu[1], mu[2]" in proc.stdout
    other = sbc.run(exact_study(tmp_path, "other", sims=20, seed=99), progress=False)
    with pytest.raises(SBCError, match="did not simulate the same datasets"):
        sbc.checks.compare(base, other)
