"""The orchestration ceiling: how many simulations a second the runner can take in, when the
fits cost nothing (exact backend), on the local pool and on a dask LocalCluster.

    python benchmarks/orchestration.py --quick                    # this checkout only
    python benchmarks/orchestration.py --baseline /tmp/base       # before / after, one run

Each measurement is a fresh child Python that calls `sbc.run(study, sims=N, out=...,
scheduler=..., progress=False)` on an exact-backend study (`exact_normal.toml`'s conjugate
normal model: K = 3 means, 1 chain of 100 exact draws, so a simulation takes about 0.3 ms
in its worker) and reports the wall time of that call and the CPU time of the main process
(`getrusage(RUSAGE_SELF)`: the runner, the store, and for a LocalCluster dask's client and
scheduler, which run in it; the worker processes are not in it). Each configuration runs at
two sizes, and the figures per simulation are the differences between them, so start-up
(interpreter, imports, planning, starting the pool) cancels:

* simulations per second = (N_large - N_small) / (wall_large - wall_small);
* main-process CPU per simulation = (cpu_large - cpu_small) / (N_large - N_small);
* ceiling = 1 / main-process CPU per simulation: the rate at which the runner would use a
  whole core (by then the workers, not the runner, are what limits a real study);
* fits fed: at the ceiling, how many fits of 2 s (the shipped mixed-model study's) run at
  once, i.e. on how many cores one fit each.

Pools: "local" (loky) and "dask" (a LocalCluster of `--workers` processes, whose scheduler
runs in the main process, so its CPU is counted), each as sbc runs them (cheap simulations go
in batches), and "local-1", "dask-1": one simulation per task (this checkout only, with
`sbc.execution.pools.MAX_BATCH = 1`), which is what fits over `BATCH_SECONDS` get: the figure
that says how many workers with real fits one runner can feed. The baseline checkout (before
batches) always sends one simulation per task.

Runs of different code and pools are interleaved (A B B A ...). Ranks are compared between
the two checkouts (`identical_ranks.compare`). Target: >= 300 simulations per second on the
local pool.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    ROOT,
    abba,
    banner,
    baseline_code,
    figure,
    figures_table,
    fresh_dir,
    median,
    run_child,
    scratch,
    table,
)
from identical_ranks import compare

CHILD = """
import json, resource, time
import sbc
if {one_per_task}:  # batches of one simulation, as real fits get (this checkout only)
    import sbc.execution.pools
    sbc.execution.pools.MAX_BATCH = 1
r0 = resource.getrusage(resource.RUSAGE_SELF)
t = time.perf_counter()
folder = sbc.run({study!r}, sims={sims}, out={out!r}, workers={workers},
                 scheduler={scheduler!r}, progress=False)
