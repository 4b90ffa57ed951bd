"""Studies on a dask.distributed cluster (`--scheduler local:N` / `tcp://...`):
sbc.execution.pools.dask, and the CmdStan backend on a worker host (backends.cmdstan.remote)."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, exact_study, stop_processes

import sbc
import sbc.execution.pools.dask as sbc_dask
from sbc.backends import register_backend
from sbc.backends.cmdstan import remote
from sbc.backends.exact import ExactNormalBackend
from sbc.errors import SBCError
from sbc.seeds import simulation_seeds
from sbc.simulate import PythonSimulator

RANK_COLUMNS = ["sim", "quantity", "rank", "truth", "mean"]


def _ranks(folder) -> pd.DataFrame:
    r = sbc.load(folder).ranks
    return r.sort_values(["sim", "quantity"]).reset_index(drop=True)[RANK_COLUMNS]


def _alive(pid: int) -> bool:
    psutil = pytest.importorskip("psutil")
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# -- without a cluster ---------------------------------------------------------------------------


def test_missing_dask_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails as if not installed
    with pytest.raises(SBCError, match=r"--scheduler needs dask: pip install 'stan-sbc\[dask\]'"):
        sbc_dask.DaskPool("local:2", 2)


def test_unreachable_scheduler_is_one_line(monkeypatch):
    pytest.importorskip("distributed")
    monkeypatch.setattr(sbc_dask, "CONNECT_TIMEOUT", 1)
    t0 = time.perf_counter()
    with pytest.raises(SBCError) as err:
        sbc_dask.DaskPool("tcp://127.0.0.1:1", 2)
    assert str(err.value) == "tcp://127.0.0.1:1: no dask scheduler answered within 1 s"
    assert time.perf_counter() - t0 < 10


def test_worker_host_without_cmdstan_records_a_failed_simulation(tmp_path, monkeypatch):
    """A host that cannot build the model fails that simulation with one line, not the pool."""
    from sbc.backends.cmdstan import install
    from sbc.backends.cmdstan.sample import CmdStanBackend
    from sbc.execution.task import Batch, Task, run_batch

    monkeypatch.setattr(install, "find_cmdstan", lambda: None)
    monkeypatch.setenv("SBC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sbc_dask, "_SCRATCH", [tmp_path])  # as the worker plugin would
    backend = CmdStanBackend(
        stan_file=tmp_path / "elsewhere" / "m.stan",  # the submitting host's paths
        exe_file=tmp_path / "elsewhere" / "m",
        cmdstan=tmp_path / "elsewhere" / "cmdstan",
    )
    task = Task(
        sim=4, master_seed=9,
        simulator=PythonSimulator("sbc.simulators.normal:simulate", {"K": 1, "N": 2}),
        backend=backend, thin=1, quantities=(),
        derived={}, keep_draws=False, tmp_root=str(tmp_path / "elsewhere" / "tmp"),
    )  # fmt: skip
    shipment = remote.Shipment("m.stan", b"parameters { real mu; }", "2.27.0")
    [result] = sbc_dask._on_worker(run_batch, Batch(task, (4,)), shipment)
    assert result.status == "failed" and result.sim == 4
    assert result.seed == simulation_seeds(9, 4)[1]
    assert "no CmdStan here: run `sbc setup` on every worker host" in result.error


# -- a real LocalCluster, exact backend (no Stan) ------------------------------------------------


def test_local_cluster_gives_the_same_ranks_as_the_local_pool(tmp_path, capfd):
    pytest.importorskip("distributed")
    reference = sbc.run(exact_study(tmp_path, "pool", sims=24), progress=False)
    capfd.readouterr()
    on_dask = sbc.run(exact_study(tmp_path, "dask", sims=24), scheduler="local:2", progress=False)
    assert "sbc:" not in capfd.readouterr().err, "progress=False (--quiet) must print nothing"
    sims = sbc.load(on_dask).simulations
    assert len(sims) == 24 and (sims["status"] == "ok").all()
    pd.testing.assert_frame_equal(_ranks(reference), _ranks(on_dask))


@pytest.fixture
def dask_cluster(tmp_path):
    """An existing cluster, started the way a user would: `dask scheduler`, `dask worker`."""
    pytest.importorskip("distributed")
    dask = str(Path(sys.executable).with_name("dask"))
    file = tmp_path / "scheduler.json"
    common = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "cwd": tmp_path}
    scheduler = [dask, "scheduler", "--host", "127.0.0.1", "--port", "0"]
    scheduler += ["--dashboard-address", ":0", "--scheduler-file", str(file)]
    worker = [dask, "worker", "--scheduler-file", str(file), "--nworkers", "2", "--nthreads", "1"]
    procs = [subprocess.Popen(scheduler, **common), subprocess.Popen(worker, **common)]
    try:
        from distributed import Client

        deadline = time.monotonic() + 60
        while not file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        with Client(scheduler_file=str(file), timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
            yield client.scheduler.address
    finally:
        stop_processes(procs)


def test_an_existing_cluster_gives_the_same_ranks_as_the_local_pool(tmp_path, dask_cluster):
    pool = sbc_dask.DaskPool(dask_cluster, 1)
    assert pool.workers == 2  # the cluster's threads, whatever --workers says
    pool.shutdown(pool.executor(), kill=False)
    reference = sbc.run(exact_study(tmp_path, "pool", sims=16), progress=False)
    on_dask = sbc.run(exact_study(tmp_path, "tcp", sims=16), scheduler=dask_cluster, progress=False)
    assert (sbc.load(on_dask).simulations["status"] == "ok").all()
    pd.testing.assert_frame_equal(_ranks(reference), _ranks(on_dask))


@dataclasses.dataclass
class WorkerKiller(ExactNormalBackend):
    """The exact backend, except that one seed's fit kills its own process (like an OOM kill):
    simulation 3's of `exact_study`'s default seed, 11."""

    deadly_seed: int = simulation_seeds(11, 3)[1]

    def fit(self, data, seed, workdir):
        if seed == self.deadly_seed:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().fit(data, seed, workdir)


@pytest.fixture
def deadly_sim():
    """Simulation 3 of an exact study kills the worker process that fits it, every time: the
    study's "exact" backend is a WorkerKiller, until `undo`."""

    class Undo:
        @staticmethod
        def undo():
            register_backend("exact", ExactNormalBackend)  # what the entry point names

    register_backend("exact", WorkerKiller)
    yield Undo
    Undo.undo()


