"""One simulation, in a worker process: simulate, fit, rank. Small, picklable, never raises.

A simulation's seeds come from (study seed, simulation index) alone (`sbc.seeds`), so its
result does not depend on the worker, the pool or the host that ran it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sbc.backends import Backend
from sbc.errors import SBCError, one_line
from sbc.execution.autothin import thin_automatically
from sbc.ranks import derived_truth_and_draws, rank_rows
from sbc.seeds import simulation_seeds
from sbc.simulate import FunctionSpec, Simulator, call_simulator, resolve_function
from sbc.store import SimulationResult
from sbc.thinning import AutoThinning


@dataclass(frozen=True)
class Task:
    """Everything a worker needs for one simulation."""

    sim: int
    master_seed: int
    simulator: Simulator
    backend: Backend
    thin: int | str  # a stride, or "auto" (then `auto` says how)
    quantities: tuple[str, ...]
    derived: dict[str, FunctionSpec]
    keep_draws: bool
    tmp_root: str
    stan_quantities: tuple[str, ...] = ()  # the model's own, evaluated at the truth
    keep_every: int | None = None  # stride of kept draws (the store's); default: thin
    auto: AutoThinning | None = None  # thin_ranks = "auto": per fit, chains continued if short


@dataclass(frozen=True)
class Batch:
    """Several simulations of one study sent to a worker as one task.

    When fits cost nothing, one task per simulation spends more of the runner's time on
    sending tasks and receiving results than the workers spend on simulations; the runner
    sizes batches so that each holds about `sbc.execution.pools.BATCH_SECONDS` of work (one
    simulation per batch for any real sampler). The study's settings travel once per batch.
    """

    template: Task  # every field but `sim` is the batch's
    sims: tuple[int, ...]

    def tasks(self) -> list[Task]:
        return [dataclasses.replace(self.template, sim=sim) for sim in self.sims]

    def with_template(self, **changes: object) -> Batch:
        return dataclasses.replace(self, template=dataclasses.replace(self.template, **changes))


def run_batch(batch: Batch) -> list[SimulationResult]:
    """`run_simulation` of each simulation of a batch, in order, in one scratch folder
    renamed from one to the next. Never raises."""
    tasks = batch.tasks()
    return [run_simulation(t, reuse_workdir=i < len(tasks) - 1) for i, t in enumerate(tasks)]


#: The scratch folder of the simulation this process runs now (the local pool's watchdog
#: removes it if the runner dies), made and removed under WORKDIR_LOCK: a watchdog that holds
#: the lock knows no new folder will appear before it kills the process. Between the
#: simulations of a batch it stays, empty, and the next one renames it: removing a folder costs
#: milliseconds on some file systems (ext4: 2.6 ms against 0.003 ms for a rename).
CURRENT_WORKDIR: list[Path | None] = [None]
WORKDIR_LOCK = threading.Lock()


def _workdir(sim: int, tmp_root: str) -> Path:
    """An empty scratch folder `tmp_root/sim<N>-*` for one simulation (this process's last
    one, renamed, if it is still there)."""
    with WORKDIR_LOCK:
        spare = CURRENT_WORKDIR[0]
        workdir = None
        if spare is not None and str(spare.parent) == str(tmp_root):
            workdir = spare.with_name(f"sim{sim}-{spare.name.partition('-')[2]}")
            try:
                os.rename(spare, workdir)
            except OSError:  # removed meanwhile (the runner cleans its temporary folder)
                workdir = None
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix=f"sim{sim}-", dir=tmp_root))
        CURRENT_WORKDIR[0] = workdir
        return workdir


def _clean(workdir: Path, keep: bool) -> None:
    """Remove a simulation's scratch folder, or only what is in it (`keep`: for the next)."""
    with WORKDIR_LOCK:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
            CURRENT_WORKDIR[0] = None
            return
        try:
            entries = list(os.scandir(workdir))
        except OSError:
            CURRENT_WORKDIR[0] = None
            return
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def run_simulation(task: Task, reuse_workdir: bool = False) -> SimulationResult:
    """Simulate, fit, rank. Never raises: a failure is a result with status 'failed'.

    `reuse_workdir`: leave the scratch folder, emptied, for this process's next simulation."""
    t0 = time.perf_counter()
    sim_rng, fit_seed, rank_rng = simulation_seeds(task.master_seed, task.sim)
    timings: dict[str, float] = {}
    stage = "simulator"
    workdir = _workdir(task.sim, task.tmp_root)
    fit = None
    try:
        truth, data = call_simulator(task.simulator, sim_rng)
        timings["simulate_seconds"] = time.perf_counter() - t0
        stage = "fit"
        t1 = time.perf_counter()
        with _captured_output():
            fit = task.backend.fit(data, fit_seed, workdir)
            draws = task.backend.draws(fit)
        if task.stan_quantities:
            stage = "[quantities] stan at the truth"
            at_truth = task.backend.quantities_at_truth(truth, data, task.stan_quantities, workdir)
            truth = {**truth, **at_truth}
        stage = "ranks"
        _check_truth_against_draws(truth, draws)
        functions = {k: resolve_function(v) for k, v in task.derived.items()}
        quantities = list(task.quantities) or None
        start, every, extra = 0, task.thin, {}
        if task.auto is not None:
            stage = "auto thinning"
            with _captured_output():
                thinned = thin_automatically(task.backend, fit, draws, truth, data, functions,
                                             quantities, task.auto, fit_seed, workdir)  # fmt: skip
            fit, truth, draws = thinned.fit, thinned.truth, thinned.draws
            start, every, extra = thinned.thinning.start, thinned.thinning.every, \
                thinned.diagnostics()  # fmt: skip
        stage = "fit"
        with _captured_output():
            diagnostics = {**task.backend.diagnose(fit), **extra}
        timings["fit_seconds"] = time.perf_counter() - t1
        stage = "ranks"
        t2 = time.perf_counter()
        if functions and task.auto is None:
            stage = "derived quantities"
            d_truth, d_draws = derived_truth_and_draws(functions, truth, draws, data)
            truth = {**truth, **d_truth}
            draws = {**draws, **d_draws}
            stage = "ranks"
        assert isinstance(every, int)
        rows = rank_rows(truth, draws, thin_every=every, rng=rank_rng, quantities=quantities,
                         start=start)  # fmt: skip
        kept = None
        if task.keep_draws:  # auto: the draws ranked; else every keep_every-th (the store's)
            stride = every if task.auto is not None else task.keep_every or every
            kept = _npz({k: v[:, start::stride] for k, v in draws.items()})
        timings["rank_seconds"] = time.perf_counter() - t2
        timings["wall_seconds"] = time.perf_counter() - t0
        return SimulationResult(
            sim=task.sim,
            seed=fit_seed,
            status="ok",
            diagnostics={**diagnostics, **timings},
            ranks=rows,
            draws_npz=kept,
        )
    except Exception as exc:  # recorded, never raised: one bad simulation must not stop a study
        timings["wall_seconds"] = time.perf_counter() - t0
        return SimulationResult(
            sim=task.sim,
            seed=fit_seed,
            status="failed",
            error=f"{stage}: {one_line(exc)}",
            diagnostics=timings,
        )
    finally:
        if fit is not None:
            task.backend.close(fit)
        _clean(workdir, keep=reuse_workdir)


def _check_truth_against_draws(truth: dict, draws: dict[str, np.ndarray]) -> None:
    missing = sorted(set(truth) - set(draws))
    if missing:
        raise SBCError(f"the model does not produce {', '.join(missing)}")
    for name in truth:
        want, got = np.shape(truth[name]), draws[name].shape[2:]
        if want != got:
            raise SBCError(f"truth {name} has shape {want} but the model's {name} is {got}")


def failed_result(task: Task, error: str) -> SimulationResult:
    """The record of a simulation that never ran to the end (its worker or host failed)."""
    _, fit_seed, _ = simulation_seeds(task.master_seed, task.sim)
    return SimulationResult(sim=task.sim, seed=fit_seed, status="failed", error=error)


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


@contextlib.contextmanager
def _captured_output() -> Iterator[None]:
    """Swallow prints from backends and user code so they do not break the progress bar."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
