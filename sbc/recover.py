"""Parameter recovery: the seed's experiment. One dataset at a known truth, one fit, a table.

This is the quick check a modeller runs before a full SBC study: does the model
get back the values that generated the data, and does the sampler behave?
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from sbc.callables import call_simulator
from sbc.errors import SBCError
from sbc.ranks import expand
from sbc.runner import make_backend, simulation_seeds
from sbc.study import Study, available_cores


@dataclasses.dataclass
class Recovery:
    table: pd.DataFrame  # one row per scalar quantity
    diagnostics: dict[str, float]
    trace_png: Path
    folder: Path


def recover(study: Study, progress: bool = True) -> Recovery:
    """Simulate one dataset from the study's simulator (sim 0 of its seed), fit it, summarise."""
    import tempfile

    from sbc.plots import save, trace_plot

    sim_rng, fit_seed, _ = simulation_seeds(study.seed, 0)
    try:
        truth, data = call_simulator(study.simulator.function, sim_rng, study.simulator.args)
    except SBCError as exc:
        raise SBCError(f"[simulator] function: {exc}", where=str(study.path)) from None
    except Exception as exc:  # the user's simulator failed: say so in one line
        raise SBCError(
            f"[simulator] function: {study.simulator.function} failed: "
            f"{type(exc).__name__}: {exc}",
            where=str(study.path),
        ) from None
    parallel_chains = min(study.sampler.chains, available_cores())
    backend = make_backend(study, parallel_chains=parallel_chains)
    backend.prepare(progress=progress)
    folder = study.results_dir
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sbc-recover-") as tmp:
        fit = backend.fit(data, fit_seed, Path(tmp))
        draws = backend.draws(fit)
        diagnostics = backend.diagnostics(fit)
    if study.quantities.include:
        keep = set(study.quantities.include)
        truth = {k: v for k, v in truth.items() if k in keep}
    table = recovery_table(truth, draws)
    table.to_csv(folder / "recovery.csv", index=False)
    trace_vars = [v for v in ("beta", "b") if v in draws] or sorted(truth)
    trace_png = folder / "trace.png"
    save(trace_plot(draws, trace_vars), trace_png)
    return Recovery(table=table, diagnostics=diagnostics, trace_png=trace_png, folder=folder)


def recovery_table(truth: dict[str, np.ndarray], draws: dict[str, np.ndarray]) -> pd.DataFrame:
    """Truth, posterior mean, sd, 90 % central interval and whether it covers the truth."""
    rows = []
    for var in truth:
        values = expand(var, truth[var])
        flat = draws[var].reshape(-1, len(values))
        for i, (name, t) in enumerate(values.items()):
            d = flat[:, i]
            lo, hi = np.quantile(d, [0.05, 0.95])
            sd = float(d.std(ddof=1))
            rows.append(
                {
                    "quantity": name,
                    "truth": t,
                    "mean": float(d.mean()),
                    "sd": sd,
                    "q5": float(lo),
                    "q95": float(hi),
                    "covered90": bool(lo <= t <= hi),
                    "z": (float(d.mean()) - t) / sd if sd > 0 else float("nan"),
                }
            )
    return pd.DataFrame(rows)
