"""Reliability: studies survive crashes, faults and bad input, and lose nothing.

* Crash safety: `sbc run` is SIGKILLed at random moments (and deliberately inside
  commits to the store), then resumed; after every kill SQLite's integrity check
  passes, no simulation is lost or duplicated, no worker or CmdStan process outlives
  the runner, and no temporary file stays behind. The final results equal those of an
  uninterrupted run, simulation for simulation.
* Faults inside a study (a simulator that raises, returns NaN or kills its worker;
  data Stan rejects; a fit over its timeout; a crashing CmdStan) are recorded as
  failed simulations with their reason while the study goes on; a full disk stops the
  study with one line and exit code 2, leaving a consistent store.
* Concurrency: a second `sbc run` on results in use is refused at once; `sbc check`
  and `sbc report` read a study while it runs.
* Determinism: the same study and seed give the same results with 1, 2 or 3 workers.

Processes are watched through /proc (Linux): a study's workers and CmdStan processes
are recognised by the TMPDIR the runner gives them (`<results>/.tmp`), so concurrent
test runs on the same machine do not confuse each other.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import sbc
from sbc.seeds import simulation_seeds
from sbc.simulators.normal import simulate as normal_simulate

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")

# -- processes -------------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, int, str] | None:
    """(ppid, start time, state) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), fields[0]


