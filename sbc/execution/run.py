"""Run (or resume) a study: `sbc run`. Simulations run on a pool (in batches when they are
cheap), results are stored as they arrive (what arrives together in one transaction), in a
results folder that one run at a time may write.

A results folder remembers what made its results (`identity`): running the same study
again resumes it; a study whose fits would differ (settings, simulator or model) is refused.
A study that changed only what is ranked (a derived quantity added, other thinning) resumes
into the version of the ranks made with its settings, re-ranked from kept draws if needed.
"""

from __future__ import annotations

import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sbc import __version__
from sbc.errors import SBCError
from sbc.execution.failfast import FailFast
from sbc.execution.folder import results_lock, store_errors
from sbc.execution.isolation import process_state_kept
from sbc.execution.pools import check_scheduler, drain, open_pool
from sbc.execution.prepare import Prepared, prepare
from sbc.execution.rerank import (
    compute_ranks,
    matching_version,
    plan_version,
    rank_identity_hash,
    version_identity,
)
from sbc.execution.task import Task
from sbc.results import version_info
from sbc.store import RANK_VERSIONS, Store
from sbc.study import Study, identity_from_manifest, identity_hash, load_study, split_identity
from sbc.thinning import DIAGNOSTICS as AUTO_DIAGNOSTICS


def run(
    study: Study | str | Path,
    *,
    sims: int | None = None,
    seed: int | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    out: str | Path | None = None,
    backend: str | None = None,
    retry_failed: bool = False,
    new: bool = False,
    progress: bool = True,
    stop_early: bool = False,
    alpha: float = 0.01,
    look_every: int = 1,
    tls: dict[str, str | Path | None] | None = None,
) -> Path:
    """Run (or resume) a study; returns its results folder. `sbc.run` (`sbc.api`) wraps it
    and returns `sbc.Results`; the CLI's `sbc run` calls it.

    With `stop_early`, the anytime-valid sequential test of `sbc.analysis.sequential` runs after
    every `look_every` simulations (in simulation-index order) and the study stops at the
    first quantity rejected at family-wise level `alpha`; the decision is recorded in the
    manifest as "stopped_early" (null when the run did not stop) and the store stays
    resumable. The calling process keeps its environment and its loggers' state
    (`isolation`): only the worker processes are silenced. `backend` runs another inference
    method on the same datasets (its settings from the file's ``[backend.<name>]``, its
    results in ``results/<name>-<backend>``). `tls`: certificate files for a tls://
    scheduler (`tls_ca_file`, `tls_cert`, `tls_key`), overriding the study file's
    ``[parallel]``."""
    if not isinstance(study, Study):
        study = load_study(study)
    study = study.with_overrides(
        sims=sims,
        seed=seed,
        workers=workers,
        scheduler=scheduler,
        out=out,
        backend=backend,
        tls=tls,
    )
    with process_state_kept():
        p = prepare(study, progress=progress)
        check_scheduler(study.parallel.scheduler, study.parallel.tls_files())
        folder = study.results_dir
        if new:
            folder = _fresh_folder(folder)
        Store.check_writable(folder)
        with results_lock(folder), store_errors(folder):
            store = Store.open_for_writing(folder, _columns(p))
            try:
                version = _resume_version(store, p, progress)
                _record_manifest(store, p, version)
                stop = (alpha, look_every) if stop_early else None
                return _execute(p, store, folder, retry_failed, progress, stop, version)
            finally:
                store.close()


def _columns(p: Prepared) -> tuple:
    """The store's columns: the backend's diagnostics, and auto thinning's if it thins so."""
    auto = AUTO_DIAGNOSTICS if p.study.auto_thinning is not None else ()
    return (*p.backend.diagnostics, *auto)


def _fresh_folder(folder: Path) -> Path:
    if not folder.exists():
        return folder
    n = 2
    while folder.with_name(f"{folder.name}-{n}").exists():
        n += 1
    return folder.with_name(f"{folder.name}-{n}")


# -- what the results were made from ---------------------------------------------------------------

