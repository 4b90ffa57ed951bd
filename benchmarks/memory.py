"""Peak memory of the runner's main process: 100 vs 1000 simulations (exact backend).

    python benchmarks/memory.py --quick    # 100 vs 1000 sims, once each (under a minute)
    python benchmarks/memory.py            # 100, 1000 and 5000 sims, twice each, interleaved

Each measurement is a fresh child Python that calls `sbc.run(studies/exact_normal.toml,
sims=N, ...)` and then reports `resource.getrusage(RUSAGE_SELF).ru_maxrss` (the peak resident
set of the main process, the runner, which holds the queue, the store connection and the
results as they arrive) and `RUSAGE_CHILDREN.ru_maxrss` (the largest worker's peak). The exact
backend makes a simulation take milliseconds, so thousands of them take seconds and any
per-simulation growth in the runner shows. Target: peak at 1000 <= 1.1 x peak at 100.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PYTHON,
    STUDIES,
    abba,
    banner,
    cores,
    figure,
    figures_table,
    fresh_dir,
    load_str,
    median,
    run_child,
    scratch,
    table,
)

CHILD = """
import json, resource, sys, time
import sbc
t = time.perf_counter()
folder = sbc.run({study!r}, sims={sims}, out={out!r}, workers={workers}, progress=False)
wall = time.perf_counter() - t
self_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # before loading the results
child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
ok = int((sbc.load(folder).simulations["status"] == "ok").sum())
print(json.dumps({{"self_kb": self_rss, "child_kb": child_rss, "wall": wall, "ok": ok}}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="100 vs 1000, once each")
    ap.add_argument("--sims", type=int, nargs="+", help="simulation counts (first = reference)")
    ap.add_argument("--repeats", type=int, help="rounds of the interleaved cycle")
    ap.add_argument("--workers", type=int, default=cores(), help="worker processes")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    counts = args.sims or ([100, 1000] if args.quick else [100, 1000, 5000])
    repeats = args.repeats or (1 if args.quick else 2)
    banner(
        "peak RSS of the runner vs number of simulations (exact backend)",
        "quick" if args.quick else "full",
    )
    work = scratch("sbc-bench-memory-", keep=args.keep)
    study = STUDIES / "exact_normal.toml"
    rows = []
    for i, n in enumerate(abba([str(c) for c in counts], repeats)):
        out = fresh_dir(work, f"out-{i}")
        code = CHILD.format(study=str(study), sims=int(n), out=str(out), workers=args.workers)
        run = run_child([PYTHON, "-c", code], f"mem-{i}", work, trace=False)
        info = json.loads(run.stdout.strip().splitlines()[-1])
        db = out / "sbc.sqlite"
        rows.append(
            {
                "sims": int(n),
                "ok": info["ok"],
                "wall": info["wall"],
                "self_mb": info["self_kb"] / 1024,
                "child_mb": info["child_kb"] / 1024,
                "db_mb": sum(p.stat().st_size for p in out.glob("sbc.sqlite*")) / 2**20
                if db.exists()
                else 0.0,
                "load": f"{run.load[0]:.1f}-{run.load[1]:.1f}",
            }
        )
        print(
            f"  run {i + 1}: {n:>5} sims  main peak RSS {rows[-1]['self_mb']:.1f} MB  "
            f"wall {info['wall']:.1f} s",
            flush=True,
        )
    print()
    print(
        table(
            rows,
            [
                ("sims", "sims", "{}"),
                ("ok", "ok", "{}"),
                ("wall", "run s", "{:.1f}"),
                ("self_mb", "runner peak RSS MB", "{:.1f}"),
                ("child_mb", "largest worker MB", "{:.1f}"),
                ("db_mb", "store MB", "{:.2f}"),
                ("load", "load 1-min", ""),
            ],
            title=f"Each run, in the order run ({args.workers} workers)",
        )
    )
    print()
    ref = median([r["self_mb"] for r in rows if r["sims"] == counts[0]])
    summary = []
    for c in counts[1:]:
        peak = median([r["self_mb"] for r in rows if r["sims"] == c])
        ratio = peak / ref
        summary.append(
            figure(
                f"runner peak RSS at {c} / at {counts[0]} sims",
                f"{ratio:.3f}",
                "<= 1.1" if c == 1000 else "",
                ratio <= 1.1 if c == 1000 else None,
                detail=f"{peak:.1f} / {ref:.1f} MB",
            )
        )
    print(figures_table(summary, detail="medians"))
    print(f"\nload average at the end: {load_str()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
