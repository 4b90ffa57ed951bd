"""From one simulation's truth and posterior draws to one row per scalar quantity.

Pure functions. Names follow CmdStan (`tau[1]`, `b[3,2]`), so the quantities a
user sees are the ones in their Stan program's output.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

DerivedQuantity = Callable[[Mapping[str, np.ndarray], Mapping[str, Any]], np.ndarray]


def scalar_names(name: str, shape: tuple[int, ...]) -> list[str]:
    """CmdStan's names for the components of a variable, in row-major order."""
    if not shape:
        return [name]
    return [
        f"{name}[{','.join(str(i + 1) for i in idx)}]"
        for idx in itertools.product(*(range(n) for n in shape))
    ]


def expand(name: str, value: Any) -> dict[str, float]:
    """A variable's value as {scalar name: float}."""
    arr = np.asarray(value, dtype=float)
    return dict(zip(scalar_names(name, arr.shape), arr.ravel().tolist(), strict=True))


def thin(draws: np.ndarray, every: int, start: int = 0) -> np.ndarray:
    """Every `every`-th draw of each chain from `start`, chains concatenated:
    (chains, draws, ...) -> (L, ...)"""
    kept = draws[:, start::every]
    return kept.reshape(-1, *draws.shape[2:])


def rank_of_truth(truth: np.ndarray, draws: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Ranks of `truth` (Q,) among `draws` (L, Q): draws below, plus a uniform share of ties.

    Ties are broken at random so that ranks stay uniform on 0..L for discrete
    quantities and for quantities that are constant in the model.
    """
    below = (draws < truth).sum(axis=0)
    ties = (draws == truth).sum(axis=0)
    return below + rng.integers(0, ties + 1)


def ranked_columns(
    truth: Mapping[str, Any],
    draws: Mapping[str, np.ndarray],
    quantities: list[str] | None = None,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, truths (Q,), draws (chains, draws, Q)) of the scalar quantities ranked: those
    with a truth, narrowed to `quantities` (scalar names) if given, in sorted order of their
    variables (so the tie-breaking random numbers do not depend on dictionary order)."""
    names: list[str] = []
    truths: list[float] = []
    columns: list[np.ndarray] = []
    for var in sorted(truth):
        value = np.asarray(truth[var], dtype=float)
        d = np.asarray(draws[var], dtype=float)
        flat_draws = d.reshape(d.shape[0], d.shape[1], -1)
        for i, scalar in enumerate(scalar_names(var, value.shape)):
            if quantities is None or scalar in quantities:
                names.append(scalar)
                truths.append(float(value.ravel()[i]))
                columns.append(flat_draws[:, :, i])
    if not names:
        return [], np.zeros(0), np.zeros((0, 0, 0))
    return names, np.asarray(truths), np.stack(columns, axis=-1)


def rank_rows(
    truth: Mapping[str, Any],
    draws: Mapping[str, np.ndarray],
    *,
    thin_every: int,
    rng: np.random.Generator,
    quantities: list[str] | None = None,
    start: int = 0,
) -> list[dict[str, Any]]:
    """One dict per scalar quantity: truth, rank among the thinned draws, posterior mean and sd.

    (Interval coverage is derived from the ranks at analysis time, `analysis.coverage`:
    intervals from interpolated draw quantiles would be biased.)

    `truth` maps variable names to values, `draws` maps them to (chains, draws, *shape)
    arrays. Only variables with a truth are ranked; `quantities` (scalar names)
    narrows that further (`ranked_columns`). The ranks are among every `thin_every`-th
    draw of each chain from `start`; mean and sd come from every draw.
    """
    names, t, full = ranked_columns(truth, draws, quantities)
    if not names:
        return []
    all_draws = full.reshape(-1, len(names))
    kept = thin(full, thin_every, start)
    ranks = rank_of_truth(t, kept, rng)
    mean = all_draws.mean(axis=0)
    sd = all_draws.std(axis=0, ddof=1) if all_draws.shape[0] > 1 else np.zeros(len(names))
    return [
        {
            "quantity": name,
            "truth": t[i],
            "rank": int(ranks[i]),
            "L": kept.shape[0],
            "mean": float(mean[i]),
            "sd": float(sd[i]),
        }
        for i, name in enumerate(names)
    ]


def derived_truth_and_draws(
    functions: Mapping[str, DerivedQuantity],
    truth: Mapping[str, Any],
    draws: Mapping[str, np.ndarray],
    data: Mapping[str, Any],
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Evaluate derived test quantities f(params, data) at the truth and at every draw.

    Each function receives parameters with a leading draw axis (S, *shape) and
    returns (S,). The truth is evaluated as a batch of one.
    """
    chains, n = next(iter(draws.values())).shape[:2]
    flat = {k: np.asarray(v).reshape(chains * n, *np.shape(v)[2:]) for k, v in draws.items()}
    one = {k: np.asarray(v, dtype=float)[None, ...] for k, v in truth.items()}
    t_out: dict[str, float] = {}
    d_out: dict[str, np.ndarray] = {}
    for name, f in functions.items():
        t_out[name] = float(np.asarray(f(one, data)).reshape(-1)[0])
        d_out[name] = np.asarray(f(flat, data), dtype=float).reshape(chains, n)
    return t_out, d_out
