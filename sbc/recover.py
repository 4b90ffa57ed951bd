"""Parameter recovery: the seed's experiment. One dataset at a known truth, one fit, a table.

This is the quick check a modeller runs before a full SBC study: does the model
get back the values that generated the data, and does the sampler behave?
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from sbc.errors import SBCError
from sbc.execution.prepare import make_backend
from sbc.ranks import expand
from sbc.seeds import simulation_seeds
from sbc.simulate import call_simulator
from sbc.store import Diagnostic
from sbc.study import Study, available_cores


@dataclasses.dataclass
class Recovery:
    table: pd.DataFrame  # one row per scalar quantity
    diagnostics: dict[str, float]
    rules: tuple[Diagnostic, ...]  # the backend's declared diagnostics
    trace_png: Path
    folder: Path


def recover(study: Study, progress: bool = True) -> Recovery:
    """Simulate one dataset from the study's simulator (sim 0 of its seed), fit it, summarise."""
    import tempfile

    from sbc.plots import save, trace_plot

    sim_rng, fit_seed, _ = simulation_seeds(study.seed, 0)
    try:
        study.simulator.prepare(str(study.path), progress=progress)
        truth, data = call_simulator(study.simulator, sim_rng)
    except SBCError as exc:
        raise SBCError(f"{study.simulator.key}: {exc}", where=str(study.path)) from None
    except Exception as exc:  # the user's simulator failed: say so in one line
        raise SBCError(
            f"{study.simulator.key}: {study.simulator} failed: {type(exc).__name__}: {exc}",
            where=str(study.path),
        ) from None
    backend = make_backend(study, cores=available_cores())
    backend.prepare(progress=progress)
    folder = study.results_dir
    folder.mkdir(parents=True, exist_ok=True)
    study.write_program(folder)
    with tempfile.TemporaryDirectory(prefix="sbc-recover-") as tmp:
        fit = backend.fit(data, fit_seed, Path(tmp))
        draws = backend.draws(fit)
        diagnostics = backend.diagnose(fit)
    if study.quantities.include:
        keep = set(study.quantities.include)
        truth = {k: v for k, v in truth.items() if k in keep}
    table = recovery_table(truth, draws)
    table.to_csv(folder / "recovery.csv", index=False)
    trace_vars = trace_variables(study, truth, draws)
    trace_png = folder / "trace.png"
    save(trace_plot(draws, trace_vars), trace_png)
    return Recovery(table, diagnostics, backend.diagnostics, trace_png=trace_png, folder=folder)


def trace_variables(
    study: Study, truth: dict[str, np.ndarray], draws: dict[str, np.ndarray]
) -> list[str]:
    """What the trace plot shows: `[quantities] trace`, else the variables `include` names (in
    its order), else every variable with a truth."""
    q = study.quantities
    wanted = q.trace or tuple(dict.fromkeys(name.split("[")[0] for name in q.include))
    return [v for v in wanted if v in draws] or sorted(truth)


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
