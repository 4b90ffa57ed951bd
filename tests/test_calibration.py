"""Statistics of sbc.calibration, checked on exact posteriors.

Ranks come from a conjugate normal model whose posterior is known in closed form:
mu ~ N(0, 1), y_i ~ N(mu, 1) for i = 1..10, so mu | y ~ N(sum(y)/11, 1/11). Drawing L = 100
values from that posterior makes the ranks of the true mu exactly uniform on 0..100; drawing
from a deliberately wrong posterior (sd × 0.7, sd × 1.5, mean + 0.5 sd) must be caught.

Every random check states its false-failure rate: the probability, over the choice of seed,
that the check fails although the code is right. Seeds are fixed, so the suite is
deterministic; the rates say how lucky a seed would have to be to hide a bug or how unlucky
to flag a correct implementation.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from sbc import calibration as cal

L = 100


def exact_ranks(
    rng: np.random.Generator,
    sims: int,
    L: int = L,
    n_obs: int = 10,
    sd_scale: float = 1.0,
    shift: float = 0.0,
) -> np.ndarray:
    """Ranks of the true mu among L draws of the exact (or a deliberately wrong) posterior."""
    mu = rng.normal(0.0, 1.0, sims)
    y = rng.normal(mu[:, None], 1.0, (sims, n_obs))
    precision = 1.0 + n_obs
    mean, sd = y.sum(axis=1) / precision, precision**-0.5
    draws = mean[:, None] + sd * (shift + sd_scale * rng.standard_normal((sims, L)))
    return (draws < mu[:, None]).sum(axis=1)


def hierarchical_ranks(
    rng: np.random.Generator,
    sims: int,
    J: int = 10,
    L: int = L,
    sd_scale: float = 1.0,
    s_mu: float = 3.0,
    s_b: float = 0.5,
    s_y: float = 2.0,
) -> np.ndarray:
    """(sims, J) ranks of group effects b_j ~ N(mu, s_b²), mu ~ N(0, s_mu²), y_j ~ N(b_j, s_y²),
    under their exact joint posterior. With the defaults the groups are weakly identified, so
    the posterior of b is strongly correlated across j and ranks within a simulation are
    strongly dependent."""
    prior = s_mu**2 * np.ones((J, J)) + s_b**2 * np.eye(J)
    gain = prior @ np.linalg.inv(prior + s_y**2 * np.eye(J))
    chol = np.linalg.cholesky(prior - gain @ prior)
    mu = rng.normal(0.0, s_mu, sims)
    b = mu[:, None] + s_b * rng.standard_normal((sims, J))
    y = b + s_y * rng.standard_normal((sims, J))
    noise = np.einsum("ij,slj->sli", chol, rng.standard_normal((sims, L, J)))
    draws = (y @ gain.T)[:, None, :] + sd_scale * noise
    return (draws < b[:, None, :]).sum(axis=1)


def exact_inside_probability(N: int, z: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> float:
    """P(lower_k ≤ N·F(z_k) ≤ upper_k for all k) for N uniform ranks, by the forward recursion
    over the Markov chain of counts (exact; used to check the Monte Carlo γ null)."""
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


def inside_band(F: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:
    return bool(np.all((F - lo >= -1e-12) & (hi - F >= -1e-12)))


def ranks_table(rank_columns: dict[str, np.ndarray], rng: np.random.Generator) -> pd.DataFrame:
    """A ranks table like the runner's from {quantity: ranks per simulation}."""
    rows = []
    for q, ranks in rank_columns.items():
        u = (ranks + 0.5) / (L + 1)
        for sim, (r, ui) in enumerate(zip(ranks, u, strict=True)):
            rows.append(
                {
                    "sim": sim,
                    "quantity": q,
                    "truth": 0.0,
                    "rank": int(r),
                    "L": L,
                    "mean": 0.0,
                    "sd": 1.0,
                    **{f"hit{c}": bool(abs(ui - 0.5) <= c / 200) for c in (50, 80, 90, 95)},
                }
            )
    return pd.DataFrame(rows).sort_values(["sim", "quantity"], ignore_index=True)


