"""The pooled test of group effects (sbc.analysis.pooled): valid under any dependence within
a simulation, in the tail Holm uses, and still able to see a shared miscalibration."""

from __future__ import annotations

import numpy as np
import pytest
from rank_samples import L, copula_ranks
from scipy import stats

from sbc.analysis import pooled as pl
from sbc.analysis import uniformity as uni
from sbc.simulators.hierarchical import posterior_draws, simulate


def _test(R: np.ndarray) -> pl.PooledResult:
    S, J = R.shape
    return pl.pooled_test(R.ravel(), L, np.repeat(np.arange(S), J), np.tile(np.arange(J), S))


def test_every_bet_has_null_mean_zero_and_minimum_minus_one():
    # Deterministic: the e-process is a test martingale because each bet g has Σ_r g(r) = 0
    # over the L + 1 equally likely ranks and 1 + λ·mean_j g(r_j) ≥ 0 for λ ≤ 1 — whatever
    # the joint law of the members (linearity of expectation).
    for Lx in (1, 9, 100, 1000):
        G = pl.bet_table(Lx)
        assert np.allclose(G.mean(axis=1), 0.0, atol=1e-12)
        active = np.abs(G).max(axis=1) > 0  # at L = 1 only location can differ: the rest is off
        assert np.allclose(G[active].min(axis=1), -1.0)
        assert active.sum() == (6 if Lx == 1 else G.shape[0])


def test_expected_factor_is_one_under_dependent_null_ranks():
    # Deterministic: the exact expectation of the next factor when all J members have the
    # same uniform rank (total dependence) and when they are independent: 1 for every bet.
    G = pl.bet_table(20)
    same = G.mean(axis=1)  # E over r of g(r), members identical
    assert np.allclose(same, 0.0, atol=1e-12)


def test_size_under_strong_dependence_in_the_tail_holm_uses():
    # 2000 null studies, S = 100 simulations of J = 10 group effects with PIT correlation
    # 0.9 (the model: the cluster-robust test of sbc 0.1 rejected 8 % at 0.05 and
    # 0.5 % at 3.4e-4 here). Counts are compared with the 1e-4 upper quantile of
    # Binomial(2000, u): a valid test fails with probability ≤ 3e-4 over the three levels.
    rng = np.random.default_rng(21)
    R = copula_ranks(rng, 2000, 100, 10, 0.9)
    p = np.array([_test(r).p_value for r in R])
    for u in (0.05, 0.01, 3.4e-4):
        assert (p <= u).sum() <= stats.binom.isf(1e-4, p.size, u), u


def test_size_on_exact_hierarchical_posteriors():
    # 300 studies of the exact hierarchical model (tau = 0.05: posterior correlation 0.89
    # between groups), 60 simulations × 8 groups, L = 100 exact draws. Same bound as above
    # at 0.05 (false-failure ≤ 1e-4).
    rng = np.random.default_rng(22)
    p = []
    for _ in range(300):
        R = np.empty((60, 8), dtype=np.int64)
        for s in range(60):
            truth, data = simulate(rng, J=8, n=5, tau=0.05)
            draws = posterior_draws(data, rng, (L,))["theta"]
            R[s] = (draws < truth["theta"]).sum(axis=0)
        p.append(_test(R).p_value)
    assert (np.array(p) <= 0.05).sum() <= stats.binom.isf(1e-4, 300, 0.05)


def test_power_against_a_miscalibration_shared_by_all_groups():
    # sd × 0.8 on every group effect, S = 100, J = 10, PIT correlation 0.5. Measured: the
    # pooled test rejects at 0.01 in 99 % of studies (the γ test of any single group in
    # about 20 %). Requiring 18 of 20: false-failure P(Binomial(20, 0.01) ≥ 3) ≈ 1e-3.
    rng = np.random.default_rng(23)
    R = copula_ranks(rng, 20, 100, 10, 0.5, scale=0.8)
    assert sum(_test(r).p_value < 0.01 for r in R) >= 18


def test_p_value_combines_the_e_value_and_one_group_per_simulation():
    # Deterministic: p = min(1, 2·min(p_e, p_single)); the single-group ranks are group
    # (s mod J) of simulation s, tested by the exact γ test.
    rng = np.random.default_rng(24)
    R = copula_ranks(rng, 1, 80, 6, 0.3, scale=0.9)[0]
    res = _test(R)
    pick = R[np.arange(80), np.arange(80) % 6]
    assert res.p_single == uni.gamma_test(pick, L).p_value
    assert res.p_value == pytest.approx(min(1.0, 2 * min(res.p_e, res.p_single)))
    log_e = pl.pooled_log_e_process(R, L)
    assert res.p_e == pytest.approx(min(1.0, np.exp(-max(0.0, log_e.max()))))
    bets = pl.PooledBets()
    for s in range(80):
        bets.update(R[s], np.full(6, L))
    assert bets.log_e() == pytest.approx(log_e[-1])


def test_missing_members_and_shuffled_rows_give_the_same_answer():
    rng = np.random.default_rng(25)
    R = copula_ranks(rng, 1, 50, 4, 0.3)[0]
    sims, members = np.repeat(np.arange(50), 4), np.tile(np.arange(4), 50)
    order = rng.permutation(R.size)
    a = pl.pooled_test(R.ravel(), L, sims, members)
    b = pl.pooled_test(R.ravel()[order], L, sims[order], members[order])
    assert a == b
    keep = np.ones(R.size, bool)
    keep[[5, 17]] = False  # two group effects missing
    c = pl.pooled_test(R.ravel()[keep], L, sims[keep], members[keep])
    assert 0 < c.p_value <= 1


def test_pooled_band_holds_under_total_dependence():
    # Total dependence: every group repeats the simulation's rank, so the pooled ECDF is the
    # ECDF of S independent ranks. The band must cover it with probability ≥ 0.95:
    # 1000 studies, count inside ≥ Binomial(1000, 0.95) lower 1e-4 quantile (≈ 930).
    rng = np.random.default_rng(26)
    S = 100
    K = pl.pooled_n_eval(S, L)
    z, lo, hi = pl.pooled_band(S, L, K, 0.05)
    inside = 0
    for _ in range(1000):
        F = uni.ecdf_diff(rng.integers(0, L + 1, S), L, n_eval_points=K)[1] + z
        inside += bool(np.all((lo - 1e-12 <= F) & (hi + 1e-12 >= F)))
    assert inside >= stats.binom.ppf(1e-4, 1000, 0.95)
