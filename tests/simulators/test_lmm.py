"""The LMM simulator against theory: the priors, the design, y given the truth, loglik.

False-failure budget. Every random check uses a fixed seed, so each one either
always passes or always fails; the rate below is the chance that a *correct*
simulator fails for an arbitrary seed, i.e. how unlucky the chosen seed may be.
- KS tests reject at p < 1e-5: false-failure rate 1e-5 per assertion (exact for
  continuous distributions).
- Moment checks reject at |mean - theory| > 4.5 standard errors, with the
  standard error from the theoretical variance: 6.8e-6 per assertion under the
  normal approximation; the means are over >= 4000 draws, whose skewness (at
  most ~0.05 here) changes that by well under a factor of 10, so < 1e-4.
- Correlation-is-zero checks reject at |r| > 4.5 / sqrt(n): the same 6.8e-6.
About 40 such assertions: the whole file falsely fails for < 1e-3 of seeds.
"""

from __future__ import annotations

import json
import math
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from sbc.errors import SBCError
from sbc.simulators import lmm

KS_ALPHA = 1e-5
Z_CRIT = 4.5
N_SIMS = 4000
STAN_DIR = Path(__file__).resolve().parents[2] / "stan"


def ks_ok(sample: np.ndarray, dist: stats.rv_continuous) -> bool:
    p = stats.kstest(np.ravel(sample), dist.cdf).pvalue
    return p > KS_ALPHA


def assert_mean(sample: np.ndarray, mean: float, var: float) -> None:
    """Sample mean within Z_CRIT standard errors of theory (iid draws, known variance)."""
    sample = np.ravel(sample)
    se = math.sqrt(var / sample.size)
    assert abs(sample.mean() - mean) < Z_CRIT * se, (sample.mean(), mean, se)


def assert_uncorrelated(a: np.ndarray, b: np.ndarray) -> None:
    """Sample correlation of independent variables has sd ≈ 1/sqrt(n)."""
    r = np.corrcoef(np.ravel(a), np.ravel(b))[0, 1]
    assert abs(r) < Z_CRIT / math.sqrt(np.size(a)), r


def scaled_beta(a: float) -> stats.rv_continuous:
    """Beta(a, a) stretched onto (-1, 1)."""
    return stats.beta(a, a, loc=-1.0, scale=2.0)


def residual(truth: dict, data: dict) -> np.ndarray:
    """y - Xβ - Z·b[g], computed row by row (independently of the simulator's block form)."""
    X, Z, g, y = data["X"], data["Z"], data["g"], data["y"]
    fitted = np.array(
        [X[n] @ truth["beta"] + Z[n] @ truth["b"][g[n] - 1] for n in range(data["N"])]
    )
    return y - fitted


@pytest.fixture(scope="module")
def prior_sims() -> list[tuple[dict, dict]]:
    """N_SIMS independent draws of the default (seed-design) model from the prior."""
    return [lmm.simulate(np.random.default_rng([11, i])) for i in range(N_SIMS)]


# ------------------------------------------------------------------------ LKJ


@pytest.mark.parametrize("eta", [0.8, 2.0, 5.0])
def test_lkj_q2_correlation_is_beta_eta_eta(eta: float) -> None:
    R = lmm.lkj_corr(np.random.default_rng(1), 2, eta, size=20000)
    assert R.shape == (20000, 2, 2)
    assert np.all(R[:, 0, 0] == 1) and np.all(R[:, 1, 1] == 1)
    assert np.array_equal(R[:, 0, 1], R[:, 1, 0])
    assert ks_ok(R[:, 1, 0], scaled_beta(eta))


@pytest.mark.parametrize(("Q", "eta"), [(3, 2.0), (3, 1.0), (4, 1.5)])
def test_lkj_marginals_are_beta(Q: int, eta: float) -> None:
    """Each off-diagonal of LKJ(η) in dimension Q is Beta(η - 1 + Q/2, same) on (-1, 1)."""
    R = lmm.lkj_corr(np.random.default_rng(2), Q, eta, size=20000)
    a = eta - 1 + Q / 2
    for r, c in zip(*np.tril_indices(Q, -1), strict=True):
        assert ks_ok(R[:, r, c], scaled_beta(a)), (r, c)
    assert np.all(np.linalg.eigvalsh(R) > 0)


