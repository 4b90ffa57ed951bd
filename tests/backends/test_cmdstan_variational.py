"""The ADVI backend: its draws are the approximation's and ranked as one chain, its
diagnostics are what CmdStan says (ELBO table and notes) and what its log densities allow
(Pareto k̂), failures are recorded with CmdStan's reason, and on a model whose posterior the
normal family contains exactly, SBC finds it calibrated."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT

import sbc
from sbc.backends import BackendSpec
from sbc.backends.cmdstan.variational import (
    AdviSettings,
    CmdStanVariationalBackend,
    advi_failure,
    elbo_trace,
    pareto_k,
)
from sbc.reports import write_report
from sbc.seeds import simulation_seeds
from sbc.simulators.normal import simulate as simulate_normal

NORMAL_STAN = ROOT / "stan" / "normal_known_sigma.stan"

# -- Pareto k̂ and the console, without CmdStan ---------------------------------------------------


def _normal_ratios(scale: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """log p/q for q = N(0, 1) draws and p = N(0, scale): the weights' tail has k = 1 - 1/s²."""
    x = rng.standard_normal(n)
    return -0.5 * (x / scale) ** 2 + 0.5 * x**2


def test_pareto_k_recovers_the_tail_of_known_importance_ratios():
    rng = np.random.default_rng(1)
    for scale, k in ((1.2, 0.31), (2.0, 0.75), (3.0, 0.89)):
        estimates = [pareto_k(_normal_ratios(scale, 1000, rng)) for _ in range(40)]
        # PSIS's estimator is shrunk towards 0.5 and noisy (sd ~0.14 at S = 1000): the mean of
        # 40 is within 0.15 of the truth (measured: 0.31, 0.69, 0.77)
        assert abs(np.mean(estimates) - k) < 0.15, (scale, np.mean(estimates))
    light = [pareto_k(_normal_ratios(0.8, 1000, rng)) for _ in range(20)]
    assert max(light) < 0.5  # bounded weights: no tail at all
    flagged = np.mean([pareto_k(_normal_ratios(2.0, 1000, rng)) > 0.7 for _ in range(100)])
    assert 0.2 < flagged < 0.8  # k = 0.75 sits at the limit: flagged about half the time


def test_pareto_k_ignores_a_constant_and_says_when_it_cannot_be_estimated():
    lr = _normal_ratios(2.0, 1000, np.random.default_rng(2))
    assert pareto_k(lr) == pytest.approx(pareto_k(lr - 1234.5), abs=1e-9)
    assert pareto_k(np.zeros(1000)) == -np.inf  # q = p: all ratios equal
    assert np.isnan(pareto_k(np.r_[lr[:-1], np.nan]))
    assert np.isnan(pareto_k(lr[:10]))  # too few draws for a tail
    assert pareto_k(np.r_[lr, 5000.0, 4000.0]) == np.inf  # one draw has all the weight
    assert np.isfinite(pareto_k(np.r_[lr[:-1], -np.inf]))  # a zero weight is a weight


CONVERGED = """Begin eta adaptation.
Success! Found best value [eta = 1] earlier than expected.

Begin stochastic gradient ascent.
  iter             ELBO   delta_ELBO_mean   delta_ELBO_med   notes 
   100          -43.957             1.000            1.000
   200          -44.070             0.501            1.000
   300          -43.764             0.337            0.007   MEDIAN ELBO CONVERGED

Drawing a sample of size 500 from the approximate posterior... 
COMPLETED.
"""  # noqa: W291 (CmdStan's own trailing blanks)


def test_the_elbo_table_and_notes_are_read_from_the_console():
    assert elbo_trace(CONVERGED) == {
        "iterations": 300, "elbo": -43.764, "elbo_change_mean": 0.337,
        "elbo_change_median": 0.007, "not_converged": 0, "elbo_below_best": 0,
    }  # fmt: skip
    stopped = CONVERGED.replace("   MEDIAN ELBO CONVERGED", "").replace(
        "Drawing", "Informational Message: The maximum number of iterations is reached! The "
        "algorithm may not have converged.\nDrawing")  # fmt: skip
    assert elbo_trace(stopped)["not_converged"] == 1
    worse = CONVERGED.replace(
        "Drawing", "Informational Message: The ELBO at a previous iteration is larger than the "
        "ELBO upon convergence!\nDrawing")  # fmt: skip
    assert elbo_trace(worse)["elbo_below_best"] == 1
    assert elbo_trace("Rejecting initial value:") == {}  # never began: nothing to report


