"""sbc.backends.convergence against arviz-stats, the reference implementation of the same
definitions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sbc.backends import convergence

array_stats = pytest.importorskip("arviz_stats.base").array_stats
AXES = {"chain_axis": 1, "draw_axis": 2}


def _ar1(rng: np.random.Generator, params: int, chains: int, draws: int) -> np.ndarray:
    """Chains of AR(1) processes, from anti-correlated to strongly autocorrelated."""
    phi = rng.uniform(-0.9, 0.99, size=(params, 1))
    noise = rng.normal(size=(params, chains, draws))
    x = np.empty_like(noise)
    x[..., 0] = noise[..., 0]
    for t in range(1, draws):
        x[..., t] = phi * x[..., t - 1] + noise[..., t]
    return x


def _cases():
    rng = np.random.default_rng(20261125)
    for i in range(60):
        params, chains, draws = (int(rng.integers(lo, hi)) for lo, hi in ((1, 6), (1, 5), (4, 80)))
        x = _ar1(rng, params, chains, draws)
        if i % 4 == 0:
            x = np.round(x, 1)  # ties in the ranks and in the folded values
        if i % 7 == 0:
            x[0] = 3.0  # a constant parameter
        if i % 9 == 0:
            x[-1, 0, 1] = np.nan
        yield pytest.param(x, id=f"{i}-P{params}-C{chains}-n{draws}")
    yield pytest.param(_ar1(rng, 36, 2, 500), id="lmm-sized")


@pytest.mark.parametrize("x", list(_cases()))
def test_rhat_and_ess_equal_arviz_stats(x):
    with np.errstate(all="ignore"):
        expected = {
            "ess_bulk": array_stats.ess(x, method="bulk", **AXES),
            "ess_tail": array_stats.ess(x, method="tail", prob=(0.05, 0.95), **AXES),
        }
        if x.shape[1] >= 2:
            expected["rhat"] = array_stats.rhat(x, **AXES)
    together = dict(zip(("rhat", "ess_bulk", "ess_tail"), convergence.convergence(x), strict=True))
    for name, want in expected.items():
        got = getattr(convergence, name)(x)
        np.testing.assert_allclose(got, want, rtol=1e-10, equal_nan=True, err_msg=name)
        np.testing.assert_array_equal(together[name], got, err_msg=f"convergence(): {name}")
    if x.shape[1] < 2:
        assert np.isnan(together["rhat"]).all()


def test_too_few_draws_or_chains_give_nan():
    x = np.random.default_rng(1).normal(size=(3, 2, 3))
    for f in (convergence.rhat, convergence.ess_bulk, convergence.ess_tail):
        assert np.isnan(f(x)).all()
    assert np.isnan(convergence.rhat(x[:, :1, :])).all()


def test_no_parameters_give_empty_diagnostics():
    """(0, chains, draws): a fit none of whose parameters varies (benchmarks/_replay.py)."""
    x = np.empty((0, 2, 100))
    for f in (convergence.rhat, convergence.ess_bulk, convergence.ess_tail):
        assert f(x).shape == (0,)
    assert [v.shape for v in convergence.convergence(x)] == [(0,), (0,), (0,)]


def test_ebfmi_equals_arviz_stats():
    energy = _ar1(np.random.default_rng(2), 1, 4, 300)[0]
    np.testing.assert_allclose(convergence.ebfmi(energy), array_stats.bfmi(energy), rtol=1e-12)


def test_average_ranks_equal_scipy():
    a = np.random.default_rng(3).normal(size=(6, 200)).round(1)  # many ties
    np.testing.assert_array_equal(convergence._average_ranks(a), stats.rankdata(a, axis=1))


def test_diagnostics_see_a_chain_stuck_elsewhere():
    """What the numbers are for: R-hat flags chains that disagree, ESS flags autocorrelation."""
    rng = np.random.default_rng(4)
    good = rng.normal(size=(1, 4, 1000))
    stuck = good.copy()
    stuck[0, 3] += 3
    assert convergence.rhat(good)[0] < 1.01 < 1.1 < convergence.rhat(stuck)[0]
    assert convergence.ess_bulk(good)[0] > 3000
    sticky = np.repeat(rng.normal(size=(1, 4, 100)), 10, axis=2)  # 400 distinct values
    assert convergence.ess_bulk(sticky)[0] < 600
