"""Shared pieces of the benchmarks: study variants, traced child runs, trace analysis, tables.

Every measured run is a child process (`python -m sbc.cli run ...`, or the bare cmdstanpy
loop in `_bare_loop.py`) started with this folder's `_tracehook` on PYTHONPATH. Its CPU
time comes from `os.wait4`, which returns the rusage of the child and of every descendant
it waited for (loky workers are joined by the runner, CmdStan processes are waited for by
cmdstanpy), and the trace file records when each traced call ran in each process.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STUDIES = ROOT / "studies"
HOOK = HERE / "_tracehook"
PYTHON = sys.executable

if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))


# -- the machine ----------------------------------------------------------------------------------


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def loadavg() -> tuple[float, float, float]:
    try:
        a, b, c = Path("/proc/loadavg").read_text().split()[:3]
        return float(a), float(b), float(c)
    except OSError:  # pragma: no cover - not Linux
        return os.getloadavg()


def load_str(load: Sequence[float] | None = None) -> str:
    a, b, c = load or loadavg()
    return f"{a:.2f} {b:.2f} {c:.2f}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or "?"


def cmdstan_info() -> str:
    from sbc.backends.cmdstan.install import cmdstan_version, ensure_cmdstan

    path = ensure_cmdstan(progress=False)
    return f"CmdStan {cmdstan_version(path)} ({path})"


def banner(title: str, mode: str) -> None:
    print(f"== {title} ({mode} mode)")
    print(
        f"   {time.strftime('%Y-%m-%d %H:%M:%S')}  {cores()} cores ({cpu_model()}), "
        f"load average {load_str()} (1/5/15 min)"
    )
    print(f"   Python {platform.python_version()}, {cmdstan_info()}")
    la = loadavg()[0]
    if la > 0.5 * cores():
        print(
            f"   WARNING: load average {la:.1f} on {cores()} cores (it lags: it may include "
            "this benchmark's own recent runs). If other processes compete for the CPU, compare "
            "only figures measured side by side in this run."
        )
    print()


# -- study variants -------------------------------------------------------------------------------


#: sbc 0.1's [sampler] names -> the names studies in cmdstanpy's spelling use (issue 14).
_NEW_NAMES = {"warmup": "iter_warmup", "draws": "iter_sampling", "thin": "thin_ranks"}


def write_study(
    dest: Path,
    name: str,
    base: str = "lmm_sbc.toml",
    *,
    sims: int | None = None,
    **sampler: int | float | str,
) -> Path:
    """A copy of a shipped study with its own name, absolute paths and sampler settings (a
    setting the study does not have is added to its [backend] or [sampler] table)."""
    text = (STUDIES / base).read_text()
    text = re.sub(r'^name = ".*"', f'name = "{name}"', text, count=1, flags=re.M)

    def absolute(m: re.Match) -> str:
        return f'{m.group(1)} = "{(STUDIES / m.group(2)).resolve()}"'

    text = re.sub(r'^(stan) = "([^"]+)"', absolute, text, count=1, flags=re.M)
    if sims is not None:
        text = re.sub(r"^sims = \d+", f"sims = {sims}", text, count=1, flags=re.M)
    for key, value in sampler.items():
        toml = f'"{value}"' if isinstance(value, str) else value
        # sbc 0.1's [sampler] names, or what a study in cmdstanpy's names calls them
        for spelling in (key, _NEW_NAMES.get(key, key)):
            pattern = rf"^{spelling} = (\"[^\"]*\"|[0-9.eE+-]+)"
            if re.search(pattern, text, flags=re.M):
                text = re.sub(pattern, f"{spelling} = {toml}", text, count=1, flags=re.M)
                break
        else:
            table = re.search(r"^\[(sampler|backend)\][^\n]*\n", text, flags=re.M)
            if table is None:
                raise ValueError(f"{base}: no setting {key!r} to change")
            text = f"{text[: table.end()]}{key} = {toml}\n{text[table.end() :]}"
    path = dest / f"{name}.toml"
    path.write_text(text)
    return path


def load_study_settings(path: Path):
    from sbc.study import load_study

    return load_study(path)


# -- traced child runs ----------------------------------------------------------------------------


@dataclass
class Run:
    label: str
    wall: float
    cpu: float  # user + system of the child and its waited-for descendants
    maxrss_mb: float  # largest resident set in that tree (wait4's ru_maxrss)
    returncode: int
    t_launch: float
    t_exit: float
    load: tuple[float, float, float]  # 1-min load average before and after, and the max seen
    stdout: str = ""
    stderr: str = ""
    trace: Trace | None = None
    info: dict = field(default_factory=dict)


def run_child(
    cmd: list[str],
    label: str,
    workdir: Path,
    *,
    trace: bool = True,
    code: Path | None = None,
    env: dict | None = None,
) -> Run:
    """Run a command as a child; wall time, rusage of its process tree and its trace.

    `code` is a folder holding the `sbc` package to run (default: this checkout); it goes
    first on PYTHONPATH and the child runs in `workdir`, so `python -m sbc.cli` finds it.
    """
    environ = os.environ.copy()
    environ.update(env or {})
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", label) + f"-{time.monotonic_ns()}"
    trace_file = workdir / f"trace-{stem}.tsv"
    paths = [str(code or ROOT), *filter(None, [environ.get("PYTHONPATH")])]
    if trace:
        paths.insert(0, str(HOOK))
        environ["SBC_BENCH_TRACE"] = str(trace_file)
    environ["PYTHONPATH"] = os.pathsep.join(paths)
    out_file, err_file = workdir / f"{stem}.out", workdir / f"{stem}.err"
    load0 = loadavg()[0]
    with open(out_file, "w") as out, open(err_file, "w") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=environ, cwd=workdir)
        _, status, ru = os.wait4(proc.pid, 0)
        t1 = time.perf_counter()
    proc.returncode = os.waitstatus_to_exitcode(status)
    load1 = loadavg()[0]
    run = Run(
        label=label,
        wall=t1 - t0,
        cpu=ru.ru_utime + ru.ru_stime,
        maxrss_mb=ru.ru_maxrss / 1024,
        returncode=proc.returncode,
        t_launch=t0,
        t_exit=t1,
        load=(load0, load1, max(load0, load1)),
        stdout=out_file.read_text(),
        stderr=err_file.read_text(),
        trace=Trace(trace_file) if trace and trace_file.exists() else None,
    )
    if run.returncode != 0:
        raise RuntimeError(f"{label}: exit code {run.returncode}\n{run.stderr[-3000:]}")
    return run


def sbc_run(
    study: Path,
    out: Path,
    label: str,
    workdir: Path,
    *,
    workers: int,
    sims: int | None = None,
    trace: bool = True,
    code: Path | None = None,
) -> Run:
    """`sbc run` of a study file as a child process (of this checkout's sbc, or `code`'s)."""
    cmd = [
        PYTHON,
        "-m",
        "sbc.cli",
        "run",
        str(study),
        "--out",
        str(out),
        "--quiet",
        "--workers",
        str(workers),
    ]
    if sims is not None:
        cmd += ["--sims", str(sims)]
    run = run_child(cmd, label, workdir, trace=trace, code=code)
    run.info["out"] = out
    run.info["workers"] = workers
    return run


def baseline_code(path: str | None) -> Path | None:
    """--baseline: a folder holding an `sbc` package (e.g. a git worktree of an older commit)."""
    if path is None:
        return None
    folder = Path(path).resolve()
    if not (folder / "sbc" / "__init__.py").is_file():
        raise SystemExit(f"--baseline {path}: no sbc package there (expected {folder}/sbc)")
    return folder


def fresh_dir(parent: Path, name: str) -> Path:
    path = parent / name
    shutil.rmtree(path, ignore_errors=True)
    return path


def scratch(prefix: str, keep: bool = False) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    if not keep:
        import atexit

        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def simulations(folder: Path) -> pd.DataFrame:
    import sbc

    return sbc.load(folder).simulations


# -- traces ---------------------------------------------------------------------------------------


class Trace:
    """The calls a traced run made: one row per call (label, pid, start, end, extra)."""

    def __init__(self, path: Path):
        self.df = pd.read_csv(
            path,
            sep="\t",
            names=["label", "pid", "start", "end", "extra"],
            dtype={"label": str, "pid": int, "start": float, "end": float, "extra": str},
            keep_default_na=False,
        )
        self.df["dur"] = self.df["end"] - self.df["start"]

    def calls(self, label: str) -> pd.DataFrame:
        return self.df[self.df["label"] == label]

    def total(self, label: str) -> float:
        return float(self.calls(label)["dur"].sum())

    def count(self, label: str) -> int:
        return int((self.df["label"] == label).sum())

    def processes(self) -> pd.DataFrame:
        return self.calls("process")

    def cmdstan(self) -> pd.DataFrame:
        """One row per CmdStan process (cmdstanpy's `_run_cmdstan`, Popen to reaped)."""
        return self.calls("CmdStanModel._run_cmdstan")

    def fits(self) -> pd.DataFrame:
        """One row per model.sample call: its span (first CmdStan start to last CmdStan end)."""
        chains = self.cmdstan()
        rows = []
        for s in self.calls("CmdStanModel.sample").itertuples():
            c = chains[(chains.pid == s.pid) & (chains.start >= s.start) & (chains.end <= s.end)]
            rows.append(
                {
                    "pid": s.pid,
                    "start": s.start,
                    "end": s.end,
                    "dur": s.dur,
                    "span": (c.end.max() - c.start.min()) if len(c) else 0.0,
                    "chain_sum": float(c.dur.sum()),
                    "chains": len(c),
                }
            )
        return pd.DataFrame(rows)

    def cmdstan_cpu(self) -> float:
        """CPU seconds of the CmdStan processes: the reaped-children CPU, recorded at exit, of
        the processes that ran them (the workers, or the bare loop)."""
        pids = set(self.cmdstan()["pid"])
        return float(sum(float(r.extra) for r in self.calls("cpu_children").itertuples()
                         if r.pid in pids))  # fmt: skip

    def cpu_check(self) -> tuple[float, float]:
        """(CPU of the main process + its reaped children, as recorded at its exit;
        sum over every traced Python process of self + reaped children, minus nesting)."""
        procs = self.processes()
        self_cpu = {int(r.pid): float(r.extra) for r in self.calls("cpu_self").itertuples()}
        child_cpu = {int(r.pid): float(r.extra) for r in self.calls("cpu_children").itertuples()}
        if procs.empty:
            return float("nan"), float("nan")
        main = int(procs.sort_values("start").iloc[0].pid)
        top = self_cpu.get(main, np.nan) + child_cpu.get(main, np.nan)
        workers = [int(p) for p in procs.pid if int(p) != main]
        inner = self_cpu.get(main, np.nan) + sum(
            self_cpu.get(w, 0.0) + child_cpu.get(w, 0.0) for w in workers
        )
        return top, inner


# -- figures --------------------------------------------------------------------------------------


def slot_accounting(run: Run, workers: int) -> dict[str, float]:
    """Where the workers' time went: CmdStan running, harness work in a worker, idle slot.

    A worker slot is one worker for the whole wall time; it owns `parallel_chains` cores.
    CmdStan time of a fit is its span (first chain process start to last chain end).
    """
    tr = run.trace
    assert tr is not None
    fits = tr.fits()
    sims = tr.calls("run_simulation")
    slots = workers * run.wall
    span = float(fits["span"].sum()) if len(fits) else 0.0
    in_task = float(sims["dur"].sum())
    first = float(sims["start"].min()) if len(sims) else run.t_exit
    last = float(sims["end"].max()) if len(sims) else run.t_exit
    return {
        "slots": slots,
        "cmdstan": span,
        "harness_in_task": in_task - span,
        "idle": slots - in_task,
        "startup": first - run.t_launch,  # launch to first task start
        "shutdown": run.t_exit - last,  # last task end to exit
        "overhead_share": 1.0 - span / slots,
        "harness_cpu_share": 1.0 - tr.cmdstan_cpu() / run.cpu,
        "chain_sum": float(fits["chain_sum"].sum()) if len(fits) else 0.0,
    }


def table(rows: list[dict], columns: list[tuple[str, str, str]], title: str | None = None) -> str:
    """A fixed-width table; columns are (key, header, format)."""
    cells = [[h for _, h, _ in columns]]
    for r in rows:
        cells.append(
            [
                ("" if r.get(k) is None else (fmt.format(r[k]) if fmt else str(r[k])))
                for k, _, fmt in columns
            ]
        )
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = []
    if title:
        lines.append(title)
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def figure(name: str, value: str, target: str = "", met: bool | None = None, **extra: str) -> dict:
    """One row of a script's closing summary; `met` is None where the figure has no target."""
    return {"figure": name, "value": value, "target": target, "met": met, **extra}


def figures_table(rows: list[dict], detail: str | None = None) -> str:
    """The closing summary of a script: figure, measured value (and the rows' "detail" under
    the header `detail`), target, and whether it is met."""
    shown = [{**r, "met": "" if r["met"] is None else ("yes" if r["met"] else "NO")} for r in rows]
    columns = [("figure", "figure", ""), ("value", "measured", "")]
    columns += [("detail", detail, "")] if detail else []
    return table(shown, [*columns, ("target", "target", ""), ("met", "met", "")])


def median(xs: Sequence[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=float))) if len(xs) else float("nan")


def abba(labels: Sequence[str], repeats: int) -> list[str]:
    """Interleaved order A B B A A B B A ... (for two labels), cycling for more."""
    order: list[str] = []
    for r in range(repeats):
        order += list(labels) if r % 2 == 0 else list(reversed(labels))
    return order
