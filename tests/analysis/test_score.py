"""The score identities of `sbc precheck` on models whose scores are known in closed form.

Seeds are fixed, so each test is deterministic; the comments give the rate at which a
test would fail for a random seed when the code is right.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sbc.analysis.score import (
    conditional_variance,
    identity_summands,
    identity_test,
    scale_features,
    score_check,
    standardised_ranks,
)
from sbc.simulators.hierarchical import unknown_scales_scores

HIER = ["mu", "log_tau", "log_sigma", *(f"theta[{j}]" for j in range(1, 9))]


def gaussian(rng, n=1000, d=3, scale=1.0, shift=0.0):
    """Draws u ~ N(0, I) and the score of a model N(shift, scale² I)."""
    u = rng.standard_normal((n, d))
    return u, -(u - shift) / scale**2


def test_a_correct_gaussian_model_is_consistent():
    # p_holm ≤ 0.01 for a random seed: at most 1 % (Holm controls the family-wise rate)
    u, g = gaussian(np.random.default_rng(1))
    check = score_check(u, g, ["a", "b", "c"])
    assert check.consistent
    assert list(check.table.columns[:7]) == ["coordinate", "score_est", "score_se", "score_z",
                                              "stein_est", "stein_se", "stein_z"]  # fmt: skip
    assert check.n == 1000


def test_a_wrong_scale_fails_the_stein_identity_and_not_the_score():
    # model sd 1.5 where the draws have sd 1: E[tanh(u) g + tanh'(u)] = 0.56 E[tanh'(u)],
    # z ≈ 20 at n = 1000; the score's mean stays 0 (|z| > 3.5 for 1 in 2000 seeds)
    u, g = gaussian(np.random.default_rng(2), scale=1.5)
    check = score_check(u, g, ["a", "b", "c"])
    assert check.failing() and set(check.failing()) == {"a", "b", "c"}
    assert (check.table["stein_z"] > 10).all()
    assert (check.table["score_z"].abs() < 3.5).all()


def test_a_wrong_location_fails_the_score_identity():
    u, g = gaussian(np.random.default_rng(3), shift=0.3)  # E[g] = 0.3: z ≈ 9.5
    check = score_check(u, g, ["a", "b", "c"])
    assert set(check.failing()) == {"a", "b", "c"}
    assert (check.table["score_z"] > 6).all()
    assert np.allclose(check.table["score_est"], 0.3, atol=0.1)


def test_heavy_tailed_scores_keep_the_size_of_each_test():
    """Small τ and σ give the hierarchical model's scores infinite variance; studentised by
    their conditional scale, each test's p-value stays uniform (benchmarks/precheck_size.py
    measures it down to 1e-4)."""
    rng = np.random.default_rng(4)
    p = []
    for _ in range(25):
        check = score_check(*unknown_scales_scores(rng, 500), HIER)
        z = check.table[["score_z", "stein_z"]].to_numpy().ravel()
        p.append(2 * stats.norm.sf(np.abs(z)))
    p = np.concatenate(p)  # 550 p-values
    # Binomial(550, 0.05): mean 27.5, sd 5.1; [12, 45] holds with probability 0.9995
    assert 12 <= np.sum(p < 0.05) <= 45
    # a KS test of uniformity at level 1e-3
    assert stats.kstest(p, "uniform").pvalue > 1e-3


def test_a_wrong_prior_scale_of_tau_is_caught():
    # τ's prior scale 1 in the model, 5 in the draws: E[∂ log p / ∂ log τ] = -0.96 E[τ²] = -24
    u, g = unknown_scales_scores(np.random.default_rng(5), 1000, model_tau_scale=1.0)
    assert score_check(u, g, HIER).failing() == ["log_tau"]


def test_studentising_gives_power_a_plain_mean_does_not_have():
    """A tilt of every θ_j (E[∂ log p / ∂θ_j] = 0.3): the plain t-test drowns in the heavy
    tails of the θ scores (z ≈ 0.5); studentised, each summand has unit variance (z > 5)."""
    u, g = unknown_scales_scores(np.random.default_rng(9), 1000)
    g[:, 3:] += 0.3
    check = score_check(u, g, HIER)
    assert set(check.failing()) == set(HIER[3:])
    plain = g[:, 3:].mean(axis=0) / (g[:, 3:].std(axis=0) / np.sqrt(len(g)))
    assert np.all(np.abs(plain) < 2.5)
    assert np.all(check.table["score_z"].to_numpy()[3:] > 5)


def test_a_missing_jacobian_is_caught_at_its_coordinate():
    # E[∂ log p / ∂ log σ] = -1 with sd ≈ sqrt(2 J n) ≈ 9: z ≈ -3.5 at n = 1000, and the
    # studentised mean is sharper (measured z ≈ -6)
    u, g = unknown_scales_scores(np.random.default_rng(6), 2000, jacobian=False)
    check = score_check(u, g, HIER)
    assert check.failing() == ["log_sigma"]
    assert check.table.set_index("coordinate").loc["log_sigma", "score_est"] < -0.5


def test_conditional_variance_recovers_a_sum_of_scale_terms():
    rng = np.random.default_rng(7)
    n = 4000
    others = rng.normal(0, 1, (n, 3))
    v = 3 * np.exp(-2 * others[:, 0]) + 0.5  # a scale term and a constant
    x = np.sqrt(v) * rng.standard_normal(n)
    fold = np.arange(n) % 5
    fitted = conditional_variance(x**2, standardised_ranks(others), scale_features(others), fold)
    assert np.median(np.abs(np.log(fitted / v))) < 0.15


def test_the_stein_summand_is_the_identity_for_tanh():
    u = np.linspace(-2, 2, 10)
    fold = np.arange(10) % 2
    score, stein = identity_summands(u, -u, fold)
    assert np.array_equal(score, -u)
    # with c, s of the other fold: tanh(t) g + (1 - tanh(t)²) / s
    c, s = (
        np.median(u[fold == 1]),
        1.4826 * np.median(np.abs(u[fold == 1] - np.median(u[fold == 1]))),
    )
    t = np.tanh((u[0] - c) / s)
    assert stein[0] == pytest.approx(t * -u[0] + (1 - t**2) / s)


def test_nothing_to_test_is_not_a_failure():
    rng = np.random.default_rng(8)
    others = rng.standard_normal((50, 2))
    result = identity_test(np.zeros(50), others, np.arange(50) % 5)
    assert np.isnan(result.p)
    u = rng.standard_normal((50, 2))
    g = np.column_stack([-u[:, 0], np.zeros(50)])  # a coordinate without density (flat)
    check = score_check(u, g, ["a", "flat"])
    # the flat one: score 0 everywhere, but E[tanh'] > 0: an improper prior is caught
    assert check.failing() == ["flat"]


def test_inputs_must_agree():
    with pytest.raises(ValueError, match="disagree"):
        score_check(np.zeros((20, 2)), np.zeros((20, 3)), ["a", "b"])
    with pytest.raises(ValueError, match="too few"):
        score_check(np.zeros((6, 1)), np.zeros((6, 1)), ["a"])
