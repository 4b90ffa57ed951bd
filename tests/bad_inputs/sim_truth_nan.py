"""A truth value with NaN in it."""
import numpy as np

from sbc.simulators.normal import simulate as base


def simulate(rng, **kw):
    truth, data = base(rng, **kw)
    truth["mu"][0] = np.nan
    return truth, data