def test_a_failure_is_one_line_with_cmdstans_reason():
    console = (
        "Rejecting initial value:\n  Error evaluating the log probability at the initial value.\n"
        "Exception: bad mu (in 'x.stan', line 3)\n\nInitialization between (-2, 2) failed "
        "after 100 attempts. \n Try specifying initial values.\nInitialization failed.\n"
    )
    assert advi_failure(console, "Error during variational inference: ...") == (
        "CmdStan: Initialization between (-2, 2) failed after 100 attempts. "
        "(last: Exception: bad mu (in 'x.stan', line 3))"
    )
    eta = "stan::variational::advi::adapt_eta: All proposed step-sizes failed. Your model ..."
    assert advi_failure("Begin eta adaptation.\n" + eta, "") == "CmdStan: " + eta
    assert advi_failure("", "boom\nmore") == "CmdStan variational failed: boom more"


# -- real fits ---------------------------------------------------------------------------------


def _backend(**settings) -> CmdStanVariationalBackend:
    spec = BackendSpec("cmdstan-variational", AdviSettings(**settings))
    backend = CmdStanVariationalBackend.create(spec, NORMAL_STAN, cores=1)
    backend.prepare(progress=False)
    return backend


def _data(seed: int = 0, K: int = 3, N: int = 10):
    return simulate_normal(np.random.default_rng(seed), K=K, N=N, prior_sd=2.0)


@pytest.mark.stan
def test_draws_are_the_approximations_and_its_log_densities_are_what_k_hat_needs(cmdstan, tmp_path):
    _, data = _data()
    backend = _backend(algorithm="meanfield", tol_rel_obj=0.001, grad_samples=10,
                       elbo_samples=1000, output_samples=2000)  # fmt: skip
    fit = backend.fit(data, 7, tmp_path)
    draws = backend.draws(fit)
    assert set(draws) == {"mu"} and draws["mu"].shape == (1, 2000, 3)
    # the exact posterior: normal, independent over k; the family contains it
    y = np.asarray(data["y"])
    precision = 1 / 2.0**2 + y.shape[0] / 1.0
    mean, sd = y.sum(axis=0) / precision, np.sqrt(1 / precision)
    mu = draws["mu"][0]
    # each component in its place (they are 1 to 4 sds apart); ADVI's optimisation error
    # was 0.12 sd here, the draws' Monte Carlo error 0.02 sd
    assert np.abs(mu.mean(axis=0) - mean).max() < 0.3 * sd
    assert np.abs(mu.std(axis=0) / sd - 1).max() < 0.15
    # log_p__ is the model's log density with every constant (no Jacobian: mu is unbounded)
    columns = list(fit.vb.column_names)
    sample = fit.vb.variational_sample
    log_p = sample[:, columns.index("log_p__")]
    exact = (-0.5 * (mu / 2.0) ** 2 - np.log(2.0 * np.sqrt(2 * np.pi))).sum(axis=1) + (
        -0.5 * (y[None] - mu[:, None, :]) ** 2 - 0.5 * np.log(2 * np.pi)
    ).sum(axis=(1, 2))
    assert np.allclose(log_p, exact, rtol=1e-4)  # CmdStan writes 6 significant digits
    # log_g__ = -|zeta|^2 / 2 for standard normal zeta: -2 log_g ~ chi-squared with 3 df
    log_g = sample[:, columns.index("log_g__")]
    assert (log_g <= 0).all() and abs(np.mean(-2 * log_g) - 3) < 0.25  # sd of the mean 0.055
    d = backend.diagnose(fit)
    assert set(d) <= {rule.name for rule in backend.diagnostics}
    assert d["n_draws"] == 2000 and d["not_converged"] == 0 and d["eta"] > 0
    assert d["pareto_k"] == pytest.approx(pareto_k(log_p - log_g))
    assert d["pareto_k"] < 0.5  # a good approximation of a normal posterior
    assert 0 < d["iterations"] < 10_000 and np.isfinite(d["elbo"])


@pytest.mark.stan
def test_unconverged_fits_are_kept_flagged_and_adapt_engaged_false_is_read(cmdstan, tmp_path):
    _, data = _data()
    backend = _backend(iter=30, eval_elbo=10, tol_rel_obj=1e-9, adapt_engaged=False, eta=0.2)
    fit = backend.fit(data, 3, tmp_path)
    d = backend.diagnose(fit)
    assert d["not_converged"] == 1 and d["iterations"] == 30 and d["eta"] == 0.2
    assert backend.draws(fit)["mu"].shape == (1, 1000, 3)


