"""The default pool: joblib's loky worker processes on this machine (nothing to install)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Any

from sbc.execution.task import CURRENT_WORKDIR, WORKDIR_LOCK


class LocalPool:
    """`workers` loky processes, each its own process group, tied to the runner's life."""

    def __init__(self, workers: int, tmp_root: Path):
        self.workers = workers
        self.tmp_root = tmp_root

    def executor(self) -> Any:
        from joblib.externals.loky import ProcessPoolExecutor

        return ProcessPoolExecutor(
            max_workers=self.workers,
            initializer=worker_init,
            initargs=(os.getpid(),),
            env={"TMPDIR": str(self.tmp_root)},
        )

    def shutdown(self, executor: Any, kill: bool) -> None:
        # Killing: the workers (and their CmdStan runs) die first and loky then fails what
        # they held, as when a worker crashes. (loky's own `kill_workers=True` can crash
        # its manager thread when tasks are still queued, and then never reaps the workers.)
        if kill:
            for process in list(getattr(executor, "_processes", {}).values()):
                _kill_worker(process.pid)
        executor.shutdown(wait=True)


def worker_init(runner: int | None = None) -> None:
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
        WORKDIR_LOCK.acquire()  # kept until the end: this process makes no new scratch folder
        workdir = CURRENT_WORKDIR[0]
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="sbc-parent-watch").start()


def _kill_worker(pid: int) -> None:
    """SIGKILL a worker and, once it leads its own process group, all it started."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
