"""Ranks of the truth among posterior draws, and their interval hits (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from sbc.ranks import rank_of_truth, rank_rows, scalar_names


def test_scalar_names_follow_cmdstan():
    assert scalar_names("sigma", ()) == ["sigma"]
    assert scalar_names("b", (2, 3))[:4] == ["b[1,1]", "b[1,2]", "b[1,3]", "b[2,1]"]


def test_rank_counts_draws_below_and_splits_ties_at_random():
    rng = np.random.default_rng(0)
    draws = np.array([[0.0], [1.0], [1.0], [1.0], [2.0]])
    ranks = [int(rank_of_truth(np.array([1.0]), draws, rng)[0]) for _ in range(2000)]
    assert set(ranks) == {1, 2, 3, 4}  # one below, three ties
    assert rank_of_truth(np.array([5.0]), draws, rng)[0] == 5
    assert rank_of_truth(np.array([-1.0]), draws, rng)[0] == 0


def test_rank_rows_thin_and_summarise():
    rng = np.random.default_rng(1)
    draws = {"mu": np.arange(200, dtype=float).reshape(2, 100, 1)}
    rows = rank_rows({"mu": np.array([120.5])}, draws, thin_every=10, rng=rng)
    (row,) = rows
    assert row["quantity"] == "mu[1]" and row["L"] == 20
    # thinned draws: 0,10,..,190 -> 13 below 120.5; mean and sd over all 200 draws
    assert row["rank"] == 13
    assert row["mean"] == pytest.approx(99.5)
    assert row["sd"] == pytest.approx(np.std(np.arange(200), ddof=1))
    assert not any(k.startswith("hit") for k in row)  # coverage comes from the ranks now
