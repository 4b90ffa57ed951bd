"""Draws from Python's `random` module instead of the rng it is given."""
import random

import numpy as np


def simulate(rng, K=2, N=5):
    mu = np.array([random.gauss(0.0, 1.0) for _ in range(K)])
    y = rng.normal(mu, 1.0, size=(N, K))
    return {"mu": mu}, {"N": N, "K": K, "y": y, "prior_sd": 1.0, "sigma": 1.0}