@pytest.mark.parametrize("eta", [2.0, 0.8])
def test_lkj_q3_joint_via_vine_partial_correlations(eta: float) -> None:
    """Marginals alone do not pin LKJ down; its C-vine partial correlations do.

    For Q = 3 under LKJ(η): r12, r13 ~ Beta(η + 1/2) and the partial correlation
    r23|1 ~ Beta(η) on (-1, 1), all three independent (Lewandowski et al. 2009).
    """
    R = lmm.lkj_corr(np.random.default_rng(3), 3, eta, size=20000)
    r12, r13, r23 = R[:, 1, 0], R[:, 2, 0], R[:, 2, 1]
    partial = (r23 - r12 * r13) / np.sqrt((1 - r12**2) * (1 - r13**2))
    assert ks_ok(partial, scaled_beta(eta))
    assert_uncorrelated(r12**2, r13**2)
    assert_uncorrelated(r12**2, partial**2)
    assert_uncorrelated(r13, partial)


def test_lkj_q1_and_rho_order() -> None:
    assert np.array_equal(lmm.lkj_corr(np.random.default_rng(0), 1, 2.0), np.ones((1, 1)))
    R = np.array([[1.0, 0.1, 0.2], [0.1, 1.0, 0.3], [0.2, 0.3, 1.0]])
    assert np.array_equal(lmm.rho_from_R(R), [0.1, 0.2, 0.3])  # R[2,1], R[3,1], R[3,2]
    assert np.array_equal(lmm.R_from_rho(np.array([0.1, 0.2, 0.3]), 3), R)


# ---------------------------------------------------------------- prior draws


def test_prior_fixed_effects_and_noise(prior_sims: list) -> None:
    beta = np.array([t["beta"] for t, _ in prior_sims])
    sigma = np.array([t["sigma"] for t, _ in prior_sims])
    assert beta.shape == (N_SIMS, 2)
    assert ks_ok(beta, stats.norm(0, 10))
    assert ks_ok(sigma, stats.halfnorm(scale=5))


def test_prior_random_effect_scales_and_correlation(prior_sims: list) -> None:
    tau = np.array([t["tau"] for t, _ in prior_sims])
    rho = np.array([t["rho"][0] for t, _ in prior_sims])
    R = np.array([t["R"] for t, _ in prior_sims])
    assert ks_ok(tau, stats.halfnorm(scale=5))
    assert ks_ok(rho, scaled_beta(2.0))
    assert np.array_equal(rho, R[:, 1, 0])
    # Moments of Σ = diag(τ) R diag(τ): E[τ²] = 25, Var[τ²] = 3·5⁴ - 5⁴;
    # E[τ1 τ2] = 25·2/π, Var = 5⁴ - (50/π)²; E[Σ12] = 0, Var = 5⁴·E[ρ²] = 5⁴/(2η+1).
    s4 = 5.0**4
    assert_mean(tau**2, 25.0, 2 * s4)
    assert_mean(tau[:, 0] * tau[:, 1], 50 / math.pi, s4 - (50 / math.pi) ** 2)
    assert_mean(tau[:, 0] * tau[:, 1] * rho, 0.0, s4 / 5)
    assert_mean(rho, 0.0, 1 / 5)
    assert_uncorrelated(tau[:, 0], tau[:, 1])
    assert_uncorrelated(tau[:, 0], rho**2)


def test_group_effects_given_truth_are_mvn(prior_sims: list) -> None:
    """b_j | τ, R ~ MVN(0, diag(τ) R diag(τ)): whitened by chol(Σ) they are iid N(0, 1)."""
    white = []
    for t, _ in prior_sims:
        L = np.linalg.cholesky(np.diag(t["tau"]) @ t["R"] @ np.diag(t["tau"]))
        white.append(np.linalg.solve(L, t["b"].T).T)
    w = np.array(white)  # (sims, J, Q)
    assert ks_ok(w, stats.norm())
    assert_mean(w[..., 0] * w[..., 1], 0.0, 1.0)


def test_y_given_truth_has_normal_residuals(prior_sims: list) -> None:
    """(y - Xβ - Z·b[g]) / σ are iid N(0, 1), whatever the truth."""
    sims = prior_sims[:1000]
    e = np.array([residual(t, d) / t["sigma"] for t, d in sims])
    assert ks_ok(e, stats.norm())
    assert_uncorrelated(e[:, :-1], e[:, 1:])  # neighbours (same group) independent


