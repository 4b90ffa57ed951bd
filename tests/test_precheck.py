"""`sbc precheck`: MCMC-free agreement of simulator and program, on the shipped studies.

Each run draws the study's own simulations and takes CmdStan's gradients there (a few ms
each). Seeds are the studies' own, so each outcome is deterministic; the comments give how
often it would differ for another seed (benchmarks/precheck_size.py measures the rates).
"""

from __future__ import annotations

import pytest
from conftest import STUDIES

from sbc.cli import main
from sbc.precheck import precheck

pytestmark = pytest.mark.stan


@pytest.mark.parametrize(
    "study", ["lmm_sbc.toml", "lmm_sbc_noncentered.toml", "lmm_sbc_stan_simulator.toml"]
)
def test_correct_studies_are_consistent(study, cmdstan):
    # a false alarm for at most 1 seed in 100 (Holm at alpha = 0.01)
    result = precheck(STUDIES / study, sims=300, progress=False)
    assert result.consistent, result.table
    assert not result.rejected
    assert result.check.n == 300


def test_the_broken_prior_on_tau_is_named(cmdstan, capsys):
    # E[d log p / d log tau] = -24 per draw: z of about -12 at 300 draws, every seed
    code = main(["precheck", str(STUDIES / "lmm_sbc_broken_tau.toml"), "--sims", "300",
                 "--quiet"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    headline = out.splitlines()[-1]
    assert headline.startswith("NOT consistent: 2 coordinate(s) fail: tau[")
    assert "tau[1]" in headline and "tau[2]" in headline
    assert out.count("FAILS") == 2


def test_a_missing_jacobian_is_caught(cmdstan, capsys):
    # E[d log p / d log_sigma] = -1 per draw: z of about -6 at 1000 draws (1 - 4e-4 power)
    code = main(["precheck", str(STUDIES / "linreg_missing_jacobian.toml"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 1
    assert "NOT consistent: 1 coordinate(s) fail: log_sigma" in out


def test_the_cli_prints_one_line_per_coordinate_and_exits_0(cmdstan, capsys):
    code = main(["precheck", str(STUDIES / "lmm_sbc.toml"), "--sims", "100", "--quiet"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0].split() == ["coordinate", "score_est", "score_se", "score_z", "stein_est",
                                "stein_se", "stein_z", "p_holm"]  # fmt: skip
    assert [line.split()[0] for line in lines[1:7]] == ["beta[1]", "beta[2]", "sigma",
                                                        "tau[1]", "tau[2]", "R[1]"]  # fmt: skip
    assert len(lines) == 1 + 26 + 2 and lines[-1].startswith("consistent:")
