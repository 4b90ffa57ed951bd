"""Overhead per simulation, stage by stage, against a bare cmdstanpy loop on the same datasets.

    python benchmarks/overhead.py --quick     # 10 sims, 2 chains x (200+200): about 2 minutes
    python benchmarks/overhead.py             # 50 sims of studies/lmm_sbc.toml as shipped

Side by side, in one run and interleaved (sbc-1w, bare, sbc-2w, sbc-2w, bare, sbc-1w, ...):

* sbc-1w: `sbc run` of the mixed-model study with 1 worker (its CmdStan chains run in parallel,
  parallel_chains = cores), the configuration a bare loop is comparable to;
* bare: `_bare_loop.py`, model.sample + fit.draws() in a loop on the very same datasets and
  seeds (prepared before the clock starts), same chains, parallel chains, iterations,
  adapt_delta and max_treedepth;
* sbc-2w: the default configuration on this machine (one worker per core, chains in sequence).

Every run is a child process traced by `_tracehook` (when each stage ran, in each process), so
the per-simulation breakdown is measured inside the real runner and its loky workers:
simulate, write data, CmdStan processes (CmdStan's own warm-up + sampling seconds as it reports
them, and the rest of each process's life: start-up, reading data, initialisation, writing),
cmdstanpy around them, reading the draws, diagnostics, ranks and intervals, store commit.
"Harness overhead" is everything but CmdStan's processes: 1 - (sum over fits of the time
CmdStan processes ran) / (workers x study wall time).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import pandas as pd
from _common import (
    HERE,
    PYTHON,
    Run,
    banner,
    baseline_code,
    cores,
    figure,
    figures_table,
    fresh_dir,
    load_str,
    median,
    run_child,
    sbc_run,
    scratch,
    simulations,
    slot_accounting,
    table,
    write_study,
)

QUICK = {"sims": 10, "warmup": 200, "draws": 200, "thin": 4, "repeats": 2}
FULL = {"sims": 50, "warmup": None, "draws": None, "thin": None, "repeats": 2}


def prepare_bare(study_file: Path, sims: int, workdir: Path, parallel_chains: int) -> Path:
    """The study's datasets and seeds as JSON files, and the bare loop's plan (not timed)."""
    import cmdstanpy

    from sbc.execution.prepare import make_backend
    from sbc.seeds import simulation_seeds
    from sbc.simulate import call_simulator
    from sbc.study import load_study

    study = load_study(study_file)
    backend = make_backend(study, cores=parallel_chains)
    backend.prepare(progress=False)
    data_dir = workdir / "bare-data"
    data_dir.mkdir(exist_ok=True)
    fits = []
    for i in range(sims):
        rng, seed, _ = simulation_seeds(study.seed, i)
        _, data = call_simulator(study.simulator, rng)
        path = data_dir / f"data-{i}.json"
        cmdstanpy.write_stan_json(str(path), data)
        fits.append({"data": str(path), "seed": seed})
    s = study.backend.options  # NUTS's settings, under cmdstanpy's names
    plan = {
        "exe": str(backend.exe_file),
        "cmdstan": str(backend.cmdstan),
        "tmp_root": str(workdir),
        "settings": {
            "chains": s.chains,
            "parallel_chains": parallel_chains,
            "warmup": s.iter_warmup,
            "draws": s.iter_sampling,
            "adapt_delta": s.adapt_delta,
            "max_treedepth": s.max_treedepth,
        },
        "fits": fits,
    }
    path = workdir / "bare-plan.json"
    path.write_text(json.dumps(plan))
    return path


def per_sim_stages(run: Run, own: pd.DataFrame) -> dict[str, float]:
    """Mean seconds per simulation of each stage of one traced run."""
    tr = run.trace
    assert tr is not None
    fits = tr.fits()
    n = max(1, len(fits))
    sims = tr.calls("run_simulation")
    span = float(fits["span"].sum())
    chain_sum = float(fits["chain_sum"].sum())
    own_total = float((own["warmup_seconds"] + own["sampling_seconds"]).sum())
    exe_info = tr.total("CmdStanModel.exe_info")
    sample = tr.total("CmdStanModel.sample")
    out = {
        "simulate": tr.total("call_simulator"),
        "write_data": tr.total("write_stan_json"),
        "exe_info": exe_info,
        "cmdstan_span": span,
        "cmdstan_own": own_total,
        "cmdstan_rest": chain_sum - own_total,
        "cmdstan_chain_sum": chain_sum,
        "cmdstanpy_around": sample - span - exe_info,
        "read_draws": tr.total("CmdStanBackend.draws"),
        "diagnostics": tr.total("CmdStanBackend.diagnose"),
        "ranks": tr.total("rank_rows") + tr.total("derived_truth_and_draws"),
        "store_commit": tr.total("Store.add") + tr.total("Store.add_many"),
    }
    if len(sims):  # the runner
        inner = (
            sum(out[k] for k in ("simulate", "write_data", "read_draws", "diagnostics", "ranks"))
            + sample
        )
        out["other"] = float(sims["dur"].sum()) - inner
        out["worker_wall"] = float(sims["dur"].sum())
    else:  # the bare loop: draws() is cmdstanpy's own reader, traced as CmdStanMCMC.draws
        out["read_draws"] = tr.total("CmdStanMCMC.draws")
        out["worker_wall"] = sample + out["read_draws"]
        out["other"] = 0.0
    return {k: v / n for k, v in out.items()}


def bare_own(run: Run) -> pd.DataFrame:
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return pd.DataFrame(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, shorter sampler")
    ap.add_argument("--sims", type=int, help="simulations per run")
    ap.add_argument("--repeats", type=int, help="rounds of the interleaved cycle")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--label", default="base", help="name of the --baseline runs (default base)")
    ap.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run the sbc package in DIR/sbc (e.g. a worktree of an older "
        "commit), interleaved with this checkout's",
    )
    args = ap.parse_args()
    base = baseline_code(args.baseline)
    cfg = dict(QUICK if args.quick else FULL)
    sims = args.sims or cfg["sims"]
    repeats = args.repeats or cfg["repeats"]
    banner(
        "overhead per simulation: sbc vs a bare cmdstanpy loop", "quick" if args.quick else "full"
    )

    work = scratch("sbc-bench-overhead-", keep=args.keep)
    sampler = {k: cfg[k] for k in ("warmup", "draws", "thin") if cfg[k] is not None}
    study = write_study(work, "bench_overhead", sims=sims, **sampler)
    from sbc.study import load_study

    st = load_study(study)
    s = st.backend.options
    pc1 = max(1, min(s.chains, cores() // 1))
    print(
        f"study: {study.name} from studies/lmm_sbc.toml, {sims} sims, {s.chains} chains "
        f"x ({s.iter_warmup} warm-up + {s.iter_sampling} draws), thin_ranks {st.thin_ranks}, "
        f"adapt_delta {s.adapt_delta}"
    )
    bare_plan = prepare_bare(study, sims, work, pc1)
    # warm the file cache and the model cache (compiles once if needed); not measured
    sbc_run(study, fresh_dir(work, "warm"), "warm", work, workers=1, sims=2, trace=False)

    kinds = {"sbc-1w": (None, 1), "bare": (None, 1), "sbc-2w": (None, cores())}
    if base is not None:
        kinds = {f"{args.label}-1w": (base, 1), **kinds, f"{args.label}-2w": (base, cores())}
    labels = list(kinds)
    order = []
    for r in range(repeats):
        order += labels if r % 2 == 0 else list(reversed(labels))
    runs: list[tuple[str, Run, pd.DataFrame]] = []
    for i, label in enumerate(order):
        if label == "bare":
            run = run_child([PYTHON, str(HERE / "_bare_loop.py"), str(bare_plan)], label, work)
            run.info["workers"] = 1
            own = bare_own(run)
        else:
            code, w = kinds[label]
            run = sbc_run(study, fresh_dir(work, f"out-{i}"), label, work, workers=w, code=code)
            own = simulations(run.info["out"])
        runs.append((label, run, own))
        print(
            f"  run {i + 1}/{len(order)} {label:7s} wall {run.wall:7.1f} s  "
            f"load {run.load[0]:.2f} -> {run.load[1]:.2f}",
            flush=True,
        )
    print()

    # -- end to end ----------------------------------------------------------------------------
    rows = []
    for label, run, _ in runs:
        acc = slot_accounting_any(run)
        rows.append(
            {
                "run": label,
                "wall": run.wall,
                "rate": 60 * sims / run.wall,
                "cpu": run.cpu,
                "util": run.cpu / (run.wall * cores()),
                "overhead": acc["overhead_share"],
                "overhead_cpu": acc["harness_cpu_share"],
                "startup": acc["startup"],
                "load": f"{run.load[0]:.1f}-{run.load[1]:.1f}",
            }
        )
    print(
        table(
            rows,
            [
                ("run", "run", ""),
                ("wall", "wall s", "{:.1f}"),
                ("rate", "sims/min", "{:.1f}"),
                ("cpu", "CPU s", "{:.1f}"),
                ("util", "CPU util", "{:.2f}"),
                ("overhead", "harness share", "{:.1%}"),
                ("overhead_cpu", "harness CPU share", "{:.1%}"),
                ("startup", "to 1st fit s", "{:.2f}"),
                ("load", "load 1-min", ""),
            ],
            title="End to end, in the order run (harness share = 1 - CmdStan process time / "
            "(workers x wall); harness CPU share = 1 - CmdStan CPU / all CPU)",
        )
    )
    print()

    def walls(label: str) -> list[float]:
        return [r.wall for lab, r, _ in runs if lab == label]

    pairs = []  # sbc-1w / bare, pairing each sbc-1w run with its neighbouring bare run
    for k, (label, run, _) in enumerate(runs):
        if label == "sbc-1w":
            near = min((abs(j - k), r.wall) for j, (lab, r, _) in enumerate(runs) if lab == "bare")
            pairs.append(run.wall / near[1])
    ratio = median(walls("sbc-1w")) / median(walls("bare"))
    share1 = median(
        [slot_accounting_any(r)["overhead_share"] for lab, r, _ in runs if lab == "sbc-1w"]
    )
    share2 = median(
        [slot_accounting_any(r)["overhead_share"] for lab, r, _ in runs if lab == "sbc-2w"]
    )

    def cpus(label: str, harness: bool = False) -> list[float]:
        return [
            r.cpu - r.trace.cmdstan_cpu() if harness else r.cpu
            for lab, r, _ in runs
            if lab == label
        ]

    def cpu_share(label: str) -> float:
        return median([slot_accounting_any(r)["harness_cpu_share"] for lab, r, _ in runs
                       if lab == label])  # fmt: skip

    summary = []
    if base is not None:
        for w in ("1w", "2w"):
            b, c = median(walls(f"{args.label}-{w}")), median(walls(f"sbc-{w}"))
            hb, hc = median(cpus(f"{args.label}-{w}", True)), median(cpus(f"sbc-{w}", True))
            summary.append(
                figure(
                    f"this checkout / {args.label} wall, {w}, medians",
                    f"{c / b:.3f} ({c:.1f} / {b:.1f} s)",
                )
            )
            summary.append(
                figure(
                    f"  harness CPU s (all but CmdStan), {w}: this / {args.label}",
                    f"{hc:.1f} / {hb:.1f} s",
                )
            )
    cpu_ratio = median(cpus("sbc-1w")) / median(cpus("bare"))
    summary += [
        figure(
            "sbc (1 worker) wall / bare loop wall, medians",
            f"{ratio:.3f}",
            "<= 1.05",
            ratio <= 1.05,
        ),
        figure("  same, per adjacent pair", " ".join(f"{p:.3f}" for p in pairs)),
        figure("  CPU s of sbc (1 worker) / of the bare loop (load-robust)", f"{cpu_ratio:.3f}"),
        figure("harness share of study wall, 1 worker", f"{share1:.1%}", "<= 3 %", share1 <= 0.03),
        figure(
            f"harness share of study wall, {cores()} workers",
            f"{share2:.1%}",
            "<= 3 %",
            share2 <= 0.03,
        ),
        figure(
            "harness share of CPU seconds, 1 worker / 2 workers / bare (load-robust)",
            f"{cpu_share('sbc-1w'):.1%} / {cpu_share('sbc-2w'):.1%} / {cpu_share('bare'):.1%}",
        ),
    ]
    print(figures_table(summary))
    print()

    # -- per simulation --------------------------------------------------------------------
    stages = {}
    for label in labels:
        per = [per_sim_stages(r, own) for lab, r, own in runs if lab == label]
        stages[label] = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
    names = [
        ("simulate", "simulate (simulator call)"),
        ("write_data", "write data (JSON)"),
        ("exe_info", "cmdstanpy: exe `info` call"),
        ("cmdstan_span", "CmdStan processes running (span)"),
        ("cmdstan_own", "  . CmdStan's own warm-up+sampling, sum of chains"),
        ("cmdstan_rest", "  . rest of CmdStan processes, sum of chains"),
        ("cmdstanpy_around", "cmdstanpy around the processes"),
        ("read_draws", "read output (draws)"),
        ("diagnostics", "diagnostics (R-hat, ESS, E-BFMI)"),
        ("ranks", "ranks and intervals (+ derived)"),
        ("other", "other in the worker"),
        ("worker_wall", "= one simulation in its worker"),
        ("store_commit", "store commit (main process, overlaps fits)"),
    ]
    rows = []
    for key, name in names:
        row = {"stage": name}
        for label in labels:
            v = stages[label].get(key, float("nan"))
            row[label] = 1000 * v
            if key not in ("cmdstan_own", "cmdstan_rest", "store_commit", "worker_wall"):
                row[label + "%"] = v / stages[label]["worker_wall"]
        rows.append(row)
    cols = [("stage", "stage (mean per simulation)", "")]
    for label in labels:
        cols += [(label, f"{label} ms", "{:.1f}"), (label + "%", "share", "{:.1%}")]
    print(
        table(
            rows,
            cols,
            title="Per simulation, mean over the runs of each kind "
            "(share = of the simulation's time in its worker)",
        )
    )
    h1 = stages["sbc-1w"]["worker_wall"] - stages["sbc-1w"]["cmdstan_span"]
    hb = stages["bare"]["worker_wall"] - stages["bare"]["cmdstan_span"]
    print(
        f"\nharness work per simulation outside CmdStan processes: sbc-1w {1000 * h1:.1f} ms, "
        f"bare loop {1000 * hb:.1f} ms, difference {1000 * (h1 - hb):.1f} ms"
    )
    print(f"load average at the end: {load_str()}")
    return 0


def slot_accounting_any(run: Run) -> dict[str, float]:
    """slot_accounting for the runner; for the bare loop the one process is the one slot."""
    tr = run.trace
    if tr is not None and tr.count("run_simulation"):
        return slot_accounting(run, run.info["workers"])
    fits = tr.fits()
    span = float(fits["span"].sum())
    first = float(fits["start"].min())
    return {
        "overhead_share": 1 - span / run.wall,
        "startup": first - run.t_launch,
        "harness_cpu_share": 1.0 - tr.cmdstan_cpu() / run.cpu,
    }


if __name__ == "__main__":
    sys.exit(main())
