"""Per-fit Python costs of the CmdStan backend, before and after this round's changes.

    python benchmarks/micro.py --quick    # 6 fits of studies/lmm_sbc.toml (2 x (200+200))
    python benchmarks/micro.py            # 20 fits as shipped (2 x (500+500))

On real fits of the mixed model, in one process, each measurement repeated and interleaved:

* diagnostics: `CmdStanBackend.diagnostics` (vectorised R-hat / ESS / E-BFMI) against the
  previous implementation (arviz-stats' array functions, reproduced below), with a check that
  both give the same numbers to the last bit, and the one-off import each needs in a worker;
* cmdstanpy's `exe_info()`: a process (`<exe> info`) that `CmdStanModel.sample` used to start
  on every fit, now run once per worker;
* for scale: reading the draws, ranks and intervals, and CmdStan's own time per fit.

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

SAMPLER_COLUMNS = 7


def diagnostics_before(backend, fit) -> dict[str, float]:
    """The backend's diagnostics as they were (arviz-stats), for comparison."""
    from arviz_stats.base import array_stats

    from sbc.backends.cmdstan import SAMPLER_COLUMNS as cols_
    from sbc.backends.cmdstan import _elapsed_seconds

    cols = list(fit.column_names)
    arr = fit.draws()
    sampler = {c: arr[:, :, cols.index(c)].T for c in cols_ if c in cols}
    params = np.moveaxis(arr[:, :, len(cols_) :], 2, 0).transpose(0, 2, 1)
    varying = params[np.ptp(params.reshape(len(params), -1), axis=1) > 0]
    diag = {
        "divergences": int(sampler["divergent__"].sum()),
        "treedepth_hits": int((sampler["treedepth__"] >= backend.max_treedepth).sum()),
        "ebfmi_min": float(np.min(array_stats.bfmi(sampler["energy__"]))),
        "stepsize": float(np.mean(sampler["stepsize__"][:, 0])),
        "return_code": int(max(fit.runset._retcodes)),
        "n_draws": int(arr.shape[0] * arr.shape[1]),
    }
    if len(varying) and arr.shape[1] * arr.shape[0] >= 8:
        kw = {"chain_axis": 1, "draw_axis": 2}
        diag["rhat_max"] = float(np.nanmax(array_stats.rhat(varying, **kw)))
        diag["ess_bulk_min"] = float(np.nanmin(array_stats.ess(varying, method="bulk", **kw)))
        diag["ess_tail_min"] = float(
            np.nanmin(array_stats.ess(varying, method="tail", prob=(0.05, 0.95), **kw))
        )
    warm, samp = _elapsed_seconds(fit.runset.csv_files)
    diag["warmup_seconds"], diag["sampling_seconds"] = warm, samp
    return diag