def _descendants(pid: int) -> dict[int, int]:
    """All processes below `pid` (pid -> start time, which tells a reused pid apart)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            children.setdefault(st[0], []).append(int(entry))
            starts[int(entry)] = st[1]
    out: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in out and child in starts:
                out[child] = starts[child]
                todo.append(child)
    return out


def _alive(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] == start and st[2] not in ("Z", "X")


def _study_processes(folder: Path) -> list[str]:
    """Live processes started for this results folder (workers and their CmdStan runs)."""
    marker = b"TMPDIR=" + str(folder / ".tmp").encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        st = _stat(int(entry))
        if marker in environ and st is not None and st[2] not in ("Z", "X"):
            found.append(f"{entry}: {cmdline.decode(errors='replace')[:120]}")
    return found


def _assert_all_gone(folder: Path, procs: dict[int, int], within: float) -> None:
    """The runner's processes (as recorded before it died) and the study's are all gone."""
    deadline = time.monotonic() + within
    while True:
        left = [p for p, start in procs.items() if _alive(p, start)]
        study = _study_processes(folder)
        if not left and not study:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"outlived the runner by {within} s: {left} {study}")
        time.sleep(0.05)


# -- runs ------------------------------------------------------------------------------------------

SLOW_SIMULATOR = '''
"""The conjugate normal simulator, slowed by a pause that is the same for every seed."""
import os
import time

from sbc.simulators.normal import simulate as base


def simulate(rng, **kw):
    time.sleep(float(os.environ.get("SBC_TEST_SIM_SLEEP", "0")))
    return base(rng, **kw)
'''


def _exact_study(
    tmp: Path,
    name: str,
    sims: int,
    *,
    simulator: str = SLOW_SIMULATOR,
    seed: int = 7,
    keep_draws: bool = False,
    workers: int = 2,
    K: int = 3,
) -> Path:
    (tmp / f"{name}_sim.py").write_text(simulator)
    path = tmp / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nsims = {sims}\nseed = {seed}\nkeep_draws = {str(keep_draws).lower()}\n'
        '[backend]\ntype = "exact"\n'
        f'[simulator]\nfunction = "{name}_sim.py:simulate"\nargs = {{ K = {K}, N = 5 }}\n'
        "[sampler]\nchains = 2\ndraws = 40\nthin = 2\n"
        f"[parallel]\nworkers = {workers}\n"
    )
    return path


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    runner_tmp = tmp / "runner-tmp"
    runner_tmp.mkdir(exist_ok=True)
    return {**os.environ, "TMPDIR": str(runner_tmp), "PYTHONDONTWRITEBYTECODE": "1", **extra}


def _launch(args: list[str], tmp: Path, log: str, **env: str) -> subprocess.Popen:
    """`sbc ARGS` in its own session, output to files (a full pipe must never block it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "sbc.cli", *args],
        env=_env(tmp, **env),
        stdout=open(tmp / f"{log}.out", "w"),
        stderr=open(tmp / f"{log}.err", "w"),
        start_new_session=True,
        # as from a terminal: a background CI job inherits SIGINT ignored, and Python then
        # never turns Ctrl-C into KeyboardInterrupt
        preexec_fn=_default_sigint,
    )


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _sbc(args: list[str], tmp: Path, timeout: float = 600, **env: str):
    return subprocess.run(
        [sys.executable, "-m", "sbc.cli", *args],
        env=_env(tmp, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _check_store(folder: Path, quantities: int, keep_draws: bool = False) -> dict[int, str]:
    """Integrity check, then every stored simulation complete and stored once: {sim: status}."""
    db = folder / "sbc.sqlite"
    if not db.exists():
        return {}
    # read-only: a killed writer's WAL stays for the next run to recover (and is read here)
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "simulations" not in tables:
            return {}
        rows = con.execute("SELECT sim, status FROM simulations").fetchall()
        assert len(rows) == len({sim for sim, _ in rows}), "a simulation is stored twice"
        ranks = dict(con.execute("SELECT sim, count(*) FROM ranks GROUP BY sim").fetchall())
        draws = {r[0] for r in con.execute("SELECT sim FROM draws")}
        status = dict(rows)
        assert set(ranks) <= set(status), "ranks without their simulation"
        assert draws <= set(status), "draws without their simulation"
        for sim, st in status.items():
            want = quantities if st == "ok" else 0
            assert ranks.get(sim, 0) == want, f"simulation {sim} is incomplete"
            if keep_draws:
                assert (sim in draws) == (st == "ok"), f"simulation {sim} lacks its draws"
        return status
    finally:
        con.close()


def _same_results(a: Path, b: Path, draws: bool = False) -> None:
    ra, rb = sbc.load(a), sbc.load(b)
    cols = ["sim", "status", "seed", "error"]
    pd.testing.assert_frame_equal(ra.simulations[cols], rb.simulations[cols])
    pd.testing.assert_frame_equal(ra.ranks, rb.ranks)
    if draws:
        for sim in ra.simulations["sim"]:
            da, db = ra.draws(sim), rb.draws(sim)
            assert da.keys() == db.keys()
            assert all(np.array_equal(da[k], db[k]) for k in da)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("sbc: error: "), stderr
    return lines[0]


# -- kills inside commits --------------------------------------------------------------------------

#: write, pwrite64, fsync, fdatasync: what a commit to the store does.
_WRITE_SYSCALLS = {"x86_64": {1, 18, 74, 75}, "aarch64": {64, 68, 82, 83}}.get(platform.machine())


def _in_store_write(pid: int) -> bool:
    """Is the runner's main thread inside a write or sync of the SQLite file or its WAL?"""
    try:
        fields = Path(f"/proc/{pid}/syscall").read_text().split()
        if not fields or not fields[0].isdigit() or int(fields[0]) not in _WRITE_SYSCALLS:
            return False
        return "sbc.sqlite" in os.readlink(f"/proc/{pid}/fd/{int(fields[1], 16)}")
    except (OSError, ValueError, IndexError):
        return False


def _syscalls_visible() -> bool:
    if _WRITE_SYSCALLS is None:
        return False
    try:
        return Path("/proc/self/syscall").read_text().split()[0].isdigit()
    except (OSError, IndexError):
        return False


# -- 1. crash safety -------------------------------------------------------------------------------


def test_sigkill_at_random_moments_and_in_commits_loses_nothing(tmp_path):
    sims, quantities, kills_wanted = 1000, 3, 12
    study = _exact_study(tmp_path, "crash", sims, keep_draws=True)
    out = tmp_path / "crash-out"
    rng = np.random.default_rng(20261125)
    probe = _syscalls_visible()
    # (mode, seconds after launch, seen writing or syncing the store just before, stored after)
    kills: list[tuple[str, float, bool, int]] = []
    runner_pids: list[int] = []
    stored: dict[int, str] = {}
    finished_early = False
    for k in range(kills_wanted):
        mode = "random" if k % 2 == 0 else "commit"
        pause = "0.1" if mode == "random" else "0.002"  # tiny simulations: mostly commits
        proc = _launch(
            ["run", str(study), "--out", str(out), "--quiet"],
            tmp_path,
            f"run{k}",
            SBC_TEST_SIM_SLEEP=pause,
        )
        runner_pids.append(proc.pid)
        t0 = time.monotonic()
        in_commit = False
        if mode == "random":
            deadline = t0 + rng.uniform(0.2, 8.0)  # from startup to well into the run
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.005)
            before = _descendants(proc.pid)
        else:
            deadline = t0 + 120  # until this run has stored a simulation of its own
            while len(_stored_now(out)) <= len(stored) and proc.poll() is None:
                assert time.monotonic() < deadline, "no progress"
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.3))
            before = _descendants(proc.pid)
            hunt_until = time.monotonic() + 1.0
            while probe and time.monotonic() < hunt_until and proc.poll() is None:
                if _in_store_write(proc.pid):
                    in_commit = True
                    break
        if proc.poll() is not None:  # it finished (or failed) before the kill
            finished_early = proc.returncode == 0
            assert proc.returncode == 0, (tmp_path / f"run{k}.err").read_text()
            break
        os.kill(proc.pid, signal.SIGKILL)
        seconds = time.monotonic() - t0
        proc.wait(timeout=30)
        _assert_all_gone(out, before, within=3.0)
        leftovers = list((out / ".tmp").iterdir()) if (out / ".tmp").is_dir() else []
        assert not leftovers, f"temporary files left by the killed runner: {leftovers}"
        now = _check_store(out, quantities, keep_draws=True)
        assert set(stored) <= set(now), f"lost after kill {k}: {set(stored) - set(now)}"
        assert all(st == "ok" for st in now.values())
        stored = now
        kills.append((mode, round(seconds, 2), in_commit, len(stored)))
    assert not finished_early and len(kills) >= 10, kills
    if probe:
        assert any(c for _, _, c, _ in kills), f"no kill landed inside a commit: {kills}"
    assert 0 < len(stored) < sims, f"kills should land mid-study: {kills}"

    final = _sbc(["run", str(study), "--out", str(out), "--quiet"], tmp_path)
    assert final.returncode == 0, final.stderr
    assert f"{sims} simulations stored" in final.stdout
    done = _check_store(out, quantities, keep_draws=True)
    assert sorted(done) == list(range(sims)) and set(done.values()) == {"ok"}

    reference = tmp_path / "reference"
    sbc.run(study, out=reference, progress=False)
    _same_results(out, reference, draws=True)

    # nothing temporary left: no .tmp, nothing in the runners' TMPDIR, no loky semaphores
    assert not (out / ".tmp").exists()
    assert {p.name for p in out.iterdir()} <= {
        ".lock",
        "sbc.sqlite",
        "sbc.sqlite-wal",
        "sbc.sqlite-shm",
    }
    assert not list((tmp_path / "runner-tmp").iterdir())
    if Path("/dev/shm").is_dir():
        time.sleep(1.0)  # loky's resource tracker unlinks a dead runner's semaphores
        shm = [n for n in os.listdir("/dev/shm") for p in runner_pids if f"loky-{p}-" in n]
        assert not shm, f"semaphores left in /dev/shm: {shm}"
    print(f"kills (mode, seconds after launch, in a commit, stored after): {kills}")


