"""Sequential SBC: the e-process is a test martingale, e-Holm controls the family-wise error
at any number of looks, and the monitor's decision does not depend on arrival order.

Monte Carlo thresholds state their false-failure rate; all seeds are fixed, so a run either
always passes or always fails.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import exact_study

import sbc
from sbc.analysis.evalues import (
    DEFAULT_DESIGN,
    _bins,
    _param_table,
    eholm_thresholds,
    false_alarm_bound,
    first_rejections,
    log_e_process,
)
from sbc.analysis.rank_model import rank_pmf
from sbc.analysis.sequential import SequentialMonitor
from sbc.backends.exact import ExactNormalBackend
from sbc.errors import SBCError
from sbc.ranks import rank_of_truth
from sbc.simulators.normal import simulate

L = 100
NAMES = ["mu[1]", "mu[2]", "mu[3]"]


def exact_ranks(seed: int, studies: int, sims: int, sd_scale: float = 1.0) -> np.ndarray:
    """(studies, sims, 3) ranks of the exact_normal study (3 means, 10 obs, L = 100), all
    simulations at once through the real simulator, backend and ranking."""
    rng = np.random.default_rng(seed)
    truth, data = simulate(rng, K=studies * sims * 3, N=10)
    backend = ExactNormalBackend(chains=1, draws_per_chain=L, sd_scale=sd_scale)
    draws = backend.fit(data, seed=seed, workdir=Path("."))["mu"].reshape(L, -1)
    return rank_of_truth(truth["mu"], draws, rng).reshape(studies, sims, 3)


def rows_of(ranks: np.ndarray) -> list[dict]:
    return [{"quantity": q, "rank": int(r), "L": L} for q, r in zip(NAMES, ranks, strict=True)]


def feed(mon: SequentialMonitor, study: np.ndarray, order=None) -> SequentialMonitor:
    for sim in order if order is not None else range(len(study)):
        mon.update(rows_of(study[sim]), sim=int(sim))
    return mon


# -- validity ---------------------------------------------------------------------------------


def test_every_alternative_is_a_probability_distribution():
    for LL in (100, 37, 6):
        assert np.allclose(np.exp(_param_table(LL, DEFAULT_DESIGN)).mean(1), 1)
        for B in (2, 4, 8, 16):
            which, log_pi = _bins(LL, B)
            pi = np.bincount(which, minlength=B) / (LL + 1)
            assert np.allclose(np.exp(log_pi), pi)  # exact masses, also for unequal bins
    p = rank_pmf(L, 0.7, 0.0)
    assert p.sum() == pytest.approx(1, abs=1e-12)
    assert p[0] > 0.04 and p[L] > 0.04 and p[L // 2] < 1 / (L + 1)  # ∪ when too narrow


@pytest.mark.parametrize("pool", [(), ("b",)])
def test_next_factor_has_expectation_exactly_one_under_uniform_ranks(pool):
    """The martingale property through the monitor's own code: from any past, the average of
    E_{n+1}/E_n over the L + 1 equally likely next ranks is 1 (pooled rows too, here with
    perfectly dependent members, the worst case for a product)."""
    names = [f"b[{j},{k}]" for j in range(1, 5) for k in (1, 2)]
    mon = SequentialMonitor(names, 20, 0.05, pool=pool)
    rng = np.random.default_rng(3)
    for sim in range(15):  # an arbitrary past, far from uniform
        mon.update([{"quantity": q, "rank": int(rng.integers(0, 6))} for q in names], sim=sim)
    assert ("b[*,1]" in mon.units) == bool(pool)
    before = mon.log_e_values()
    ratios = []
    for r in range(21):
        m = copy.deepcopy(mon)
        m.update([{"quantity": q, "rank": r} for q in names], sim=15)
        ratios.append(np.exp(m.log_e_values() - before))
    assert np.allclose(np.mean(ratios, axis=0), 1.0, atol=1e-10)


def test_e_value_has_mean_one_at_a_fixed_n_by_monte_carlo():
    """E[E_n] = 1 under H0: the mean of 20 000 null e-values at n = 25 lies within 4 standard
    errors of 1 (false-failure rate ≈ 6e-5 by the CLT)."""
    ranks = np.random.default_rng(11).integers(0, L + 1, size=(20_000, 25))
    e = np.exp(log_e_process(ranks, L)[:, -1])
    se = e.std(ddof=1) / math.sqrt(e.size)
    assert abs(e.mean() - 1) < 4 * se
    assert e.mean() <= 1 + 4 * se


def test_vectorised_engine_equals_the_monitor():
    study = exact_ranks(5, 1, 150, sd_scale=0.8)[0]
    mon = SequentialMonitor(NAMES, L, 0.01)
    path = []
    for sim in range(150):
        mon.update(rows_of(study[sim]), sim=sim)
        path.append(mon.log_e_values())
    assert np.allclose(np.array(path).T, log_e_process(study.T, L), rtol=1e-9, atol=1e-9)
    first = first_rejections(study[None], L, 0.01)[0]
    d = mon.decision()
    assert d is not None and d.n_sims == first.min()
    assert set(d.rejected) == {NAMES[q] for q in np.flatnonzero(first == first.min())}


def test_eholm_threshold_is_the_closed_testing_rule():
    rng = np.random.default_rng(2)
    alpha = 0.05
    for _ in range(200):
        e = np.exp(rng.normal(2, 2, size=5))
        thr = eholm_thresholds(e, alpha)
        for q in range(5):
            others = [j for j in range(5) if j != q]
            closed = all(
                (e[q] + e[list(s)].sum()) / (len(s) + 1) >= 1 / alpha
                for k in range(5)
                for s in itertools.combinations(others, k)
            )
            assert closed == (e[q] >= thr[q])
        assert np.all(thr >= 1 / alpha - 1e-9) and np.all(thr <= 5 / alpha + 1e-9)


def test_false_alarm_rate_of_calibrated_exact_studies():
    """400 calibrated exact studies, 250 simulations, a look after every one: the share with
    any rejection is ≤ α + 3 Monte Carlo sd (false-failure rate ≤ 0.2 % if the procedure is
    valid; Ville's bound makes the true rate well below α)."""
    ranks = exact_ranks(20261125, 400, 250)
    for alpha in (0.05, 0.2):
        alarms = (first_rejections(ranks, L, alpha).min(axis=1) <= 250).mean()
        assert alarms <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / 400), (alpha, alarms)
    assert false_alarm_bound(0, 1000) == pytest.approx(1 - 0.05 ** (1 / 1000))


