"""Returns data as a list rather than a dict of Stan data."""
from sbc.simulators.normal import simulate as base


def simulate(rng, **kw):
    truth, data = base(rng, **kw)
    return truth, list(data.values())