# --- the γ statistic ---------------------------------------------------------------------------


def test_gamma_statistic_matches_the_definition():
    # Deterministic: γ = 2 min_i min(BinomCDF(N F_i; N, z_i), 1 − BinomCDF(N F_i − 1; N, z_i))
    # at z_i = i/(L+1), i = 1..L, where N F_i = #{ranks ≤ i − 1}.
    rng = np.random.default_rng(1)
    for Lx, N in ((1, 30), (9, 40), (100, 200)):
        ranks = rng.integers(0, Lx + 1, N)
        i = np.arange(1, Lx + 1)
        z = i / (Lx + 1)
        x = np.array([(ranks <= j - 1).sum() for j in i])
        expected = 2 * np.min(np.minimum(stats.binom.cdf(x, N, z), stats.binom.sf(x - 1, N, z)))
        assert cal.gamma_statistic(ranks, Lx, n_eval=Lx + 1) == pytest.approx(expected, rel=1e-12)


def test_gamma_null_matches_exact_recursion():
    # The Monte Carlo null (20 000 replicates, fixed seed) against the exact distribution:
    # each comparison allows 4 Monte Carlo standard errors (false-failure rate 6e-5 each,
    # 2.5e-4 for the four; with the fixed seed the outcome is deterministic).
    N, Lx = 50, 20
    K = cal._n_eval(N, Lx, None)
    _, z = cal._grid(Lx, K)
    null = cal._gamma_null(N, Lx, K).null
    for g in (0.001, 0.01, 0.05, 0.2):
        lower, upper = cal._binomial_band(N, np.asarray(z), g * (1 + 1e-9))
        exact = 1 - exact_inside_probability(N, z, lower, upper)
        se = math.sqrt(exact * (1 - exact) / null.size)
        assert abs((null <= g).mean() - exact) <= 4 * se + 1e-12


def test_gamma_p_values_are_uniform_under_the_null():
    # 200 exactly calibrated studies of 200 simulations. With uniform p-values the number of
    # rejections at level a is Binomial(200, a); the accepted range keeps 0.05 % in each tail,
    # so the false-failure rate is ≤ 0.2 % over the two levels.
    rng = np.random.default_rng(2)
    p = np.array([cal.gamma_test(exact_ranks(rng, 200), L).p_value for _ in range(200)])
    for a in (0.05, 0.2):
        lo, hi = stats.binom.ppf([0.0005, 0.9995], 200, a)
        assert lo <= (p < a).sum() <= hi, a
    assert np.all((p > 0) & (p <= 1))


def test_gamma_test_flags_too_narrow_too_wide_and_biased_posteriors_with_the_right_shape():
    # Measured over 2000 seeds (200 simulations, alpha = 0.01): the γ test rejects 99.05 %
    # (sd × 0.7), 98.95 % (sd × 1.5) and 100 % (+0.5 sd) of studies, and the shape is exactly
    # the expected one in 98.1 %, 97.9 % and 99.1 %. Requiring it in at least 17 of 20
    # studies fails for a correct implementation with probability
    # P(Binomial(20, 0.021) ≥ 4) ≈ 1e-3 per case.
    rng = np.random.default_rng(3)
    cases = [
        ({"sd_scale": 0.7}, cal.TOO_NARROW),
        ({"sd_scale": 1.5}, cal.TOO_WIDE),
        ({"shift": 0.5}, cal.BIASED_UP),  # posterior above the truth -> low ranks
    ]
    for kwargs, expected in cases:
        shapes = []
        for _ in range(20):
            ranks = exact_ranks(rng, 200, **kwargs)
            shapes.append(cal.shape_diagnosis(ranks, L, alpha=0.01))
        assert sum(s == expected for s in shapes) >= 17, (kwargs, shapes)


