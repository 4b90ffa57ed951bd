"""The LMM simulator plus a truth `gamma` that the Stan program does not have."""
from sbc.simulators.lmm import simulate as base


def simulate(rng, **kw):
    truth, data = base(rng, **kw)
    truth["gamma"] = 0.5
    return truth, data
