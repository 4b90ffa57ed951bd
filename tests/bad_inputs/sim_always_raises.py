"""Raises on every call (a bug in the user's simulator)."""


def simulate(rng, K=2, N=5):
    return {"mu": rng.normal(size=K)}, {"N": N, "K": K, "y": undefined_name}  # noqa: F821