def test_interrupt_stops_workers_and_resumes(tmp_path):
    """Ctrl-C (SIGINT): exit code 130, one line, workers gone, store intact; resume completes."""
    study = _exact_study(tmp_path, "interrupted", 200)
    out = tmp_path / "out"
    proc = _launch(
        ["run", str(study), "--out", str(out), "--quiet"],
        tmp_path,
        "run",
        SBC_TEST_SIM_SLEEP="0.05",
    )
    deadline = time.monotonic() + 120
    while len(_stored_now(out)) < 5:
        assert proc.poll() is None and time.monotonic() < deadline, "no progress"
        time.sleep(0.02)
    before = _descendants(proc.pid)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    err = (tmp_path / "run.err").read_text()
    assert err.strip() == (
        "sbc: interrupted; finished simulations are stored (run again to resume)"
    ), err
    _assert_all_gone(out, before, within=3.0)
    assert not (out / ".tmp").exists()
    partial = _check_store(out, 3)
    assert 0 < len(partial) < 200
    final = _sbc(["run", str(study), "--out", str(out), "--quiet"], tmp_path)
    assert final.returncode == 0, final.stderr
    assert sorted(_check_store(out, 3)) == list(range(200))


# -- CmdStan: kills during fits --------------------------------------------------------------------

