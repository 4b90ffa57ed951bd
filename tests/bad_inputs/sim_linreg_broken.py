"""studies/linreg_simulator.py, broken on purpose (`variant`) against stan/linreg.stan."""
from pathlib import Path

from sbc.simulate import load_callable

BASE = f"{Path(__file__).resolve().parents[2] / 'studies' / 'linreg_simulator.py'}:simulate"


def simulate(rng, N=30, K=3, variant="ok"):
    truth, data = load_callable(BASE)(rng, N=N, K=K)
    if variant == "no_y":  # the data block's `vector[N] y` is missing
        del data["y"]
    elif variant == "X_flat":  # `matrix[N, K] X` given as a vector
        data["X"] = data["X"].ravel()
    elif variant == "beta_short":  # truth `beta` of length K - 1 against `vector[K] beta`
        truth["beta"] = truth["beta"][:-1]
    return truth, data
