"""thin_ranks = "auto" (sbc.thinning): the rule on chains whose ESS is known, AR(1) chains.

An AR(1) chain x_t = phi x_(t-1) + sqrt(1 - phi^2) e_t started from N(0, 1) is stationary
with N(0, 1) margins and ESS per draw (1 - phi) / (1 + phi): the rule can be checked
against exact numbers, and the whole loop (look, continue the chains, look again, thin) run
by continuing the AR(1) chains themselves, as `extend` continues CmdStan's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sbc.backends.convergence import ess_bulk, ess_tail
from sbc.ranks import rank_of_truth
from sbc.thinning import AutoThinning, kept, plan_thinning


def ar1(rng: np.random.Generator, phi: float, chains: int, n: int, start=None) -> np.ndarray:
    """(chains, n) AR(1) draws with N(0, 1) margins, each chain continuing from `start`."""
    x = np.empty((chains, n))
    prev = rng.normal(size=chains) if start is None else phi * start + rng.normal(
        scale=math.sqrt(1 - phi**2), size=chains
    )
    x[:, 0] = prev
    noise = rng.normal(scale=math.sqrt(1 - phi**2), size=(chains, n))
    for t in range(1, n):
        x[:, t] = phi * x[:, t - 1] + noise[:, t]
    return x


def ess_per_draw(phi: float) -> float:
    return (1 - phi) / (1 + phi)


def plan(x: np.ndarray, rule: AutoThinning, **kw):
    q = x[None]  # one quantity: (1, chains, draws)
    return plan_thinning(ess_bulk(q), ess_tail(q), x.shape[0], x.shape[1], rule, **kw)


def test_independent_draws_are_kept_as_far_apart_as_the_chains_allow():
    x = np.random.default_rng(1).normal(size=(2, 503))
    t = plan(x, AutoThinning(L=100))
    assert t.extend == 0 and t.every == 503 // 50 and t.start == 502 - 49 * 10
    assert kept(x, t).shape == (2, 50) and kept(x, t)[0, -1] == x[0, -1]  # the last draw too
    assert t.ess > 500  # about 1006 independent draws


def test_L_not_a_multiple_of_the_chains_keeps_a_whole_number_per_chain():
    x = np.random.default_rng(2).normal(size=(3, 200))
    t = plan(x, AutoThinning(L=100))
    assert kept(x, t).shape == (3, 34)  # ceil(100 / 3) per chain: every fit has L = 102


def test_a_short_chain_is_continued_by_about_what_its_ess_says():
    phi = 0.9  # ESS per draw 0.0526: 2 x 200 draws have an ESS of about 21
    rng = np.random.default_rng(3)
    rule = AutoThinning(L=100, min_ess_per_draw=1.0, max_draws=10_000)
    asked = []
    for _ in range(40):
        t = plan(ar1(rng, phi, 2, 200), rule, max_growth=math.inf)
        asked.append(200 + t.extend)
    # to reach ESS 100 with 2 chains: 100 / (2 x 0.0526) = 950 draws per chain, x 1.1 overshoot;
    # the ESS of 400 draws is estimated with ~20 % error, so the median is within 15 %
    assert np.median(asked) == pytest.approx(950 * 1.1, rel=0.15)


def test_continuations_grow_geometrically_and_stop_at_max_draws():
    rng = np.random.default_rng(4)
    x = ar1(rng, 0.99, 2, 100)  # ESS per draw 0.005: far from enough
    whole = {"give_up": math.inf}  # every continuation the limit allows
    t = plan(x, AutoThinning(L=100, max_draws=4000), **whole)
    assert t.extend == 50  # grows by at most half the draws (MAX_GROWTH)
    t = plan(x, AutoThinning(L=100, max_draws=4000), max_growth=2.0, **whole)
    assert t.extend == 200
    t = plan(x, AutoThinning(L=100, max_draws=120), **whole)
    assert t.extend == 20  # never past max_draws
    t = plan(x, AutoThinning(L=100, max_draws=100), **whole)
    assert t.extend == 0 and kept(x, t).shape == (2, 50)  # at the limit: thinned as it is
    t = plan(x, AutoThinning(L=100), can_extend=False)
    assert t.extend == 0


def test_a_fit_that_cannot_reach_the_target_within_4_x_max_draws_is_not_continued():
    """GIVE_UP: the ESS so far projects the draws the target needs; beyond 4 x max_draws the
    fit is thinned as it is (it would end below target after the dearest draws anyway)."""
    rng = np.random.default_rng(5)
    rule = AutoThinning(L=100, min_ess_per_draw=0.5, max_draws=500)  # target: ESS 50
    x = ar1(rng, 0.9, 2, 200)  # ESS per draw 0.0526: about 21 now, 475 draws per chain needed
    assert plan(x, rule).extend > 0
    # 0.0005 per draw; 200 draws estimate an ESS of about 3 (far too high), so 3400 draws:
    # more than 4 x 500
    stuck = ar1(rng, 0.999, 2, 200)
    t = plan(stuck, rule)
    assert t.extend == 0 and t.ess < 50 and kept(stuck, t).shape == (2, 50)
    assert plan(stuck, rule, give_up=math.inf).extend > 0  # without the rule: continued
    # the projection is the draws x (target / ESS): exactly at 4 x max_draws it still continues
    ess = np.array([50 * 200 / 2000])
    assert plan_thinning(ess, ess, 2, 200, rule).extend > 0
    assert plan_thinning(ess * 0.99, ess * 0.99, 2, 200, rule).extend == 0


def test_a_quantity_without_an_ess_does_not_hold_the_fit_back():
    nan = np.full(1, np.nan)
    t = plan_thinning(nan, nan, 2, 100, AutoThinning(L=100, min_ess_per_draw=1.0))
    assert t.extend == 0 and math.isnan(t.ess)
    with pytest.raises(ValueError, match="cannot give 50"):
        plan_thinning(nan, nan, 2, 40, AutoThinning(L=100))


@pytest.mark.parametrize("phi", [0.5, 0.9])
def test_the_whole_loop_gives_near_independent_draws_and_near_uniform_ranks(phi):
    """The runner's loop on AR(1) chains: look, continue each chain from its last draw, look
    again, thin. Over 1000 fits: the kept draws' ESS is about L, never far below the target,
    and the ranks of a truth drawn from the posterior (N(0, 1)) are centred and close to
    uniform.

    Not exactly uniform: a rule that stops when the estimated ESS is high stops more often
    when the chains happen to agree, so the kept draws are a little narrower than the
    posterior (a U-shape). Measured on these chains (L = 20, first look at 10 draws, 8000
    fits): rank variance 1.09 (phi 0.5) and 1.12 (phi 0.9) times the uniform's, against
    1.02 for a fixed stride with the same ESS, and 1.29 with min_ess_per_draw = 0.5 (1.05
    fixed). The bound below (1.25; standard error 0.028 at 1000 fits, so 4 or more standard
    errors above the measured values) fails a rule that tilts the ranks more than that."""
    rng = np.random.default_rng(6)
    rule = AutoThinning(L=20, min_ess_per_draw=1.0, max_draws=20_000)
    ranks, final, kept_ess, continued = [], [], [], 0
    for _ in range(1000):
        x = ar1(rng, phi, 2, 10)
        while (t := plan(x, rule)).extend:
            x = np.concatenate([x, ar1(rng, phi, 2, t.extend, start=x[:, -1])], axis=1)
            continued += 1
        k = kept(x, t)
        final.append(t.ess / 20)
        kept_ess.append(float(ess_bulk(k[None])[0]) / 20)
        ranks.append(int(rank_of_truth(rng.normal(size=1), k.reshape(-1, 1), rng)[0]))
    assert continued > 900  # 2 x 10 draws never have an ESS of 20 here
    assert min(final) >= 1.0  # every fit stopped at its target (none reached max_draws)
    # thinned to 20 draws whose chains had an ESS >= 20: the kept ones are near-independent
    assert np.median(kept_ess) > 0.8
    r = np.asarray(ranks, dtype=float)
    uniform_var = ((20 + 1) ** 2 - 1) / 12
    # centred: the mean rank's standard error is sqrt(36.7 / 1000) = 0.19; 4 of them
    assert abs(r.mean() - 10) < 4 * math.sqrt(uniform_var / 1000)
    assert ((r - 10) ** 2).mean() / uniform_var < 1.25


def test_settings_checks():
    from sbc.errors import SBCError

    with pytest.raises(SBCError, match=r"min_ess_per_draw: must be in \(0, 10\]"):
        AutoThinning(min_ess_per_draw=0).check("thin_ranks_auto", "x.toml")
    assert AutoThinning(L=100).per_chain(4) == 25 and AutoThinning(L=10).per_chain(4) == 3