LMM_STUDY = """
name = "{name}"
stan = "{stan}"
sims = {sims}
seed = 11
[simulator]
function = "sbc.simulators.lmm:simulate"
args = {{ groups = 5 }}
[sampler]
chains = {chains}
warmup = {warmup}
draws = {draws}
thin = 5
timeout = {timeout}
[quantities]
include = ["beta", "sigma", "tau", "rho"]
[parallel]
workers = 2
"""


def _lmm_study(
    tmp: Path,
    name: str,
    sims: int,
    chains: int = 2,
    warmup: int = 300,
    draws: int = 300,
    timeout: float = 600,
) -> Path:
    path = tmp / f"{name}.toml"
    path.write_text(
        LMM_STUDY.format(
            name=name,
            stan=ROOT / "stan" / "lmm_centered.stan",
            sims=sims,
            chains=chains,
            warmup=warmup,
            draws=draws,
            timeout=timeout,
        )
    )
    return path


def _cmdstan_running(where: str, exe: str = "lmm_centered") -> list[int]:
    """CmdStan processes (by executable name) whose arguments name a path starting `where`."""
    marker = where.encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(exe.encode()) and any(marker in a for a in argv):
            pids.append(int(entry))
    return pids


@pytest.mark.stan
def test_sigkill_during_cmdstan_fits_leaves_no_process_and_no_file(tmp_path, cmdstan):
    sims, quantities = 8, 6  # beta[2], sigma, tau[2], rho[1]
    study = _lmm_study(tmp_path, "lmm_kill", sims)
    out = tmp_path / "out"
    env = {"CMDSTAN": str(cmdstan)}
    rng = np.random.default_rng(5)
    stored: dict[int, str] = {}
    for k in range(3):
        proc = _launch(
            ["run", str(study), "--out", str(out), "--quiet"], tmp_path, f"run{k}", **env
        )
        deadline = time.monotonic() + 180
        while not _cmdstan_running(f"{out}/.tmp/") and proc.poll() is None:
            assert time.monotonic() < deadline, "no fit started"
            time.sleep(0.02)
        assert proc.poll() is None, (tmp_path / f"run{k}.err").read_text()
        time.sleep(rng.uniform(0.0, 0.5))
        before = _descendants(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        _assert_all_gone(out, before, within=3.0)
        assert not _cmdstan_running(f"{out}/.tmp/")
        now = _check_store(out, quantities)
        assert set(stored) <= set(now)
        stored = now
    final = _sbc(["run", str(study), "--out", str(out), "--quiet"], tmp_path, **env)
    assert final.returncode == 0, final.stderr
    assert sorted(_check_store(out, quantities)) == list(range(sims))
    assert not (out / ".tmp").exists(), "CmdStan files left behind"
    # cmdstanpy makes an empty folder in $TMPDIR when imported and removes it at exit,
    # which a SIGKILLed runner never reaches: at most one empty folder per kill, no files.
    left = list((tmp_path / "runner-tmp").rglob("*"))
    assert all(p.is_dir() and p.name.startswith("tmp") for p in left), left
    assert len(left) <= 3
    reference = tmp_path / "reference"
    ref = _sbc(["run", str(study), "--out", str(reference), "--quiet"], tmp_path, **env)
    assert ref.returncode == 0, ref.stderr
    _same_results(out, reference)


# -- 2. faults inside a study ----------------------------------------------------------------------

FAULTY_SIMULATOR = '''
"""The normal simulator with faults that depend on the draw (so on the seed) alone."""
import os
import signal

import numpy as np

from sbc.simulators.normal import simulate as base


def simulate(rng, **kw):
    truth, data = base(rng, **kw)
    mu = truth["mu"][0]
    if mu < -1.6:
        raise ValueError(f"cannot simulate with mu = {mu:.2f}")
    if 1.3 < mu < 1.5:
        truth["mu"] = np.array([np.nan, *truth["mu"][1:]])
    if mu > 2.0 and os.environ.get("TMPDIR", "").endswith("/.tmp"):  # only in a worker
        os.kill(os.getpid(), signal.SIGKILL)  # as if the OOM killer took this worker
    return truth, data
'''


def test_simulator_faults_are_recorded_and_the_study_continues(tmp_path):
    sims, seed = 120, 11
    study = _exact_study(tmp_path, "faults", sims, simulator=FAULTY_SIMULATOR, seed=seed)
    mus = [normal_simulate(simulation_seeds(seed, i)[0], K=3, N=5)[0]["mu"][0] for i in range(sims)]
    raises = {i for i, m in enumerate(mus) if m < -1.6}
    nans = {i for i, m in enumerate(mus) if 1.3 < m < 1.5}
    killers = {i for i, m in enumerate(mus) if m > 2.0}
    assert raises and nans and killers, (raises, nans, killers)
    out = tmp_path / "out"
    proc = _sbc(["run", str(study), "--out", str(out), "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    failed = raises | nans | killers
    assert proc.stdout.strip() == f"{sims} simulations stored in {out} ({len(failed)} failed)"
    s = sbc.load(out).simulations.set_index("sim")
    assert set(s.index[s.status == "failed"]) == failed
    for i in raises:
        assert s.at[i, "error"].startswith("simulator: ValueError: cannot simulate with mu = -")
    for i in nans:
        assert re.fullmatch(
            r"simulator: simulator .*faults_sim\.py:simulate: truth\['mu'\] "
            r"has non-finite values",
            s.at[i, "error"],
        )
    for i in killers:  # the worker died with it, twice, alone: no other simulation was blamed
        assert s.at[i, "error"].startswith("worker process died (2 attempts): ")
    assert _check_store(out, 3) == {i: "failed" if i in failed else "ok" for i in range(sims)}
    assert not _study_processes(out) and not (out / ".tmp").exists()
    check = _sbc(["check", str(out)], tmp_path)
    assert check.returncode in (0, 1), check.stderr


FAULTY_LINREG = '''
"""stan/linreg.stan's simulator, with data that CmdStan rejects for some seeds."""
import numpy as np


def simulate(rng, N=30, K=3):
    u = rng.uniform()
    alpha = rng.normal(0.0, 2.0)
    beta = rng.normal(0.0, 1.0, size=K)
    sigma = rng.exponential(1.0)
    X = rng.normal(size=(N, K))
    y = rng.normal(alpha + X @ beta, sigma)
    data = {"N": N, "K": K, "X": X, "y": y}
    if u < 0.15:  # violates `int<lower=0> N`
        data.update(N=-1, X=np.zeros((0, K)), y=np.zeros(0))
    elif u < 0.3:  # an infinite observation: every initial value is rejected
        y[0] = np.inf
    return {"alpha": alpha, "beta": beta, "sigma": sigma}, data
'''


@pytest.mark.stan
def test_data_stan_rejects_is_recorded_per_simulation(tmp_path, cmdstan):
    sims, seed = 16, 4
    (tmp_path / "faulty_linreg.py").write_text(FAULTY_LINREG)
    study = tmp_path / "linreg_faults.toml"
    study.write_text(
        f'name = "linreg_faults"\nstan = "{ROOT / "stan" / "linreg.stan"}"\nsims = {sims}\n'
        f'seed = {seed}\n[simulator]\nfunction = "faulty_linreg.py:simulate"\n'
        "[sampler]\nchains = 2\nwarmup = 150\ndraws = 150\nthin = 3\n[parallel]\nworkers = 2\n"
    )
    u = [simulation_seeds(seed, i)[0].uniform() for i in range(sims)]
    bad_n = {i for i in range(sims) if u[i] < 0.15}
    bad_y = {i for i in range(sims) if 0.15 <= u[i] < 0.3}
    assert bad_n and bad_y and 0 not in bad_n | bad_y, (bad_n, bad_y)
    out = tmp_path / "out"
    proc = _sbc(["run", str(study), "--out", str(out), "--quiet"], tmp_path, CMDSTAN=str(cmdstan))
    assert proc.returncode == 0, proc.stderr
    s = sbc.load(out).simulations.set_index("sim")
    assert set(s.index[s.status == "failed"]) == bad_n | bad_y
    for i in bad_n:
        assert re.search(
            r"^fit: .*N is -1, but must be greater than or equal to 0", s.at[i, "error"]
        )
    for i in bad_y:
        assert re.search(
            r"^fit: .*dependent variables\[1\] is inf, but must be finite", s.at[i, "error"]
        )
    assert not _study_processes(out) and not (out / ".tmp").exists()


@pytest.mark.stan
def test_fit_over_its_timeout_and_a_crashing_cmdstan_are_recorded(tmp_path, cmdstan):
    """Every fit would take tens of seconds: all are killed at 2 s, one crashes first (SIGSEGV)."""
    sims = 4
    study = _lmm_study(tmp_path, "lmm_timeout", sims, chains=1, warmup=20000, draws=1000, timeout=2)
    out = tmp_path / "out"
    crashed: list[int] = []
    stop = threading.Event()

    def crash_sim_1() -> None:  # a segfault in CmdStan, from outside
        while not stop.is_set() and not crashed:
            for pid in _cmdstan_running(f"{out}/.tmp/sim1-"):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGSEGV)
                    crashed.append(pid)
            time.sleep(0.02)

    watcher = threading.Thread(target=crash_sim_1, daemon=True)
    watcher.start()
    try:
        proc = _sbc(
            ["run", str(study), "--out", str(out), "--quiet"], tmp_path, CMDSTAN=str(cmdstan)
        )
    finally:
        stop.set()
        watcher.join()
    assert proc.returncode == 1, proc.stderr  # every simulation failed (in two ways)
    assert proc.stdout.splitlines()[0] == f"{sims} simulations stored in {out} ({sims} failed)"
    s = sbc.load(out).simulations.set_index("sim")
    assert crashed, "the fit of simulation 1 was never seen running"
    for i in (0, 2, 3):
        assert s.at[i, "error"] == "fit: RuntimeError: fit exceeded the timeout of 2 s; killed"
    # recorded as failed by its signal, not as a timeout
    assert s.at[1, "status"] == "failed"
    assert s.at[1, "error"] == "fit: RuntimeError: CmdStan was killed by SIGSEGV (return code -11)"
    assert (s["wall_seconds"] < 60).all()
    time.sleep(0.5)
    assert not _cmdstan_running(f"{out}/.tmp/"), "a timed-out CmdStan is still running"
    assert not _study_processes(out) and not (out / ".tmp").exists()


@contextlib.contextmanager
def _small_disk(path: Path, size: str = "200k"):
    """A tiny tmpfs at `path` (as root), else None: the caller falls back on a file-size limit."""
    path.mkdir()
    mounted = False
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                capture_output=True,
            ).returncode
            == 0
        )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_stops_the_study_with_one_line_and_a_consistent_store(tmp_path):
    sims, quantities = 3000, 3
    study = _exact_study(tmp_path, "full", sims, keep_draws=True)
    with _small_disk(tmp_path / "disk") as mounted:
        out = tmp_path / "disk" / "out"
        args = [sys.executable, "-m", "sbc.cli", "run", str(study), "--out", str(out), "--quiet"]

        def limit() -> None:  # without a tmpfs: files may not grow past 300 kB (EFBIG)
            resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

        for attempt in ("first", "resumed"):
            proc = subprocess.run(
                args,
                env=_env(tmp_path),
                capture_output=True,
                text=True,
                preexec_fn=None if mounted else limit,
                timeout=300,
            )
            line = _one_error_line(proc.stderr)
            assert proc.returncode == 2, (attempt, proc.stderr)
            assert re.fullmatch(
                rf"sbc: error: {re.escape(str(out))}/sbc\.sqlite: cannot write the results "
                r"\((database or disk is full|disk I/O error)\); every simulation stored so "
                r"far is complete: free space and run again to resume",
                line,
            ), line
            assert not _study_processes(out)
            assert not (out / ".tmp").exists()
            stored = _check_store(out, quantities, keep_draws=True)
            assert 0 < len(stored) < sims and set(stored.values()) == {"ok"}
        print(f"disk full after {len(stored)} simulations ({'tmpfs' if mounted else 'rlimit'})")


