"""Returns [truth, data] instead of the tuple (truth, data)."""
from sbc.simulators.normal import simulate as base


def simulate(rng, **kw):
    truth, data = base(rng, **kw)
    return [truth, data]
