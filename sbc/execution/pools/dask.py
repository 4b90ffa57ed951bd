"""Simulations on a dask.distributed cluster: `sbc run STUDY --scheduler tcp://host:8786`.

`DaskPool` is the runner's pool for any scheduler other than "local" (see
`sbc.execution.pools.open_pool`): "local:N" starts a `LocalCluster` of N one-thread
worker processes on this machine (for dask's dashboard), "tcp://..." or "tls://..."
connects to an existing cluster. dask is an optional extra (`pip install 'stan-sbc[dask]'`).

What stays as with the default pool:

* Results come back to the runner's process, which alone writes the store, each
  simulation all or nothing: a worker never touches it, so no partial row exists.
* A task is a `Batch` of simulations (one for real fits; more when fits cost nothing):
  each simulation's seeds come from (study seed, sim) alone, never from the worker.
* A fit whose worker dies is retried, then recorded as failed, by the runner's rule
  (`sbc.execution.pools.drain`, `MAX_ATTEMPTS`). With "local:N" sbc starts the scheduler with
  `allowed-failures = 0` and `worker-saturation = 1.0`, so dask reports the death at
  once (KilledWorker, which `future.result()` raises) and queues no task on a worker
  behind a running one: the runner's rule is the only one. On an existing cluster that
  scheduler's own settings apply first (dask's default reruns a task whose worker died
  up to 3 more times); the runner's rule applies once dask gives up.

On the worker side (`_on_worker`), each task runs in a scratch folder local to the
worker host, with its backend made ready for that host by the backend itself
(`Backend.on_host`, given what `Backend.remote_payload` shipped with the task: for
CmdStan, the Stan source, built there once if the host lacks the model). A small
worker plugin makes each worker process a process group and starts a watchdog
process that, when the worker dies (killed, OOM, restarted by its nanny), kills
the processes it left behind (CmdStan) and removes its scratch folder.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sbc.errors import SBCError, one_line
from sbc.execution.task import Batch, failed_result

try:  # the plugin's base class; this module must import without dask (see DaskPool)
    from distributed import WorkerPlugin as _WorkerPluginBase
except ImportError:  # pragma: no cover - only without the extra
    _WorkerPluginBase = object  # type: ignore[assignment,misc]

#: Seconds to wait for an existing scheduler before giving up with one line.
CONNECT_TIMEOUT = 5
#: Scheduler settings for "local:N" (see the module docstring).
LOCAL_SCHEDULER_CONFIG = {
    "distributed.scheduler.allowed-failures": 0,
    "distributed.scheduler.worker-saturation": 1.0,
}
_NEEDS_DASK = "--scheduler needs dask: pip install 'stan-sbc[dask]'"


class DaskPool:
    """The runner's pool interface (`workers`, `executor()`, `shutdown()`) over dask."""

    def __init__(
        self,
        scheduler: str,
        workers: int = 0,
        progress: bool = True,
        tls: Mapping[str, Path] | None = None,
    ):
        self.check_installed()
        self.scheduler = scheduler
        self.security = security(scheduler, tls or {})
        self.cluster: Any = None
        self.client: Any = None
        self._connect()
        self.workers = self._slots()  # for "local:N": N
        if progress:  # --quiet: nothing on stderr but errors
            print(f"sbc: dask dashboard at {self.client.dashboard_link}", file=sys.stderr)

    @staticmethod
    def check_installed() -> None:
        try:
            import dask  # noqa: F401
            import distributed  # noqa: F401
        except ImportError:
            raise SBCError(_NEEDS_DASK) from None

    # -- the pool interface ------------------------------------------------------------------------
    def executor(self) -> _DaskExecutor:
        if self.client is None:  # after a shutdown: the runner wants a fresh pool
            self._connect()
        return _DaskExecutor(self.client, self.scheduler)

    def shutdown(self, executor: _DaskExecutor, kill: bool) -> None:
        """Close the executor, the client and (for "local:N") the cluster we started.

        `kill`: do not wait for running tasks. On a LocalCluster they die with their
        workers (and the watchdog takes their CmdStan processes); on an existing
        cluster dask cannot interrupt a running task, so it finishes there unseen.
        """
        try:
            executor.shutdown(wait=not kill)
        finally:
            self._close()

    # -- connecting ------------------------------------------------------------------------------
    def _connect(self) -> None:
        import dask
        from distributed import Client, LocalCluster

        if self.scheduler.startswith("local:"):
            n = int(self.scheduler.removeprefix("local:"))
            with dask.config.set(LOCAL_SCHEDULER_CONFIG):
                self.cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True)
            self.client = Client(self.cluster)
        else:
            try:
                self.client = Client(
                    self.scheduler, timeout=CONNECT_TIMEOUT, security=self.security
                )
            except (OSError, TimeoutError):
                tls = " over TLS (or it refused our certificate)" if self.security else ""
                raise SBCError(
                    f"no dask scheduler answered{tls} within {CONNECT_TIMEOUT} s",
                    where=self.scheduler,
                ) from None
            except Exception as exc:  # something else listens there (garbage handshake)
                raise SBCError(
                    f"cannot talk to a dask scheduler there ({type(exc).__name__})",
                    where=self.scheduler,
                ) from None
        try:
            self._check_workers()
            self.client.register_plugin(WorkerGuard(), name=WorkerGuard.name)
        except BaseException:
            self._close()
            raise

    def _check_workers(self) -> None:
        """Every worker present must be able to import this very sbc."""
        from importlib.metadata import PackageNotFoundError, version

        from sbc import DISTRIBUTION, __version__

        try:
            found = self.client.run(version, DISTRIBUTION)
        except PackageNotFoundError:
            raise SBCError(
                "a dask worker cannot import sbc: install this package on every worker host",
                where=self.scheduler,
            ) from None
        other = {v for v in found.values() if v != __version__}
        if other:
            raise SBCError(
                f"dask workers run sbc {', '.join(sorted(other))}, this process {__version__}: "
                "install the same version on every worker host",
                where=self.scheduler,
            )

    def _slots(self) -> int:
        """Worker threads in the cluster now (a cluster still scaling up counts as 1)."""
        return max(1, sum(self.client.nthreads().values()))

    def _close(self) -> None:
        client, cluster = self.client, self.cluster
        self.client = self.cluster = None
        try:
            if client is not None:
                client.close()
        finally:
            if cluster is not None:
                cluster.close()


