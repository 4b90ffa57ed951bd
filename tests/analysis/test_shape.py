"""Shape words (sbc.analysis.shape): location and spread estimated apart, by maximum
likelihood on the exact rank distribution of a shifted and scaled posterior."""

from __future__ import annotations

import numpy as np
import pytest
from rank_samples import copula_ranks, exact_ranks

from sbc.analysis import shape as sh

NARROW = f"posterior {sh.TOO_NARROW}"
WIDE = f"posterior {sh.TOO_WIDE}"
UP = f"posterior {sh.BIASED_UP}"
DOWN = f"posterior {sh.BIASED_DOWN}"

# The confusion-matrix cases at N = 500 (benchmarks/null_calibration.py measures
# the full matrix: ≥ 98 % correct in every case over 200 studies).
CASES = [
    ({"sd_scale": 0.7}, NARROW),
    ({"sd_scale": 1.4}, WIDE),
    ({"shift": 0.5}, UP),
    ({"shift": -0.5}, DOWN),
    ({"shift": 1.5}, UP),
    ({"shift": -1.5}, DOWN),
    ({"sd_scale": 0.7, "shift": 0.5}, f"posterior {sh.TOO_NARROW} and {sh.BIASED_UP}"),
]


@pytest.mark.parametrize(("kwargs", "expected"), CASES)
def test_shape_words_at_500_simulations(kwargs, expected):
    # 15 studies per case; measured accuracy ≥ 98 %, so ≥ 13 correct fails for a correct
    # implementation with probability P(Binomial(15, 0.02) ≥ 3) ≈ 3e-3 per case.
    rng = np.random.default_rng(41)
    words = [sh.shape_diagnosis(exact_ranks(rng, 500, **kwargs), 100) for _ in range(15)]
    assert sum(w == expected for w in words) >= 13, words


def test_a_large_shift_is_not_called_too_wide():
    # sbc 0.1 called a 1.5 sd shift "too wide (∩)" in 155 of 200 studies: clipping at the
    # extreme ranks compresses their spread. Deterministic with this seed.
    rng = np.random.default_rng(42)
    fit = sh.fit_shape(exact_ranks(rng, 500, shift=1.5), 100)
    assert fit.shift == pytest.approx(1.5, abs=0.25)
    assert abs(fit.log_scale) < 3 * fit.log_scale_se + 0.05


def test_estimates_recover_the_truth_within_their_standard_errors():
    # 2000 simulations, sd × 0.8 and shift −0.3: each estimate within 4 SE (false-failure
    # 1.3e-4 for the two).
    rng = np.random.default_rng(43)
    fit = sh.fit_shape(exact_ranks(rng, 2000, sd_scale=0.8, shift=-0.3), 100)
    assert abs(fit.shift - (-0.3)) <= 4 * fit.shift_se
    assert abs(fit.log_scale - np.log(0.8)) <= 4 * fit.log_scale_se


def test_cluster_robust_errors_widen_with_dependence():
    # Pooled ranks of 10 strongly dependent members (PIT correlation 0.9) carry about one
    # rank's information per simulation: the sandwich SE must be several times the naive one.
    rng = np.random.default_rng(44)
    R = copula_ranks(rng, 1, 200, 10, 0.9)[0]
    clusters = np.repeat(np.arange(200), 10)
    naive = sh.fit_shape(R.ravel(), 100)
    robust = sh.fit_shape(R.ravel(), 100, clusters)
    assert robust.shift_se > 2 * naive.shift_se


def test_posterior_that_misses_the_truth_is_said_so():
    # Deterministic: almost every truth above every draw.
    ranks = np.r_[np.full(95, 100), np.arange(5)]
    assert sh.shape_diagnosis(ranks, 100) == (
        "posterior misses the truth: it lies above every draw in 95% of simulations"
    )
    both = np.r_[np.full(40, 100), np.zeros(40, int), np.arange(1, 21)]
    assert "outside every draw in 80% of simulations (40% above, 40% below)" in (
        sh.shape_diagnosis(both, 100)
    )


def test_fine_ranks_are_coarsened_reproducibly():
    rng = np.random.default_rng(45)
    ranks = rng.integers(0, 2001, 300)
    assert sh.fit_shape(ranks, 2000) == sh.fit_shape(ranks, 2000)
