"""Figures of sbc.plots: the right panels, and a PNG that is not empty."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from sbc import plots

L = 50
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ranks_df() -> pd.DataFrame:
    """30 simulations of beta[1], sigma and a 3 × 2 group matrix b (uniform ranks)."""
    rng = np.random.default_rng(0)
    names = ["sigma", "beta[1]"] + [f"b[{j},{q}]" for j in (1, 2, 3) for q in (1, 2)]
    rows = [
        {
            "sim": s,
            "quantity": q,
            "truth": float(rng.normal()),
            "rank": int(rng.integers(0, L + 1)),
            "L": L,
            "mean": float(rng.normal()),
            "sd": float(rng.uniform(0.2, 1.0)),
        }
        for s in range(30)
        for q in names
    ]
    return pd.DataFrame(rows)


# beta[1], sigma, b[*,1], b[*,2] and the six members b[j,q]
EXPECTED_PANELS = 10


@pytest.mark.parametrize(
    "make",
    [
        plots.rank_histograms,
        plots.ecdf_diff,
        plots.coverage_plot,
        plots.coverage_diff_plot,
        plots.recovery_plot,
        plots.contraction_plot,
    ],
)
def test_rank_plots_have_one_panel_per_quantity_and_save(make, ranks_df, tmp_path):
    fig = make(ranks_df, pool=["b"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == EXPECTED_PANELS
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:4] == ["sigma", "beta[1]", "b[*,1]  (pooled)", "b[*,2]  (pooled)"]
    path = plots.save(fig, tmp_path / "sub" / f"{make.__name__}.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_group_members_are_capped(ranks_df):
    fig = plots.rank_histograms(ranks_df, pool=["b"], max_group_members=1)
    assert len(fig.axes) == 6  # sigma, beta[1], 2 pooled, b[1,1], b[1,2]
    assert "first 1 groups shown individually" in fig.get_suptitle()
    fig = plots.ecdf_diff(ranks_df)  # nothing pooled unless declared
    assert len(fig.axes) == 8


def test_trace_plot_panels_chains_and_cap(tmp_path):
    rng = np.random.default_rng(1)
    draws = {
        "beta": rng.normal(size=(4, 100, 2)),
        "b": rng.normal(size=(4, 100, 3, 2)),
        "sigma": rng.normal(size=(4, 100)),
    }
    fig = plots.trace_plot(draws, ["beta", "b"])
    assert len(fig.axes) == 8
    assert [ax.get_title() for ax in fig.axes[:3]] == ["beta[1]", "beta[2]", "b[1,1]"]
    assert len(fig.axes[0].lines) == 4  # one line per chain
    capped = plots.trace_plot(draws, max_panels=5)  # default: every variable
    assert len(capped.axes) == 5 and "first 5 of 9 panels" in capped.get_suptitle()
    assert len(plots.trace_plot(draws, ["sigma"]).axes) == 1
    assert plots.save(fig, tmp_path / "trace.png").read_bytes().startswith(PNG_MAGIC)
    with pytest.raises(ValueError):
        plots.trace_plot(draws, ["nope"])


def test_empty_ranks_table_is_an_error():
    with pytest.raises(ValueError):
        plots.rank_histograms(pd.DataFrame(columns=["sim", "quantity", "rank", "L"]))