@pytest.mark.stan
def test_inits_function_is_called_with_the_fits_rng(cmdstan, tmp_path):
    calls = tmp_path / "calls.txt"
    (tmp_path / "inits.py").write_text(
        "def inits(rng, data):\n"
        f"    open({str(calls)!r}, 'a').write(repr(float(rng.random())) + '\\n')\n"
        "    return {'mu': [0.1] * data['K']}\n"
    )
    _, data = _data()
    backend = _backend(inits=f"{tmp_path / 'inits.py'}:inits", iter=200)
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        backend.fit(data, 11, tmp_path / run)
    first, second = calls.read_text().split()
    assert first == second  # inits_rng(seed): the same draw for the same fit seed


@pytest.mark.stan
def test_a_failed_fit_is_recorded_with_cmdstans_reason(cmdstan, tmp_path):
    stan = tmp_path / "rejects.stan"
    stan.write_text(NORMAL_STAN.read_text().replace(
        "model {", 'model {\n  reject("never a valid mu: ", mu);'))  # fmt: skip
    study = tmp_path / "s.toml"
    study.write_text(
        f'name = "s"\nstan = "{stan}"\nsims = 2\nseed = 1\nout = "{tmp_path / "out"}"\n'
        '[backend]\ntype = "cmdstan-variational"\n'
        '[simulator]\nfunction = "sbc.simulators.normal:simulate"\n'
    )
    sims = sbc.load(sbc.run(study, workers=1, progress=False)).simulations
    assert (sims["status"] == "failed").all()
    assert (
        sims["error"]
        .str.match(
            r"fit: RuntimeError: CmdStan: Initialization between \(-2, 2\) failed after 100 "
            r"attempts\. \(last: Exception: never a valid mu: "
        )
        .all()
    )


@pytest.mark.stan
def test_advi_on_a_posterior_its_family_contains_is_calibrated(cmdstan, tmp_path):
    """The conjugate normal model: meanfield's family holds the exact posterior, so the ranks
    of its draws are uniform up to ADVI's optimisation error (at CmdStan's defaults, means
    off by 0.28 posterior sds RMS, sds by a median factor 1.02). The shipped study at 1000
    simulations: Holm-adjusted p = 1 for mu[1..3] (docs/backends.md). A correct ranking
    fails this check with probability at most ~1 % (the test's level); the study is fixed
    by its seed, so the outcome here is deterministic."""
    folder = sbc.run(ROOT / "studies" / "normal_advi.toml", sims=200, workers=2,
                     out=tmp_path / "advi", progress=False)  # fmt: skip
    outcome = sbc.check(folder)
    assert outcome.passed, outcome.verdicts
    page = write_report(folder).read_text()
    assert "ADVI meanfield (CmdStan&#x27;s variational)" in page
    assert "pareto_k &gt; 0.7" in page and "not_converged &gt; 0" in page
    assert outcome.method == "cmdstan-variational: ADVI meanfield (CmdStan's variational), " \
        "CmdStan 2.27.0"  # fmt: skip
    cli = subprocess.run([sys.executable, "-m", "sbc.cli", "check", str(folder)],
                         capture_output=True, text=True)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith("draws from cmdstan-variational: ADVI meanfield")
    assert "pareto_k > 0.7" in cli.stdout and "not_converged > 0" in cli.stdout


@pytest.mark.stan
def test_backend_flag_runs_the_other_method_of_a_study_file(cmdstan, tmp_path):
    out = tmp_path / "nuts"
    cli = subprocess.run(
        [sys.executable, "-m", "sbc.cli", "run", str(ROOT / "studies" / "normal_advi.toml"),
         "--sims", "4", "--workers", "1", "--backend", "cmdstan", "--out", str(out), "--quiet"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    results = sbc.load(out)
    assert results.method.startswith("cmdstan: NUTS")
    assert results.manifest["backend"]["settings"]["iter_sampling"] == 500
    assert "divergences" in results.simulations and len(results.simulations) == 4
    seeds = results.simulations.set_index("sim")["seed"]
    assert seeds[2] == simulation_seeds(1, 2)[1]  # the same datasets and fit seeds


def test_the_backend_is_registered_and_declares_its_rules():
    from sbc.backends import backend_class

    cls = backend_class("cmdstan-variational")
    assert cls is CmdStanVariationalBackend and cls.needs_stan
    rules = {d.name: (d.flag_when, d.threshold) for d in cls.diagnostics}
    assert rules["pareto_k"] == (">", 0.7) and rules["not_converged"] == (">", 0)
    assert Path(NORMAL_STAN).is_file()
