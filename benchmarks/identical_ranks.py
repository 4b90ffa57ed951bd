"""Same study, two checkouts of sbc: are the ranks bit-identical? (issue 13: "behaviour does not
change").

    git worktree add --detach /tmp/sbc-main main      # or: git archive main | tar -x -C DIR
    python benchmarks/identical_ranks.py --baseline /tmp/sbc-main

Runs each study with the baseline checkout and with this one, in one run, each as its own
`sbc run` child process with that checkout first on PYTHONPATH (`_common.sbc_run`), so it and
its worker processes run that checkout's sbc, simulators and study file. Then it compares the
two `ranks` tables row by row with ==, every column they share (truth, rank, L, mean, sd), and
the simulations' status and seed; a column only one of them has is named, not compared (sbc
0.1 wrote interval hits, which later versions derive from the ranks). Run it from this
checkout's environment (`pip install -e .`): its backends are found through its entry points.

Default studies: `lmm_sbc.toml --sims 20` and the exact-backend studies, whole. Exit code 0 if
every study is identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sqlite3
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import ROOT, banner, baseline_code, sbc_run, scratch

DEFAULT_STUDIES = [
    "lmm_sbc.toml:20",
    "exact_normal.toml",
    "exact_normal_narrow.toml",
    "exact_hierarchical.toml",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="the other checkout (a folder)")
    parser.add_argument(
        "--studies",
        nargs="+",
        default=DEFAULT_STUDIES,
        metavar="FILE[:SIMS]",
        help="study files in studies/, optionally with --sims (default: %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=1, help="per run (ranks ignore it)")
    parser.add_argument("--keep", action="store_true", help="keep the results folders")
    args = parser.parse_args(argv)
    checkouts = {"baseline": baseline_code(args.baseline), "this": ROOT}
    banner("identical ranks: baseline checkout vs this one", "one run")
    for label, path in checkouts.items():
        print(f"   {label:8s} {path} ({_commit(path)})")
    print()
    work = scratch("sbc-bench-identical-", keep=args.keep)
    print(f"{'study':28s} {'sims':>5s} {'rank rows':>9s}  seconds (baseline / this)  ranks")
    same = True
    for entry in args.studies:
        file, _, sims = entry.partition(":")
        folders, seconds = {}, []
        for label, code in checkouts.items():
            folders[label] = work / label / Path(file).stem
            run = sbc_run(code / "studies" / file, folders[label], f"{label}-{file}", work,
                          workers=args.workers, sims=int(sims) if sims else None, trace=False,
                          code=code)  # fmt: skip
            seconds.append(run.wall)
        n_sims, n_rows, verdict = compare(folders["baseline"], folders["this"])
        same &= verdict.startswith("identical")
        label = f"{file} --sims {sims}" if sims else file
        times = f"{seconds[0]:.1f} / {seconds[1]:.1f}"
        print(f"{label:28s} {n_sims:5d} {n_rows:9d}  {times:24s}  {verdict}")
    print()
    print("all identical" if same else "DIFFERENT: see above")
    if args.keep:
        print(f"results kept in {work}")
    return 0 if same else 1


def _commit(checkout: Path) -> str:
    """The checkout's commit, and whether its tracked files differ from it."""
    try:
        git = ["git", "-C", str(checkout)]
        head = _git(git, "rev-parse", "--short", "HEAD")
        dirty = _git(git, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"commit {head}" + (", with uncommitted changes" if dirty else "")


def _git(git: list[str], *args: str) -> str:
    return subprocess.run([*git, *args], capture_output=True, text=True, check=True).stdout.strip()


def compare(a: Path, b: Path) -> tuple[int, int, str]:
    """(simulations, rank rows, verdict) for two results folders of the same study.

    Every column the two ranks tables share is compared; a column only one of them has
    (a version that stopped writing it) is named in the verdict, not compared."""
    cons = [sqlite3.connect(f"file:{f / 'sbc.sqlite'}?mode=ro", uri=True) for f in (a, b)]
    try:
        columns = [[row[1] for row in con.execute("PRAGMA table_info(ranks)")] for con in cons]
        shared = [c for c in columns[0] if c in columns[1]]
        select = f"SELECT {', '.join(f'{c!r}' for c in shared)} FROM ranks ORDER BY sim, quantity"
        sims = [c.execute("SELECT sim, status, seed FROM simulations ORDER BY sim").fetchall()
                for c in cons]  # fmt: skip
        ranks = [con.execute(select).fetchall() for con in cons]
    finally:
        for con in cons:
            con.close()
    only = [f"{side} only: {', '.join(c for c in cols if c not in shared)}"
            for side, cols in zip(("baseline", "this"), columns, strict=True)
            if set(cols) - set(shared)]  # fmt: skip
    note = f" ({'; '.join(only)})" if only else ""
    if sims[0] != sims[1]:
        return len(sims[1]), len(ranks[1]), "simulations differ"
    if len(ranks[0]) != len(ranks[1]):
        return len(sims[1]), len(ranks[1]), f"{len(ranks[0])} vs {len(ranks[1])} rows"
    differ = sum(x != y for x, y in zip(ranks[0], ranks[1], strict=True))
    verdict = "identical" if not differ else f"{differ} rows differ"
    return len(sims[1]), len(ranks[1]), verdict + note


if __name__ == "__main__":
    sys.exit(main())
