"""A truth value that is not a number."""
from sbc.simulators.normal import simulate as base


def simulate(rng, **kw):
    truth, data = base(rng, **kw)
    truth["mu"] = ["high", "low"]
    return truth, data
