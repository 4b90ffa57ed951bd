"""Run (or resume) a study: `sbc run`. One task per simulation on a pool, each result stored
as it arrives, in a results folder that one run at a time may write.

A results folder remembers what made its results (`identity`): running the same study
again resumes it; a study whose settings, simulator or model changed is refused.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import shutil
import sqlite3
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sbc import __version__
from sbc.errors import SBCError
from sbc.execution.pools import drain, open_pool
from sbc.execution.prepare import Prepared, prepare
from sbc.execution.task import Task
from sbc.store import DB_NAME, Store
from sbc.study import Study, load_study


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
    p = prepare(study, progress=progress)
    folder = study.results_dir
    if new:
        folder = _fresh_folder(folder)
    Store.check_writable(folder)
    with _results_lock(folder), _store_errors(folder):
        store = Store.open_for_writing(folder, p.backend.diagnostics)
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


# -- what the results were made from ---------------------------------------------------------------

#: How a change of each part of the identity is named when a resume is refused.
_CHANGED = {
    "stan_source": "the Stan program",
    "study": "the study's settings (seed, simulator, sampler, quantities, backend)",
    "simulator_source": "the simulator's source file",
}


def identity(p: Prepared) -> dict[str, Any]:
    """What must not change for stored results to stay valid: the study's settings (backend
    options included), the simulator's source file, and what the backend adds (for CmdStan,
    the Stan source)."""
    return {
        "study": p.study.identity_hash(),
        "simulator_source": p.study.simulator.source_hash(),
        **p.backend.identity(),
    }


def _check_resumable(store: Store, p: Prepared) -> None:
    old = store.manifest().get("identity")
    if old is None:
        return
    new = identity(p)
    for key in [*_CHANGED, *sorted((set(old) | set(new)) - set(_CHANGED))]:
        if old.get(key) != new.get(key):
            label = _CHANGED.get(key, f"the backend's {key.replace('_', ' ')}")
            raise SBCError(
                f"{label} changed since these results were written; "
                f"use --new to start over in a new folder, or --out elsewhere",
                where=str(store.path.parent),
            )


def _record_manifest(store: Store, p: Prepared) -> None:
    study = p.study
    manifest = store.manifest()
    entries: dict[str, Any] = {
        "identity": identity(p),
        "study": study.describe(),
        "quantities": p.quantities,
        "sims": max(study.sims, manifest.get("sims", 0)),
        "backend": p.backend.describe(),
        "diagnostics": [d.to_dict() for d in store.columns],
        "versions": _versions(),
        "last_run_started": _now(),
    }
    if study.stan is not None:
        entries["stan_source"] = study.stan.read_text()
    study.write_program(store.path.parent)
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


# -- running the simulations -----------------------------------------------------------------------


def _execute(
    p: Prepared,
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
            pool=study.quantities.pool,
        )
        if monitor.decision() is not None:  # already stopped before: recompute, run nothing
            todo = []
    tmp_root = folder / ".tmp"
    shutil.rmtree(tmp_root, ignore_errors=True)  # left by a killed run; we hold the lock
    tmp_root.mkdir()
    task_of = _task_factory(p, str(tmp_root))
    bar = _progress_bar(study.sims, len(done & set(range(study.sims))), progress)
    flagged = next((d for d in p.backend.diagnostics if d.flag_when), None)
    counts = {"failed": 0, **({flagged.name: 0} if flagged else {})}
    results = _results(task_of, todo, p.workers, study.parallel.scheduler, tmp_root, progress)
    try:
        for result in results:
            store.add(result)
            counts["failed"] += result.status == "failed"
            if flagged is not None:
                counts[flagged.name] += _flags(flagged, result.diagnostics.get(flagged.name))
            bar.set_postfix(counts, refresh=False)
            bar.update(1)
            if monitor is not None and monitor.add(result) is not None:
                break  # stop early: in-flight fits are killed when `results` is closed
    finally:
        results.close()
        bar.close()
        shutil.rmtree(tmp_root, ignore_errors=True)
    decision = monitor.decision() if monitor is not None else None
    record = {**decision.to_dict(), "look_every": stop[1]} if decision and stop else None
    store.update_manifest({"stopped_early": record})
    if not store_missing(store, study.sims):
        store.update_manifest({"finished": _now()})
    return folder


def _flags(rule: Any, value: Any) -> bool:
    """Whether a fit's value breaks the backend's first rule (the progress bar counts them)."""
    if value is None or value != value:
        return False
    return value > rule.threshold if rule.flag_when == ">" else value < rule.threshold


def store_missing(store: Store, sims: int) -> int:
    return sims - len(store.done() & set(range(sims)))


def _task_factory(p: Prepared, tmp_root: str):
    study = p.study

    def task(sim: int) -> Task:
        return Task(
            sim=sim,
            master_seed=study.seed,
            simulator=study.simulator,
            backend=p.backend,
            thin=study.thin,
            quantities=tuple(p.quantities),
            derived=study.quantities.derived,
            keep_draws=study.keep_draws,
            tmp_root=tmp_root,
        )

    return task


def _results(task_of, todo: list[int], workers: int, scheduler: str, tmp_root: Path, progress):
    """Results in completion order, from the study's pool (none is started for no work)."""
    if not todo:
        return
    pool = open_pool(scheduler, workers, len(todo), tmp_root, progress)
    yield from drain(pool, task_of, todo, in_flight=2 * pool.workers)


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