#: How a change of each part of the identity is named when a resume is refused.
_CHANGED = {
    "stan_source": "the Stan program",
    "fits": "the study's settings that change the fits (seed, simulator or its arguments, "
    "sampler, backend, keep_draws)",
    "study": "the study's settings (seed, simulator, sampler, quantities, backend)",
    "simulator_source": "the simulator's code (its source file, or the function and the "
    "values it reads)",
}


def identity(p: Prepared) -> dict[str, Any]:
    """What must not change for stored results to stay valid: the study's settings that
    change the fits (backend options included), the simulator's code, and what the backend
    adds (for CmdStan, the Stan source). `study` (all settings, ranks too) is the hash sbc
    0.1 recorded; what changes only the ranks is each rank version's `identity`."""
    return {
        "study": p.study.identity_hash(),
        "fits": identity_hash(p.study.fit_identity()),
        "simulator_source": p.study.simulator.source_hash(),
        **p.backend.identity(),
    }


def _resume_version(store: Store, p: Prepared, progress: bool) -> int:
    """The version of the ranks this run writes to, after checking that the stored fits are
    this study's: the version made with its ranking settings, or a new one re-ranked from
    the kept draws when only those settings changed (a derived quantity added)."""
    manifest = store.manifest()
    old = manifest.get("identity")
    if old is None:
        return 1
    new = identity(p)
    old_fits = old.get("fits") or _legacy_fits(manifest)
    compared = ["fits"] if old_fits is not None else ["study"]
    old = {**old, "fits": old_fits}
    rest = sorted((set(old) | set(new)) - {"study", "fits"})
    for key in [*compared, *rest]:
        if old.get(key) != new.get(key):
            label = _CHANGED.get(key, f"the backend's {key.replace('_', ' ')}")
            raise SBCError(
                f"{label} changed since these results were written; "
                f"use --new to start over in a new folder, or --out elsewhere",
                where=str(store.path.parent),
            )
    if old_fits is None:  # results whose identity cannot be split: all of it matched
        return 1
    ranks = identity_hash(p.study.rank_identity())
    version = matching_version(store, ranks)
    return version if version is not None else _rerank_stored(store, p, manifest, progress)


def _legacy_fits(manifest: dict[str, Any]) -> str | None:
    """The fits' identity of results written before it was recorded apart (sbc 0.1): rebuilt
    from the study they describe, if that gives back the hash they recorded."""
    rebuilt = identity_from_manifest(manifest.get("study") or {})
    if rebuilt is None or identity_hash(rebuilt) != (manifest.get("identity") or {}).get("study"):
        return None
    return identity_hash(split_identity(rebuilt)[0])


def _rerank_stored(store: Store, p: Prepared, manifest: dict[str, Any], progress: bool) -> int:
    """Only what is ranked changed: rank the stored simulations again from their kept draws
    into a new version (refused, in one line, if they kept none)."""
    where = str(store.path.parent)
    if not (manifest.get("study") or {}).get("keep_draws"):
        raise SBCError(
            "the ranked quantities or their thinning changed since these results were "
            "written (the fits did not), and these results kept no draws to re-rank: run "
            "the study as it was, or use --new to start over in a new folder",
            where=where,
        )
    study = p.study
    plan = plan_version(
        manifest,
        store.rank_versions()[-1],
        study.quantities.derived,
        study.thin_ranks,
        where,
        include=study.quantities.include,
        quantities=p.quantities,
        exact=True,
        stan=study.quantities.stan,
    )
    rows, approximate = compute_ranks(store, plan, study.simulator, manifest, progress, where)
    version = max(store.rank_versions()) + 1
    store.add_rank_version(version, rows, plan.info("run", approximate))
    return version