def security(scheduler: str, files: Mapping[str, Path]) -> Any:
    """dask's `Security` for a tls:// scheduler: the files given (study file or command
    line), else dask's own config (`distributed.comm.tls.ca-file`, `.client.cert`,
    `.client.key`); None for other schedulers. Refuses certificates with tcp://, where
    they would silently not be used, and a tls:// address with no certificates at all."""
    from distributed import Security

    if not scheduler.startswith("tls://"):
        if files and scheduler.startswith("tcp://"):
            raise SBCError(
                "TLS certificates are given but the scheduler address is tcp:// (unencrypted): "
                "use its tls:// address",
                where=scheduler,
            )
        return None
    try:
        sec = Security(require_encryption=True, **{k: str(v) for k, v in files.items()})
        missing = [k for k in ("tls_ca_file", "tls_client_cert") if not getattr(sec, k)]
        if missing:
            raise SBCError(
                f"a tls:// scheduler needs {' and '.join(missing)}: [parallel] tls_ca_file, "
                "tls_cert, tls_key in the study file, --tls-ca-file, --tls-cert, --tls-key, or "
                "dask's config distributed.comm.tls.*",
                where=scheduler,
            )
        for name in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
            path = getattr(sec, name)
            if path and "\n" not in path and not Path(path).is_file():  # from dask's config
                raise SBCError(f"{name}: file not found: {path}", where=scheduler)
        sec.get_connection_args("client")  # reads the files: bad PEM fails here, in one line
    except SBCError:
        raise
    except Exception as exc:  # ssl.SSLError, ValueError: not a certificate or key
        raise SBCError(
            f"cannot use the TLS certificates: {one_line(exc)}", where=scheduler
        ) from None
    return sec


