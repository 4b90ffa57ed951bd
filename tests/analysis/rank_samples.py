"""Rank generators for the analysis tests: exact posteriors, so the truth is known.

`exact_ranks`: mu ~ N(0, 1), y_i ~ N(mu, 1) for i = 1..10, so mu | y ~ N(sum(y)/11, 1/11).
Drawing L values from that posterior makes the ranks of the true mu exactly uniform on 0..L;
drawing from a deliberately wrong posterior (sd × scale, mean + shift sd) must be caught.
`copula_ranks`: ranks uniform on 0..L marginally and dependent within a simulation (Gaussian
copula on the PIT with correlation rho, then Binomial(L, u)); the issue's null model for
group effects, with the same normal misspecification available.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

L = 100


def exact_ranks(
    rng: np.random.Generator,
    sims: int,
    L: int = L,
    n_obs: int = 10,
    sd_scale: float = 1.0,
    shift: float = 0.0,
) -> np.ndarray:
    """Ranks of the true mu among L draws of the exact (or a deliberately wrong) posterior."""
    mu = rng.normal(0.0, 1.0, sims)
    y = rng.normal(mu[:, None], 1.0, (sims, n_obs))
    precision = 1.0 + n_obs
    mean, sd = y.sum(axis=1) / precision, precision**-0.5
    draws = mean[:, None] + sd * (shift + sd_scale * rng.standard_normal((sims, L)))
    return (draws < mu[:, None]).sum(axis=1)


def copula_ranks(
    rng: np.random.Generator,
    studies: int,
    sims: int,
    J: int,
    rho: float,
    L: int = L,
    scale: float = 1.0,
    shift: float = 0.0,
) -> np.ndarray:
    """(studies, sims, J) ranks; within a simulation the truths' standardised positions are
    equicorrelated normals (rho), each rank Binomial(L, Φ((z − shift)/scale))."""
    common = rng.standard_normal((studies, sims, 1))
    z = np.sqrt(rho) * common + np.sqrt(1 - rho) * rng.standard_normal((studies, sims, J))
    return rng.binomial(L, stats.norm.cdf((z - shift) / scale))


def ranks_table(rank_columns: dict[str, np.ndarray], L: int = L) -> pd.DataFrame:
    """A ranks table like the store's from {quantity: ranks per simulation}."""
    rows = [
        {"sim": sim, "quantity": q, "truth": 0.0, "rank": int(r), "L": L, "mean": 0.0, "sd": 1.0}
        for q, ranks in rank_columns.items()
        for sim, r in enumerate(ranks)
    ]
    return pd.DataFrame(rows).sort_values(["sim", "quantity"], ignore_index=True)
