"""studies/linreg_simulator.py, broken on purpose (`variant`) against stan/linreg.stan."""
import numpy as np


def simulate(rng, N=30, K=3, variant="ok"):
    alpha = rng.normal(0.0, 2.0)
    beta = rng.normal(0.0, 1.0, size=K)
    sigma = rng.exponential(1.0)
    X = rng.normal(size=(N, K))
    y = rng.normal(alpha + X @ beta, sigma)
    truth = {"alpha": alpha, "beta": beta, "sigma": sigma}
    data = {"N": N, "K": K, "X": X, "y": y}
    if variant == "no_y":  # the data block's `vector[N] y` is missing
        del data["y"]
    elif variant == "X_flat":  # `matrix[N, K] X` given as a vector
        data["X"] = X.ravel()
    elif variant == "beta_short":  # truth `beta` of length K - 1 against `vector[K] beta`
        truth["beta"] = beta[:-1]
    return truth, data
