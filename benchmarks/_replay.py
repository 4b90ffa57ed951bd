"""Auto thinning replayed on long chains: budgets compared on the very same Markov chains.

Continuing a chain (same step size and metric, no adaptation, from its last draw) gives the
same Markov chain as sampling longer in the first place: a fit continued to n draws per
chain is distributed as the first n draws of one long run. So each dataset is fitted once
per (chains, warm-up) with many draws per chain (warm-up iterations saved, for their
gradient evaluations), and every rule is replayed on those chains by revealing them a
piece at a time: each rule sees the same chains (paired comparisons, free of the machine's
load), and its cost is counted exactly, in gradient evaluations (n_leapfrog__ of the
warm-up iterations and of the draws it used). What a replay cannot see is the CPU cost of
each continuation (a CmdStan start per chain): the studies mode of budget.py measures
CPU seconds of real runs.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Collected:
    """One dataset's long fit: ranked quantities' and parameters' draws, and its costs."""

    ranked: np.ndarray  # (quantities, chains, draws), derived loglik included
    params: np.ndarray  # (parameters that vary, chains, draws)
    leap_warmup: int  # gradient evaluations of the warm-up, all chains
    leap: np.ndarray  # (draws,) gradient evaluations per iteration, summed over chains
    divergent: np.ndarray  # (draws,) divergent transitions per iteration, over chains


def collect_one(backend, study, sim: int, draws: int, quantities: list[str]) -> dict:
    """Fit dataset `sim` of `study` with `draws` draws per chain, warm-up saved."""
    from sbc.ranks import derived_truth_and_draws, ranked_columns
    from sbc.seeds import simulation_seeds
    from sbc.simulate import call_simulator, resolve_function

    sim_rng, fit_seed, _ = simulation_seeds(study.seed, sim)
    truth, data = call_simulator(study.simulator, sim_rng)
    with tempfile.TemporaryDirectory() as tmp:
        args = backend.arguments(data, fit_seed, Path(tmp))
        args.update(iter_sampling=draws, save_warmup=True)
        fit = backend.model().sample(**args)
        # lp__ comes from method_variables(), which has the saved warm-up too: the draws
        # of every variable are the last `draws` of each chain
        model = {k: v[:, -draws:] for k, v in backend.draws(fit).items()}
        derived = {k: resolve_function(v) for k, v in study.quantities.derived.items()}
        d_truth, d_draws = derived_truth_and_draws(derived, truth, model, data)
        _, _, columns = ranked_columns({**truth, **d_truth}, {**model, **d_draws}, quantities)
        every = fit.draws(inc_warmup=True)  # (warm-up + draws, chains, columns)
        names = list(fit.column_names)
        warm = every.shape[0] - draws
        method = set(fit.metadata.method_vars)
        keep = [i for i, c in enumerate(names) if c not in method]
        params = np.moveaxis(every[warm:, :, keep], 2, 0).transpose(0, 2, 1)
        varying = params[np.ptp(params.reshape(len(params), -1), axis=1) > 0]
        leap = every[:, :, names.index("n_leapfrog__")].sum(axis=1)
        div = every[warm:, :, names.index("divergent__")].sum(axis=1)
    return {
        "ranked": np.moveaxis(columns, 2, 0),
        "params": varying,
        "leap_warmup": int(leap[:warm].sum()),
        "leap": leap[warm:].astype(np.int64),
        "divergent": div.astype(np.int64),
    }


def collect(study_path: Path, sims: int, draws: int, workers: int, cache: Path) -> list[Collected]:
    """Long fits of the first `sims` datasets of a study, cached in `cache` (an .npz per
    dataset; what is there already is not fitted again)."""
    from joblib import Parallel, delayed

    from sbc.execution.prepare import prepare
    from sbc.study import load_study

    cache.mkdir(parents=True, exist_ok=True)
    study = load_study(study_path)
    p = prepare(study, progress=False)
    missing = [i for i in range(sims) if not (cache / f"sim{i}.npz").is_file()]
    if missing:
        jobs = (delayed(collect_one)(p.backend, study, i, draws, p.quantities) for i in missing)
        for i, out in zip(missing, Parallel(n_jobs=workers)(jobs), strict=True):
            np.savez_compressed(cache / f"sim{i}.npz", **out)
    found = []
    for i in range(sims):
        with np.load(cache / f"sim{i}.npz") as z:
            found.append(Collected(**{k: (z[k] if z[k].ndim else int(z[k])) for k in z.files}))
    return found


def replay_auto(
    c: Collected,
    first: int,
    L: int,
    min_ess_per_draw: float,
    max_draws: int,
    **rule: float,
) -> dict:
    """Auto thinning from `first` draws per chain, as the runner does it, on one long fit."""
    from sbc.backends.convergence import ess_bulk, ess_tail
    from sbc.thinning import AutoThinning, plan_thinning

    chains, total = c.ranked.shape[1:]
    auto = AutoThinning(L=L, min_ess_per_draw=min_ess_per_draw, max_draws=min(max_draws, total))
    n, extensions = first, 0
    while True:
        x = c.ranked[:, :, :n]
        t = plan_thinning(ess_bulk(x), ess_tail(x), chains, n, auto, **rule)
        if not t.extend:
            break
        n += t.extend
        extensions += 1
    kept = chains * auto.per_chain(chains)
    capped = n >= total and t.ess < auto.min_ess_per_draw * kept
    return _outcome(c, n, kept, extensions, capped)


def replay_fixed(c: Collected, draws: int, thin: int) -> dict:
    """A fixed budget: the first `draws` draws per chain, every `thin`-th ranked."""
    chains = c.ranked.shape[1]
    return _outcome(c, draws, chains * math.ceil(draws / thin), 0, capped=False)


def _outcome(c: Collected, n: int, kept: int, extensions: int, capped: bool) -> dict:
    from sbc.backends.convergence import ess_bulk, ess_tail

    worst = []
    for x in (c.ranked[:, :, :n], c.params[:, :, :n]):
        for ess in (ess_bulk(x), ess_tail(x)):
            # none (no parameter varies: a chain that never moved) or NaN only: as bad as 0
            worst.append(float(np.nanmin(ess)) if np.isfinite(ess).any() else 0.0)
    return {
        "draws": n,
        "extensions": extensions,
        "grads": c.leap_warmup + int(c.leap[:n].sum()),
        "grads_warmup": c.leap_warmup,
        "ess_per_draw": float(np.nanmin(worst)) / kept,
        "ess_ranked": float(min(worst[:2])) / kept,
        "divergent": bool(c.divergent[:n].sum() > 0),
        "divergent_share": float(c.divergent[:n].sum() / (n * c.ranked.shape[1])),
        "capped": capped,
    }
