"""Run a study: one task per simulation, on worker processes, each result stored as it arrives.

Data flows one way: study -> simulate -> fit -> ranks -> store. A simulation's
seeds come from (study seed, simulation index) alone, so results do not depend on
the number of workers, the order of completion, or interruptions and resumption.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import inspect
import io
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from sbc import __version__
from sbc.backends import Backend
from sbc.callables import call_simulator, check_deterministic, load_callable, source_hash
from sbc.errors import SBCError
from sbc.ranks import derived_truth_and_draws, rank_rows, scalar_names
from sbc.store import DB_NAME, SimulationResult, Store
from sbc.study import Study, available_cores, load_study

# -- seeds ---------------------------------------------------------------------------------------


def simulation_seeds(master: int, sim: int) -> tuple[np.random.Generator, int, np.random.Generator]:
    """(simulator rng, inference seed, tie-breaking rng) for one simulation: a pure function."""
    seq = np.random.SeedSequence(master, spawn_key=(sim,))
    sim_seq, rank_seq = seq.spawn(2)
    fit_seed = int(seq.generate_state(1, dtype=np.uint32)[0] >> 1)  # CmdStan wants < 2**31
    return np.random.default_rng(sim_seq), fit_seed, np.random.default_rng(rank_seq)


# -- backends ------------------------------------------------------------------------------------


def make_backend(study: Study, parallel_chains: int = 1) -> Backend:
    """The study's backend, configured but not yet prepared (not compiled)."""
    s = study.sampler
    if study.backend.type in ("exact", "exact-hierarchical"):
        from sbc.backends.exact import ExactHierarchicalBackend, ExactNormalBackend

        opts = study.backend.options
        cls = ExactNormalBackend if study.backend.type == "exact" else ExactHierarchicalBackend
        return cls(
            chains=s.chains,
            draws_per_chain=int(opts.get("draws", s.draws)),
            sd_scale=float(opts.get("sd_scale", 1.0)),
            shift=float(opts.get("shift", 0.0)),
        )
    from sbc.backends.cmdstan import CmdStanBackend

    assert study.stan is not None
    return CmdStanBackend(
        stan_file=study.stan,
        chains=s.chains,
        warmup=s.warmup,
        draws_per_chain=s.draws,
        adapt_delta=s.adapt_delta,
        max_treedepth=s.max_treedepth,
        timeout=s.timeout,
        parallel_chains=parallel_chains,
    )


# -- one simulation (runs in a worker) -----------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """Everything a worker needs for one simulation; small and picklable."""

    sim: int
    master_seed: int
    simulator: str
    simulator_args: dict[str, Any]
    backend: Backend
    thin: int
    quantities: tuple[str, ...]
    derived: dict[str, str]
    keep_draws: bool
    tmp_root: str
    extra: dict[str, Any] = field(default_factory=dict)


def run_simulation(task: Task) -> SimulationResult:
    """Simulate, fit, rank. Never raises: a failure is a result with status 'failed'."""
    t0 = time.perf_counter()
    sim_rng, fit_seed, rank_rng = simulation_seeds(task.master_seed, task.sim)
    timings: dict[str, float] = {}
    stage = "simulator"
    workdir = Path(tempfile.mkdtemp(prefix=f"sim{task.sim}-", dir=task.tmp_root))
    _CURRENT_WORKDIR[0] = workdir
    fit = None
    try:
        truth, data = call_simulator(task.simulator, sim_rng, task.simulator_args)
        timings["simulate_seconds"] = time.perf_counter() - t0
        stage = "fit"
        t1 = time.perf_counter()
        with _captured_output():
            fit = task.backend.fit(data, fit_seed, workdir)
            draws = task.backend.draws(fit)
            diagnostics = task.backend.diagnostics(fit)
        timings["fit_seconds"] = time.perf_counter() - t1
        stage = "ranks"
        t2 = time.perf_counter()
        missing = sorted(set(truth) - set(draws))
        if missing:
            raise SBCError(f"the model does not produce {', '.join(missing)}")
        for name in truth:
            want, got = np.shape(truth[name]), draws[name].shape[2:]
            if want != got:
                raise SBCError(f"truth {name} has shape {want} but the model's {name} is {got}")
        if task.derived:
            stage = "derived quantities"
            d_truth, d_draws = derived_truth_and_draws(
                {k: load_callable(v) for k, v in task.derived.items()}, truth, draws, data
            )
            truth = {**truth, **d_truth}
            draws = {**draws, **d_draws}
            stage = "ranks"
        rows = rank_rows(
            truth,
            draws,
            thin_every=task.thin,
            rng=rank_rng,
            quantities=list(task.quantities) or None,
        )
        kept = _npz({k: v[:, :: task.thin] for k, v in draws.items()}) if task.keep_draws else None
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
            error=f"{stage}: {_one_line(exc)}",
            diagnostics=timings,
        )
    finally:
        if fit is not None:
            task.backend.close(fit)
        shutil.rmtree(workdir, ignore_errors=True)
        _CURRENT_WORKDIR[0] = None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    if isinstance(exc, SBCError):
        return msg
    if not msg:
        frame = traceback.extract_tb(exc.__traceback__)[-1:]
        msg = f"at {frame[0].filename}:{frame[0].lineno}" if frame else ""
    return f"{type(exc).__name__}: {msg}"


