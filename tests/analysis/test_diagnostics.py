"""Per-fit diagnostics judged relative to the kept draws L (sbc.analysis.diagnostics)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from rank_samples import exact_ranks, ranks_table

from sbc.analysis import diagnostics as dg
from sbc.analysis.verdicts import calibrate


def sims_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sim": [0, 1, 2, 3, 4, 5],
            "status": ["ok", "ok", "ok", "ok", "ok", "failed"],
            "divergences": [0, 3, 0, np.nan, 1, np.nan],
            "treedepth_hits": [0, 0, 2, 0, 0, np.nan],
            "ebfmi_min": [0.9, 0.25, 0.5, 0.6, np.nan, np.nan],
            "rhat_max": [1.0, 1.03, 1.0, 1.015, 1.0, np.nan],
            "ess_bulk_min": [400, 40, 400, 400, 400, np.nan],
            "ess_tail_min": [400, 400, 45, 60, 400, np.nan],
        }
    )


def test_rules_are_relative_to_the_kept_draws():
    sims = sims_table()
    L = pd.Series([100, 100, 100, 100, 100, np.nan], index=sims.index)
    d = dg.diagnostics_summary(sims, L, chains=2).set_index("diagnostic")
    assert d.loc["failed", ["flagged", "known", "total"]].tolist() == [1, 6, 6]
    assert d.loc["divergences", ["flagged", "known", "total"]].tolist() == [2, 4, 5]
    assert d.loc["divergences", "share"] == pytest.approx(0.5)
    assert d.loc["treedepth_hits", "flagged"] == 1
    assert d.loc["ebfmi_min", ["flagged", "known"]].tolist() == [1, 4]
    # ESS / L < 0.5 with L = 100: 40 and 45 are flagged, 60 is not
    assert d.loc["ess_bulk_min", "flagged"] == 1 and d.loc["ess_tail_min", "flagged"] == 1
    assert d.loc["ess_bulk_min", "rule"] == "ess_bulk_min / L < 0.5"
    # R-hat limit √(1 + 2/50) = 1.0198 for 2 chains and L = 100: 1.03 flagged, 1.015 not
    assert d.loc["rhat_max", "flagged"] == 1
    assert d.loc["rhat_max", "rule"] == "rhat_max > 1.02"
    assert d.loc["any", "flagged"] == 3  # sims 1, 2, 4
    # with L = 1000 kept draws the same ESS values are all too low
    d1000 = dg.diagnostics_summary(sims, L * 10, chains=2).set_index("diagnostic")
    assert d1000.loc["ess_bulk_min", "flagged"] == 5


def test_rhat_limit_is_the_one_an_ess_of_half_l_implies():
    # R̂² ≈ 1 + m/ESS (Vats & Knudson 2021) with ESS = L/2
    rule = dg.rule_named("rhat_max")
    assert rule.limit(100, 2) == pytest.approx(math.sqrt(1.04))
    assert rule.limit(1000, 4) == pytest.approx(math.sqrt(1.008))


def test_split_puts_every_ranked_simulation_somewhere():
    rng = np.random.default_rng(13)
    df = ranks_table({"mu": exact_ranks(rng, 5)})  # sim 5 failed: it has no ranks
    cal = calibrate(df, sims_table())
    split = cal.split("divergences")
    assert (split.n_flagged, split.n_clean, split.n_unknown) == (2, 2, 1)  # sim 3 unknown
    assert split.rule == "divergences > 0"
    row = split.table.set_index("quantity").loc["mu"]
    assert row["n_flagged"] == 2 and row["n_clean"] == 2
    assert {"p_holm_flagged", "calibrated_clean", "shape_flagged"} <= set(split.table.columns)
    custom = cal.split(lambda s: s["sim"] < 2)
    assert (custom.n_flagged, custom.n_clean, custom.n_unknown) == (2, 3, 0)
    with pytest.raises(ValueError):
        cal.split("nonsense")


def test_cmdstan_declarations_give_the_rules_older_results_are_judged_by():
    # Deterministic: results written before backends declared their diagnostics fall back to
    # DEFAULT_RULES, which must be what the CmdStan sample backend declares today.
    from sbc.backends.cmdstan.sample import DIAGNOSTICS

    def key(rules):
        return [(r.column, r.flag_when, r.threshold, r.per_kept_draw) for r in rules]

    assert key(dg.rules_for(DIAGNOSTICS)) == key(dg.DEFAULT_RULES)
    assert dg.rules_for(None) == dg.DEFAULT_RULES


def test_auto_thinning_summary_tells_fits_stopped_early_from_fits_at_the_limit():
    """Below-target fits are of two kinds: at max_draws, or not continued because their ESS
    projected more than GIVE_UP x max_draws (sbc.thinning); the summary counts the second."""
    sims = pd.DataFrame({
        "sim": range(4), "status": "ok", "thin_every": [5, 8, 40, 6],
        "extensions": [0, 1, 3, 0], "n_draws": [500, 800, 4000, 600],
        "ess_ranked_min": [80.0, 60.0, 20.0, 3.0],  # L = 100: the last two are below 0.5 L
    })  # fmt: skip
    L = pd.Series(100.0, index=sims.index)
    a = dg.auto_thinning_summary(sims, L, chains=1.0, max_draws=4000)
    assert a["ess_below_half"] == 2 and a["stopped_early"] == 1  # sim 3; sim 2 is at the limit
    manifest = {"study": {"thin_ranks_auto": {"max_draws": 4000}, "sampler": {"chains": 1}}}
    assert dg.max_draws_of(manifest) == 4000 and dg.max_draws_of({}) is None
    assert math.isnan(dg.auto_thinning_summary(sims, L, chains=1.0)["stopped_early"])
