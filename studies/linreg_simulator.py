"""Simulator for stan/linreg.stan, loaded by path from linreg_sbc.toml.

It stands for the code a user brings: a plain file beside the study, nothing
registered with sbc. It draws from exactly the priors of the Stan program.
"""

import numpy as np


def simulate(rng: np.random.Generator, N: int = 30, K: int = 3):
    alpha = rng.normal(0.0, 2.0)
    beta = rng.normal(0.0, 1.0, size=K)
    sigma = rng.exponential(1.0)
    X = rng.normal(size=(N, K))
    y = rng.normal(alpha + X @ beta, sigma)
    truth = {"alpha": alpha, "beta": beta, "sigma": sigma}
    return truth, {"N": N, "K": K, "X": X, "y": y}
