"""Benchmark tracing for every Python process of a run (runner, loky workers, bare loops).

Inert unless the environment variable SBC_BENCH_TRACE names a file. The benchmarks put
this folder on PYTHONPATH, so Python imports this module at start-up in the process they
launch and in every worker it spawns (loky passes the environment on). It then wraps a few
functions, when their module is first imported, to append one line per call to the trace
file: ``label  pid  start  end  extra`` (times from time.perf_counter, which on Linux is
CLOCK_MONOTONIC and so comparable across processes). Each Python process also records its
start and, at exit, its own and its waited-for children's CPU seconds (os.times), which
lets the benchmarks check the rusage accounting. Cost: one small write per traced call.
"""

from __future__ import annotations

import os

_PATH = os.environ.get("SBC_BENCH_TRACE")

# module -> attribute paths to wrap once the module has executed (the name a caller uses:
# sbc.execution.task imports rank_rows and call_simulator by name, so they are wrapped there)
TARGETS: dict[str, tuple[str, ...]] = {
    "cmdstanpy": ("write_stan_json",),
    "cmdstanpy.model": (
        "CmdStanModel.__init__",
        "CmdStanModel.sample",
        "CmdStanModel._run_cmdstan",
        "CmdStanModel.exe_info",
    ),
    "cmdstanpy.stanfit.mcmc": ("CmdStanMCMC.draws",),
    "sbc.backends.cmdstan.sample": (
        "CmdStanBackend.fit",
        "CmdStanBackend.draws",
        "CmdStanBackend.diagnose",
    ),
    "sbc.execution.task": (
        "run_simulation",
        "call_simulator",
        "rank_rows",
        "derived_truth_and_draws",
    ),
    "sbc.execution.run": ("prepare",),
    "sbc.store": ("Store.add", "Store.add_many"),  # older code: add; now add_many
}


def _install() -> None:
    import atexit
    import functools
    import sys
    import time

    fd = os.open(_PATH, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    def emit(label: str, start: float, end: float, extra: object = "") -> None:
        os.write(fd, f"{label}\t{pid}\t{start:.6f}\t{end:.6f}\t{extra}\n".encode())

    def extra_of(label: str, args: tuple) -> object:
        if label == "run_simulation" and args:
            return getattr(args[0], "sim", "")
        if label == "CmdStanModel._run_cmdstan" and len(args) > 2:
            return args[2]  # chain index
        return ""

    def wrap(func, label: str):
        @functools.wraps(func)
        def traced(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                emit(label, t0, time.perf_counter(), extra_of(label, args))

        traced.__sbc_traced__ = True
        return traced

    def patch(module, paths: tuple[str, ...]) -> None:
        for path in paths:
            owner_path, _, name = path.rpartition(".")
            owner = module
            for part in filter(None, owner_path.split(".")):
                owner = getattr(owner, part, None)
            func = getattr(owner, name, None) if owner is not None else None
            if func is not None and not getattr(func, "__sbc_traced__", False):
                setattr(owner, name, wrap(func, path))

    class Finder:
        def find_spec(self, fullname, path, target=None):
            if fullname not in TARGETS:
                return None
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
            else:
                return None
            loader = spec.loader
            if loader is None or not hasattr(loader, "exec_module"):
                return spec
            original = loader.exec_module

            def exec_module(module):
                original(module)
                patch(module, TARGETS[fullname])

            loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, Finder())
    start = time.perf_counter()
    emit("process", start, start, os.getppid())

    def at_exit() -> None:
        t = os.times()
        now = time.perf_counter()
        emit("cpu_self", now, now, f"{t.user + t.system:.4f}")
        emit("cpu_children", now, now, f"{t.children_user + t.children_system:.4f}")

    atexit.register(at_exit)


if _PATH:
    _install()