def test_posterior_sd_times_0_7_is_detected_within_200_simulations():
    """sd × 0.7 on all 3 quantities, α = 0.01: the planner predicts detection by 200 in
    > 99 % of studies, so ≥ 40 of 50 fails with probability < 1e-9."""
    ranks = exact_ranks(7, 50, 200, sd_scale=0.7)
    stops = first_rejections(ranks, L, 0.01).min(axis=1)
    assert (stops <= 200).sum() >= 40
    assert np.median(stops) < 100


# -- the monitor: order, replay, gaps ---------------------------------------------------------


def test_decision_does_not_depend_on_arrival_order_or_batching():
    study = exact_ranks(9, 1, 120, sd_scale=0.75)[0]
    ref = feed(SequentialMonitor(NAMES, L, 0.01, look_every=5), study)
    assert ref.decision() is not None and ref.decision().n_sims % 5 == 0
    rng = np.random.default_rng(1)
    shuffled = feed(SequentialMonitor(NAMES, L, 0.01, look_every=5), study, rng.permutation(120))
    assert shuffled.decision() == ref.decision()
    assert np.array_equal(shuffled.log_e_values(), ref.log_e_values())
    order = rng.permutation(120)
    batched = SequentialMonitor(NAMES, L, 0.01, look_every=5)
    for chunk in np.array_split(order, 7):  # several simulations per call, as a DataFrame
        batched.update(pd.DataFrame([{"sim": s, **r} for s in chunk for r in rows_of(study[s])]))
    assert batched.decision() == ref.decision()
    assert np.array_equal(batched.log_e_values(), ref.log_e_values())


