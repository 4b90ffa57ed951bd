"""A conjugate normal model with known noise: the exact backend's simulator."""

from __future__ import annotations

from typing import Any

import numpy as np

from sbc.errors import SBCError


def simulate(
    rng: np.random.Generator, *, K: int = 3, N: int = 10, prior_sd: float = 1.0, sigma: float = 1.0
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """K independent means, each observed N times with noise sd `sigma`."""
    if K < 1 or N < 1:
        raise SBCError("K and N must be at least 1", where="simulator normal")
    if prior_sd <= 0 or sigma <= 0:
        raise SBCError("prior_sd and sigma must be positive", where="simulator normal")
    mu = rng.normal(0.0, prior_sd, size=K)
    y = rng.normal(mu, sigma, size=(N, K))
    return {"mu": mu}, {"N": N, "K": K, "y": y, "prior_sd": prior_sd, "sigma": sigma}
