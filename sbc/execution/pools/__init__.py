"""Pools of worker processes that run simulations, and the rule for workers that die.

A pool is anything with the `Pool` protocol: `workers` (fits that run at once),
`executor()` (a `concurrent.futures`-like executor) and `shutdown(executor, kill)`.
`local.LocalPool` (joblib's loky processes) is the default; `dask.DaskPool` runs on a
dask.distributed cluster. `drain` runs every task on a pool with a bounded queue and
reruns a task whose worker died, by the same rule for every pool.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from sbc.errors import one_line
from sbc.execution.task import Task, failed_result, run_simulation
from sbc.store import SimulationResult

#: A fit whose worker dies while it runs alone this many times is recorded as failed.
MAX_ATTEMPTS = 2


class Executor(Protocol):
    def submit(self, fn: Callable[[Task], SimulationResult], task: Task) -> Future[Any]: ...

    def shutdown(self, wait: bool = True) -> None: ...


class Pool(Protocol):
    workers: int

    def executor(self) -> Executor:
        """A fresh executor (after a worker died, the runner asks for another one)."""
        ...

    def shutdown(self, executor: Executor, kill: bool) -> None:
        """Close `executor`; `kill`: do not wait for running fits (interrupted, or failed)."""
        ...


def open_pool(scheduler: str, workers: int, tasks: int, tmp_root: Path, progress: bool) -> Pool:
    """The pool a study's scheduler names: "local" (loky), "local:N" or an address (dask)."""
    if scheduler == "local":
        from sbc.execution.pools.local import LocalPool

        return LocalPool(min(workers, tasks), tmp_root)
    from sbc.execution.pools.dask import DaskPool

    return DaskPool(scheduler, workers, progress)


def drain(
    pool: Pool, task_of: Callable[[int], Task], todo: list[int], in_flight: int
) -> Iterator[SimulationResult]:
    """Results in completion order; a task lost with a dying worker is rerun alone before it
    is blamed.

    A worker that dies (a segfault, an OOM kill) breaks the pool and fails every task in
    flight, not only the one that killed it. Those tasks are rerun one at a time, so an
    attempt is counted only against the task that was alone when its worker died. At most
    `in_flight` tasks are queued, so memory stays flat however long the study.
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
                        yield failed_result(
                            task_of(sim),
                            f"worker process died ({MAX_ATTEMPTS} attempts): {one_line(exc)}",
                        )
        clean = True
    finally:
        # Interrupted or failed: in-flight fits are killed with their CmdStan. The pool
        # goes first: loky fails the futures it still holds and dies if one was cancelled.
        pool.shutdown(executor, kill=not clean)
        if not clean:
            for future in pending:
                future.cancel()
