"""Returns mu as a scalar where the model's mu is a vector (wrong number of dimensions)."""
from sbc.simulators.normal import simulate as base


def simulate(rng, **kw):
    truth, data = base(rng, **kw)
    return {"mu": float(truth["mu"][0])}, data
