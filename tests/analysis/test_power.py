"""`sbc plan`: effect strings, the vectorised fixed-size test, power curves and output."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from sbc.analysis.power import (
    format_plan,
    gamma_p_values,
    holm_first,
    parse_effect,
    plan,
    simulate_ranks,
)
from sbc.analysis.rank_model import rank_pmf
from sbc.analysis.uniformity import gamma_test, holm
from sbc.cli import main
from sbc.errors import SBCError


@pytest.mark.parametrize(
    "text",
    ["", "narrow", "narrow:", "narrow:abc", "narrow:1.2", "narrow:0", "wide:0.8", "bias:0",
     "bias:nan", "coverage:0.95", "coverage:0", "coverage:0.1@85", "shrink:0.9",
     "narrow:0.9,,bias:0.2"],
)  # fmt: skip
def test_bad_effects_are_one_line_errors(text):
    with pytest.raises(SBCError) as info:
        parse_effect(text)
    assert "\n" not in str(info.value) and str(info.value)


def test_effects_translate_to_a_scale_and_a_shift():
    assert parse_effect("narrow:0.9").scale == pytest.approx(0.9)
    assert parse_effect("wide:1.2").scale == pytest.approx(1.2)
    e = parse_effect("bias:-0.3")
    assert (e.scale, e.shift) == (1.0, -0.3)
    cov = parse_effect("coverage:0.05")  # the central 90 % interval covers 85 %
    z90 = stats.norm.ppf(0.95)
    assert 2 * stats.norm.cdf(z90 * cov.scale) - 1 == pytest.approx(0.85)
    assert cov.coverage() == pytest.approx(0.85)
    assert parse_effect("coverage:0.1@80").coverage(80) == pytest.approx(0.70)
    assert parse_effect("coverage:-0.05").scale > 1  # over-coverage = too wide
    both = parse_effect("narrow:0.8, bias:0.2")
    assert (both.scale, both.shift) == (pytest.approx(0.8), 0.2)
    assert "too narrow" in both.describe() and "shifted up" in both.describe()


def test_simulated_ranks_follow_the_exact_model_and_extend_consistently():
    e = parse_effect("narrow:0.7")
    r = simulate_ranks(e, 20, 400, 300, (1, 2))
    assert np.array_equal(simulate_ranks(e, 20, 400, 120, (1, 2)), r[:, :120])
    freq = np.bincount(r.ravel(), minlength=21) / r.size
    assert np.abs(freq - rank_pmf(20, 0.7, 0.0)).max() < 0.01  # 120 000 ranks: sd < 0.001


def test_vectorised_fixed_size_test_equals_the_uniformity_module():
    rng = np.random.default_rng(4)
    r = rng.integers(0, 31, size=(12, 40))
    r[:4] = np.minimum(r[:4], 12)  # some non-uniform rows with small p-values
    p = gamma_p_values(r, 30)
    assert np.allclose(p, [gamma_test(row, 30).p_value for row in r], rtol=1e-12)
    ps = rng.random((50, 4)) ** 3
    assert np.allclose(holm_first(ps), [holm(row)[0] for row in ps])


@pytest.fixture(scope="module")
def narrow_plan():
    return plan("narrow:0.7", power=0.8, alpha=0.05, quantities=3, L=20, studies=300, seed=3)


def test_plan_power_curves_are_monotone_and_reach_the_target(narrow_plan):
    res = narrow_plan
    c = res.curve
    assert c["n_sims"].is_monotonic_increasing
    assert np.all(np.diff(c["power_sequential"]) >= 0)  # P(T ≤ N): monotone by construction
    assert np.all(np.diff(c["mean_sims_sequential"]) >= 0)
    # fixed-size power on common random numbers: monotone up to Monte Carlo noise (sd ≤ 0.03)
    assert np.all(np.diff(c["power_fixed"]) >= -0.06)
    assert c["power_fixed"].iloc[-1] > c["power_fixed"].iloc[0]
    assert res.n_fixed is not None and res.n_sequential is not None
    at = c.set_index("n_sims")
    assert at.loc[res.n_fixed, "power_fixed"] >= 0.8
    assert at.loc[res.n_sequential, "power_sequential"] >= 0.8
    seq = res.table.iloc[1]
    assert seq["mean_sims"] <= res.n_sequential and seq["power"] >= 0.8
    assert list(res.table["test"].str.split().str[0]) == ["fixed-size", "sequential"]


def test_plan_prints_a_table_and_plots_a_power_curve(narrow_plan, tmp_path, capsys):
    text = format_plan(narrow_plan)
    assert "sims needed" in text and "power sequential" in text and "posterior sd × 0.7" in text
    png = narrow_plan.plot(tmp_path / "plan.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code = main(
        ["plan", "--effect", "bias:1", "--alpha", "0.05", "--studies", "100", "--L", "10",
         "--plot", str(tmp_path / "cli.png")]
    )  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "fixed-size (γ test + Holm)" in out and "power curve:" in out
    assert (tmp_path / "cli.png").is_file()


def test_plan_rejects_bad_arguments():
    for kwargs in ({"power": 1.0}, {"alpha": 0.0}, {"quantities": 0}, {"studies": 5}):
        with pytest.raises(SBCError):
            plan("narrow:0.8", **kwargs)