def test_biased_down_means_high_ranks():
    # A posterior shifted down by 0.5 sd puts the truth above most draws: high ranks.
    # Same error rate as the +0.5 sd case above (one study: ≈ 1 %; here 9 of 10: ≈ 4e-3).
    rng = np.random.default_rng(4)
    shapes = [cal.shape_diagnosis(exact_ranks(rng, 200, shift=-0.5), L) for _ in range(10)]
    assert sum(s == cal.BIASED_DOWN for s in shapes) >= 9, shapes


def test_calibrated_posterior_is_called_calibrated():
    # One exact study: "calibrated" unless the γ test rejects at 0.01 (false-failure 1 %,
    # deterministic with this seed).
    rng = np.random.default_rng(5)
    assert cal.shape_diagnosis(exact_ranks(rng, 200), L, alpha=0.01) == cal.CALIBRATED


def test_tiny_p_values_use_the_union_bound_and_survive_holm():
    # Deterministic: far beyond the simulated null the p-value is (K − 1)·γ, not 1/(M + 1).
    ranks = np.full(200, L)  # every truth above every draw
    res = cal.gamma_test(ranks, L)
    assert res.p_value == pytest.approx((cal.default_n_eval(200, L) - 1) * res.gamma)
    assert res.p_value < 1e-50
    assert res.log_gamma_ratio < 0


# --- ECDF band ---------------------------------------------------------------------------------


def test_band_is_exactly_the_gamma_test():
    # Deterministic: the ECDF leaves the band exactly when log(γ/γ_crit) < 0.
    rng = np.random.default_rng(6)
    N = 200
    z, lo, hi = cal.ecdf_band(N, L, alpha=0.05)
    for kwargs in ({}, {"sd_scale": 0.85}, {"shift": 0.2}):
        for _ in range(100):
            ranks = exact_ranks(rng, N, **kwargs)
            zz, d = cal.ecdf_diff(ranks, L)
            assert np.allclose(zz, z)
            F = d + zz
            assert inside_band(F, lo, hi) == (cal.gamma_test(ranks, L).log_gamma_ratio >= 0)


def test_band_covers_null_ecdfs_with_probability_one_minus_alpha():
    # Exact: coverage by the forward recursion must be 0.95 up to the Monte Carlo error of
    # γ_crit (sd ≈ 0.0015 with 20 000 null replicates; tolerance 0.006 = 4 sd, false-failure
    # rate 6e-5). Simulated: 1000 exact-posterior studies, the count inside the band is
    # Binomial(1000, ≈0.95), sd 6.9; tolerance 0.025 = 3.6 sd (false-failure rate 3e-4).
    for N, Lx in ((50, 20), (200, 100)):
        z, lo, hi = cal.ecdf_band(N, Lx, alpha=0.05)
        lower = np.round(lo[1:-1] * N).astype(int)
        upper = np.round(hi[1:-1] * N).astype(int)
        assert abs(exact_inside_probability(N, z[1:-1], lower, upper) - 0.95) <= 0.006
    rng = np.random.default_rng(7)
    z, lo, hi = cal.ecdf_band(200, L, alpha=0.05)
    inside = 0
    for _ in range(1000):
        F = cal.ecdf_diff(exact_ranks(rng, 200), L)[1] + z
        inside += inside_band(F, lo, hi)
    assert abs(inside / 1000 - 0.95) <= 0.025


def test_band_shape():
    z, lo, hi = cal.ecdf_band(200, L)
    assert z[0] == 0 and z[-1] == 1 and lo[0] == hi[0] == 0 and lo[-1] == hi[-1] == 1
    assert np.all(lo <= z + 1e-12) and np.all(z <= hi + 1e-12)
    assert np.all(np.diff(lo) >= 0) and np.all(np.diff(hi) >= 0)


# --- chi-square, Holm, Clopper–Pearson ---------------------------------------------------------