# -------------------------------------------------------------------- the seed


def test_seed_truth_and_fixed_effects() -> None:
    truth, data = lmm.simulate(np.random.default_rng(5), truth="seed")
    assert np.array_equal(truth["beta"], [6.0, 4.0])
    assert np.array_equal(truth["tau"], [3.0, 2.0])
    assert truth["sigma"] == 1.0 and isinstance(truth["sigma"], float)
    assert np.array_equal(truth["rho"], [0.7])
    assert np.array_equal(truth["R"], [[1.0, 0.7], [0.7, 1.0]])
    Xb = data["X"] @ truth["beta"]
    assert np.array_equal(Xb[:10], [10, 14, 18, 22, 26, 30, 34, 38, 42, 46])
    assert np.array_equal(Xb, np.tile(Xb[:10], 10))
    assert (data["N"], data["K"], data["Q"], data["J"]) == (100, 2, 2, 10)
    assert np.array_equal(data["g"], np.repeat(np.arange(1, 11), 10))
    assert np.array_equal(data["X"], data["Z"])
    assert np.array_equal(data["X"][:, 1], np.tile(np.arange(1.0, 11.0), 10))


def test_seed_group_effects_are_drawn_from_seed_sigma() -> None:
    """b still random in seed mode, with covariance [[9, 4.2], [4.2, 4]] (iid given Σ)."""
    b = np.concatenate(
        [lmm.simulate(np.random.default_rng([7, i]), truth="seed")[0]["b"] for i in range(2000)]
    )
    s11, s22, s12 = 9.0, 4.0, 0.7 * 3 * 2
    assert_mean(b[:, 0], 0.0, s11)
    assert_mean(b[:, 1], 0.0, s22)
    assert_mean(b[:, 0] ** 2, s11, 2 * s11**2)
    assert_mean(b[:, 1] ** 2, s22, 2 * s22**2)
    assert_mean(b[:, 0] * b[:, 1], s12, s11 * s22 + s12**2)


def test_block_diagonal_z_matches_the_seed() -> None:
    truth, data = lmm.simulate(np.random.default_rng(6), truth="seed")
    Zb = lmm.block_diagonal(data["Z"], data["g"] - 1, data["J"]).toarray()
    assert Zb.shape == (100, 20)
    x = np.arange(1.0, 11.0)
    # first group: [1, x] in columns 1-2, zeros elsewhere; second group in columns 3-4
    assert np.array_equal(Zb[:10, 0], np.ones(10)) and np.array_equal(Zb[:10, 1], x)
    assert not Zb[:10, 2:].any()
    assert np.array_equal(Zb[10:20, 2:4], np.column_stack([np.ones(10), x]))
    assert not Zb[10:20, :2].any() and not Zb[10:20, 4:].any()
    expected = np.zeros((100, 20))
    for j in range(10):
        expected[10 * j : 10 * j + 10, 2 * j : 2 * j + 2] = np.column_stack([np.ones(10), x])
    assert np.array_equal(Zb, expected)
    # vec(b) is interleaved group by group: (α1, β1, α2, β2, ...)
    vec = truth["b"].ravel()
    assert vec[0] == truth["b"][0, 0] and vec[1] == truth["b"][0, 1]
    assert vec[2] == truth["b"][1, 0]
    compact = np.sum(data["Z"] * truth["b"][data["g"] - 1], axis=1)
    assert np.allclose(Zb @ vec, compact, rtol=0, atol=1e-12)


# ------------------------------------------------------------------- designs


def test_unequal_group_sizes() -> None:
    truth, data = lmm.simulate(np.random.default_rng(8), group_sizes=[3, 1, 5, 0, 2])
    assert (data["N"], data["J"]) == (11, 5)
    assert np.array_equal(data["g"], [1, 1, 1, 2, 3, 3, 3, 3, 3, 5, 5])
    assert np.array_equal(data["X"][:, 1], [1, 2, 3, 1, 1, 2, 3, 4, 5, 1, 2])
    assert truth["b"].shape == (5, 2)
    Zb = lmm.block_diagonal(data["Z"], data["g"] - 1, data["J"]).toarray()
    assert np.array_equal(Zb[4:9, 4:6], data["Z"][4:9]) and not Zb[:, 6:8].any()
    assert np.abs(residual(truth, data) / truth["sigma"]).max() < 6
    _, d2 = lmm.simulate(np.random.default_rng(8), group_sizes=[2, 3], x=[0.5, 1, 2, 3, 4])
    assert np.array_equal(d2["X"][:, 1], [0.5, 1, 2, 3, 4])
    _, d3 = lmm.simulate(np.random.default_rng(8), group_sizes=[2, 2, 2], x=[-1, 1])
    assert np.array_equal(d3["X"][:, 1], [-1, 1, -1, 1, -1, 1])
    _, d4 = lmm.simulate(np.random.default_rng(8), groups=3, x=[0, 5])
    assert np.array_equal(d4["g"], [1, 1, 2, 2, 3, 3]) and d4["N"] == 6