# -- 3. concurrency --------------------------------------------------------------------------------


def test_second_run_is_refused_and_readers_work_while_a_study_runs(tmp_path):
    study = _exact_study(tmp_path, "busy", 2000)
    out = tmp_path / "out"
    first = _launch(
        ["run", str(study), "--out", str(out), "--quiet"],
        tmp_path,
        "first",
        SBC_TEST_SIM_SLEEP="0.05",
    )
    try:
        deadline = time.monotonic() + 120
        while len(_stored_now(out)) < 2:
            assert first.poll() is None and time.monotonic() < deadline, "no progress"
            time.sleep(0.05)

        t0 = time.monotonic()
        second = _sbc(["run", str(study), "--out", str(out), "--quiet"], tmp_path)
        line = _one_error_line(second.stderr)
        assert second.returncode == 2
        assert line == (
            f"sbc: error: {out}: another sbc run is writing these results; wait for it or use --out"
        )
        assert time.monotonic() - t0 < 60  # refused, not queued behind the first

        check = _sbc(["check", str(out)], tmp_path)
        assert check.returncode in (0, 1), check.stderr
        assert "locked" not in check.stderr
        try:
            import sbc.reports  # noqa: F401
        except ImportError:
            pass
        else:
            report = _sbc(["report", str(out), "--out", str(tmp_path / "report.html")], tmp_path)
            assert report.returncode == 0, report.stderr
            assert (tmp_path / "report.html").stat().st_size > 1000
        assert first.poll() is None, "the first run should still be running"
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=60) == 130, (tmp_path / "first.err").read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert len(_check_store(out, 3)) >= 2


