"""Quantity names, study order and declared pooling (sbc.analysis.quantities)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from rank_samples import ranks_table

from sbc.analysis import quantities as qn
from sbc.analysis.uniformity import chi_square_test


def test_parse_and_pooled_names():
    assert qn.parse_quantity("b[3,2]") == ("b", (3, 2))
    assert qn.parse_quantity("sigma") == ("sigma", ())
    assert qn.parse_quantity("weird[a]") == ("weird[a]", ())
    assert qn.pooled_name("b[3,2]") == "b[*,2]" and qn.pooled_name("theta[4]") == "theta[*]"


def test_order_follows_the_study_and_puts_pooled_blocks_last():
    names = ["b[2,1]", "loglik", "tau[2]", "b[10,1]", "rho[1]", "beta[10]", "beta[2]", "sigma"]
    names += ["b[1,1]", "b[*,1]", "zeta", "tau[1]"]
    order = ["beta[2]", "beta[10]", "sigma", "tau[1]", "tau[2]", "rho[1]", "b[1,1]", "loglik"]
    assert qn.order_quantities(names, pool=["b"], order=order) == [
        "beta[2]", "beta[10]", "sigma", "tau[1]", "tau[2]", "rho[1]", "loglik", "zeta",
        "b[*,1]", "b[1,1]", "b[2,1]", "b[10,1]",
    ]  # fmt: skip
    # nothing declared: nothing pooled, order of appearance
    assert qn.order_quantities(["z", "a", "b[1,1]"]) == ["z", "a", "b[1,1]"]


def test_panels_pool_only_declared_variables():
    rng = np.random.default_rng(11)
    cols = {f"b[{j},1]": rng.integers(0, 101, 40) for j in range(1, 5)}
    cols |= {f"Omega[{i},{j}]": rng.integers(0, 101, 40) for i in (1, 2) for j in (1, 2)}
    df = ranks_table(cols)
    names = [p.name for p in qn.quantity_panels(df)]
    assert "b[*,1]" not in names and "Omega[*,1]" not in names
    panels = {p.name: p for p in qn.quantity_panels(df, pool=["b"])}
    assert "b[*,1]" in panels and "Omega[*,1]" not in panels
    pooled = panels["b[*,1]"]
    assert pooled.kind == "pooled" and len(pooled.rows) == 160
    assert sorted(set(pooled.members)) == [1, 2, 3, 4]
    assert np.array_equal(pooled.clusters, pooled.rows["sim"].to_numpy())
    assert panels["b[2,1]"].kind == "member" and panels["Omega[1,2]"].kind == "scalar"


def test_mixed_L_is_put_on_one_scale():
    # Uniform ranks on 0..100 and 0..30 must become uniform ranks on 0..30 (randomised PIT).
    # Chi-square on 4000 of them; false-failure rate 0.1 %.
    rng = np.random.default_rng(12)
    Ls = np.r_[np.full(2000, 100), np.full(2000, 30)]
    df = pd.DataFrame({"rank": rng.integers(0, Ls + 1), "L": Ls})
    ranks, Lc = qn.common_ranks(df)
    assert Lc == 30 and ranks.min() >= 0 and ranks.max() <= 30
    assert chi_square_test(ranks, 30, bins=31).p_value > 0.001
