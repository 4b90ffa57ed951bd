"""A Stan program evaluated at given values: generated quantities and lp__ at the truth.

What `[quantities] stan` and `sbc precheck` rely on, on real CmdStan runs: the value at the
truth is the same function as the draws' values (so ranking it among them is SBC).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ROOT

from sbc.backends.cmdstan.at_truth import write_json
from sbc.backends.cmdstan.sample import CmdStanBackend, NutsSettings
from sbc.errors import SBCError
from sbc.simulate import load_callable
from sbc.simulators import lmm

pytestmark = pytest.mark.stan


def _prepared(program: str, draws: int) -> CmdStanBackend:
    settings = NutsSettings(chains=1, iter_warmup=150, iter_sampling=draws)
    backend = CmdStanBackend(stan_file=ROOT / "stan" / program, settings=settings)
    backend.prepare(progress=False)
    return backend


@pytest.fixture(scope="module")
def centred(cmdstan) -> CmdStanBackend:
    return _prepared("lmm_centered.stan", draws=20)


@pytest.fixture(scope="module")
def linreg(cmdstan) -> CmdStanBackend:
    return _prepared("linreg.stan", draws=10)


def linreg_kernel(alpha, beta, sigma, X, y):
    """log p of stan/linreg.stan on the unconstrained scale with every constant dropped:
    what `~` statements leave (Stan drops the terms that depend on no parameter), plus the
    Jacobian log σ of sigma's lower bound."""
    mu = alpha + X @ beta
    return (-(alpha**2) / 8 - np.sum(beta**2) / 2 - sigma + np.log(sigma)
            - np.sum((y - mu) ** 2) / (2 * sigma**2) - len(y) * np.log(sigma))  # fmt: skip


def test_lp_is_the_log_density_without_its_constants_at_draws_and_at_the_truth(linreg, tmp_path):
    """lp__ (NUTS) and diagnose's log density are one function: the kernel, Jacobian in,
    every constant out (so the truth's value ranks among the draws')."""
    simulate = load_callable(f"{ROOT / 'studies' / 'linreg_simulator.py'}:simulate")
    truth, data = simulate(np.random.default_rng(3), N=30, K=3)
    fit = linreg.fit(data, 11, tmp_path)
    draws = linreg.draws(fit)
    X, y = data["X"], data["y"]
    for i in range(5):
        a, b, s = (draws[k][0, i] for k in ("alpha", "beta", "sigma"))
        assert draws["lp__"][0, i] == pytest.approx(linreg_kernel(a, b, s, X, y), abs=2e-3)
        # diagnose at that draw (its values as CmdStan wrote them, 6 digits) gives the same
        point = {"alpha": a, "beta": b, "sigma": s}
        lp = linreg.evaluate("density_at", point, write_json(tmp_path / "d.json", data),
                             tmp_path).lp  # fmt: skip
        assert lp == pytest.approx(draws["lp__"][0, i], abs=2e-3)
    at_truth = linreg.quantities_at_truth(truth, data, ["lp__"], tmp_path)["lp__"]
    kernel = linreg_kernel(truth["alpha"], truth["beta"], truth["sigma"], X, y)
    assert at_truth == pytest.approx(kernel, rel=1e-5)  # diagnose prints 6 digits


def test_log_lik_sum_agrees_with_the_python_loglik_to_1e_8(centred, tmp_path):
    """On the same draws (CmdStan's standalone generate_quantities over a fit, 18 digits),
    and at the truth (a fixed_param draw started there)."""
    truth, data = lmm.simulate(np.random.default_rng(5), groups=6)
    fit = centred.fit(data, 7, tmp_path)
    gq = centred.model().generate_quantities(
        data=str(tmp_path / "data.json"), previous_fit=fit, sig_figs=18,
        gq_output_dir=str(tmp_path),
    )  # fmt: skip
    stan_values = gq.stan_variable("log_lik_sum")
    draws = {k: fit.stan_variable(k) for k in ("beta", "sigma", "b")}
    assert np.max(np.abs(stan_values - lmm.loglik(draws, data))) < 1e-8
    at_truth = centred.quantities_at_truth(truth, data, ["log_lik_sum"], tmp_path)
    assert abs(float(at_truth["log_lik_sum"]) - float(lmm.loglik(truth, data))) < 1e-8


def test_only_generated_quantities_and_lp_are_evaluated(centred, tmp_path):
    truth, data = lmm.simulate(np.random.default_rng(6), groups=4)
    with pytest.raises(SBCError, match=r"'sigma' is not a generated quantity of lmm_cent"):
        centred.quantities_at_truth(truth, data, ["sigma"], tmp_path)
    partial = {k: v for k, v in truth.items() if k != "R"}
    with pytest.raises(SBCError, match=r"needs the truth of every parameter.*lacks R$"):
        centred.quantities_at_truth(partial, data, ["log_lik_sum"], tmp_path)


def test_check_truth_compares_sizes_with_the_model(centred):
    truth, data = lmm.simulate(np.random.default_rng(7), groups=4)
    centred.check_truth(truth, data, "here")  # the simulator's own: fine
    wrong = {**truth, "beta": np.zeros(3)}
    with pytest.raises(SBCError, match=r"here: truth 'beta' has shape \(3,\) but the model's "
                                       r"beta has shape \(2,\)"):  # fmt: skip
        centred.check_truth(wrong, data, "here")
    outside = {**truth, "sigma": -1.0}  # outside the model's support
    with pytest.raises(SBCError, match=r"here: lmm_centered\.stan rejects the simulator"):
        centred.check_truth(outside, data, "here")


def test_unconstrained_names_follow_cmdstan(centred, tmp_path):
    truth, data = lmm.simulate(np.random.default_rng(8), groups=3)
    point = centred.point(truth, "test")
    data_file = write_json(tmp_path / "data.json", data)
    names = centred.evaluate("unconstrained_names", point, data_file, tmp_path)
    # R (2 x 2 correlation) has one free coordinate; b is J x Q, column-major
    assert names == ["beta[1]", "beta[2]", "sigma", "tau[1]", "tau[2]", "R[1]", "b[1,1]",
                     "b[2,1]", "b[3,1]", "b[1,2]", "b[2,2]", "b[3,2]"]  # fmt: skip
    density = centred.evaluate("density_at", point, data_file, tmp_path)
    assert density.gradient.shape == density.unconstrained.shape == (12,)
    assert density.unconstrained[2] == pytest.approx(np.log(truth["sigma"]), rel=1e-5)


def test_a_failed_diagnose_is_one_line(centred, tmp_path):
    truth, data = lmm.simulate(np.random.default_rng(9), groups=3)
    point = {**centred.point(truth, "test"), "sigma": 0.0}  # log density -inf
    with pytest.raises(SBCError) as err:
        centred.evaluate("density_at", point, write_json(tmp_path / "d.json", data), tmp_path)
    assert "\n" not in str(err.value) and str(err.value).startswith("CmdStan")
