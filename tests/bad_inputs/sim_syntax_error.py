"""A simulator module with a Python syntax error."""


def simulate(rng, K=2, N=5)
    return {}, {}