def test_chi_square_matches_scipy_on_hand_checked_cases():
    # L = 9: ten rank values in 5 bins of two values each.
    ranks = np.array([0, 1, 1, 2, 3, 3, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9, 0, 0, 2, 5])
    observed = [5, 5, 3, 2, 5]  # {0,1} {2,3} {4,5} {6,7} {8,9}
    res = cal.chi_square_test(ranks, 9, bins=5)
    ref = stats.chisquare(observed)
    assert res.bins == 5
    assert res.stat == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)
    assert res.stat == pytest.approx(sum((o - 4) ** 2 / 4 for o in observed))
    # L = 10: eleven rank values in 3 bins of widths 3, 4, 4 -> expected ∝ width.
    ranks = np.array([0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10, 1, 0, 6, 7, 9, 3, 4])
    observed = [6, 7, 9]  # {0,1,2} {3..6} {7..10}
    expected = np.array([3, 4, 4]) / 11 * ranks.size
    res = cal.chi_square_test(ranks, 10, bins=3)
    ref = stats.chisquare(observed, expected)
    assert res.stat == pytest.approx(ref.statistic) and res.p_value == pytest.approx(ref.pvalue)


def test_default_bins():
    assert cal.default_bins(200, 99) == 20  # divides L + 1 = 100
    assert cal.default_bins(200, 100) == 20  # 101 is prime: unequal widths 5 and 6
    assert cal.default_bins(60, 99) == 5  # ≥ 10 expected per bin
    assert np.all(np.diff(cal.rank_bins(100, 20)) >= 5)
    assert math.isnan(cal.chi_square_test(np.arange(10), 99).p_value)  # too few ranks


def test_holm_against_a_hand_worked_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> ×4, ×3, ×2, ×1 = 0.02, 0.03, 0.06, 0.04
    # running maximum -> 0.02, 0.03, 0.06, 0.06
    p = [0.01, 0.04, 0.03, 0.005]
    assert cal.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert cal.holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped
    out = cal.holm([0.01, np.nan, 0.02])
    assert np.isnan(out[1]) and out[[0, 2]] == pytest.approx([0.02, 0.02])


def test_clopper_pearson_matches_scipy():
    for k, n in ((0, 20), (3, 20), (17, 20), (20, 20), (180, 200)):
        hits = np.r_[np.ones(k, bool), np.zeros(n - k, bool)]
        est, lo, hi = cal.coverage(hits, confidence=0.9)
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
        assert est == pytest.approx(k / n)
        assert lo == pytest.approx(ci.low, abs=1e-12) and hi == pytest.approx(ci.high, abs=1e-12)
    _, lo, hi = cal.coverage(np.zeros(20, bool), 0.95)
    assert lo == 0 and hi == pytest.approx(1 - 0.025 ** (1 / 20))


def test_coverage_table_levels():
    rng = np.random.default_rng(8)
    df = ranks_table({"mu": exact_ranks(rng, 100), "sigma": exact_ranks(rng, 100)}, rng)
    table = cal.coverage_table(df)
    assert len(table) == 8 and set(table["nominal"]) == {0.5, 0.8, 0.9, 0.95}
    assert (table["lo"] <= table["estimate"]).all() and (table["estimate"] <= table["hi"]).all()


# --- pooled groups and verdicts ----------------------------------------------------------------


def test_pooled_test_holds_its_size_when_ranks_are_dependent_within_simulations():
    # 100 exact studies (100 simulations × 10 strongly dependent group effects each).
    # The naive γ test on the 1000 pooled ranks rejects about half of them at 0.05 (measured
    # 48-56 %), which proves the dependence matters; requiring ≥ 25 naive rejections fails by
    # chance with probability < 1e-6. The cluster-robust test was measured at 4-7 % in this
    # model; accepting ≤ 15 rejections fails with probability P(Binomial(100, 0.07) ≥ 16)
    # ≈ 4e-3 at the worst measured rate (1e-4 at exactly 5 %).
    rng = np.random.default_rng(9)
    naive = robust = 0
    for _ in range(100):
        ranks = hierarchical_ranks(rng, 100)
        clusters = np.repeat(np.arange(100), ranks.shape[1])
        naive += cal.gamma_test(ranks.ravel(), L).p_value < 0.05
        robust += cal.pooled_ecdf_test(ranks.ravel(), L, clusters, replicates=1000).p_value < 0.05
    assert naive >= 25
    assert robust <= 15


