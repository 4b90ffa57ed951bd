"""Per-fit Python costs of the CmdStan backend, next to CmdStan's own time per fit.

    python benchmarks/micro.py --quick    # 6 fits of studies/lmm_sbc.toml (2 x (200+200))
    python benchmarks/micro.py            # 20 fits as shipped (2 x (500+500))

On real fits of the mixed model, in one process, each measurement repeated:

* the backend's `diagnose` (divergences, E-BFMI, R-hat and bulk/tail ESS of every
  parameter from `sbc.backends.convergence`); and R-hat and ESS alone, that module against
  arviz-stats' array functions (which it replaced) on the same draws, with the one-off import
  each needs in a worker (arviz-stats comes with the `test` extra);
* cmdstanpy's `exe_info()`: a process (`<exe> info`) that `CmdStanModel.sample` starts on
  every fit with cmdstanpy's default model object, against the backend's cached model
  (`program.cmdstanpy_model()`, which reads it once per worker);
* reading the draws, ranks and intervals with the derived quantity;
* for scale, CmdStan's own time per fit.

CPU times are this process's (time.process_time) plus, for exe_info, its child's.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import banner, load_str, table, write_study


def import_seconds(statement: str) -> float:
    """Wall seconds a fresh interpreter needs for `statement` after the worker's usual imports."""
    code = (
        "import time, sbc.execution.task, sbc.backends.cmdstan.sample, cmdstanpy\n"
        "import sbc.simulators.lmm\n"
        f"t = time.perf_counter()\n{statement}\nprint(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 short fits")
    ap.add_argument("--fits", type=int, help="number of fits")
    ap.add_argument("--repeats", type=int, default=5, help="timings per fit and method")
    args = ap.parse_args()
    n_fits = args.fits or (6 if args.quick else 20)
    banner("per-fit Python costs of the CmdStan backend", "quick" if args.quick else "full")
    warnings.simplefilter("ignore")
    import cmdstanpy

    from sbc.execution.prepare import make_backend
    from sbc.ranks import derived_truth_and_draws, rank_rows
    from sbc.seeds import simulation_seeds
    from sbc.simulate import call_simulator
    from sbc.study import load_study

    work = Path(tempfile.mkdtemp(prefix="sbc-bench-micro-"))
    sampler = {"warmup": 200, "draws": 200, "thin": 4} if args.quick else {}
    study = load_study(write_study(work, "bench_micro", **sampler))
    backend = make_backend(study, cores=1)
    backend.prepare(progress=False)
    raw = cmdstanpy.CmdStanModel(exe_file=str(backend.exe_file))  # exe_info not cached

    from arviz_stats.base import array_stats

    from sbc.backends import convergence

    ours = convergence.convergence  # what the backend calls

    def arviz(x):
        kw = {"chain_axis": 1, "draw_axis": 2}
        return (array_stats.rhat(x, **kw), array_stats.ess(x, method="bulk", **kw),
                array_stats.ess(x, method="tail", prob=(0.05, 0.95), **kw))  # fmt: skip

    t = {k: [] for k in ("diag", "ours", "arviz", "info_before", "info_after", "draws", "ranks",
                         "own")}  # fmt: skip
    worst = 0.0
    for i in range(n_fits):
        rng, seed, rank_rng = simulation_seeds(study.seed, i)
        truth, data = call_simulator(study.simulator, rng)
        wd = Path(tempfile.mkdtemp(dir=work))
        fit = backend.fit(data, seed, wd)
        c0 = time.process_time()
        draws = backend.draws(fit)
        t["draws"].append(time.process_time() - c0)
        diag = backend.diagnose(fit)  # the first call pays the import; timed apart
        keep = [i for i, c in enumerate(fit.column_names) if c not in fit.metadata.method_vars]
        x = np.moveaxis(fit.draws()[:, :, keep], 2, 0).transpose(0, 2, 1)
        x = x[np.ptp(x.reshape(len(x), -1), axis=1) > 0]  # as the backend does
        with np.errstate(all="ignore"):
            worst = max(worst, *(float(np.nanmax(np.abs(a / b - 1)))
                                 for a, b in zip(ours(x), arviz(x), strict=True)))  # fmt: skip
        for _ in range(args.repeats):
            for key, func, arg in (("diag", backend.diagnose, fit), ("ours", ours, x),
                                   ("arviz", arviz, x)):  # fmt: skip
                c0 = time.process_time()
                func(arg)
                t[key].append(time.process_time() - c0)
            cached = backend.model()
            for key, model in (("info_before", raw), ("info_after", cached)):
                c0, k0, w0 = time.process_time(), child_cpu(), time.perf_counter()
                model.exe_info()
                t[key].append((time.process_time() - c0 + child_cpu() - k0,
                               time.perf_counter() - w0))  # fmt: skip
        c0 = time.process_time()
        funcs = {k: cs_load(v) for k, v in study.quantities.derived.items()}
        d_truth, d_draws = derived_truth_and_draws(funcs, truth, draws, data)
        rank_rows({**truth, **d_truth}, {**draws, **d_draws}, thin_every=study.thin,
                  rng=rank_rng)  # fmt: skip
        t["ranks"].append(time.process_time() - c0)
        t["own"].append(diag["warmup_seconds"] + diag["sampling_seconds"])
        print(f"  fit {i + 1}/{n_fits}  CmdStan own {t['own'][-1]:.2f} s", flush=True)

    imp_arviz = np.median([import_seconds("from arviz_stats.base import array_stats")
                           for _ in range(3)])  # fmt: skip
    imp_ours = np.median([import_seconds("import sbc.backends.convergence") for _ in range(3)])

    def ms(key: str, part: int | None = None) -> float:
        vals = t[key] if part is None else [v[part] for v in t[key]]
        return 1000 * float(np.median(vals))

    own = float(np.mean(t["own"]))
    rows = [
        {"item": "backend.diagnose, CPU ms per fit", "value": ms("diag")},
        {"item": "  R-hat + bulk/tail ESS: sbc, CPU ms per fit", "value": ms("ours")},
        {"item": "  R-hat + bulk/tail ESS: arviz-stats, CPU ms per fit", "value": ms("arviz")},
        {"item": "import of sbc's convergence, wall ms once per worker", "value": 1000 * imp_ours},
        {"item": "import of arviz-stats, wall ms once per worker", "value": 1000 * imp_arviz},
        {"item": "exe_info, CPU ms per fit (incl. its process): cmdstanpy default",
         "value": ms("info_before", 0)},
        {"item": "exe_info, CPU ms per fit: cached per worker (sbc)", "value": ms("info_after", 0)},
        {"item": "exe_info, wall ms per fit: cmdstanpy default", "value": ms("info_before", 1)},
        {"item": "exe_info, wall ms per fit: cached per worker (sbc)",
         "value": ms("info_after", 1)},
        {"item": "read draws, CPU ms per fit", "value": ms("draws")},
        {"item": "ranks + intervals + derived, CPU ms per fit", "value": ms("ranks")},
        {"item": "CmdStan's own ms per fit (for scale)", "value": 1000 * own},
    ]  # fmt: skip
    sbc_ms = ms("diag") + ms("info_after", 0) + ms("draws") + ms("ranks")
    print()
    print(table(rows, [("item", "item (medians)", ""), ("value", "value", "{:.1f}")]))
    print(f"\nlargest relative difference sbc.backends.convergence vs arviz-stats: {worst:.1e}")
    print(
        f"Python CPU per fit in the backend and ranks: {sbc_ms:.1f} ms = "
        f"{sbc_ms / (1000 * own):.2%} of CmdStan's own time"
    )
    print(f"load average at the end: {load_str()}")
    return 0


def cs_load(spec: str):
    from sbc.simulate import load_callable

    return load_callable(spec)


if __name__ == "__main__":
    sys.exit(main())
