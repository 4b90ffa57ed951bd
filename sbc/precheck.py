"""`sbc precheck`: do the simulator and the Stan program describe the same joint distribution?

No MCMC: each simulated truth is mapped to the program's unconstrained coordinates and the
gradient of the program's log density there comes from CmdStan's ``diagnose`` method (a few
milliseconds each); `sbc.analysis.score` tests the score identities those gradients must
satisfy (docs/precheck.md). The draws are the study's own simulations 0..n-1 (seeded from
the study seed and the simulation index, as in `sbc run`).

A program whose parameters the simulator's truth does not all hold (a non-centred program's
``z``, ``L_R``) needs ``[precheck] parameters = "module:function"``: f(truth, data) -> the
missing parameters' values.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sbc.analysis.score import ScoreCheck, score_check
from sbc.errors import SBCError, one_line
from sbc.execution.prepare import make_backend
from sbc.seeds import simulation_seeds
from sbc.simulate import (
    call_simulator,
    check_simulator,
    check_truth_against_model,
    load_callable,
)
from sbc.study import Study, available_cores, load_study


@dataclass(frozen=True)
class PrecheckResult:
    """The verdict of `sbc precheck`: the identities per coordinate, and what went wrong."""

    check: ScoreCheck
    rejected: list[str]  # simulations the program gives no density (support mismatch)
    sims: int
    seconds: float
    u: np.ndarray  # (draws, coordinates): the truths on the unconstrained scale
    grad: np.ndarray  # the gradients of the program's log density there

    @property
    def consistent(self) -> bool:
        return self.check.consistent and not self.rejected

    @property
    def table(self) -> pd.DataFrame:
        return self.check.table

    def headline(self) -> str:
        n = self.check.n
        if self.consistent:
            return (f"consistent: the simulator and the program agree on every identity "
                    f"({n} simulated truths, Holm at alpha = {self.check.alpha:g})")  # fmt: skip
        parts = []
        failing = self.check.failing()
        if failing:
            parts.append(f"{len(failing)} coordinate(s) fail: {', '.join(failing)}")
        if self.rejected:
            parts.append(
                f"the program rejects {len(self.rejected)} of {self.sims} simulated truths "
                f"(first: {self.rejected[0]})"
            )
        return "NOT consistent: " + "; ".join(parts)


def precheck(
    study: Study | str | Path,
    *,
    sims: int = 1000,
    seed: int | None = None,
    alpha: float = 0.01,
    workers: int | None = None,
    progress: bool = True,
) -> PrecheckResult:
    """Simulate `sims` truths, take the program's gradients there, test the identities."""
    t0 = time.perf_counter()
    if not isinstance(study, Study):
        study = load_study(study)
    study = study.with_overrides(seed=seed)
    where = str(study.path or study.name)
    if sims < 20:
        raise SBCError(f"--sims: the precheck needs at least 20 simulations, got {sims}",
                       where="command line")  # fmt: skip
    program = _program(study, where, progress)
    complete = _completion(study, where)
    draws = _simulations(study, sims, where)
    points = []
    for truth, data in draws:
        if complete is not None:
            truth = {**truth, **complete(truth, data)}
        try:
            points.append((program.point(truth, "sbc precheck"), data))
        except SBCError as exc:
            raise SBCError(
                f"{exc} (name a function that computes them: [precheck] parameters)", where
            ) from None
    with tempfile.TemporaryDirectory(prefix="sbc-precheck-") as tmp:
        names = _names(program, points[0], Path(tmp), where)
        workers = workers or available_cores()
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(pool.map(_density, [program] * len(points), points,
                                    [Path(tmp)] * len(points), range(len(points))))  # fmt: skip
    good = [r for r in results if not isinstance(r, str)]
    rejected = [r for r in results if isinstance(r, str)]
    if len(good) < 20:
        raise SBCError(
            f"the program rejects {len(rejected)} of {len(points)} simulated truths "
            f"(first: {rejected[0] if rejected else '-'}): nothing left to test",
            where,
        )
    u = np.array([r.unconstrained for r in good])
    grad = np.array([r.gradient for r in good])
    if u.shape[1] != len(names):
        raise SBCError(f"CmdStan gave {u.shape[1]} coordinates but names {len(names)}", where)
    check = score_check(u, grad, names, alpha=alpha)
    return PrecheckResult(check, rejected, len(points), time.perf_counter() - t0, u, grad)


def _program(study: Study, where: str, progress: bool) -> Any:
    """The study's Stan program, prepared (a CmdStan backend's `StanProgram`)."""
    from sbc.backends.cmdstan.program import StanProgram

    backend = make_backend(study, cores=1)
    if not isinstance(backend, StanProgram):
        raise SBCError(
            f"sbc precheck needs a Stan program; the {study.backend.type!r} backend has none",
            where,
        )
    study.simulator.prepare(where, progress=progress)
    truth, data = check_simulator(study.simulator, study.seed, study.sims, where)
    backend.prepare(progress=progress)
    produced = backend.variables()
    if produced is not None:
        check_truth_against_model(truth, produced, f"the model {Path(study.stan).name}", where)
    backend.check_truth(truth, data, where)
    return backend


def _completion(study: Study, where: str) -> Any:
    spec = study.precheck.parameters
    if spec is None:
        return None
    try:
        function = load_callable(spec)
    except SBCError as exc:
        raise SBCError(f"[precheck] parameters: {exc}", where) from None

    def complete(truth: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        try:
            extra = function(truth, data)
        except Exception as exc:  # the user's function: one line
            raise SBCError(
                f"[precheck] parameters: {spec} failed: {one_line(exc)}", where
            ) from None
        if not isinstance(extra, dict):
            raise SBCError(f"[precheck] parameters: {spec} must return a dict", where)
        return extra

    return complete


def _simulations(study: Study, sims: int, where: str) -> list[tuple[dict, dict]]:
    """Simulations 0..sims-1 of the study (one CmdStan run for a simulator in Stan)."""
    simulator = study.simulator
    many = getattr(simulator, "simulate_many", None)
    try:
        if many is not None:
            return many(simulation_seeds(study.seed, 0)[0], sims)
        return [call_simulator(simulator, simulation_seeds(study.seed, i)[0]) for i in range(sims)]
    except SBCError as exc:
        raise SBCError(f"{simulator.key}: {exc}", where) from None
    except Exception as exc:  # the user's simulator: one line
        raise SBCError(f"{simulator.key}: {simulator} failed: {one_line(exc)}", where) from None


def _names(program: Any, point: tuple[dict, dict], tmp: Path, where: str) -> list[str]:
    from sbc.backends.cmdstan.at_truth import write_json

    folder = tmp / "names"
    folder.mkdir()
    inits, data = point
    try:
        data_file = write_json(folder / "data.json", data)
        return program.evaluate("unconstrained_names", inits, data_file, folder)
    except SBCError as exc:
        raise SBCError(f"the program fails at the first simulated truth: {exc}", where) from None


def _density(program: Any, point: tuple[dict, dict], tmp: Path, i: int) -> Any:
    """The density at one simulated truth, or why the program rejects it (one line)."""
    from sbc.backends.cmdstan.at_truth import write_json

    folder = tmp / f"sim{i}"
    folder.mkdir()
    inits, data = point
    try:
        return program.evaluate("density_at", inits, write_json(folder / "data.json", data),
                                folder)  # fmt: skip
    except SBCError as exc:
        return f"simulation {i}: {exc}"