def test_verdicts_have_pooled_rows_order_and_holm():
    rng = np.random.default_rng(10)
    S, J = 150, 8
    cols = {"sigma": exact_ranks(rng, S), "beta[2]": exact_ranks(rng, S)}
    cols["beta[1]"] = exact_ranks(rng, S)
    cols["loglik"] = exact_ranks(rng, S)
    b1 = hierarchical_ranks(rng, S, J=J, s_mu=1, s_b=1, s_y=1)
    b2 = hierarchical_ranks(rng, S, J=J, s_mu=1, s_b=1, s_y=1, sd_scale=0.6)  # too narrow
    for j in range(J):
        cols[f"b[{j + 1},1]"] = b1[:, j]
        cols[f"b[{j + 1},2]"] = b2[:, j]
    v = cal.verdicts(ranks_table(cols, rng), alpha=0.01)
    assert list(v.columns) == cal.VERDICT_COLUMNS
    names = list(v["quantity"])
    assert names[:6] == ["beta[1]", "beta[2]", "sigma", "loglik", "b[*,1]", "b[*,2]"]
    assert names[6:] == [f"b[{j},{q}]" for q in (1, 2) for j in range(1, J + 1)]
    pooled = v.set_index("quantity").loc[["b[*,1]", "b[*,2]"]]
    assert (pooled["kind"] == "pooled").all() and (pooled["n"] == S * J).all()
    assert pooled[["gamma", "log_gamma_ratio", "p_chi2"]].isna().all().all()
    assert (v["p_holm"] >= v["p_value"] - 1e-15).all()
    assert np.allclose(v["p_holm"], cal.holm(v["p_value"]))  # one family: all rows
    assert (v["calibrated"] == (v["p_holm"] >= 0.01)).all()
    # sd × 0.6 on b[*,2]: detected by the pooled row (p ≈ 1e-10 here; power ≈ 1) with the
    # right shape; the calibrated scalars pass (each fails with probability ≤ 1 % before Holm).
    assert not pooled.loc["b[*,2]", "calibrated"]
    assert pooled.loc["b[*,2]", "shape"].startswith(cal.TOO_NARROW)
    scalars = v[v["kind"] == "scalar"]
    assert scalars["calibrated"].all(), scalars
    assert ((v["lo90"] <= v["coverage90"]) & (v["coverage90"] <= v["hi90"])).all()


def test_groups_can_be_switched_off_or_named():
    rng = np.random.default_rng(11)
    cols = {f"b[{j},1]": exact_ranks(rng, 40) for j in range(1, 5)}
    df = ranks_table(cols, rng)
    assert "b[*,1]" not in set(cal.verdicts(df, groups=False)["quantity"])
    assert "b[*,1]" in set(cal.verdicts(df, groups=["b"])["quantity"])
    # square matrices (e.g. correlation matrices) are not pooled automatically
    assert cal.group_variables(["Omega[1,1]", "Omega[1,2]", "Omega[2,1]", "Omega[2,2]"]) == set()


def test_mixed_L_is_put_on_one_scale():
    # Uniform ranks on 0..100 and 0..30 must become uniform ranks on 0..30 (randomised PIT).
    # Chi-square on 4000 of them; false-failure rate 0.1 %.
    rng = np.random.default_rng(12)
    Ls = np.r_[np.full(2000, 100), np.full(2000, 30)]
    df = pd.DataFrame({"rank": rng.integers(0, Ls + 1), "L": Ls})
    ranks, Lc = cal.common_ranks(df)
    assert Lc == 30 and ranks.min() >= 0 and ranks.max() <= 30
    assert cal.chi_square_test(ranks, 30, bins=31).p_value > 0.001


