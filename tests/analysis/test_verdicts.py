"""The verdict table and the Calibration object (sbc.analysis.verdicts)."""

from __future__ import annotations

import numpy as np
from rank_samples import copula_ranks, exact_ranks, ranks_table

from sbc.analysis.uniformity import holm
from sbc.analysis.verdicts import VERDICT_COLUMNS, calibrate


def study_table(rng: np.random.Generator, S: int = 150, J: int = 8, b2_scale: float = 0.6):
    cols = {"beta[1]": exact_ranks(rng, S), "beta[2]": exact_ranks(rng, S)}
    cols |= {"sigma": exact_ranks(rng, S), "loglik": exact_ranks(rng, S)}
    b1 = copula_ranks(rng, 1, S, J, 0.5)[0]
    b2 = copula_ranks(rng, 1, S, J, 0.5, scale=b2_scale)[0]  # too narrow
    for j in range(J):
        cols[f"b[{j + 1},1]"] = b1[:, j]
        cols[f"b[{j + 1},2]"] = b2[:, j]
    return ranks_table(cols)


def test_verdict_table_order_pooled_rows_and_one_holm_family():
    rng = np.random.default_rng(10)
    S, J = 150, 8
    order = ["beta[1]", "beta[2]", "sigma", "loglik"]
    cal = calibrate(study_table(rng, S, J), pool=["b"], order=order, alpha=0.01)
    v = cal.table
    assert list(v.columns) == VERDICT_COLUMNS
    names = list(v["quantity"])
    assert names[:6] == ["beta[1]", "beta[2]", "sigma", "loglik", "b[*,1]", "b[*,2]"]
    assert names[6:] == [f"b[{j},{q}]" for q in (1, 2) for j in range(1, J + 1)]
    pooled = v.set_index("quantity").loc[["b[*,1]", "b[*,2]"]]
    assert (pooled["kind"] == "pooled").all() and (pooled["n"] == S * J).all()
    assert pooled[["gamma", "log_gamma_ratio", "p_chi2"]].isna().all().all()
    assert np.allclose(v["p_holm"], holm(v["p_value"]))  # one family: all rows
    assert (v["calibrated"] == (v["p_holm"] >= 0.01)).all()
    # sd × 0.6 on b[*,2]: detected by the pooled row (power ≈ 1) with the right shape; the
    # calibrated scalars pass (each fails with probability ≤ 1 % before Holm).
    assert not pooled.loc["b[*,2]", "calibrated"]
    assert pooled.loc["b[*,2]", "shape"].startswith("posterior too narrow")
    assert v[v["kind"] == "scalar"]["calibrated"].all()
    assert ((v["lo90"] <= v["coverage90"]) & (v["coverage90"] <= v["hi90"])).all()
    assert (v.loc[v["calibrated"], "shape"] == "calibrated").all()


def test_headline_reads_in_one_breath_worst_first():
    rng = np.random.default_rng(10)
    cal = calibrate(study_table(rng), pool=["b"])
    line = cal.headline()
    assert line.startswith("Not calibrated: ") and line.count("\n") == 0
    bad = cal.failing()
    assert list(bad["p_holm"]) == sorted(bad["p_holm"])  # worst first
    first = bad.iloc[0]
    assert f"worst first: {first['quantity']} ({first['shape']}, p = " in line
    named = [q for q in bad["quantity"] if f"{q} (" in line]
    assert len(named) == min(5, len(bad))  # each named once, with its shape
    if len(bad) > 5:
        assert line.endswith(f"; and {len(bad) - 5} more.")
    good = calibrate(ranks_table({"mu": exact_ranks(np.random.default_rng(5), 200)}))
    assert good.passed
    assert good.headline() == (
        "Calibrated: no quantity departs from uniform ranks at α = 0.01 "
        "(Holm over 1 test, 200 simulations)."
    )
