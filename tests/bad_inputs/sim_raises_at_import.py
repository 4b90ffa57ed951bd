"""A simulator module whose import fails (a configuration step that raises)."""
import numpy as np

SETTINGS = {"K": 2}
N = SETTINGS["N"]  # KeyError at import


def simulate(rng, K=2, N=5):
    return {"mu": rng.normal(size=K)}, {"K": K, "N": N, "y": np.zeros((N, K))}