@pytest.mark.parametrize("Q", [1, 2, 3, 4])
def test_any_number_of_random_effects(Q: int) -> None:
    truth, data = lmm.simulate(np.random.default_rng(9), Q=Q, K=3, groups=4)
    x = np.tile(np.arange(1.0, 11.0), 4)
    poly = np.column_stack([np.ones_like(x), x, x**2 / 10, x**3 / 100])
    assert np.allclose(data["Z"], poly[:, :Q], rtol=1e-15, atol=0)
    assert np.allclose(data["X"], poly[:, :3], rtol=1e-15, atol=0)
    shapes = {k: np.shape(v) for k, v in truth.items()}
    expected = {"beta": (3,), "sigma": (), "tau": (Q,), "R": (Q, Q), "b": (4, Q)}
    if Q > 1:
        expected["rho"] = (Q * (Q - 1) // 2,)
    assert shapes == expected
    assert np.all(np.linalg.eigvalsh(truth["R"]) > 0)
    assert np.abs(residual(truth, data) / truth["sigma"]).max() < 6


# ------------------------------------------------------ determinism and rng


def _same(a: tuple[dict, dict], b: tuple[dict, dict]) -> bool:
    return all(np.array_equal(a[i][k], b[i][k]) for i in (0, 1) for k in set(a[i]) | set(b[i]))


def test_deterministic_given_the_rng() -> None:
    first = lmm.simulate(np.random.default_rng(123))
    again = lmm.simulate(np.random.default_rng(123))
    other = lmm.simulate(np.random.default_rng(124))
    assert _same(first, again)
    assert not np.array_equal(first[1]["y"], other[1]["y"])
    assert not np.array_equal(first[0]["beta"], other[0]["beta"])


def test_does_not_touch_global_numpy_state() -> None:
    np.random.seed(1)
    state = np.random.get_state()
    a = lmm.simulate(np.random.default_rng(42), Q=3)
    after = np.random.get_state()
    assert all(np.array_equal(x, y) for x, y in zip(state, after, strict=True))
    np.random.seed(2)
    b = lmm.simulate(np.random.default_rng(42), Q=3)
    assert _same(a, b)


def test_fixed_values_keep_the_other_draws() -> None:
    """Common random numbers: fixing σ changes only σ and y, and y only via σ·ε."""
    t0, d0 = lmm.simulate(np.random.default_rng(77))
    t1, d1 = lmm.simulate(np.random.default_rng(77), truth={"sigma": 2.0})
    assert t1["sigma"] == 2.0
    for k in ("beta", "tau", "R", "rho", "b"):
        assert np.array_equal(t0[k], t1[k])
    assert np.allclose(residual(t1, d1) / 2.0, residual(t0, d0) / t0["sigma"])
    t2, _ = lmm.simulate(np.random.default_rng(77), truth={"base": "seed", "sigma": 0.5})
    assert t2["sigma"] == 0.5 and np.array_equal(t2["beta"], [6.0, 4.0])
    t3, _ = lmm.simulate(np.random.default_rng(77), truth={"rho": [-0.3], "tau": [1.0, 0.0]})
    assert np.array_equal(t3["R"], [[1, -0.3], [-0.3, 1]]) and not t3["b"][:, 1].any()
    t4, d4 = lmm.simulate(np.random.default_rng(77), truth={"b": np.zeros((10, 2))})
    assert not t4["b"].any()
    assert np.allclose(d4["y"] - d4["X"] @ t4["beta"], residual(t4, d4))
    t5, _ = lmm.simulate(np.random.default_rng(77), truth={"beta": 3.0}, K=1)
    assert np.array_equal(t5["beta"], [3.0])


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"groups": 0}, "groups"),
        ({"groups": 2.5}, "groups"),
        ({"groups": True}, "groups"),
        ({"group_sizes": []}, "group_sizes"),
        ({"group_sizes": [3, -1]}, "group_sizes"),
        ({"group_sizes": [0, 0]}, "group_sizes"),
        ({"group_sizes": "3,4"}, "group_sizes"),
        ({"groups": 3, "group_sizes": [2, 2]}, "group_sizes"),
        ({"group_sizes": [2, 3], "x": [1, 2, 3]}, "x"),
        ({"x": []}, "x"),
        ({"x": [1, float("nan")]}, "x"),
        ({"Q": 0}, "Q"),
        ({"K": 0}, "K"),
        ({"tau_scale": 0}, "tau_scale"),
        ({"lkj_eta": -1.0}, "lkj_eta"),
        ({"beta_scale": float("inf")}, "beta_scale"),
        ({"truth": "posterior"}, "truth"),
        ({"truth": 3}, "truth"),
        ({"truth": "seed", "Q": 3}, "seed"),
        ({"truth": {"gamma": 1.0}}, "gamma"),
        ({"truth": {"beta": [1.0, 2.0, 3.0]}}, "truth.beta"),
        ({"truth": {"sigma": -1.0}}, "truth.sigma"),
        ({"truth": {"tau": [1.0, -2.0]}}, "truth.tau"),
        ({"truth": {"rho": [1.5]}}, "truth.rho"),
        ({"truth": {"rho": [0.5], "R": [[1, 0.2], [0.2, 1]]}}, "truth.R"),
        ({"truth": {"R": [[1, 0.2], [0.3, 1]]}}, "truth.R"),
        ({"truth": {"rho": [0.9, 0.9, -0.9]}, "Q": 3}, "positive definite"),
        ({"truth": {"b": np.zeros((3, 2))}}, "truth.b"),
    ],
)
def test_bad_arguments_raise_one_line_sbc_errors(kwargs: dict, names: str) -> None:
    with pytest.raises(SBCError, match=names) as info:
        lmm.simulate(np.random.default_rng(0), **kwargs)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith("simulator lmm: ")