class _DaskExecutor:
    """`client.get_executor(pure=False)` (concurrent.futures futures), running `_on_worker`.

    `pure=False`: a retried simulation is a new task, never dask's memory of the failed one.
    """

    def __init__(self, client: Any, address: str):
        self._client = client
        self._address = address
        self._inner = client.get_executor(pure=False)
        self._payloads: dict[int, Any] = {}  # id(backend) -> what it ships

    def submit(self, fn, batch: Batch):
        """Submit; while the client reconnects to a lost scheduler, wait for it, or stop."""
        deadline = time.monotonic() + CONNECT_TIMEOUT + 1
        while self._client.status == "connecting" and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._client.status != "running":
            raise _scheduler_lost(self._address)
        try:
            payload = self._payload(batch.template.backend)
            return self._inner.submit(_on_worker, fn, batch, payload)
        except Exception:
            if self._client.status == "running":
                raise
            raise _scheduler_lost(self._address) from None

    def shutdown(self, wait: bool = True) -> None:
        if self._client.status == "running":  # else nothing is left to wait for or cancel
            self._inner.shutdown(wait=wait)

    def _payload(self, backend: Any) -> Any:
        """What the backend ships to worker hosts, computed once per study."""
        if id(backend) not in self._payloads:
            self._payloads[id(backend)] = backend.remote_payload()
        return self._payloads[id(backend)]


def _scheduler_lost(address: str) -> SBCError:
    """The client gave up reconnecting: stop the study (what is stored stays; rerun to resume)."""
    return SBCError(
        "lost the connection to the dask scheduler; the study stopped "
        "(run it again to resume, with --retry-failed for fits recorded as failed meanwhile)",
        where=address,
    )


# -- on the worker -------------------------------------------------------------------------------


def _on_worker(fn, batch: Batch, payload: Any):
    """Run `fn(batch)` (`run_batch`) with this host's scratch folder and backend.

    Like `run_batch` it never raises: a worker host that cannot run the model (for
    CmdStan: none here, another version, a compile error) gives failed results.
    """
    try:
        backend = batch.template.backend.on_host(payload)
        batch = batch.with_template(tmp_root=str(_scratch()), backend=backend)
    except Exception as exc:
        reason = f"worker host {socket.gethostname()}: {one_line(exc)}"
        return [failed_result(task, reason) for task in batch.tasks()]
    return fn(batch)


# -- worker processes: scratch folder, process group, a watchdog for CmdStan orphans ----------

_SCRATCH: list[Path | None] = [None]
_WATCHDOG_PROCESS: list[subprocess.Popen | None] = [None]  # kept: no ResourceWarning at exit

_WATCHDOG = """
import os, shutil, signal, sys, time
worker, scratch = int(sys.argv[1]), sys.argv[2]
while os.getppid() == worker:
    time.sleep(0.25)
try:
    os.killpg(worker, signal.SIGKILL)  # what the dead worker left running: CmdStan
except OSError:
    pass
shutil.rmtree(scratch, ignore_errors=True)
"""


def _scratch() -> Path:
    """This worker process's scratch folder (made by the plugin; lazily if it did not run)."""
    if _SCRATCH[0] is None or not _SCRATCH[0].is_dir():
        _SCRATCH[0] = Path(tempfile.mkdtemp(prefix=f"sbc-dask-{os.getpid()}-"))
    return _SCRATCH[0]


class WorkerGuard(_WorkerPluginBase):
    """Ties the CmdStan processes of a dask worker to that worker's life.

    A worker killed mid-fit (SIGKILL, OOM, its nanny restarting it) cannot stop the
    CmdStan processes cmdstanpy started: they would run on, orphaned, until their fit
    ends. In each worker process this plugin makes the worker a process-group leader
    (CmdStan processes inherit the group) and starts a tiny watchdog process in its
    own session that waits for the worker to die, then kills the group and removes
    the worker's scratch folder. This is `sbc.execution.pools.local.worker_init` turned
    around.
    """

    name = "sbc-worker-guard"

    def setup(self, worker: Any = None) -> None:
        if _SCRATCH[0] is not None:  # registered again (a second study): already guarded
            return
        scratch = _scratch()
        # temporary files of this process and its children (cmdstanpy's own folder
        # among them) go where the watchdog cleans up, as TMPDIR does for the local pool
        os.environ["TMPDIR"] = tempfile.tempdir = str(scratch)
        if not hasattr(os, "setpgrp"):  # pragma: no cover - not POSIX
            return
        with contextlib.suppress(OSError):
            os.setpgrp()
        if os.getpgrp() != os.getpid():  # never signal a group that is not ours alone
            return
        _WATCHDOG_PROCESS[0] = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(scratch)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
        )

    def teardown(self, worker: Any = None) -> None:
        """Nothing: the watchdog ends by itself when the worker process exits."""
