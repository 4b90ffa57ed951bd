"""Coverage from ranks (sbc.analysis.coverage): exact under calibration, for continuous and
discrete quantities alike."""

from __future__ import annotations

import numpy as np
import pytest
from rank_samples import exact_ranks
from scipy import stats

from sbc.analysis import coverage as cov
from sbc.ranks import rank_of_truth


@pytest.mark.parametrize("L", [1, 2, 9, 10, 99, 100, 1000])
def test_expected_hit_is_exactly_the_level_under_uniform_ranks(L):
    # Deterministic: averaging h_c over the L + 1 equally likely ranks gives c exactly.
    r = np.arange(L + 1)
    for level in (0.1, 0.5, 0.8, 0.9, 0.95, 0.999):
        assert cov.interval_hits(r, L, level).mean() == pytest.approx(level, abs=1e-12)
    assert np.all((cov.interval_hits(r, L, 0.9) >= 0) & (cov.interval_hits(r, L, 0.9) <= 1))


def test_calibrated_study_of_2000_simulations_covers_at_every_width():
    # The check: an exact study, 2000 simulations, L = 100. With interpolated
    # quantiles of 100 draws the 90 % interval covered 0.882 in expectation; from the ranks
    # the estimate is unbiased. Each width's 99.99 % interval must contain the nominal
    # level: false-failure ≤ 1e-4 per width (1.9e-3 for all 19).
    rng = np.random.default_rng(31)
    ranks = exact_ranks(rng, 2000)
    for level in np.linspace(0.05, 0.95, 19):
        est, lo, hi = cov.rank_coverage(ranks, 100, level, confidence=0.9999)
        assert lo <= level <= hi, (level, est)


def test_discrete_and_constant_quantities_cover_at_the_nominal_level():
    # A Poisson(2) quantity and a constant: ranks with ties broken at random are uniform,
    # so coverage from ranks is nominal (a closed draw interval gives 0.964 and 1.0).
    # 4000 simulations; the check is |estimate − 0.9| ≤ 4 standard errors of a binomial
    # proportion (false-failure 6e-5 each).
    rng = np.random.default_rng(32)
    L, n = 100, 4000
    for draw in (lambda size: rng.poisson(2.0, size), lambda size: np.full(size, 3.0)):
        ranks = np.empty(n, dtype=np.int64)
        for s in range(n):
            truth = draw(1).astype(float)  # prior = posterior: no data
            ranks[s] = rank_of_truth(truth, draw((L, 1)).astype(float), rng)[0]
        est = cov.interval_hits(ranks, L, 0.9).mean()
        assert abs(est - 0.9) <= 4 * np.sqrt(0.09 / n), est


def test_clopper_pearson_matches_scipy():
    for k, n in ((0, 20), (3, 20), (17, 20), (20, 20), (180, 200)):
        hits = np.r_[np.ones(k, bool), np.zeros(n - k, bool)]
        est, lo, hi = cov.coverage(hits, confidence=0.9)
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
        assert est == pytest.approx(k / n)
        assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)
    _, lo, hi = cov.coverage(np.zeros(20, bool), 0.95)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 20))


def test_too_narrow_posteriors_undercover():
    # sd × 0.7 at 500 simulations: the 90 % interval covers about 70 %; the interval must
    # exclude 0.9 (power ≈ 1; a miss would need an error of 9 standard errors).
    rng = np.random.default_rng(33)
    est, _, hi = cov.rank_coverage(exact_ranks(rng, 500, sd_scale=0.7), 100, 0.9)
    assert hi < 0.9 and 0.6 < est < 0.8


@pytest.mark.parametrize("L", [1, 4, 9, 100])
def test_centrality_ranks_are_a_permutation_from_the_centre_out(L):
    # Deterministic: a permutation of 0..L (so uniform ranks stay uniform), the central value
    # first, and the m most central values always a central interval of rank values.
    pos = cov.centrality_ranks(np.arange(L + 1), L)
    assert sorted(pos) == list(range(L + 1))
    order = np.argsort(pos)
    for m in range(1, L + 2):
        chosen = np.sort(order[:m])
        assert np.all(np.diff(chosen) == 1)  # contiguous
        assert abs((chosen[0] + chosen[-1]) - L) <= 1  # centred