def _stored_now(folder: Path) -> set[int]:
    """Simulations stored so far, read as `sbc check` would while the runner writes."""
    db = folder / "sbc.sqlite"
    if not db.exists():
        return set()
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return {r[0] for r in con.execute("SELECT sim FROM simulations")}
        finally:
            con.close()
    except sqlite3.OperationalError:  # tables not created yet
        return set()


# -- 4. determinism --------------------------------------------------------------------------------


def test_same_study_and_seed_give_identical_results_with_any_worker_count(tmp_path):
    study = _exact_study(tmp_path, "det", 60, keep_draws=True)
    folders = [sbc.run(study, workers=w, out=tmp_path / f"w{w}", progress=False) for w in (1, 2, 3)]
    again = sbc.run(study, workers=2, out=tmp_path / "again", progress=False)
    for other in [*folders[1:], again]:
        _same_results(folders[0], other, draws=True)


@pytest.mark.stan
def test_cmdstan_results_do_not_depend_on_worker_count(tmp_path, cmdstan):
    study = tmp_path / "linreg.toml"
    study.write_text(
        (ROOT / "studies" / "linreg_sbc.toml")
        .read_text()
        .replace('"../stan/linreg.stan"', f'"{ROOT / "stan" / "linreg.stan"}"')
        .replace(
            '"linreg_simulator.py:simulate"',
            f'"{ROOT / "studies" / "linreg_simulator.py"}:simulate"',
        )
    )
    runs = []
    for w in (1, 2):
        out = tmp_path / f"w{w}"
        proc = _sbc(
            ["run", str(study), "--sims", "4", "--workers", str(w), "--out", str(out), "--quiet"],
            tmp_path,
            CMDSTAN=str(cmdstan),
        )
        assert proc.returncode == 0, proc.stderr
        runs.append(out)
    _same_results(*runs)


def test_helpers_see_processes_and_errors():
    """The /proc helpers this file relies on work here (they guard every other assertion)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        found = _descendants(os.getpid())
        assert child.pid in found and _alive(child.pid, found[child.pid])
    finally:
        child.kill()
        child.wait()
    assert not _alive(child.pid, found[child.pid])
