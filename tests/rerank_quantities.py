"""A derived test quantity for stan/linreg.stan, named by path in tests/test_rerank.py (as a
user names a file beside their study): the log-likelihood of the data at each draw."""

import numpy as np


def loglik(params, data):
    """Σ_n log N(y_n | α + X_n β, σ) per parameter set: params have a leading draw axis."""
    X, y = np.asarray(data["X"], dtype=float), np.asarray(data["y"], dtype=float)
    alpha = np.asarray(params["alpha"], dtype=float)
    beta = np.asarray(params["beta"], dtype=float)
    sigma = np.asarray(params["sigma"], dtype=float)
    mu = alpha[:, None] + beta @ X.T
    r = (y - mu) / sigma[:, None]
    return -0.5 * (r**2).sum(axis=1) - y.size * np.log(sigma) - 0.5 * y.size * np.log(2 * np.pi)
