"""Simulator for lmm_long.stan, written independently of sbc.simulators.lmm.

For a 2 x 2 correlation matrix, LKJ(eta) makes (r + 1)/2 ~ Beta(eta, eta), so the correlation
is drawn directly; the group effects are drawn from their bivariate normal by hand.
"""

import numpy as np


def simulate(rng, n_groups=10, per_group=10):
    alpha = rng.normal(0, 10)
    slope = rng.normal(0, 10)
    sigma_e = abs(rng.normal(0, 5))
    sd_int = abs(rng.normal(0, 5))
    sd_slope = abs(rng.normal(0, 5))
    r = 2 * rng.beta(2.0, 2.0) - 1
    z0 = rng.normal(size=n_groups)
    z1 = rng.normal(size=n_groups)
    u0 = sd_int * z0
    u1 = sd_slope * (r * z0 + np.sqrt(1 - r**2) * z1)
    group = np.repeat(np.arange(1, n_groups + 1), per_group)
    x = np.tile(np.arange(1.0, per_group + 1), n_groups)
    mu = alpha + u0[group - 1] + (slope + u1[group - 1]) * x
    y = rng.normal(mu, sigma_e)
    truth = {"alpha": alpha, "slope": slope, "sigma_e": sigma_e, "sd_int": sd_int,
             "sd_slope": sd_slope, "r": r, "u0": u0, "u1": u1}
    data = {"n_obs": len(y), "n_groups": n_groups, "group": group, "x": x, "y": y}
    return truth, data
