"""A study whose first simulations all fail the same way stops with that reason (exit 2);
`sbc run` exits 1 when every simulation failed, 0 when some did (sbc.execution.failfast)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, exact_study

import sbc
from sbc.errors import SBCError
from sbc.execution.failfast import FAIL_FAST, FailFast, most_common_reason, normalise
from sbc.store import SimulationResult

CORPUS = ROOT / "tests" / "bad_inputs"


def _failed(sim: int, error: str) -> SimulationResult:
    return SimulationResult(sim=sim, seed=0, status="failed", error=error)


def _sbc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "sbc.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=600)  # fmt: skip


def test_numbers_and_paths_do_not_make_reasons_differ():
    a = "fit: RuntimeError: y[3] is -1.5e+02 in /tmp/x/.tmp/sim3-ab12/data.json, line 7"
    b = "fit: RuntimeError: y[12] is 0.25 in /tmp/x/.tmp/sim12-zz9q/data.json, line 70"
    assert normalise(a) == normalise(b)
    assert normalise(a) != normalise("fit: RuntimeError: sigma[3] is -1.5e+02")


def test_stops_only_when_the_first_all_fail_alike():
    same = FailFast(todo=100, succeeded_before=False, where="s.toml")
    same.check([_failed(i, f"ranks: truth has shape ({i},)") for i in range(FAIL_FAST - 1)])
    with pytest.raises(SBCError, match=rf"^s\.toml: the first {FAIL_FAST} simulations all "
                       r"failed the same way, so the study stopped: ranks: truth has shape "
                       r"\(0,\) \(stored as failed: fix the cause, then run again with "
                       r"--retry-failed\)$"):  # fmt: skip
        same.check([_failed(99, "ranks: truth has shape (99,)")])

    mixed = FailFast(todo=100, succeeded_before=False, where="s.toml")
    mixed.check([_failed(i, "fit: A" if i % 2 else "fit: B") for i in range(3 * FAIL_FAST)])

    after_ok = FailFast(todo=100, succeeded_before=False, where="s.toml")
    after_ok.check([SimulationResult(sim=0, seed=0, status="ok")])
    after_ok.check([_failed(i, "fit: A") for i in range(3 * FAIL_FAST)])

    resumed = FailFast(todo=100, succeeded_before=True, where="s.toml")
    resumed.check([_failed(i, "fit: A") for i in range(3 * FAIL_FAST)])

    small = FailFast(todo=FAIL_FAST, succeeded_before=False, where="s.toml")  # nothing to save
    small.check([_failed(i, "fit: A") for i in range(FAIL_FAST)])


def test_the_most_common_reason():
    errors = ["fit: A 1", None, "fit: B 2", "fit: A 3", "fit: B 4", "fit: A 5"]
    assert most_common_reason(errors) == "fit: A 1"
    assert most_common_reason([None]) is None


SHORT_TRUTH = '''
from sbc.simulators.normal import simulate as base


def simulate(rng, **kw):
    """The truth has one mean fewer than the data, so the model's mu is longer: every fit's
    ranks fail, and only a fit can tell."""
    truth, data = base(rng, **kw)
    return {"mu": truth["mu"][:-1]}, data
'''

TWO_WAYS = '''
from sbc.simulators.normal import simulate as base


def simulate(rng, **kw):
    """Data every fit rejects, in one of two ways depending on the draw."""
    truth, data = base(rng, **kw)
    if truth["mu"][0] > 0:
        del data["sigma"]
    else:
        data["N"] = data["N"] + 1
    return truth, data
'''


def _study(tmp_path: Path, name: str, simulator: str, sims: int) -> Path:
    (tmp_path / f"{name}_sim.py").write_text(simulator)
    path = exact_study(tmp_path, name, sims=sims)
    path.write_text(path.read_text().replace("sbc.simulators.normal:simulate",
                                             f"{name}_sim.py:simulate"))  # fmt: skip
    return path


def test_a_study_failing_every_time_stops_early_in_one_line(tmp_path):
    sims = 200
    path = _study(tmp_path, "short", SHORT_TRUTH, sims)
    proc = _sbc("run", str(path), "--quiet", "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == "", proc
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0] == (
        f"sbc: error: {path}: the first {FAIL_FAST} simulations all failed the same way, so "
        "the study stopped: ranks: truth mu has shape (1,) but the model's mu is (2,) "
        "(stored as failed: fix the cause, then run again with --retry-failed)"
    )
    stored = sbc.load(tmp_path / "results" / "short").simulations
    assert FAIL_FAST <= len(stored) < sims  # kept, and the budget not spent
    assert (stored["status"] == "failed").all()


def test_every_simulation_failed_in_different_ways_exits_1(tmp_path):
    path = _study(tmp_path, "two_ways", TWO_WAYS, sims=2 * FAIL_FAST)
    # one worker: results arrive in simulation order, and simulations 0-8 fail one way, 9 the
    # other (the study's seed 11), so the first 10 are not all alike
    proc = _sbc("run", str(path), "--quiet", "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 1, proc
    folder = tmp_path / "results" / "two_ways"
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{2 * FAIL_FAST} simulations stored in {folder} ({2 * FAIL_FAST} failed)"
    assert re.fullmatch(r"every simulation failed \(most often: fit: (KeyError: 'sigma'|"
                        r"ValueError: cannot reshape .*)\)", lines[1]), lines  # fmt: skip
    assert len(lines) == 2
    errors = sbc.load(folder).simulations["error"]
    assert errors.str.contains("KeyError: 'sigma'").any()
    assert errors.str.contains("ValueError: cannot reshape").any()


@pytest.mark.stan
def test_a_truth_shape_the_model_disagrees_with_is_refused_before_the_study_runs(tmp_path, cmdstan):
    """The issue's case: a truth vector shorter than the model's `vector[K] beta`. The fit
    used to reveal it (and fail-fast stopped the study after 10); since issue 15 the backend
    checks a truth's sizes against the model before anything runs (`check_truth`)."""
    study = tmp_path / "beta_short.toml"
    study.write_text(
        f'name = "beta_short"\nstan = "{ROOT / "stan" / "linreg.stan"}"\nsims = 40\n'
        f'[simulator]\nfunction = "{CORPUS / "sim_linreg_broken.py"}:simulate"\n'
        'args = { variant = "beta_short" }\n'
        "[sampler]\nchains = 1\nwarmup = 50\ndraws = 50\nthin = 1\n"
    )
    proc = _sbc("run", str(study), "--quiet", "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert proc.returncode == 2, proc
    assert proc.stderr.strip() == (
        f"sbc: error: {study}: truth 'beta' has shape (2,) but the model's beta has shape (3,) "
        "(on the simulator's first dataset)"
    )
    assert not (tmp_path / "out" / "sbc.sqlite").exists()
