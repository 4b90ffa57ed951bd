"""End to end on a real CmdStan: recovery, SBC runs, check and compare of the mixed model."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, STUDIES

import sbc

pytestmark = pytest.mark.stan

SEED_PARAMS = ["beta[1]", "beta[2]", "sigma", "tau[1]", "tau[2]", "rho[1]"]


def sbc_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sbc.cli", *args], capture_output=True, text=True, cwd=ROOT
    )


def small_lmm_study(tmp_path: Path, name: str, stan: str = "lmm_centered.stan", sims=8) -> Path:
    """lmm_sbc.toml with fewer simulations and iterations, results in tmp_path."""
    text = (STUDIES / "lmm_sbc.toml").read_text()
    text = text.replace('name = "lmm_sbc"', f'name = "{name}"\nout = "{tmp_path / name}"')
    text = text.replace('stan = "../stan/lmm_centered.stan"', f'stan = "{ROOT / "stan" / stan}"')
    for key, value in (("sims", sims), ("iter_warmup", 200), ("iter_sampling", 200),
                       ("thin_ranks", 4)):  # fmt: skip
        text, n = re.subn(rf"^{key} = \d+", f"{key} = {value}", text, flags=re.M)
        assert n == 1, key  # lmm_sbc.toml changed: this helper must follow
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_recovery_at_the_seeds_truth(cmdstan, tmp_path, seed):
    """The seed's experiment: posterior means within 3 posterior sds of the truth.

    With a correct model each z = (mean - truth)/sd is roughly standard normal, so
    |z| > 3 has probability about 0.003 per parameter: about 1 in 11 runs of all 30
    checks would fail by chance, were the seeds not fixed. They are, and a gross error
    (a swapped intercept and slope: |z| ≈ 2/0.9 for beta, far more for tau) fails.
    """
    out = tmp_path / "rec"
    proc = sbc_cli("recover", str(STUDIES / "lmm_recovery.toml"), "--seed", str(seed),
                   "--out", str(out), "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "diagnostics: divergences=" in proc.stdout
    assert (out / "trace.png").stat().st_size > 10_000
    table = pd.read_csv(out / "recovery.csv").set_index("quantity")
    assert set(SEED_PARAMS) <= set(table.index)
    assert len([q for q in table.index if q.startswith("b[")]) == 20
    truth = {"beta[1]": 6, "beta[2]": 4, "sigma": 1, "tau[1]": 3, "tau[2]": 2, "rho[1]": 0.7}
    for q, t in truth.items():
        assert table.loc[q, "truth"] == pytest.approx(t)
        assert abs(table.loc[q, "z"]) < 3, (q, table.loc[q].to_dict())


def test_recovery_noncentered_reports_its_diagnostics(cmdstan, tmp_path):
    noncentered = str(ROOT / "stan" / "lmm_noncentered.stan")
    proc = sbc_cli("recover", str(STUDIES / "lmm_recovery.toml"), "--stan", noncentered,
                   "--out", str(tmp_path), "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("diagnostics:"))
    for key in ("divergences", "treedepth_hits", "ebfmi_min", "rhat_max", "ess_bulk_min"):
        assert f"{key}=" in line


def test_lmm_sbc_run_ranks_everything_and_is_worker_independent(cmdstan, tmp_path):
    one = sbc.run(small_lmm_study(tmp_path, "w1"), workers=1, progress=False)
    two = sbc.run(small_lmm_study(tmp_path, "w2"), workers=2, progress=False)
    r1, r2 = sbc.load(one), sbc.load(two)
    assert len(r1.simulations) == 8 and (r1.simulations["status"] == "ok").all()
    expected = {*SEED_PARAMS, "loglik"} | {f"b[{j},{q}]" for j in range(1, 11) for q in (1, 2)}
    assert set(r1.ranks["quantity"]) == expected
    assert (r1.ranks.groupby("sim").size() == len(expected)).all()
    cols = ["sim", "quantity", "truth", "rank", "mean"]
    key = ["sim", "quantity"]
    a = r1.ranks[cols].sort_values(key).reset_index(drop=True)
    b = r2.ranks[cols].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    sims = r1.simulations
    assert sims["rhat_max"].notna().all() and (sims["ess_bulk_min"] > 0).all()
    assert (sims["sampling_seconds"] > 0).all() and (sims["n_draws"] == 400).all()
    assert r1.manifest["backend"]["cmdstan_version"].startswith("2.")
    assert "multi_normal" in r1.manifest["stan_source"]


def test_generic_linear_regression_study_runs_through_the_cli(cmdstan, tmp_path):
    proc = sbc_cli("run", str(STUDIES / "linreg_sbc.toml"), "--sims", "6",
                   "--out", str(tmp_path / "lin"), "--quiet")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    res = sbc.load(tmp_path / "lin")
    assert set(res.ranks["quantity"]) == {"alpha", "beta[1]", "beta[2]", "beta[3]", "sigma"}
    assert len(res.simulations) == 6


def test_compare_centered_and_noncentered_on_the_same_datasets(cmdstan, tmp_path):
    a = small_lmm_study(tmp_path, "centred", sims=6)
    b = small_lmm_study(tmp_path, "noncentred", stan="lmm_noncentered.stan", sims=6)
    proc = sbc_cli("compare", str(a), str(b), "--quiet")
    assert proc.returncode in (0, 1), proc.stderr
    assert "paired on 6 simulated datasets" in proc.stdout
    for q in ("beta[1]", "tau[2]", "rho[1]", "loglik", "b[*,1]"):
        assert re.search(rf"^\s*{re.escape(q)}\s", proc.stdout, flags=re.M), q
    ta, tb = sbc.load(tmp_path / "centred").ranks, sbc.load(tmp_path / "noncentred").ranks
    truth_a = ta.set_index(["sim", "quantity"])["truth"].sort_index()
    truth_b = tb.set_index(["sim", "quantity"])["truth"].sort_index()
    assert np.allclose(truth_a, truth_b)  # the very same simulated datasets