def test_rng_must_be_a_generator() -> None:
    with pytest.raises(SBCError, match="rng"):
        lmm.simulate(np.random.RandomState(0))  # type: ignore[arg-type]


# ------------------------------------------------------------------- loglik


def _scipy_loglik(beta: np.ndarray, sigma: float, b: np.ndarray, data: dict) -> float:
    mu = [data["X"][n] @ beta + data["Z"][n] @ b[data["g"][n] - 1] for n in range(data["N"])]
    return float(np.sum(stats.norm.logpdf(data["y"], loc=mu, scale=sigma)))


@pytest.mark.parametrize(("Q", "kw"), [(2, {}), (3, {"group_sizes": [4, 1, 0, 6]}), (1, {})])
def test_loglik_matches_scipy(Q: int, kw: dict) -> None:
    truth, data = lmm.simulate(np.random.default_rng(10), Q=Q, **kw)
    others = [lmm.simulate(np.random.default_rng([10, s]), Q=Q, **kw)[0] for s in range(6)]
    sets = [truth, *others]
    params = {k: np.array([t[k] for t in sets]) for k in ("beta", "sigma", "b")}
    ll = lmm.loglik(params, data)
    assert ll.shape == (7,)
    expected = [_scipy_loglik(t["beta"], t["sigma"], t["b"], data) for t in sets]
    assert np.allclose(ll, expected, rtol=1e-12, atol=1e-9)
    single = lmm.loglik(truth, data)  # no draw axis: one set, a 0-d result
    assert single.shape == () and np.isclose(single, expected[0], rtol=1e-12)
    grid = {k: v[:6].reshape(2, 3, *v.shape[1:]) for k, v in params.items()}
    assert np.allclose(lmm.loglik(grid, data), ll[:6].reshape(2, 3), rtol=1e-12)


def test_loglik_accepts_json_round_tripped_data_and_checks_inputs() -> None:
    truth, data = lmm.simulate(np.random.default_rng(12))
    as_json = json.loads(json.dumps({k: np.asarray(v).tolist() for k, v in data.items()}))
    assert np.isclose(lmm.loglik(truth, as_json), lmm.loglik(truth, data), rtol=1e-14)
    with pytest.raises(SBCError, match="b"):
        lmm.loglik({"beta": truth["beta"], "sigma": truth["sigma"]}, data)
    with pytest.raises(SBCError, match="shapes"):
        lmm.loglik({**truth, "sigma": np.ones(3)}, data)


