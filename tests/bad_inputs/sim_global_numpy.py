"""Draws from numpy's global random state instead of the rng it is given."""
import numpy as np


def simulate(rng, K=2, N=5):
    mu = np.random.normal(size=K)
    y = rng.normal(mu, 1.0, size=(N, K))
    return {"mu": mu}, {"N": N, "K": K, "y": y, "prior_sd": 1.0, "sigma": 1.0}