def test_a_fit_that_kills_its_worker_is_retried_then_recorded_failed(tmp_path, deadly_sim):
    pytest.importorskip("distributed")
    path = exact_study(tmp_path, "deadly", sims=12)
    folder = sbc.run(path, scheduler="local:2", progress=False)
    sims = sbc.load(folder).simulations.set_index("sim")
    assert len(sims) == 12
    assert sims.loc[3, "status"] == "failed"
    assert sims.loc[3, "error"].startswith("worker process died")
    assert "KilledWorker" in sims.loc[3, "error"]
    assert (sims.drop(index=3)["status"] == "ok").all()  # no other simulation paid for it
    assert not sbc.load(folder).ranks["sim"].eq(3).any()  # no partial rows

    deadly_sim.undo()  # the cause is gone: resuming completes the failed simulation
    sbc.run(path, scheduler="local:2", retry_failed=True, progress=False)
    assert (sbc.load(folder).simulations["status"] == "ok").all()
    reference = sbc.run(exact_study(tmp_path, "reference", sims=12), progress=False)
    pd.testing.assert_frame_equal(_ranks(reference), _ranks(folder))


def _start_orphan_candidate(pid_file: str) -> None:
    """In a worker: start a child the way cmdstanpy starts CmdStan (stdout piped), then work."""
    child = subprocess.Popen(["sleep", "120"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    Path(pid_file).write_text(f"{os.getpid()} {child.pid} {sbc_dask._SCRATCH[0]}")
    time.sleep(120)


def test_a_killed_worker_takes_its_child_processes_and_scratch_folder_along(tmp_path):
    """Without the WorkerGuard plugin `sleep` (a CmdStan stand-in) would outlive its worker."""
    pytest.importorskip("distributed")
    pool = sbc_dask.DaskPool("local:1", 1)
    try:
        pid_file = tmp_path / "pids"
        future = pool.client.submit(_start_orphan_candidate, str(pid_file), pure=False)
        deadline = time.monotonic() + 30
        while not pid_file.is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        worker, child, scratch = pid_file.read_text().split()
        assert Path(scratch).is_dir() and _alive(int(child))
        os.kill(int(worker), signal.SIGKILL)
        deadline = time.monotonic() + 5
        while (_alive(int(child)) or Path(scratch).exists()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(int(child)), "the worker's child outlived it"
        assert not Path(scratch).exists(), "the worker's scratch folder was left behind"
        future.cancel()
    finally:
        pool.shutdown(pool.executor(), kill=True)


# -- a real LocalCluster and CmdStan: the mixed model --------------------------------------------


def lmm_study(tmp_path: Path, name: str, sims: int = 6) -> Path:
    """studies/lmm_sbc.toml, small: 6 simulations, short chains."""
    text = (ROOT / "studies" / "lmm_sbc.toml").read_text()
    for old, new in (
        ("sims = 200", f"sims = {sims}"),
        ("iter_warmup = 250", "iter_warmup = 150"),
        ("iter_sampling = 500", "iter_sampling = 150"),
        ("thin_ranks = 10", "thin_ranks = 5"),
        ('stan = "../stan/', f'stan = "{ROOT}/stan/'),
    ):
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / f"{name}.toml"
    path.write_text(f'out = "{tmp_path / name}"\n' + text.replace('name = "lmm_sbc"', ""))
    return path


@pytest.fixture(scope="module")
def lmm_reference(tmp_path_factory, cmdstan) -> pd.DataFrame:
    """The small LMM study on the default local (joblib) pool."""
    tmp = tmp_path_factory.mktemp("reference")
    folder = sbc.run(lmm_study(tmp, "reference"), progress=False)
    assert (sbc.load(folder).simulations["status"] == "ok").all()
    return _ranks(folder)


@pytest.mark.stan
def test_lmm_on_a_local_cluster_gives_the_same_ranks(tmp_path, lmm_reference):
    pytest.importorskip("distributed")
    folder = sbc.run(lmm_study(tmp_path, "dask"), scheduler="local:2", progress=False)
    assert (sbc.load(folder).simulations["status"] == "ok").all()
    pd.testing.assert_frame_equal(lmm_reference, _ranks(folder))


@pytest.mark.stan
def test_lmm_survives_a_worker_killed_mid_fit(tmp_path, lmm_reference):
    pytest.importorskip("distributed")
    psutil = pytest.importorskip("psutil")
    killed: dict[str, object] = {}

    def kill_a_worker_mid_fit() -> None:
        """SIGKILL the first dask worker process seen running CmdStan (a child named lmm_*)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for proc in psutil.Process().children():
                try:
                    fits = [c.pid for c in proc.children() if c.name().startswith("lmm_")]
                except psutil.Error:
                    continue
                if fits:
                    proc.kill()
                    killed.update(worker=proc.pid, cmdstan=fits)
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_mid_fit, daemon=True)
    killer.start()
    path = lmm_study(tmp_path, "killed")
    folder = sbc.run(path, scheduler="local:2", progress=False)
    killer.join(timeout=5)
    assert killed, "no worker was seen fitting"
    assert not any(_alive(pid) for pid in killed["cmdstan"]), "CmdStan outlived its worker"

    sims = sbc.load(folder).simulations
    assert sorted(sims["sim"]) == list(range(6))
    assert set(sims["status"]) <= {"ok", "failed"}
    ok = sims.loc[sims["status"] == "ok", "sim"]
    ranks = _ranks(folder)
    assert set(ranks["sim"]) == set(ok)  # a failed simulation has no rows at all
    pd.testing.assert_frame_equal(
        lmm_reference[lmm_reference["sim"].isin(ok)].reset_index(drop=True), ranks
    )

    sbc.run(path, scheduler="local:2", retry_failed=True, progress=False)
    assert (sbc.load(folder).simulations["status"] == "ok").all()
    pd.testing.assert_frame_equal(lmm_reference, _ranks(folder))


@pytest.mark.stan
def test_a_worker_host_finds_the_model_by_source_hash(tmp_path, monkeypatch, cmdstan):
    """On another host (other paths) the model comes from ~/.cache/sbc/models/<hash>/."""
    from sbc.backends.cmdstan.install import cmdstan_version, model_cache_dir
    from sbc.backends.cmdstan.sample import CmdStanBackend
    from sbc.execution.task import Batch, Task

    here = CmdStanBackend(stan_file=ROOT / "stan" / "lmm_centered.stan")
    here.prepare(progress=False)  # compiled, or found in the cache
    monkeypatch.setenv("SBC_CACHE", str(tmp_path / "other-host-cache"))
    monkeypatch.setattr(sbc_dask, "_SCRATCH", [tmp_path])  # as the worker plugin would
    cached = model_cache_dir() / Path(here.exe_file).parent.name
    shutil.copytree(Path(here.exe_file).parent, cached)  # as if built there earlier
    elsewhere = tmp_path / "submitting-host"
    backend = CmdStanBackend(
        stan_file=elsewhere / "lmm_centered.stan",
        exe_file=elsewhere / "lmm_centered",
        cmdstan=elsewhere / "cmdstan",
    )
    task = Task(
        sim=0, master_seed=1, simulator=PythonSimulator("sbc.simulators.lmm:simulate", {}),
        backend=backend, thin=1, quantities=(), derived={}, keep_draws=False,
        tmp_root=str(elsewhere / "tmp"),
    )  # fmt: skip
    source = (ROOT / "stan" / "lmm_centered.stan").read_bytes()
    shipment = remote.Shipment("lmm_centered.stan", source, cmdstan_version(cmdstan))
    batch = sbc_dask._on_worker(lambda b: b, Batch(task, (0,)), shipment)
    local = batch.template  # the task as the worker runs it
    assert Path(local.backend.exe_file) == cached / "lmm_centered"
    assert Path(local.backend.stan_file).read_bytes() == source
    assert local.tmp_root == str(tmp_path)

    other = remote.Shipment("lmm_centered.stan", source, "2.0.0")
    with pytest.raises(SBCError, match=r"CmdStan .* here but the study runs 2\.0\.0"):
        remote.prepare_here(backend, other)
