"""The formula models' simulator: the seed's truths and datasets bit for bit, its
distributions against theory, the truth of a misspecified fit, and loglik.

False-failure budget (fixed seeds: each check always passes or always fails; this is the
chance that a correct simulator fails for an arbitrary seed). Moment checks reject beyond
4.5 standard errors (theoretical variance): 6.8e-6 each under the normal approximation,
over >= 2000 draws of light-tailed quantities. Twelve such assertions: < 1e-4 for the file.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import STUDIES

from sbc.models.design import Design, generate
from sbc.models.formula import build_model
from sbc.models.priors import parse_priors
from sbc.models.simulate import draw, loglik, project
from sbc.seeds import simulation_seeds
from sbc.simulate import call_simulator
from sbc.simulators import lmm
from sbc.study import load_study

Z45 = 4.5


def model_and_priors(formula: str, d: Design, priors: dict | None = None):
    m = build_model(formula, d, "[model] formula", "t")
    return m, parse_priors(priors or {}, m, "[model] priors", "t")


def crossed(subjects: int = 4, items: int = 6) -> Design:
    spec = {
        "groups": {"subject": subjects, "item": items},
        "predictors": {"cond": {"values": ["a", "b"], "by": ["subject", "item"]}},
    }
    return generate(spec, "design", "t")


@pytest.mark.parametrize(
    ("hand", "formula", "names"),
    [
        ("lmm_sbc", "lmm_formula_seed", {"tau": "tau_group", "rho": "rho_group", "b": "b_group"}),
        ("lmm_recovery", "lmm_formula_recovery", {"tau": "tau_group", "rho": "rho_group",
                                                  "b": "b_group"}),
    ],
)  # fmt: skip
def test_the_seeds_formula_gives_lmms_truths_and_data_bit_for_bit(hand, formula, names):
    """Same seed, same simulation index: every truth and every data array identical (20
    simulations), because the formula simulator draws in lmm's order with lmm's code."""
    a, b = load_study(STUDIES / f"{hand}.toml"), load_study(STUDIES / f"{formula}.toml")
    for sim in range(20):
        ta, da = call_simulator(a.simulator, simulation_seeds(a.seed, sim)[0])
        tb, db = call_simulator(b.simulator, simulation_seeds(b.seed, sim)[0])
        for k in ("beta", "sigma", "tau", "rho", "b"):
            np.testing.assert_array_equal(np.ravel(ta[k]), np.ravel(tb[names.get(k, k)]))
        for k, v in (("y", "y"), ("X", "X"), ("Z", "Z_group"), ("g", "g_group")):
            np.testing.assert_array_equal(da[k], db[v])


def test_group_effects_have_the_covariance_the_model_states():
    """b_f rows ~ MVN(0, diag(tau) R diag(tau)) at fixed tau and rho (10 levels x 400 draws)."""
    d = generate({"groups": {"g": 10}, "rows": 2, "predictors": {"x": {"values": [0.0, 1.0]}}},
                 "design", "t")  # fmt: skip
    m, priors = model_and_priors("y ~ x + (1 + x | g)", d)
    fixed = {"tau_g": np.array([2.0, 0.5]), "rho_g": np.array(-0.6)}
    rng = np.random.default_rng(7)
    rows = np.concatenate([draw(m, priors, rng, fixed)[0]["b_g"] for _ in range(400)])
    n = len(rows)
    cov = np.cov(rows.T, bias=True)
    want = np.array([[4.0, -0.6], [-0.6, 0.25]])
    # Var of a sample (co)variance of normals: (s_ii s_jj + s_ij^2) / n
    se = np.sqrt((np.outer(np.diag(want), np.diag(want)) + want**2) / n)
    assert np.all(np.abs(cov - want) < Z45 * se), (cov, want)


def test_priors_of_sigma_and_tau_are_half_normal_and_beta_normal():
    d = crossed(3, 2)
    priors = {"beta": {"cond[b]": "normal(1, 2)"}, "tau_item": "normal(0, 3)"}
    m, priors = model_and_priors("y ~ cond + (1 + cond | subject) + (1 | item)", d, priors)
    rng = np.random.default_rng(11)
    truths = [draw(m, priors, rng)[0] for _ in range(3000)]
    n = len(truths)

    def check(values, mean, var):
        assert abs(np.mean(values) - mean) < Z45 * math.sqrt(var / n)

    half = math.sqrt(2 / math.pi)
    check([t["sigma"] for t in truths], 5 * half, 25 * (1 - 2 / math.pi))
    check([t["tau_subject"][1] for t in truths], 5 * half, 25 * (1 - 2 / math.pi))
    check([t["tau_item"][0] for t in truths], 3 * half, 9 * (1 - 2 / math.pi))
    check([t["beta"][0] for t in truths], 0.0, 100.0)
    check([t["beta"][1] for t in truths], 1.0, 4.0)
    # LKJ(2) in two dimensions: rho ~ 2 Beta(2, 2) - 1, mean 0, variance 1/5
    check([t["rho_subject"] for t in truths], 0.0, 0.2)


def test_y_is_the_matrix_form_plus_noise():
    """y - X beta - sum_f Z_f b_f[g_f] is sigma times standard normal noise."""
    d = crossed(5, 8)
    m, priors = model_and_priors("y ~ cond + (1 + cond | subject) + (1 | item)", d)
    rng = np.random.default_rng(3)
    z = []
    for _ in range(100):
        truth, y, _ = draw(m, priors, rng)
        mu = m.X @ truth["beta"]
        for f in m.factors:
            mu = mu + np.sum(f.Z * truth[f"b_{f.name}"][f.index], axis=1)
        z.append((y - mu) / truth["sigma"])
    z = np.concatenate(z)
    assert abs(z.mean()) < Z45 / math.sqrt(z.size)
    assert abs(z.var() - 1) < Z45 * math.sqrt(2 / z.size)


def test_uncorrelated_terms_are_independent_and_have_no_rho():
    d = generate({"groups": {"g": 8}, "rows": 2, "predictors": {"x": {"values": [0.0, 1.0]}}},
                 "design", "t")  # fmt: skip
    m, priors = model_and_priors("y ~ x + (1 | g) + (0 + x | g)", d)
    rng = np.random.default_rng(5)
    truths = [draw(m, priors, rng, {"tau_g": np.array([1.0, 1.0])})[0] for _ in range(300)]
    assert "rho_g" not in truths[0]
    rows = np.concatenate([t["b_g"] for t in truths])
    r = np.corrcoef(rows.T)[0, 1]
    assert abs(r) < Z45 / math.sqrt(len(rows))


def test_a_misspecified_fit_is_ranked_on_what_both_models_share():
    """Data with by-item slopes, a fit without: the fit's tau_item and b_item are the
    simulated intercept columns, its rho_subject the simulated one; nothing else."""
    d = crossed()
    sim, priors = model_and_priors("y ~ cond + (1 + cond | subject) + (1 + cond | item)", d)
    fit, _ = model_and_priors("y ~ cond + (1 + cond | subject) + (1 | item)", d)
    truth, _, corr = draw(sim, priors, np.random.default_rng(1))
    out = project(truth, corr, sim, fit)
    assert set(out) == set(fit.variables())
    np.testing.assert_array_equal(out["b_item"], truth["b_item"][:, [0]])
    np.testing.assert_array_equal(out["tau_item"], truth["tau_item"][[0]])
    assert out["rho_subject"] == truth["rho_subject"]
    # a fit of a factor the data lack, or of terms it lacks, gets no truth for them
    other, _ = model_and_priors("y ~ 0 + cond + (1 | subject)", d)
    out = project(truth, corr, sim, other)
    assert set(out) == {"sigma", "tau_subject", "b_subject"}  # cond[a] is no column of sim


def test_loglik_is_the_normal_log_density_and_lmms():
    from scipy import stats

    study = load_study(STUDIES / "lmm_formula_seed.toml")
    truth, data = call_simulator(study.simulator, np.random.default_rng(2))
    mu = data["X"] @ truth["beta"] + np.sum(
        data["Z_group"] * truth["b_group"][data["g_group"] - 1], 1
    )
    want = stats.norm.logpdf(data["y"], mu, truth["sigma"]).sum()
    assert loglik(truth, data) == pytest.approx(want, rel=1e-12)
    lmm_data = {"N": data["N"], "K": 2, "Q": 2, "J": 10, "X": data["X"], "Z": data["Z_group"],
                "g": data["g_group"], "y": data["y"]}  # fmt: skip
    lmm_params = {"beta": truth["beta"], "sigma": truth["sigma"], "b": truth["b_group"]}
    assert loglik(truth, data) == pytest.approx(lmm.loglik(lmm_params, lmm_data), rel=1e-12)
    # many draws at once: shape (chains, draws)
    draws = {k: np.broadcast_to(np.asarray(v), (2, 3, *np.shape(v))) for k, v in truth.items()}
    np.testing.assert_allclose(loglik(draws, data), np.full((2, 3), want), rtol=1e-12)


def test_a_design_table_file(tmp_path: Path):
    from sbc.models.design import read_table

    table = pd.DataFrame({"subject": ["s1", "s1", "s2", "s2"], "cond": ["a", "b", "a", "b"]})
    table.to_csv(tmp_path / "d.csv", index=False)
    d = read_table(tmp_path / "d.csv", "[model] design", "t")
    m = build_model("y ~ cond + (1 | subject)", d, "k", "t")
    assert m.factors[0].levels == ("s1", "s2") and d.source["file"] == "d.csv"
    (tmp_path / "ragged.csv").write_text("subject,cond\ns1,a\ns1,b,c,d\n")
    with pytest.raises(Exception, match=r"ragged\.csv is not a table: Error tokenizing"):
        read_table(tmp_path / "ragged.csv", "[model] design", "t")
