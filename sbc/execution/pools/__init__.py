"""Pools of worker processes that run simulations, and the rule for workers that die.

A pool is anything with the `Pool` protocol: `workers` (fits that run at once),
`executor()` (a `concurrent.futures`-like executor) and `shutdown(executor, kill)`.
`local.LocalPool` (joblib's loky processes) is the default; `dask.DaskPool` runs on a
dask.distributed cluster. `drain` runs every simulation on a pool, in batches when fits are
cheap, with a bounded queue, and reruns a simulation whose worker died, by the same rule for
every pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from sbc.errors import one_line
from sbc.execution.task import Batch, Task, failed_result, run_batch
from sbc.store import SimulationResult

#: A fit whose worker dies while it runs alone this many times is recorded as failed.
MAX_ATTEMPTS = 2
#: Seconds of work a task aims at when simulations are cheap (see `BatchSizer`): long enough
#: that sending it costs the runner little, short enough that results arrive steadily.
BATCH_SECONDS = 0.05
#: The most simulations in one task (bounds what a dying worker takes along, and memory).
MAX_BATCH = 64


class Executor(Protocol):
    def submit(
        self, fn: Callable[[Batch], list[SimulationResult]], batch: Batch
    ) -> Future[Any]: ...

    def shutdown(self, wait: bool = True) -> None: ...


class Pool(Protocol):
    workers: int

    def executor(self) -> Executor:
        """A fresh executor (after a worker died, the runner asks for another one)."""
        ...

    def shutdown(self, executor: Executor, kill: bool) -> None:
        """Close `executor`; `kill`: do not wait for running fits (interrupted, or failed)."""
        ...


def open_pool(
    scheduler: str,
    workers: int,
    tasks: int,
    tmp_root: Path,
    progress: bool,
    tls: Mapping[str, Path] | None = None,
) -> Pool:
    """The pool a study's scheduler names: "local" (loky), "local:N" or an address (dask;
    `tls`: certificate files for a tls:// address, by `distributed.Security`'s names)."""
    if scheduler == "local":
        from sbc.execution.pools.local import LocalPool

        return LocalPool(min(workers, tasks), tmp_root)
    from sbc.execution.pools.dask import DaskPool

    return DaskPool(scheduler, workers, progress, tls=tls)


def check_scheduler(scheduler: str, tls: Mapping[str, Path]) -> None:
    """Refuse, before anything is written, TLS settings that cannot work (see
    `dask.security`): bad certificate files, tls:// without certificates, certificates
    with tcp://."""
    if scheduler.startswith(("tcp://", "tls://")):
        from sbc.execution.pools.dask import DaskPool, security

        DaskPool.check_installed()
        security(scheduler, tls)


def drain(
    pool: Pool,
    task_of: Callable[[int], Task],
    todo: list[int],
    in_flight: int,
    max_batch: int | None = None,
) -> Iterator[list[SimulationResult]]:
    """Results in completion order, in lists (what finished together: the runner stores each
    list in one transaction); a task lost with a dying worker is rerun alone before it is
    blamed.

    Tasks are batches of simulations (`Batch`), sized by `BatchSizer` from the simulations'
    own time: one simulation each for real fits, more when fits cost nothing. A worker that
    dies (a segfault, an OOM kill) breaks the pool and fails every task in flight, not only
    the one that killed it. Their simulations are rerun one at a time, so an attempt is
    counted only against the simulation that was alone when its worker died. At most
    `in_flight` batches are queued, so memory stays flat however long the study.
    `max_batch` lowers `MAX_BATCH` (`--stop-early` looks every few simulations: a batch
    larger than that would run simulations past a stop).
    """
    from concurrent.futures import FIRST_COMPLETED, wait

    executor = pool.executor()
    pending: dict[Any, tuple[tuple[int, ...], bool]] = {}  # future -> (sims, ran alone)
    attempts: dict[int, int] = {}
    queue = list(reversed(todo))
    suspects: list[int] = []  # lost with a dying worker; rerun alone
    sizer = BatchSizer(max_batch)
    clean = False

    def submit(sims: tuple[int, ...], alone: bool = False) -> None:
        nonlocal executor
        batch = Batch(task_of(sims[0]), sims)
        try:
            future = executor.submit(run_batch, batch)
        except RuntimeError:  # the pool broke since the last submit: start a fresh one
            pool.shutdown(executor, kill=True)
            executor = pool.executor()
            future = executor.submit(run_batch, batch)
        pending[future] = (sims, alone)

    try:
        while queue or pending or suspects:
            if suspects:
                if not pending:
                    submit((suspects.pop(),), alone=True)
            else:
                while queue and len(pending) < in_flight:
                    n = min(len(queue), sizer.size(remaining=len(queue), in_flight=in_flight))
                    submit(tuple(queue.pop() for _ in range(n)))
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            done: list[SimulationResult] = []
            for future in finished:
                sims, alone = pending.pop(future)
                try:
                    results = future.result()
                except Exception as exc:  # the worker died, not the simulation code
                    for sim in sims:
                        attempts[sim] = attempts.get(sim, 0) + alone
                        if attempts[sim] < MAX_ATTEMPTS:
                            suspects.append(sim)
                        else:
                            done.append(failed_result(
                                task_of(sim),
                                f"worker process died ({MAX_ATTEMPTS} attempts): {one_line(exc)}",
                            ))  # fmt: skip
                    continue
                sizer.record(results)
                done += results
            if done:
                yield done
        clean = True
    finally:
        # Interrupted or failed: in-flight fits are killed with their CmdStan. The pool
        # goes first: loky fails the futures it still holds and dies if one was cancelled.
        pool.shutdown(executor, kill=not clean)
        if not clean:
            for future in pending:
                future.cancel()


class BatchSizer:
    """How many simulations the next task holds: about `BATCH_SECONDS` of work by the
    simulations' mean time so far, one until a simulation has been timed, at most
    `MAX_BATCH`, and never so many that workers would wait at the end while others work
    through the last batches."""

    def __init__(self, max_batch: int | None = None) -> None:
        self.seconds = 0.0
        self.count = 0
        self.max_batch = max_batch

    def record(self, results: list[SimulationResult]) -> None:
        for result in results:
            wall = result.diagnostics.get("wall_seconds")
            if wall is not None:
                self.seconds += float(wall)
                self.count += 1

    def size(self, remaining: int, in_flight: int) -> int:
        if not self.count:
            return 1
        mean = self.seconds / self.count
        wanted = int(BATCH_SECONDS / mean) if mean > 0 else MAX_BATCH
        most = MAX_BATCH if self.max_batch is None else min(self.max_batch, MAX_BATCH)
        return max(1, min(wanted, most, remaining // in_flight))
