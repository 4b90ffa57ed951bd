"""A truth key that cannot be a Stan variable name."""
from sbc.simulators.normal import simulate as base


def simulate(rng, **kw):
    truth, data = base(rng, **kw)
    return {"mu hat": truth["mu"]}, data