def test_loglik_is_fast_enough_for_every_fit() -> None:
    _, data = lmm.simulate(np.random.default_rng(13))
    rng = np.random.default_rng(14)
    S = 1000
    params = {
        "beta": rng.normal(size=(S, 2)),
        "sigma": rng.uniform(0.5, 2, S),
        "b": rng.normal(size=(S, 10, 2)),
    }
    ll = lmm.loglik(params, data)
    assert ll.shape == (S,) and np.all(np.isfinite(ll))


# -------------------------------------------------------------- Stan programs


def _cmdstan_available() -> bool:
    try:
        import cmdstanpy

        cmdstanpy.cmdstan_path()
    except Exception:
        return False
    return True


@pytest.mark.stan
@pytest.mark.skipif(not _cmdstan_available(), reason="no CmdStan installation found")
def test_stan_programs_accept_the_data_and_expose_the_same_variables(tmp_path: Path) -> None:
    """Compiles the three LMM programs (about a minute) and runs short fits."""
    import cmdstanpy

    names = ("lmm_centered", "lmm_noncentered", "lmm_broken_tau")
    for name in names:  # compile copies, so no executables land in the repository
        shutil.copy(STAN_DIR / f"{name}.stan", tmp_path / f"{name}.stan")
    with ThreadPoolExecutor(len(names)) as pool:
        models = dict(
            zip(
                names,
                pool.map(lambda n: cmdstanpy.CmdStanModel(stan_file=tmp_path / f"{n}.stan"), names),
                strict=True,
            )
        )
    truth, data = lmm.simulate(np.random.default_rng(2024), truth="seed")
    shapes = {}
    for name, model in models.items():
        fit = model.sample(
            data=data, chains=1, iter_warmup=200, iter_sampling=200, seed=1,
            show_progress=False, output_dir=tmp_path / f"out_{name}",
        )  # fmt: skip
        variables = fit.stan_variables()
        shapes[name] = {k: variables[k].shape for k in lmm.TRUTH_KEYS}
        for k, v in truth.items():
            assert variables[k].shape == (200, *np.shape(v)), (name, k)
        assert np.allclose(variables["rho"][:, 0], variables["R"][:, 1, 0])
        ll = lmm.loglik({k: variables[k] for k in ("beta", "sigma", "b")}, data)
        assert ll.shape == (200,) and np.all(np.isfinite(ll))
    assert shapes["lmm_centered"] == shapes["lmm_noncentered"] == shapes["lmm_broken_tau"]
    del models["lmm_broken_tau"]  # the same program as the centred one apart from one prior
    # other designs: unequal groups with Q = 3, and Q = 1 (rho has no columns then)
    for kw in ({"Q": 3, "group_sizes": [3, 6, 1, 0, 4]}, {"Q": 1, "K": 1, "groups": 3}):
        truth, data = lmm.simulate(np.random.default_rng(5), **kw)
        for name, model in models.items():
            fit = model.sample(
                data=data, chains=1, iter_warmup=50, iter_sampling=50, seed=2,
                show_progress=False, output_dir=tmp_path / f"out_{name}_{kw['Q']}",
            )  # fmt: skip
            variables = fit.stan_variables()
            for k, v in truth.items():
                assert variables[k].shape == (50, *np.shape(v)), (name, kw, k)
            if kw["Q"] == 3:  # rho is R's strict lower triangle, column by column
                assert np.array_equal(variables["rho"], lmm.rho_from_R(variables["R"]))


def test_noncentered_parameters_are_the_simulators_own_standard_normals():
    """stan/lmm_noncentered.stan's b = (diag(tau) L_R z)': z are the standard normals that
    `simulate` drew b from, L_R the Cholesky factor of R (`[precheck] parameters`)."""
    truth, data = lmm.simulate(np.random.default_rng(3), groups=6)
    p = lmm.noncentered_parameters(truth, data)
    assert p["z"].shape == (2, 6) and p["L_R"].shape == (2, 2)
    assert np.allclose((np.diag(truth["tau"]) @ p["L_R"] @ p["z"]).T, truth["b"])
    assert np.allclose(p["L_R"] @ p["L_R"].T, truth["R"])
