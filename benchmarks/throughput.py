"""Throughput of the mixed-model SBC study: 1 vs 2 workers, parallel speedup, CPU use, scaling.

    python benchmarks/throughput.py --quick   # 16 sims, 2 chains x (200+200); scaling 10/20/40
    python benchmarks/throughput.py           # studies/lmm_sbc.toml as shipped: 100 sims per
                                              # run; scaling 100/200/400 (about 25 min, quiet)

Part 1, side by side and interleaved (A B C C B A ...), each an `sbc run` child process:

* 1w-1c: 1 worker on 1 core (CPU affinity; the runner then runs the chains one after the
  other, parallel_chains = 1): the serial reference;
* 1w-2c: 1 worker on all cores (its chains run in parallel, parallel_chains = cores);
* 2w-2c: one worker per core (the default), chains in sequence within each fit.

Parallel speedup = wall(1w-1c) / wall(2w-2c); on a busy machine the wall times also measure
the competition, so the speedup implied by CmdStan occupancy, 2 x occ(2w-2c) / occ(1w-1c), is
printed too (what the speedup is when CmdStan runs at the same speed in both).
CPU utilisation = CPU seconds of the run's whole process tree / (wall seconds x cores used).
The CPU seconds come from os.wait4 on the `sbc run` child: its own and those of every
descendant it waited for, which includes the loky workers (joined by the runner) and the
CmdStan processes (waited for by cmdstanpy in the workers). The traced per-process CPU (each
Python process's own and reaped children's, recorded at its exit) is printed beside it as a
check. CmdStan occupancy = time CmdStan processes existed / (wall x cores): unlike CPU
utilisation it does not drop when other processes on the machine take CPU from the study, so
it isolates idle cores caused by the harness. Harness share = 1 - CmdStan running time /
(workers x wall); harness CPU = 1 - CmdStan's CPU seconds / all CPU seconds.

Part 2, scaling: 2 workers, 100, 200 and 400 simulations (quick: 10, 20, 40), wall time and
wall time per simulation, and a least-squares line wall = a + b N.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from _common import (
    Run,
    abba,
    banner,
    baseline_code,
    cores,
    figure,
    figures_table,
    fresh_dir,
    load_str,
    median,
    sbc_run,
    scratch,
    simulations,
    slot_accounting,
    table,
    write_study,
)

QUICK = {"sims": 16, "scaling": (10, 20, 40), "warmup": 200, "draws": 200, "thin": 4}
FULL = {"sims": 100, "scaling": (100, 200, 400)}


def measure(run: Run, workers: int, used_cores: int) -> dict:
    acc = slot_accounting(run, workers)
    sims = simulations(run.info["out"])
    top, _ = run.trace.cpu_check()
    harness_cpu = run.cpu - run.trace.cmdstan_cpu()
    return {
        "run": run.label,
        "sims": len(sims),
        "wall": run.wall,
        "rate": 60 * len(sims) / run.wall,
        "cpu": run.cpu,
        "cpu_traced": top,
        "util": run.cpu / (run.wall * used_cores),
        "occupancy": acc["chain_sum"] / (run.wall * used_cores),
        "harness": acc["overhead_share"],
        "harness_cpu": acc["harness_cpu_share"],
        "startup": acc["startup"],
        "per_sim": run.wall / len(sims),
        "own_per_sim": float((sims["warmup_seconds"] + sims["sampling_seconds"]).mean()),
        "cpu_per_sim": run.cpu / len(sims),
        "harness_cpu_s": harness_cpu,
        "harness_cpu_per_sim": harness_cpu / len(sims),
        "rss": run.maxrss_mb,
        "load": f"{run.load[0]:.1f}-{run.load[1]:.1f}",
        "failed": int((sims["status"] != "ok").sum()),
    }


COLUMNS = [
    ("run", "run", ""),
    ("sims", "sims", "{}"),
    ("wall", "wall s", "{:.1f}"),
    ("rate", "sims/min", "{:.1f}"),
    ("cpu", "CPU s", "{:.1f}"),
    ("cpu_traced", "traced CPU s", "{:.1f}"),
    ("util", "CPU util", "{:.3f}"),
    ("occupancy", "CmdStan occ.", "{:.3f}"),
    ("harness", "harness", "{:.1%}"),
    ("harness_cpu", "harness CPU", "{:.1%}"),
    ("startup", "to 1st fit s", "{:.2f}"),
    ("load", "load 1-min", ""),
]


def single_core() -> set[int]:
    return {min(os.sched_getaffinity(0))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, shorter sampler")
    ap.add_argument("--sims", type=int, help="simulations per run in part 1")
    ap.add_argument("--repeats", type=int, default=2, help="rounds of part 1's cycle")
    ap.add_argument("--scaling", type=int, nargs="+", help="simulation counts for part 2")
    ap.add_argument("--skip-scaling", action="store_true")
    ap.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run the 2-worker configuration with the sbc package in DIR/sbc, "
        "interleaved with this checkout's",
    )
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--label", default="base", help="name of the --baseline runs (default base)")
    args = ap.parse_args()
    cfg = dict(QUICK if args.quick else FULL)
    sims = args.sims or cfg["sims"]
    base = baseline_code(args.baseline)
    banner(
        "throughput, parallel speedup, CPU utilisation, scaling", "quick" if args.quick else "full"
    )
    ncores = cores()
    work = scratch("sbc-bench-throughput-", keep=args.keep)
    sampler = {k: cfg[k] for k in ("warmup", "draws", "thin") if k in cfg}
    study = write_study(work, "bench_throughput", **sampler)
    from sbc.study import load_study

    st = load_study(study)
    s = st.backend.options  # NUTS's settings, under cmdstanpy's names
    print(
        f"study: studies/lmm_sbc.toml, {s.chains} chains x ({s.iter_warmup} warm-up + "
        f"{s.iter_sampling} draws), thin_ranks {st.thin_ranks}, adapt_delta {s.adapt_delta}; "
        f"{sims} sims per run in part 1"
    )
    sbc_run(study, fresh_dir(work, "warm"), "warm", work, workers=1, sims=2, trace=False)

    # -- part 1 --------------------------------------------------------------------------------
    configs = {
        "1w-1c": {"workers": 1, "cores": 1},
        "1w-2c": {"workers": 1, "cores": ncores},
        f"{ncores}w-{ncores}c": {"workers": ncores, "cores": ncores},
    }
    if base is not None:
        configs[f"{args.label}-{ncores}w"] = {"workers": ncores, "cores": ncores, "code": base}
    rows = []
    for i, label in enumerate(abba(list(configs), args.repeats)):
        c = configs[label]
        env_affinity = single_core() if c["cores"] == 1 else None
        run = run_pinned(
            study, work, f"p1-{i}", label, c["workers"], sims, env_affinity, c.get("code")
        )
        rows.append(measure(run, c["workers"], c["cores"]))
        print(
            f"  run {i + 1} {label:7s} wall {run.wall:7.1f} s  load {run.load[0]:.2f} -> "
            f"{run.load[1]:.2f}",
            flush=True,
        )
    print()
    print(table(rows, COLUMNS, title="Part 1: each run, in the order run"))
    print()
    med = {
        lab: {
            k: median([r[k] for r in rows if r["run"] == lab])
            for k in ("wall", "rate", "util", "occupancy", "harness", "harness_cpu")
        }
        for lab in configs
    }
    par = f"{ncores}w-{ncores}c"
    speedup = med["1w-1c"]["wall"] / med[par]["wall"]
    pair_speedups = []
    serial = [r for r in rows if r["run"] == "1w-1c"]
    parallel = [r for r in rows if r["run"] == par]
    for a, b in zip(serial, parallel, strict=False):
        pair_speedups.append(a["wall"] / b["wall"])
    summary = [
        figure("throughput 1 worker, 1 core (sims/min)", f"{med['1w-1c']['rate']:.1f}"),
        figure(f"throughput 1 worker, {ncores} cores (sims/min)", f"{med['1w-2c']['rate']:.1f}"),
        figure(
            f"throughput {ncores} workers, {ncores} cores (sims/min)", f"{med[par]['rate']:.1f}"
        ),
        figure(
            f"parallel speedup 1 -> {ncores} workers (medians)",
            f"{speedup:.2f}x",
            ">= 1.85x",
            speedup >= 1.85,
        ),
        figure(
            f"  implied by CmdStan occupancy: {ncores} x occ({par}) / occ(1w-1c)",
            f"{ncores * med[par]['occupancy'] / med['1w-1c']['occupancy']:.2f}x",
        ),
        figure("  per run pair", " ".join(f"{x:.2f}" for x in pair_speedups)),
        figure(
            f"CPU utilisation, {ncores} workers on {ncores} cores",
            f"{med[par]['util']:.3f}",
            ">= 0.95",
            med[par]["util"] >= 0.95,
        ),
        figure(
            f"CmdStan occupancy, {ncores} workers (load-independent)",
            f"{med[par]['occupancy']:.3f}",
        ),
        figure(
            f"harness share of wall, {ncores} workers",
            f"{med[par]['harness']:.1%}",
            "<= 3 %",
            med[par]["harness"] <= 0.03,
        ),
        figure(
            f"harness share of CPU seconds, {ncores} workers (load-robust)",
            f"{med[par]['harness_cpu']:.1%}",
        ),
    ]
    if base is not None:
        b = med[f"{args.label}-{ncores}w"]
        summary.append(
            figure(
                f"this checkout / {args.label} wall, {ncores} workers",
                f"{med[par]['wall'] / b['wall']:.3f}",
            )
        )
    print(figures_table(summary))
    print()

    # -- part 2 --------------------------------------------------------------------------------
    if not args.skip_scaling:
        counts = args.scaling or cfg["scaling"]
        srows = []
        for n in counts:
            run = run_pinned(study, work, f"p2-{n}", f"{n} sims", ncores, n, None, None)
            srows.append(measure(run, ncores, ncores))
            print(
                f"  scaling {n:5d} sims wall {run.wall:7.1f} s  load {run.load[0]:.2f} -> "
                f"{run.load[1]:.2f}",
                flush=True,
            )
        n_arr = np.array([r["sims"] for r in srows], dtype=float)
        lines = {}
        for key in ("wall", "cpu", "harness_cpu_s"):
            y = np.array([r[key] for r in srows])
            b, a = np.polyfit(n_arr, y, 1)
            fitted = a + b * n_arr
            ss = np.sum((y - y.mean()) ** 2)
            lines[key] = (a, b, 1 - np.sum((y - fitted) ** 2) / ss if ss > 0 else 1.0)
            if key == "wall":
                for r, f in zip(srows, fitted, strict=True):
                    r["fit_dev"] = r["wall"] / f - 1
        print()
        print(
            table(
                srows,
                [
                    ("run", "run", ""),
                    ("wall", "wall s", "{:.1f}"),
                    ("per_sim", "wall/sim s", "{:.3f}"),
                    ("own_per_sim", "CmdStan own/sim s", "{:.3f}"),
                    ("cpu_per_sim", "CPU/sim s", "{:.3f}"),
                    ("harness_cpu_per_sim", "harness CPU/sim s", "{:.3f}"),
                    ("rate", "sims/min", "{:.1f}"),
                    ("util", "CPU util", "{:.3f}"),
                    ("occupancy", "CmdStan occ.", "{:.3f}"),
                    ("harness", "harness", "{:.1%}"),
                    ("harness_cpu", "harness CPU", "{:.1%}"),
                    ("rss", "peak RSS MB", "{:.0f}"),
                    ("fit_dev", "wall vs line", "{:+.1%}"),
                    ("load", "load 1-min", ""),
                ],
                title="Part 2: scaling, 2 workers",
            )
        )
        for key, what in (("wall", "wall"), ("cpu", "CPU s"), ("harness_cpu_s", "harness CPU s")):
            a, b, r2 = lines[key]
            print(f"least squares: {what} = {a:.2f} s + {b:.4f} s x N  (R^2 = {r2:.4f})")
        print(
            f"wall/sim at the largest N / at the smallest: "
            f"{srows[-1]['per_sim'] / srows[0]['per_sim']:.3f}; harness CPU/sim: "
            f"{srows[-1]['harness_cpu_per_sim'] / srows[0]['harness_cpu_per_sim']:.3f}"
        )
        print(
            "(different N fit different datasets, 0..N-1, whose CmdStan cost differs, and the "
            "machine's load may change between runs: harness CPU per simulation is the "
            "load-robust test of linearity)"
        )
    print(f"\nload average at the end: {load_str()}")
    return 0


def run_pinned(study, work, tag, label, workers, sims, affinity, code) -> Run:
    """sbc_run, optionally restricted to a CPU set (inherited by workers and CmdStan)."""
    if affinity is None:
        return sbc_run(
            study, fresh_dir(work, tag), label, work, workers=workers, sims=sims, code=code
        )
    old = os.sched_getaffinity(0)
    os.sched_setaffinity(0, affinity)  # the child inherits it; restored at once
    try:
        return sbc_run(
            study, fresh_dir(work, tag), label, work, workers=workers, sims=sims, code=code
        )
    finally:
        os.sched_setaffinity(0, old)


if __name__ == "__main__":
    sys.exit(main())