def _record_manifest(store: Store, p: Prepared, version: int) -> None:
    study = p.study
    manifest = store.manifest()
    versions = dict(manifest.get(RANK_VERSIONS) or {})
    if "1" not in versions:  # pinned before `study` below describes a later version
        info = version_info(manifest, 1) if manifest.get("study") else _version_info(p)
        versions["1"] = {**info, "identity": version_identity(manifest, 1) or
                         _version_info(p)["identity"]}  # fmt: skip
        versions["1"].pop("version", None)
    entries: dict[str, Any] = {
        RANK_VERSIONS: versions,
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


def _version_info(p: Prepared) -> dict[str, Any]:
    """The description of the ranks a study makes (its version 1 when its store is new)."""
    study = p.study
    derived = study.derived_described()
    return {
        "identity": rank_identity_hash(
            study.thin_ranks, study.quantities.include, derived, study.quantities.stan
        ),
        "thin": study.thin_ranks,
        "include": list(study.quantities.include),
        "derived": derived,
        **({"stan": list(study.quantities.stan)} if study.quantities.stan else {}),
        "quantities": list(p.quantities),
        "by": "run",
    }


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
    version: int = 1,
) -> Path:
    study = p.study
    done = store.done(include_failed=not retry_failed)
    todo = [i for i in range(study.sims) if i not in done]
    monitor = None
    if stop is not None:
        from sbc.analysis.sequential import SequentialMonitor

        monitor = SequentialMonitor.from_store(
            _VersionOf(store, version),
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
    task_of = _task_factory(p, str(tmp_root), keep_every=_kept_stride(store, study.thin_ranks))
    bar = _progress_bar(study.sims, len(done & set(range(study.sims))), progress)
    ok_before = bool(store.done(include_failed=False))
    fail_fast = FailFast(len(todo), ok_before, where=str(study.path or study.name))
    flagged = next((d for d in p.backend.diagnostics if d.flag_when), None)
    counts = {"failed": 0, **({flagged.name: 0} if flagged else {})}
    max_batch = stop[1] if stop is not None else None  # --stop-early looks every stop[1]
    results = _results(task_of, todo, p.workers, study.parallel, tmp_root, progress, max_batch)
    try:
        for batch in results:
            store.add_many(batch, ranks_version=version)  # what arrived together: one commit
            fail_fast.check(batch)  # the first simulations all failed alike: stop, one line
            counts["failed"] += sum(r.status == "failed" for r in batch)
            if flagged is not None:
                counts[flagged.name] += sum(
                    _flags(flagged, r.diagnostics.get(flagged.name)) for r in batch
                )
            bar.set_postfix(counts, refresh=False)
            bar.update(len(batch))
            if monitor is not None and any(monitor.add(r) is not None for r in batch):
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


class _VersionOf:
    """A store read as one version of its ranks (what the sequential monitor replays)."""

    def __init__(self, store: Store, version: int):
        self.store, self.version = store, version

    def ranks(self):
        return self.store.ranks(self.version)

    def simulations(self):
        return self.store.simulations()


def _kept_stride(store: Store, thin: int | str) -> int | None:
    """Kept draws are every k-th draw, k the thinning of the ranks' version 1, whatever
    version a run writes: one stride for the whole store, so any re-ranking can use them.
    (None with thin_ranks = "auto": a fit keeps the draws it ranked.)"""
    kept = version_info(store.manifest(), 1).get("thin") or thin
    return None if kept == "auto" else int(kept)


def _task_factory(p: Prepared, tmp_root: str, keep_every: int | None):
    study = p.study

    def task(sim: int) -> Task:
        return Task(
            sim=sim,
            master_seed=study.seed,
            simulator=study.simulator,
            backend=p.backend,
            thin=study.thin_ranks,
            quantities=tuple(p.quantities),
            derived=study.quantities.derived,
            keep_draws=study.keep_draws,
            tmp_root=tmp_root,
            stan_quantities=study.quantities.stan,
            keep_every=keep_every,
            auto=study.auto_thinning,
        )

    return task


def _results(
    task_of,
    todo: list[int],
    workers: int,
    parallel: Any,
    tmp_root: Path,
    progress: bool,
    max_batch: int | None = None,
):
    """Results in completion order, from the study's pool (none is started for no work)."""
    if not todo:
        return
    tls = parallel.tls_files()
    pool = open_pool(parallel.scheduler, workers, len(todo), tmp_root, progress, tls=tls)
    yield from drain(pool, task_of, todo, in_flight=2 * pool.workers, max_batch=max_batch)


def _progress_bar(total: int, initial: int, show: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc="sbc",
        unit="sim",
        disable=not show,
        file=sys.stderr,
        dynamic_ncols=True,
    )