def import_seconds(statement: str) -> float:
    """Wall seconds a fresh interpreter needs for `statement` after the worker's usual imports."""
    code = (
        "import time, sbc.runner, sbc.backends.cmdstan, cmdstanpy, sbc.simulators.lmm\n"
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

    from sbc.backends import cmdstan as cs
    from sbc.callables import call_simulator
    from sbc.ranks import derived_truth_and_draws, rank_rows
    from sbc.runner import make_backend, simulation_seeds
    from sbc.study import load_study

    work = Path(tempfile.mkdtemp(prefix="sbc-bench-micro-"))
    sampler = {"warmup": 200, "draws": 200, "thin": 4} if args.quick else {}
    study = load_study(write_study(work, "bench_micro", **sampler))
    backend = make_backend(study, parallel_chains=1)
    backend.prepare(progress=False)
    raw = cmdstanpy.CmdStanModel(exe_file=str(backend.exe_file))  # exe_info not cached

    t = {k: [] for k in ("diag_before", "diag_after", "info_before", "info_after", "draws",
                         "ranks", "own")}  # fmt: skip
    identical = 0
    for i in range(n_fits):
        rng, seed, rank_rng = simulation_seeds(study.seed, i)
        truth, data = call_simulator(study.simulator.function, rng, study.simulator.args)
        wd = Path(tempfile.mkdtemp(dir=work))
        fit = backend.fit(data, seed, wd)
        c0 = time.process_time()
        draws = backend.draws(fit)
        t["draws"].append(time.process_time() - c0)
        before = diagnostics_before(backend, fit)  # warm both paths (imports)
        after = backend.diagnostics(fit)
        identical += (
            all(
                (before[k] == after[k]) or (before[k] != before[k] and after[k] != after[k])
                for k in before
            )
            and before.keys() == after.keys()
        )
        for _ in range(args.repeats):
            for key, func in (("diag_before", diagnostics_before), ("diag_after", None)):
                c0 = time.process_time()
                if func is None:
                    backend.diagnostics(fit)
                else:
                    func(backend, fit)
                t[key].append(time.process_time() - c0)
            cached = cs._model(str(backend.exe_file), str(backend.cmdstan))
            for key, model in (("info_before", raw), ("info_after", cached)):
                c0, k0, w0 = time.process_time(), child_cpu(), time.perf_counter()
                model.exe_info()
                t[key].append((time.process_time() - c0 + child_cpu() - k0,
                               time.perf_counter() - w0))  # fmt: skip
        c0 = time.process_time()
        funcs = {k: cs_load(v) for k, v in study.quantities.derived.items()}
        d_truth, d_draws = derived_truth_and_draws(funcs, truth, draws, data)
        rank_rows({**truth, **d_truth}, {**draws, **d_draws}, thin_every=study.sampler.thin,
                  rng=rank_rng)  # fmt: skip
        t["ranks"].append(time.process_time() - c0)
        t["own"].append(after["warmup_seconds"] + after["sampling_seconds"])
        print(f"  fit {i + 1}/{n_fits}  CmdStan own {t['own'][-1]:.2f} s", flush=True)

    imp_before = np.median([import_seconds("from arviz_stats.base import array_stats")
                            for _ in range(3)])  # fmt: skip
    imp_after = np.median([import_seconds("from scipy.special import ndtri") for _ in range(3)])

    def ms(key: str, part: int | None = None) -> float:
        vals = t[key] if part is None else [v[part] for v in t[key]]
        return 1000 * float(np.median(vals))

    own = float(np.mean(t["own"]))
    rows = [
        {"item": "diagnostics, CPU ms per fit", "before": ms("diag_before"),
         "after": ms("diag_after")},
        {"item": "exe_info, CPU ms per fit (incl. its process)", "before": ms("info_before", 0),
         "after": ms("info_after", 0)},
        {"item": "exe_info, wall ms per fit", "before": ms("info_before", 1),
         "after": ms("info_after", 1)},
        {"item": "import for diagnostics, wall ms once per worker", "before": 1000 * imp_before,
         "after": 1000 * imp_after},
        {"item": "read draws, CPU ms per fit (unchanged)", "before": ms("draws"),
         "after": ms("draws")},
        {"item": "ranks + intervals + derived, CPU ms per fit", "before": ms("ranks"),
         "after": ms("ranks")},
        {"item": "CmdStan's own seconds per fit (for scale), ms", "before": 1000 * own,
         "after": 1000 * own},
    ]  # fmt: skip
    for r in rows:
        r["ratio"] = r["after"] / r["before"] if r["before"] else float("nan")
    print()
    print(
        table(
            rows,
            [
                ("item", "item (medians)", ""),
                ("before", "before", "{:.1f}"),
                ("after", "after", "{:.1f}"),
                ("ratio", "after/before", "{:.2f}"),
            ],
        )
    )
    print(f"\ndiagnostics identical to the last bit on {identical} of {n_fits} fits")
    print(f"load average at the end: {load_str()}")
    return 0


def cs_load(spec: str):
    from sbc.callables import load_callable

    return load_callable(spec)


if __name__ == "__main__":
    sys.exit(main())