def test_sort_quantities():
    names = ["b[2,1]", "loglik", "tau[2]", "b[10,1]", "rho[1]", "beta[10]", "beta[2]", "sigma"]
    names += ["b[1,1]", "b[*,1]", "zeta", "tau[1]"]
    assert cal.sort_quantities(names) == [
        "beta[2]", "beta[10]", "sigma", "tau[1]", "tau[2]", "rho[1]", "zeta", "loglik",
        "b[*,1]", "b[1,1]", "b[2,1]", "b[10,1]",
    ]  # fmt: skip


# --- sampler diagnostics -----------------------------------------------------------------------


def sims_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sim": [0, 1, 2, 3, 4, 5],
            "status": ["ok", "ok", "ok", "ok", "ok", "failed"],
            "divergences": [0, 3, 0, np.nan, 1, np.nan],
            "treedepth_hits": [0, 0, 2, 0, 0, np.nan],
            "ebfmi_min": [0.9, 0.25, 0.5, 0.6, np.nan, np.nan],
            "rhat_max": [1.0, 1.02, 1.0, 1.0, 1.0, np.nan],
            "ess_bulk_min": [400, 50, 400, 400, 400, np.nan],
            "ess_tail_min": [400, 400, 90, 400, 400, np.nan],
        }
    )


def test_diagnostics_summary_counts():
    d = cal.diagnostics_summary(sims_table()).set_index("diagnostic")
    assert d.loc["failed", ["flagged", "known", "total"]].tolist() == [1, 6, 6]
    assert d.loc["divergences", ["flagged", "known", "total"]].tolist() == [2, 4, 5]
    assert d.loc["divergences", "share"] == pytest.approx(0.5)
    assert d.loc["treedepth_hits", "flagged"] == 1
    assert d.loc["ebfmi_min", ["flagged", "known"]].tolist() == [1, 4]
    assert d.loc["rhat_max", "flagged"] == 1
    assert d.loc["ess_bulk_min", "flagged"] == 1 and d.loc["ess_tail_min", "flagged"] == 1
    assert d.loc["any", "flagged"] == 3  # sims 1, 2, 4
    looser = cal.diagnostics_summary(sims_table(), {"ebfmi_min": 0.2}).set_index("diagnostic")
    assert looser.loc["ebfmi_min", "flagged"] == 0


def test_split_verdicts_puts_every_simulation_somewhere():
    rng = np.random.default_rng(13)
    df = ranks_table({"mu": exact_ranks(rng, 5)}, rng)  # sim 5 failed: it has no ranks
    split = cal.split_verdicts(df, sims_table(), by="divergences")
    # sim 3 has unknown divergences
    assert (split.n_flagged, split.n_clean, split.n_unknown) == (2, 2, 1)
    assert split.rule == "divergences > 0"
    row = split.table.set_index("quantity").loc["mu"]
    assert row["n_flagged"] == 2 and row["n_clean"] == 2
    assert {"p_holm_flagged", "calibrated_clean", "shape_flagged"} <= set(split.table.columns)
    custom = cal.split_verdicts(df, sims_table(), by=lambda s: s["sim"] < 2)
    assert (custom.n_flagged, custom.n_clean, custom.n_unknown) == (2, 3, 0)
    assert len(custom.flagged) == len(custom.clean) == 1
    with pytest.raises(ValueError):
        cal.split_verdicts(df, sims_table(), by="nonsense")


def test_bad_input_is_rejected():
    with pytest.raises(ValueError):
        cal.gamma_test(np.array([0, 1, 101]), 100)
    with pytest.raises(ValueError):
        cal.gamma_test(np.array([], dtype=int), 100)
