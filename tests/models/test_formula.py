"""Design matrices of formula models against X and Z built by hand, for small designs: one
factor, crossed and nested factors, categorical predictors and their coding, no intercept,
correlated and uncorrelated terms; and the errors a user can make."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sbc.errors import SBCError
from sbc.models.design import Design, generate
from sbc.models.formula import build_model


def design(table: dict) -> Design:
    return Design(pd.DataFrame(table), {"test": True})


def crossed(subjects: int = 3, items: int = 4) -> Design:
    """Every subject sees every item; condition (s + i) mod 2 (a Latin square)."""
    spec = {
        "groups": {"subject": subjects, "item": items},
        "predictors": {"cond": {"values": ["a", "b"], "by": ["subject", "item"]}},
    }
    return generate(spec, "[model] design", "test")


def build(formula: str, d: Design):
    return build_model(formula, d, "[model] formula", "study.toml")


def test_the_seeds_model_one_factor_intercept_and_slope():
    x = np.tile([1.0, 2.0, 5.0], 3)
    g = np.repeat([1, 2, 3], 3)
    m = build("y ~ 1 + x + (x | group)", design({"group": g, "x": x}))
    hand = np.column_stack([np.ones(9), x])
    np.testing.assert_array_equal(m.X, hand)
    assert m.columns == ("Intercept", "x")
    (f,) = m.factors
    assert (f.label, f.name, f.levels, f.columns) == ("group", "group", ("1", "2", "3"),
                                                      ("Intercept", "x"))  # fmt: skip
    np.testing.assert_array_equal(f.Z, hand)
    np.testing.assert_array_equal(f.index, g - 1)
    assert f.block == (0, 2) and f.pairs() == [(1, 0)]
    assert m.variables() == {"beta": (2,), "sigma": (), "tau_group": (2,), "rho_group": (),
                             "b_group": (3, 2)}  # fmt: skip


def test_crossed_factors_and_a_treatment_coded_condition():
    d = crossed()
    m = build("y ~ 1 + cond + (1 + cond | subject) + (1 | item)", d)
    t = d.table
    b = (t["cond"] == "b").to_numpy(float)
    np.testing.assert_array_equal(m.X, np.column_stack([np.ones(12), b]))
    assert m.columns == ("Intercept", "cond[b]")
    assert m.codings == (
        "cond: treatment coding, reference level a; levels a -> (0), b -> (1) in columns cond[b]",
    )
    subject, item = m.factors
    np.testing.assert_array_equal(subject.Z, np.column_stack([np.ones(12), b]))
    np.testing.assert_array_equal(subject.index, t["subject"].to_numpy() - 1)
    np.testing.assert_array_equal(item.Z, np.ones((12, 1)))
    np.testing.assert_array_equal(item.index, t["item"].to_numpy() - 1)
    assert (subject.J, subject.Q, item.J, item.Q) == (3, 2, 4, 1)
    assert item.block is None and item.pairs() == []
    assert "rho_item" not in m.variables()


def test_block_diagonal_z_is_formulaes_own_z_per_term():
    """The compact (Z_f, g_f) carry exactly formulae's group-specific design matrices: the
    seed's block-diagonal Z_f (level by level, then term) holds formulae's columns reordered."""
    import formulae

    d = crossed()
    formula = "y ~ 1 + cond + (1 + cond | subject) + (1 | item)"
    m = build(formula, d)
    dm = formulae.design_matrices(formula, d.table.assign(y=0.0))
    for f in m.factors:
        terms = [n for n, t in dm.group.terms.items() if t.factor.name == f.label]
        theirs = [dm.group[n].toarray() for n in terms]  # each N x J (one column per level)
        ours = f.block_diagonal().toarray()  # N x (J * Q), column j * Q + q
        for q, block in enumerate(theirs):
            np.testing.assert_array_equal(ours[:, q :: f.Q], block)


def test_nested_factors_get_their_own_names():
    d = generate({"groups": {"school": 2, "cls": 3}, "rows": 2}, "design", "test")
    m = build("y ~ 1 + (1 | school/cls)", d)
    school, cls = m.factors
    assert (school.label, school.J) == ("school", 2)
    assert (cls.label, cls.name, cls.J) == ("school:cls", "school_cls", 6)
    t = d.table
    np.testing.assert_array_equal(cls.index, (t["school"] - 1) * 3 + t["cls"] - 1)
    assert set(m.variables()) == {"beta", "sigma", "tau_school", "b_school", "tau_school_cls",
                                  "b_school_cls"}  # fmt: skip


def test_no_intercept_codes_every_level():
    d = crossed()
    m = build("y ~ 0 + cond + (0 + cond | subject)", d)
    a = (d.table["cond"] == "a").to_numpy(float)
    np.testing.assert_array_equal(m.X, np.column_stack([a, 1 - a]))
    assert m.columns == ("cond[a]", "cond[b]")
    assert "one column per level" in m.codings[0]
    (f,) = m.factors
    np.testing.assert_array_equal(f.Z, np.column_stack([a, 1 - a]))
    assert f.columns == ("cond[a]", "cond[b]") and f.block == (0, 2)


def test_three_level_categorical_treatment_and_sum_coding():
    level = np.tile(["lo", "mid", "hi"], 4)
    g = np.repeat([1, 2, 3, 4], 3)
    m = build("y ~ level + (1 | g)", design({"g": g, "level": level}))
    hi, lo, mid = (np.asarray(level == v, dtype=float) for v in ("hi", "lo", "mid"))
    np.testing.assert_array_equal(m.X, np.column_stack([np.ones(12), lo, mid]))
    assert m.columns == ("Intercept", "level[lo]", "level[mid]")
    assert "treatment coding, reference level hi" in m.codings[0]
    m = build("y ~ C(level, Sum) + (1 | g)", design({"g": g, "level": level}))
    np.testing.assert_array_equal(m.X[:, 1:], np.column_stack([hi - mid, lo - mid]))
    assert "sum coding" in m.codings[0]


def test_separate_bars_are_uncorrelated_one_bar_is_correlated():
    d = design({"g": np.repeat([1, 2, 3], 2), "x": np.arange(6.0), "z": np.arange(6.0) ** 2})
    apart = build("y ~ x + (1 | g) + (0 + x | g)", d).factors[0]
    joint = build("y ~ x + (1 + x | g)", d).factors[0]
    np.testing.assert_array_equal(apart.Z, joint.Z)  # formulae's matrices are the same
    assert apart.block is None and joint.block == (0, 2)
    mixed = build("y ~ x + (1 + x | g) + (0 + z | g)", d)
    f = mixed.factors[0]
    assert f.columns == ("Intercept", "x", "z") and f.block == (0, 2) and f.pairs() == [(1, 0)]
    three = build("y ~ x + (1 + x + z | g)", d)
    assert three.factors[0].pairs() == [(1, 0), (2, 0), (2, 1)]
    assert three.variables()["rho_g"] == (3,)
    labels = three.labels()
    assert labels["rho_g[2]"] == "cor(Intercept, z | g)"
    assert labels["b_g[3,2]"] == "x | g=3" and labels["b_g[*,2]"] == "x | g (pooled)"


def test_a_response_column_in_the_design_is_ignored():
    d = design({"g": [1, 1, 2, 2], "x": [1.0, 2, 3, 4], "y": [9.0, 9, 9, 9]})
    m = build("y ~ x + (1 | g)", d)
    assert m.N == 4 and m.columns == ("Intercept", "x")


@pytest.mark.parametrize(
    ("formula", "table", "message"),
    [
        ("y ~ x +", None, r"formulae rejects 'y ~ x \+': Don't know how to parse"),
        ("y ~ x + (1 | g", None, r"formulae rejects .*Expect '\)' after expression"),
        ("~ x", None, "formulae rejects"),
        ("y ~ x + (1 | h)", None, r"grouping column 'h' of .* is not in the design"),
        ("y ~ w + (1 | g)", None, r"'w' is not a column of the design \(its columns: g, x\)"),
        ("y ~ x + (1 | g)", {"g": [1, 1], "x": [1.0, 2]},
         r"grouping factor 'g' has one level \('1'\)"),
        ("y ~ x + (1 | g)", {"g": [1, 2], "x": [1.0, None]}, "column 'x' of the design has 1 "
         r"missing value\(s\) \(first in row 2\)"),
        ("y ~ x + (1 + x | g) + (1 | g)", None,
         r"the group-specific term \(1\|g\) appears in two bars"),
        ("y ~ x + (1 + x | g) + (0 + x2 | g)", None, None),
    ],
)  # fmt: skip
def test_errors_name_the_problem(formula, table, message):
    t = table or {"g": [1, 1, 2, 2], "x": [1.0, 2, 3, 4]}
    d = design(t)
    if message is None:  # two correlated bars of one factor: x2 is not a column either
        d = design({**t, "x2": [1.0, 0, 1, 0], "x3": [0.0, 1, 1, 0]})
        with pytest.raises(SBCError, match="2 correlated bars"):
            build("y ~ x + (1 + x | g) + (0 + x2 + x3 | g)", d)
        return
    with pytest.raises(SBCError, match=r"^study\.toml: \[model\] formula: " + message):
        build(formula, d)
