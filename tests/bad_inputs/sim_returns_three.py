"""Returns (truth, data, extra): one value too many."""
from sbc.simulators.normal import simulate as base


def simulate(rng, **kw):
    truth, data = base(rng, **kw)
    return truth, data, {"note": "extra"}