def _npz(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


@contextlib.contextmanager
def _captured_output() -> Iterator[None]:
    """Swallow prints from backends and user code so they do not break the progress bar."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


# -- worker processes ----------------------------------------------------------------------------

_CURRENT_WORKDIR: list[Path | None] = [None]


def _worker_init(runner: int | None = None) -> None:
    """Make each worker its own process group and tie its life to the runner's.

    If the runner dies (even by SIGKILL) the worker notices its parent changed,
    removes its temporary folder and kills its whole group: the CmdStan
    processes it started go with it. The runner passes its pid: a worker that
    starts after the runner died must not take its new parent for the runner.
    """
    os.setpgrp()
    parent = os.getppid() if runner is None else runner

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.25)
        workdir = _CURRENT_WORKDIR[0]
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="sbc-parent-watch").start()


# -- the study -----------------------------------------------------------------------------------


@dataclass
class Plan:
    """A validated study, ready to run: what `sbc run` checks before it touches any results."""

    study: Study
    backend: Backend
    quantities: list[str]
    workers: int


def plan(study: Study, progress: bool = True) -> Plan:
    """Check everything that can be checked before running; compile the model."""
    where = str(study.path or study.name)
    truth = _test_simulator(study, where)
    for name, spec in study.quantities.derived.items():
        try:
            load_callable(spec)
        except SBCError as exc:
            raise SBCError(f"[quantities] derived.{name}: {exc}", where=where) from None
    workers = study.workers()
    cores = available_cores()
    parallel_chains = max(1, min(study.sampler.chains, cores // max(1, workers)))
    backend = make_backend(study, parallel_chains=parallel_chains)
    backend.prepare(progress=progress)
    produced = backend.variables()
    if produced is not None:
        for name, value in truth.items():
            if name not in produced:
                model = f"the model {study.stan.name}" if study.stan else "the model"
                raise SBCError(
                    f"the simulator's truth has {name!r}, which {model} does not produce "
                    f"(it has: {', '.join(sorted(produced))})",
                    where=where,
                )
            if produced[name] != np.ndim(value):
                raise SBCError(
                    f"truth {name!r} has {np.ndim(value)} dimensions but the model's {name} "
                    f"has {produced[name]}",
                    where=where,
                )
    available = [s for var, v in sorted(truth.items()) for s in scalar_names(var, np.shape(v))]
    # derived quantities are named in the study on purpose: always ranked
    quantities = _select(study.quantities.include, available, where)
    quantities += list(study.quantities.derived)
    return Plan(study=study, backend=backend, quantities=quantities, workers=workers)


def _test_simulator(study: Study, where: str, tries: int = 5) -> dict[str, np.ndarray]:
    """The simulator is importable, uses only its rng and returns numeric truths: its truth.

    A simulator may fail for a few seeds (recorded per simulation later), so the study is
    refused only if it fails on each of the first `tries` simulations.
    """
    spec, args = study.simulator.function, study.simulator.args
    try:
        inspect.signature(load_callable(spec)).bind(None, **args)
    except SBCError as exc:
        raise SBCError(f"[simulator] function: {exc}", where=where) from None
    except TypeError as exc:
        raise SBCError(
            f"[simulator] function: {spec} cannot be called as f(rng, **args) with "
            f"[simulator] args = {args}: {exc}",
            where=where,
        ) from None
    except ValueError:  # no signature to check (a builtin): the test calls will tell
        pass
    first: Exception | None = None
    for i in range(min(tries, study.sims)):
        try:
            check_deterministic(spec, args, study.seed + i)
            return call_simulator(spec, simulation_seeds(study.seed, i)[0], args)[0]
        except SBCError as exc:
            raise SBCError(f"[simulator] function: {exc}", where=where) from None
        except Exception as exc:  # the user's code failed; try the next seed
            first = first or exc
    raise SBCError(
        f"[simulator] function: {spec} fails on each of {min(tries, study.sims)} test calls "
        f"({_one_line(first)})",
        where=where,
    )


def _select(include: tuple[str, ...], available: list[str], where: str) -> list[str]:
    """Scalar names to rank: all, or those named (a variable name selects all its components)."""
    if not include:
        return available
    chosen: list[str] = []
    for name in include:
        matches = [a for a in available if a == name or a.startswith(name + "[")]
        if not matches:
            raise SBCError(
                f"[quantities] include: {name!r} is not among the ranked quantities "
                f"(the simulator's truth and derived quantities)",
                where=where,
            )
        chosen += [m for m in matches if m not in chosen]
    return chosen


def run(
    study: Study | str | Path,
    *,
    sims: int | None = None,
    seed: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    out: str | Path | None = None,
    retry_failed: bool = False,
    new: bool = False,
    progress: bool = True,
    stop_early: bool = False,
    alpha: float = 0.01,
    look_every: int = 1,
) -> Path:
    """Run (or resume) a study; returns its results folder. The Python face of `sbc run`.

    With `stop_early`, the anytime-valid sequential test of `sbc.analysis.sequential` runs after
    every `look_every` simulations (in simulation-index order) and the study stops at the
    first quantity rejected at family-wise level `alpha`; the decision is recorded in the
    manifest as "stopped_early" (null when the run did not stop) and the store stays
    resumable."""
    if not isinstance(study, Study):
        study = load_study(study)
    study = study.with_overrides(
        sims=sims, seed=seed, workers=workers, scheduler=scheduler, out=out
    )
    p = plan(study, progress=progress)
    folder = study.results_dir
    if new:
        folder = _fresh_folder(folder)
    Store.check_writable(folder)
    with _results_lock(folder), _store_errors(folder):
        store = Store.open_for_writing(folder)
        try:
            _check_resumable(store, p)
            _record_manifest(store, p)
            stop = (alpha, look_every) if stop_early else None
            return _execute(p, store, folder, retry_failed, progress, stop)
        finally:
            store.close()


@contextlib.contextmanager
def _store_errors(folder: Path) -> Iterator[None]:
    """A store that cannot be written (disk full, I/O error) ends the run in one line."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise SBCError(
            f"cannot write the results ({exc}); every simulation stored so far is complete: "
            "free space and run again to resume",
            where=str(folder / DB_NAME),
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise SBCError(
            f"cannot write the results ({exc.strerror}); every simulation stored so far is "
            "complete: free space and run again to resume",
            where=str(folder),
        ) from None


def _fresh_folder(folder: Path) -> Path:
    if not folder.exists():
        return folder
    n = 2
    while folder.with_name(f"{folder.name}-{n}").exists():
        n += 1
    return folder.with_name(f"{folder.name}-{n}")


@contextlib.contextmanager
def _results_lock(folder: Path) -> Iterator[None]:
    """One writer per results folder; a second `sbc run` is refused at once."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SBCError(
            f"cannot create the results folder: {exc.strerror}", where=str(folder)
        ) from None
    with open(folder / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SBCError(
                "another sbc run is writing these results; wait for it or use --out",
                where=str(folder),
            ) from None
        yield


def _identity(p: Plan) -> dict[str, Any]:
    study = p.study
    ident = {
        "study": study.identity_hash(),
        "simulator_source": source_hash(study.simulator.function),
    }
    if study.stan is not None:
        import hashlib

        ident["stan_source"] = hashlib.sha256(study.stan.read_bytes()).hexdigest()
    return ident


def _check_resumable(store: Store, p: Plan) -> None:
    old = store.manifest().get("identity")
    if old is None:
        return
    new = _identity(p)
    for key, label in (
        ("stan_source", "the Stan program"),
        ("study", "the study's settings (seed, simulator, sampler, quantities, backend)"),
        ("simulator_source", "the simulator's source file"),
    ):
        if old.get(key) != new.get(key):
            raise SBCError(
                f"{label} changed since these results were written; "
                f"use --new to start over in a new folder, or --out elsewhere",
                where=str(store.path.parent),
            )


def _record_manifest(store: Store, p: Plan) -> None:
    import dataclasses

    study = p.study
    manifest = store.manifest()
    entries: dict[str, Any] = {
        "identity": _identity(p),
        "study": {
            **{k: v for k, v in dataclasses.asdict(study).items() if k not in ("path", "out")},
            "path": str(study.path) if study.path else None,
            "stan": str(study.stan) if study.stan else None,
        },
        "quantities": p.quantities,
        "sims": max(study.sims, manifest.get("sims", 0)),
        "backend": p.backend.manifest(),
        "versions": _versions(),
        "last_run_started": _now(),
    }
    if study.stan is not None:
        entries["stan_source"] = study.stan.read_text()
    if "started" not in manifest:
        entries["started"] = entries["last_run_started"]
    store.update_manifest(entries)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _versions() -> dict[str, str]:
    """Versions of everything that can change a result, recorded with the results."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"sbc": __version__, "python": platform.python_version()}
    for package in ("cmdstanpy", "numpy", "scipy", "pandas", "joblib"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def _execute(
    p: Plan,
    store: Store,
    folder: Path,
    retry_failed: bool,
    progress: bool,
    stop: tuple[float, int] | None = None,
) -> Path:
    study = p.study
    done = store.done(include_failed=not retry_failed)
    todo = [i for i in range(study.sims) if i not in done]
    monitor = None
    if stop is not None:
        from sbc.analysis.sequential import SequentialMonitor

        monitor = SequentialMonitor.from_store(
            store,
            p.quantities,
            alpha=stop[0],
            look_every=stop[1],
            retry_failed=retry_failed,
            pool=getattr(study.quantities, "pool", ()),
        )
        if monitor.decision() is not None:  # already stopped before: recompute, run nothing
            todo = []
    tmp_root = folder / ".tmp"
    shutil.rmtree(tmp_root, ignore_errors=True)  # left by a killed run; we hold the lock
    tmp_root.mkdir()
    task_of = _task_factory(p, str(tmp_root))
    bar = _progress_bar(study.sims, len(done & set(range(study.sims))), progress)
    counts = {"failed": 0, "divergent": 0}
    results = _map_unordered(
        task_of, todo, p.workers, study.parallel.scheduler, tmp_root, progress
    )
    try:
        for result in results:
            store.add(result)
            counts["failed"] += result.status == "failed"
            counts["divergent"] += (result.diagnostics.get("divergences") or 0) > 0
            bar.set_postfix(failed=counts["failed"], divergent=counts["divergent"], refresh=False)
            bar.update(1)
            if monitor is not None and monitor.add(result) is not None:
                break  # stop early: in-flight fits are killed when `results` is closed
    finally:
        if hasattr(results, "close"):
            results.close()
        bar.close()
        shutil.rmtree(tmp_root, ignore_errors=True)
    decision = monitor.decision() if monitor is not None else None
    record = {**decision.to_dict(), "look_every": stop[1]} if decision and stop else None
    store.update_manifest({"stopped_early": record})
    if not store_missing(store, study.sims):
        store.update_manifest({"finished": _now()})
    return folder


def store_missing(store: Store, sims: int) -> int:
    return sims - len(store.done() & set(range(sims)))


def _task_factory(p: Plan, tmp_root: str):
    study = p.study

    def task(sim: int) -> Task:
        return Task(
            sim=sim,
            master_seed=study.seed,
            simulator=study.simulator.function,
            simulator_args=study.simulator.args,
            backend=p.backend,
            thin=study.sampler.thin,
            quantities=tuple(p.quantities),
            derived=study.quantities.derived,
            keep_draws=study.keep_draws,
            tmp_root=tmp_root,
        )

    return task


def _progress_bar(total: int, initial: int, show: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc="sbc",
        unit="sim",
        disable=not show,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def _map_unordered(
    task_of, todo: list[int], workers: int, scheduler: str, tmp_root: Path, progress: bool
) -> Iterator[SimulationResult]:
    """Results in completion order, with a bounded number of tasks in flight (flat memory).

    A worker process that dies (segfault, OOM kill, a killed dask worker) takes its
    in-flight fits with it: each is rerun alone on a fresh pool, and a fit whose worker
    dies again while it runs alone is recorded as failed (see `_drain`).
    """
    if not todo:
        return
    if scheduler == "local":
        pool = LocalPool(min(workers, len(todo)), tmp_root)
    else:
        from sbc.cluster import DaskPool

        pool = DaskPool(scheduler, workers, progress)
    yield from _drain(pool, task_of, todo, in_flight=2 * pool.workers)


class LocalPool:
    """joblib's loky process pool: the default, nothing to install."""

    def __init__(self, workers: int, tmp_root: Path):
        self.workers = workers
        self.tmp_root = tmp_root

    def executor(self):
        from joblib.externals.loky import ProcessPoolExecutor

        return ProcessPoolExecutor(
            max_workers=self.workers,
            initializer=_worker_init,
            initargs=(os.getpid(),),
            env={"TMPDIR": str(self.tmp_root)},
        )

    def shutdown(self, executor, kill: bool) -> None:
        # Killing: the workers (and their CmdStan runs) die first and loky then fails what
        # they held, as when a worker crashes. (loky's own `kill_workers=True` can crash
        # its manager thread when tasks are still queued, and then never reaps the workers.)
        if kill:
            for process in list(getattr(executor, "_processes", {}).values()):
                _kill_worker(process.pid)
        executor.shutdown(wait=True)


def _kill_worker(pid: int) -> None:
    """SIGKILL a worker and, once it leads its own process group, all it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


MAX_ATTEMPTS = 2


def _drain(pool, task_of, todo: list[int], in_flight: int) -> Iterator[SimulationResult]:
    """Run every task; a task lost with a dying worker is rerun alone before it is blamed.

    A worker that dies (a segfault, an OOM kill) breaks the pool and fails every task in
    flight, not only the one that killed it. Those tasks are rerun one at a time, so an
    attempt is counted only against the task that was alone when its worker died.
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    executor = pool.executor()
    pending: dict[Any, tuple[int, bool]] = {}  # future -> (sim, ran alone)
    attempts: dict[int, int] = {}
    queue = list(reversed(todo))
    suspects: list[int] = []  # lost with a dying worker; rerun alone
    clean = False

    def submit(sim: int, alone: bool = False) -> None:
        nonlocal executor
        try:
            future = executor.submit(run_simulation, task_of(sim))
        except RuntimeError:  # the pool broke since the last submit: start a fresh one
            pool.shutdown(executor, kill=True)
            executor = pool.executor()
            future = executor.submit(run_simulation, task_of(sim))
        pending[future] = (sim, alone)

    try:
        while queue or pending or suspects:
            if suspects:
                if not pending:
                    submit(suspects.pop(), alone=True)
            else:
                while queue and len(pending) < in_flight:
                    submit(queue.pop())
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in finished:
                sim, alone = pending.pop(future)
                try:
                    yield future.result()
                except Exception as exc:  # the worker died, not the simulation code
                    attempts[sim] = attempts.get(sim, 0) + alone
                    if attempts[sim] < MAX_ATTEMPTS:
                        suspects.append(sim)
                    else:
                        yield _worker_lost(sim, task_of(sim), exc)
        clean = True
    finally:
        # Interrupted or failed: in-flight fits are killed with their CmdStan. The pool
        # goes first: loky fails the futures it still holds and dies if one was cancelled.
        pool.shutdown(executor, kill=not clean)
        if not clean:
            for future in pending:
                future.cancel()


def _worker_lost(sim: int, task: Task, exc: BaseException) -> SimulationResult:
    _, fit_seed, _ = simulation_seeds(task.master_seed, sim)
    return SimulationResult(
        sim=sim,
        seed=fit_seed,
        status="failed",
        error=f"worker process died ({MAX_ATTEMPTS} attempts): {_one_line(exc)}",
    )