wall = time.perf_counter() - t
r1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
ok = int((sbc.load(folder).simulations["status"] == "ok").sum())
print(json.dumps({{"wall": wall, "cpu": cpu, "ok": ok}}))
"""

STUDY = """name = "orchestration"
sims = 100
seed = 1
[backend]
type = "exact"
[simulator]
function = "sbc.simulators.normal:simulate"
args = {{ K = 3, N = 10 }}
[sampler]
chains = 1
draws = 100
thin = 1
[parallel]
workers = {workers}
"""

POOLS = ["local", "dask", "local-1", "dask-1"]
#: Fit length the ceiling is expressed in (the shipped LMM study's CmdStan time per fit).
FIT_SECONDS = 2.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes, once each")
    ap.add_argument("--sims", type=int, nargs=2, metavar=("SMALL", "LARGE"),
                    help="the two study sizes (default 500 10000; quick 200 4000)")  # fmt: skip
    ap.add_argument("--repeats", type=int, help="rounds of the interleaved cycle (default 2)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--pools", nargs="+", default=POOLS, choices=POOLS,
                    help="'-1': one simulation per task, as fits over 50 ms get")  # fmt: skip
    ap.add_argument("--baseline", help="another checkout (a folder holding sbc/) to compare")
    ap.add_argument("--label", default="before", help="name of the --baseline runs")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    small, large = args.sims or ((200, 4000) if args.quick else (500, 10000))
    repeats = args.repeats or (1 if args.quick else 2)
    codes = {"this": ROOT}
    if args.baseline:
        codes = {args.label: baseline_code(args.baseline), "this": ROOT}
    banner("orchestration ceiling: exact backend, local pool and dask LocalCluster",
           "quick" if args.quick else "full")  # fmt: skip
    for label, code in codes.items():
        print(f"   {label:8s} {code}")
    work = scratch("sbc-bench-orchestration-", keep=args.keep)
    study = work / "orchestration.toml"
    study.write_text(STUDY.format(workers=args.workers))
    schedulers = {"local": "local", "dask": f"local:{args.workers}"}
    # the baseline has no batches: its tasks are always one simulation each
    configs = [(c, p) for c in codes for p in args.pools if c == "this" or "-" not in p]
    measured: dict[tuple[str, str, int], list[dict]] = {}
    for rnd, config in enumerate(abba(configs, repeats)):
        code_label, pool = config
        for sims in (small, large) if rnd % 2 == 0 else (large, small):
            out = fresh_dir(work, f"{code_label}-{pool}-{sims}")
            child = CHILD.format(study=str(study), sims=sims, out=str(out),
                                 workers=args.workers, scheduler=schedulers[pool.split("-")[0]],
                                 one_per_task=pool.endswith("-1"))  # fmt: skip
            run = run_child([PYTHON, "-c", child], f"{code_label}-{pool}-{sims}", work,
                            trace=False, code=codes[code_label])  # fmt: skip
            info = json.loads(run.stdout.strip().splitlines()[-1])
            if info["ok"] != sims:
                raise SystemExit(f"{code_label} {pool} {sims}: only {info['ok']} ok")
            info["out"] = out
            measured.setdefault((code_label, pool, sims), []).append(info)
            print(f"   {code_label:8s} {pool:6s} {sims:6d} sims: {info['wall']:6.2f} s wall, "
                  f"{info['cpu']:6.2f} s main-process CPU", flush=True)  # fmt: skip
    print()
    rows = []
    for code_label, pool in configs:
        lo, hi = measured[(code_label, pool, small)], measured[(code_label, pool, large)]
        wall = median([r["wall"] for r in hi]) - median([r["wall"] for r in lo])
        cpu = median([r["cpu"] for r in hi]) - median([r["cpu"] for r in lo])
        per_sim = cpu / (large - small)
        ceiling = 1.0 / per_sim if per_sim > 0 else float("inf")
        rows.append({
            "code": code_label, "pool": pool,
            "rate": (large - small) / wall,
            "whole": large / median([r["wall"] for r in hi]),
            "cpu_ms": 1e3 * per_sim,
            "ceiling": ceiling,
            "cores": ceiling * FIT_SECONDS,
        })  # fmt: skip
    print(table(rows, [
        ("code", "code", ""), ("pool", "pool", ""),
        ("rate", "sims/s (marginal)", "{:.0f}"),
        ("whole", f"sims/s ({large}, with start-up)", "{:.0f}"),
        ("cpu_ms", "main CPU ms/sim", "{:.3f}"),
        ("ceiling", "ceiling sims/s", "{:.0f}"),
        ("cores", f"{FIT_SECONDS:.0f}-s fits fed (= cores)", "{:.0f}"),
    ], title=f"Per simulation, from {small} to {large} simulations ({args.workers} workers; "
             f"medians of {repeats})"))  # fmt: skip
    print()
    figures = []
    for row in rows:
        if row["code"] == "this":
            goal = row["pool"] == "local"
            figures.append(
                figure(
                    f"sims/s, {row['pool']}",
                    f"{row['rate']:.0f}",
                    ">= 300" if goal else "",
                    row["rate"] >= 300 if goal else None,
                )
            )
    if args.baseline:
        for pool in [p for p in args.pools if "-" not in p]:
            a = next(r for r in rows if r["code"] == args.label and r["pool"] == pool)
            b = next(r for r in rows if r["code"] == "this" and r["pool"] == pool)
            figures.append(figure(f"main CPU per sim, {pool}: {args.label} / this",
                                  f"{a['cpu_ms'] / b['cpu_ms']:.1f}x"))  # fmt: skip
            base = measured[(args.label, pool, large)][0]["out"]
            this = measured[("this", pool, large)][0]["out"]
            _, n_rows, verdict = compare(base, this)
            figures.append(
                figure(
                    f"ranks, {pool}, {args.label} vs this ({n_rows} rows)",
                    verdict,
                    "identical",
                    verdict.startswith("identical"),
                )
            )
    print(figures_table(figures))
    if args.keep:
        print(f"results kept in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