def test_gaps_hold_the_monitor_back_and_failed_simulations_are_skipped_in_place():
    study = exact_ranks(4, 1, 6)[0]
    mon = SequentialMonitor(NAMES, L, 0.05)
    for sim in (1, 2, 4):
        mon.update(rows_of(study[sim]), sim=sim)
    assert mon.n_sims == 0 and mon.pending == [1, 2, 4] and mon.next_sim == 0
    mon.skip(0)
    assert mon.n_sims == 2 and mon.next_sim == 3 and mon.pending == [4]
    mon.add(sbc.store.SimulationResult(sim=3, seed=0, status="failed"))
    assert mon.n_sims == 3 and mon.next_sim == 5
    with pytest.raises(SBCError, match="already given"):
        mon.update(rows_of(study[2]), sim=2)
    with pytest.raises(SBCError, match=r"sim=\.\.\."):
        mon.update(rows_of(study[5]))
    ref = feed(SequentialMonitor(NAMES, L, 0.05), study[[1, 2, 4]])
    assert np.array_equal(mon.log_e_values(), ref.log_e_values())


def test_replaying_a_stored_study_equals_streaming_it(tmp_path):
    path = exact_study(tmp_path, name="narrow", sims=60, backend={"sd_scale": 0.6})
    folder = sbc.run(path, workers=2, progress=False)
    ranks = sbc.load(folder).ranks
    replay = SequentialMonitor.from_ranks(ranks, alpha=0.01, look_every=2)
    with sbc.store.Store.open_for_reading(folder) as store:
        from_store = SequentialMonitor.from_store(store, alpha=0.01, look_every=2)
    streaming = SequentialMonitor(["mu[1]", "mu[2]"], alpha=0.01, look_every=2)
    by_sim = {s: g.drop(columns="sim").to_dict("records") for s, g in ranks.groupby("sim")}
    for sim in np.random.default_rng(0).permutation(sorted(by_sim)):
        streaming.update(by_sim[sim], sim=sim)
    d = replay.decision()
    assert d is not None and d.n_sims < 60 and d.n_sims % 2 == 0
    assert streaming.decision() == d == from_store.decision()
    assert "too narrow" in d.shape and d.quantity in ("mu[1]", "mu[2]")
    assert d.message().startswith(f"stopped early: {d.quantity} is not calibrated")
    # resuming with only a prefix stored reaches the same decision once the rest arrives
    part = SequentialMonitor.from_ranks(ranks[ranks["sim"] < 10], ["mu[1]", "mu[2]"], L=None)
    part.update(ranks[ranks["sim"] >= 10])
    assert part.decision() == SequentialMonitor.from_ranks(ranks).decision()


def test_pooled_rows_join_the_family():
    names = [f"b[{j},{k}]" for j in range(1, 5) for k in (1, 2)] + ["sigma"]
    assert "b[*,1]" not in SequentialMonitor(names, L, 0.01).units  # pooled only if declared
    mon = SequentialMonitor(names, L, 0.01, pool=["b"])
    assert mon.units[0] == "sigma" and "b[*,1]" in mon.units and len(mon.units) == 11
    rng = np.random.default_rng(8)
    for sim in range(80):  # b[., 1] all narrow together: ranks at the ends
        rows = [{"quantity": q, "rank": int(rng.integers(0, L + 1))} for q in names]
        end = int(rng.choice([0, L]))
        rows += [{"quantity": f"b[{j},1]", "rank": end} for j in range(1, 5)]
        mon.update(rows[-4:] + [r for r in rows[:-4] if not r["quantity"].endswith(",1]")],
                   sim=sim)  # fmt: skip
    d = mon.decision()
    assert d is not None and "b[*,1]" in d.rejected
    status = mon.status()
    assert set(status.columns) >= {"quantity", "e_value", "threshold", "rejected"}
    assert status.loc[status["quantity"] == "b[*,1]", "kind"].item() == "pooled"


def test_bad_arguments_are_one_line_errors():
    for kwargs in ({"alpha": 0}, {"alpha": 1.5}, {"look_every": 0}, {"look_every": 2.5}):
        with pytest.raises(SBCError):
            SequentialMonitor(NAMES, L, **kwargs)
    with pytest.raises(SBCError):
        SequentialMonitor([], L)
    mon = SequentialMonitor(NAMES, None)
    with pytest.raises(SBCError, match="no L"):
        mon.update([{"quantity": "mu[1]", "rank": 3}], sim=0)
    with pytest.raises(SBCError, match="outside"):
        SequentialMonitor(NAMES, 10).update([{"quantity": "mu[1]", "rank": 11}], sim=0)
