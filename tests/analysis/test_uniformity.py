"""The γ test with exact p-values, its band, chi-square and Holm (sbc.analysis.uniformity).

Every random check states its false-failure rate: the probability, over the choice of seed,
that the check fails although the code is right. Seeds are fixed, so the suite is
deterministic; the rates say how unlucky a seed would have to be to flag a correct
implementation.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from rank_samples import L, exact_ranks
from scipy import stats

from sbc.analysis import uniformity as uni


def inside_probability(N: int, z: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """P(lower_k ≤ N·F(z_k) ≤ upper_k for all k) for N uniform ranks: an independent forward
    recursion over all N + 1 counts (no windows, scipy's pmf)."""
    x = np.arange(N + 1)
    p = np.zeros(N + 1)
    p[0] = 1.0
    z_prev = 0.0
    for k, zk in enumerate(z):
        q = (zk - z_prev) / (1 - z_prev)
        step = stats.binom.pmf(x[None, :] - x[:, None], (N - x)[:, None], q)
        p = p @ step
        p[: lower[k]] = 0.0
        p[upper[k] + 1 :] = 0.0
        z_prev = zk
    return float(p.sum())


def test_gamma_statistic_matches_the_definition():
    # Deterministic: γ = 2 min_i min(BinomCDF(N F_i; N, z_i), 1 − BinomCDF(N F_i − 1; N, z_i))
    # at z_i = i/(L+1), i = 1..L, where N F_i = #{ranks ≤ i − 1}.
    rng = np.random.default_rng(1)
    for Lx, N in ((1, 30), (9, 40), (100, 200), (100, 3000)):
        ranks = rng.integers(0, Lx + 1, N)
        i = np.arange(1, Lx + 1)
        z = i / (Lx + 1)
        x = np.array([(ranks <= j - 1).sum() for j in i])
        expected = 2 * np.min(np.minimum(stats.binom.cdf(x, N, z), stats.binom.sf(x - 1, N, z)))
        got = uni.gamma_statistic(ranks, Lx, n_eval_points=Lx + 1)
        assert got == pytest.approx(expected, rel=1e-12)


def test_null_cdf_is_exact_by_enumeration():
    # Deterministic: all 4^8 rank vectors (N = 8, L = 3), each equally likely under the null.
    N, Lx, K = 8, 3, 4
    gammas = np.array(
        [uni.gamma_statistic(np.array(r), Lx, K) for r in itertools.product(range(4), repeat=N)]
    )
    for g in np.unique(gammas):
        exact = float(np.mean(gammas <= g * (1 + 1e-12)))
        assert uni.gamma_null_cdf(float(g), N, Lx, K) == pytest.approx(exact, abs=1e-12)


def test_null_cdf_matches_an_independent_recursion():
    # Deterministic: for several (N, L) the band {tail > γ/2} is built here from scipy and its
    # probability computed by a different recursion (all counts, no window).
    for N, Lx in ((50, 20), (200, 100), (20, 100), (120, 9)):
        K = uni.n_eval(N, Lx)
        _, z = uni.grid(Lx, K)
        x = np.arange(N + 1)
        tails = np.minimum(stats.binom.cdf(x[None, :], N, z[:, None]),
                           stats.binom.sf(x[None, :] - 1, N, z[:, None]))  # fmt: skip
        for g in (1e-4, 1e-3, 0.01, 0.05, 0.3):
            inside = tails > g / 2 * (1 + 1e-9)
            lower = inside.argmax(axis=1)
            upper = N - inside[:, ::-1].argmax(axis=1)
            exact = 1 - inside_probability(N, np.asarray(z), lower, upper)
            assert uni.gamma_null_cdf(g, N, Lx, K) == pytest.approx(exact, rel=1e-7, abs=1e-12)


def test_p_values_are_valid_in_the_tail_holm_uses():
    # 20 000 exactly calibrated studies (N = 50, L = 100: small N, discrete ranks). Exact
    # p-values give P(p ≤ u) ≤ u (equality up to the discreteness of Γ). Each count is
    # compared with the upper 1e-4 quantile of Binomial(20 000, u), so a correct
    # implementation fails with probability ≤ 4e-4 over the four levels.
    rng = np.random.default_rng(2)
    n = 20_000
    ranks = rng.integers(0, L + 1, (n, 50))
    K = uni.n_eval(50, L)
    t, _ = uni.grid(L, K)
    counts = np.stack([np.bincount(r, minlength=L + 1).cumsum()[t - 1] for r in ranks])
    p = uni.gamma_p_values(uni.gamma_of_counts(50, L, K, counts), 50, L, K)
    assert p[0] == uni.gamma_test(ranks[0], L).p_value
    for u in (0.05, 0.01, 1e-3, 1e-4):
        assert (p <= u).sum() <= stats.binom.isf(1e-4, n, u), u
    # and not absurdly conservative at 0.05: at least half the nominal rate (P < 1e-9)
    assert (p <= 0.05).mean() >= 0.025


def test_tiny_p_values_stay_valid_and_survive_holm():
    # Deterministic: far in the tail the p-value is the union bound Σ_k P(outside at z_k),
    # at most (K − 1)·γ: tiny, but never below the exact value.
    res = uni.gamma_test(np.full(200, L), L)  # γ underflows to 0: so does p
    assert 0 <= res.p_value < 1e-40
    assert res.log_gamma_ratio < 0
    ranks = np.r_[np.full(60, L), np.arange(140) % (L + 1)]  # a milder pile: γ > 0
    res = uni.gamma_test(ranks, L)
    K = uni.default_n_eval(200, L)
    assert 0 < res.p_value <= (K - 1) * res.gamma < 1e-9


def test_band_is_exactly_the_gamma_test():
    # Deterministic: the ECDF leaves the band exactly when log(γ/γ_crit) < 0, i.e. exactly
    # when the γ test rejects at α = 0.05.
    rng = np.random.default_rng(6)
    N = 200
    z, lo, hi = uni.ecdf_band(N, L, alpha=0.05)
    for kwargs in ({}, {"sd_scale": 0.85}, {"shift": 0.2}):
        for _ in range(100):
            ranks = exact_ranks(rng, N, **kwargs)
            zz, d = uni.ecdf_diff(ranks, L)
            assert np.allclose(zz, z)
            F = d + zz
            inside = bool(np.all((F - lo >= -1e-12) & (hi - F >= -1e-12)))
            res = uni.gamma_test(ranks, L)
            assert inside == (res.log_gamma_ratio >= 0) == (res.p_value > 0.05)


def test_band_covers_null_ecdfs_with_probability_at_least_one_minus_alpha():
    # Deterministic (exact recursion): coverage is ≥ 0.95 and within the discreteness of Γ.
    for N, Lx in ((50, 20), (200, 100), (30, 100)):
        z, lo, hi = uni.ecdf_band(N, Lx, alpha=0.05)
        lower = np.round(lo[1:-1] * N).astype(int)
        upper = np.round(hi[1:-1] * N).astype(int)
        cover = inside_probability(N, z[1:-1], lower, upper)
        assert 0.95 <= cover <= 0.97, (N, Lx, cover)


def test_band_shape():
    z, lo, hi = uni.ecdf_band(200, L)
    assert z[0] == 0 and z[-1] == 1 and lo[0] == hi[0] == 0 and lo[-1] == hi[-1] == 1
    assert np.all(lo <= z + 1e-12) and np.all(z <= hi + 1e-12)
    assert np.all(np.diff(lo) >= 0) and np.all(np.diff(hi) >= 0)


def test_gamma_test_has_power_against_wrong_posteriors():
    # Measured over 2000 seeds (200 simulations): rejection at 0.01 in 99 % (sd × 0.7),
    # 99 % (sd × 1.5), 100 % (+0.5 sd). Requiring ≥ 17 of 20 fails for a correct
    # implementation with probability P(Binomial(20, 0.02) ≥ 4) ≈ 8e-4 per case.
    rng = np.random.default_rng(3)
    for kwargs in ({"sd_scale": 0.7}, {"sd_scale": 1.5}, {"shift": 0.5}):
        rejected = sum(uni.gamma_test(exact_ranks(rng, 200, **kwargs), L).p_value < 0.01
                       for _ in range(20))  # fmt: skip
        assert rejected >= 17, kwargs


def test_chi_square_matches_scipy_on_hand_checked_cases():
    # L = 9: ten rank values in 5 bins of two values each.
    ranks = np.array([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 0, 0, 2, 5])
    observed = [5, 5, 3, 2, 5]  # {0,1} {2,3} {4,5} {6,7} {8,9}
    res = uni.chi_square_test(ranks, 9, bins=5)
    ref = stats.chisquare(observed)
    assert res.bins == 5
    assert res.stat == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)
    # L = 10: eleven rank values in 3 bins of widths 3, 4, 4 -> expected ∝ width.
    ranks = np.array([0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10, 1, 0, 6, 7, 9, 3, 4])
    expected = np.array([3, 4, 4]) / 11 * ranks.size
    res = uni.chi_square_test(ranks, 10, bins=3)
    ref = stats.chisquare([6, 7, 9], expected)
    assert res.stat == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)


def test_default_bins():
    assert uni.default_bins(200, 99) == 20  # divides L + 1 = 100
    assert uni.default_bins(200, 100) == 20  # 101 is prime: unequal widths 5 and 6
    assert uni.default_bins(60, 99) == 5  # ≥ 10 expected per bin
    assert np.all(np.diff(uni.rank_bins(100, 20)) >= 5)
    assert math.isnan(uni.chi_square_test(np.arange(10), 99).p_value)  # too few ranks


def test_holm_against_a_hand_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04
    # running maximum -> 0.02, 0.03, 0.06, 0.06
    p = [0.01, 0.04, 0.03, 0.005]
    assert uni.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert uni.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped
    out = uni.holm([0.01, np.nan, 0.02])
    assert np.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.02])


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        uni.gamma_test(np.array([0, 1, 101]), 100)
    with pytest.raises(ValueError):
        uni.gamma_test(np.array([], dtype=int), 100)
    with pytest.raises(ValueError):
        uni.gamma_test(np.array([0.5, 1]), 100)
