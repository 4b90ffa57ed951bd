"""Size and power of sbc's verdicts on null studies that look like real use.

    python benchmarks/null_calibration.py                  # everything (about an hour)
    python benchmarks/null_calibration.py --quick          # a few minutes
    python benchmarks/null_calibration.py --part size --studies 10000

Null ranks are uniform on 0..L marginally and dependent within a simulation, as the group
effects of a mixed model are: a Gaussian copula on the PIT with equicorrelation ρ, then
Binomial(L, u) (`--part size`), and the exact posterior of a conjugate hierarchical model
(`sbc.simulators.hierarchical`, part `hierarchical`). L = 100.

Parts:

- size: P(p ≤ u) for u in {0.05, 0.01, 0.001, 1e-4}, per test — γ (one quantity, S
  independent ranks), pooled (`analysis.pooled.pooled_test`), sequential pooled (the pooled
  e-process, any number of looks: 1/max_n E_n), and the whole `check` verdict (4 scalar
  quantities, J group effects and their pooled row, Holm at u) — over S in
  {20, 50, 100, 200, 1000}, J in {3, 10, 50} and ρ from 0 to 0.99; with today's pooled test
  (sbc ≤ 0.1, loaded from git at `--baseline-rev`) on a subset beside it. The Monte Carlo
  error of each entry is its binomial standard error √(u(1 − u)/n), printed per table.
- hierarchical: the same size figures for the pooled test on exact hierarchical posteriors.
- power: rejection rates at α = 0.01 against posteriors too narrow, too wide and shifted,
  shared by every group, for the new pooled test, today's and the γ test of one group.
- shapes: the shape words' confusion matrix at N = 500 (sd × 0.7, × 1.4, shifts ±0.5 and
  ±1.5 sd, and a combined case), new and today's.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sbc.analysis import pooled as pl  # noqa: E402
from sbc.analysis import shape as sh  # noqa: E402
from sbc.analysis.power import gamma_p_values  # noqa: E402
from sbc.simulators.hierarchical import posterior_correlation, posterior_draws, simulate  # noqa: E402

L = 100
LEVELS = (0.05, 0.01, 1e-3, 1e-4)
#: The last commit before the verdicts issue: its sbc/calibration.py is "today's" tests.
BASELINE_REV = "d96a5f4"


# -- rank generators -----------------------------------------------------------------------------


def copula_ranks(rng, studies, S, J, rho, scale=1.0, shift=0.0) -> np.ndarray:
    """(studies, S, J) ranks: PITs equicorrelated (ρ) within a simulation, then
    Binomial(L, Φ((z − shift)/scale)) (scale = 1, shift = 0: exactly uniform)."""
    common = rng.standard_normal((studies, S, 1))
    z = math.sqrt(rho) * common + math.sqrt(1 - rho) * rng.standard_normal((studies, S, J))
    return rng.binomial(L, stats.norm.cdf((z - shift) / scale)).astype(np.int64)


def hierarchical_ranks(rng, studies, S, J, tau) -> np.ndarray:
    """(studies, S, J) ranks of θ_j among L exact posterior draws of the hierarchical model."""
    out = np.empty((studies, S, J), dtype=np.int64)
    for i in range(studies):
        for s in range(S):
            truth, data = simulate(rng, J=J, n=5, tau=tau)
            draws = posterior_draws(data, rng, (L,))["theta"]
            out[i, s] = (draws < truth["theta"]).sum(axis=0)
    return out


# -- the tests, many studies at once -------------------------------------------------------------


def pooled_p(R: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p, p_e, p_single) of `pooled_test` for each study of R (studies, S, J)."""
    log_e = pl.pooled_log_e_process(R, L)
    p_e = np.minimum(1.0, np.exp(-np.maximum(log_e.max(axis=-1), 0.0)))
    single = pl.single_member_ranks(R, np.arange(R.shape[1]))
    p_single = gamma_p_values(single, L)
    return np.minimum(1.0, 2 * np.minimum(p_e, p_single)), p_e, p_single


def check_p(rng, R: np.ndarray, p_pooled: np.ndarray) -> np.ndarray:
    """The smallest Holm-adjusted p of a study with 4 scalar quantities, the J group effects
    of R and their pooled row: Holm's first step, m·min p."""
    n, S, J = R.shape
    scalars = [gamma_p_values(rng.integers(0, L + 1, (n, S)), L) for _ in range(4)]
    members = [gamma_p_values(R[:, :, j], L) for j in range(J)]
    p = np.column_stack([*scalars, *members, p_pooled])
    return np.minimum(1.0, p.shape[1] * p.min(axis=1))


def load_baseline(rev: str) -> types.ModuleType | None:
    """Today's sbc/calibration.py from git, as a module (None if git cannot show it)."""
    try:
        source = subprocess.run(
            ["git", "-C", str(ROOT), "show", f"{rev}:sbc/calibration.py"],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    source = source.replace("from sbc.store import INTERVALS", "INTERVALS = (50, 80, 90, 95)")
    spec = importlib.util.spec_from_loader("sbc_baseline_calibration", loader=None)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, f"{rev}:sbc/calibration.py", "exec"), module.__dict__)
    return module


def old_pooled_p(old, R: np.ndarray) -> np.ndarray:
    n, S, J = R.shape
    clusters = np.repeat(np.arange(S), J)
    return np.array([old.pooled_ecdf_test(R[i].ravel(), L, clusters).p_value for i in range(n)])


# -- printing --------------------------------------------------------------------------------


def rates(p: np.ndarray) -> list[str]:
    return [f"{np.mean(p <= u):.2g}" if p.size * u >= 1 else "—" for u in LEVELS]


def flag(p: np.ndarray) -> str:
    """'!' where an entry exceeds u by more than 3 Monte Carlo standard errors."""
    bad = [np.mean(p <= u) > u + 3 * math.sqrt(u * (1 - u) / p.size) for u in LEVELS]
    return "!" if any(bad) else ""


def print_table(rows: list[dict], title: str, n_note: str) -> None:
    print(f"\n{title}")
    print(n_note)
    print(pd.DataFrame(rows).to_string(index=False))


# -- parts ---------------------------------------------------------------------------------------


def part_size(args, old) -> None:
    rng = np.random.default_rng([args.seed, 1])
    Ss = args.S or ((20, 50, 100, 200) if args.quick else (20, 50, 100, 200, 1000))
    Js = args.J or ((3, 10) if args.quick else (3, 10, 50))
    rhos = (0.0, 0.9) if args.quick else (0.0, 0.5, 0.9, 0.99)
    n = args.studies
    tables: dict[str, list[dict]] = {"γ": [], "pooled": [], "seq. pooled": [], "check": [],
                                     "today": []}  # fmt: skip

    def add(name: str, key: dict, p: np.ndarray) -> None:
        row = {**key, "studies": p.size}
        row |= dict(zip((f"u={u:g}" for u in LEVELS), rates(p), strict=True))
        tables[name].append({**row, "": flag(p)})

    for S in Ss:
        add("γ", {"S": S}, gamma_p_values(rng.integers(0, L + 1, (max(n, args.gamma_studies), S)),
                                          L))  # fmt: skip
        for J in Js:
            for rho in rhos:
                t0 = time.perf_counter()
                chunk = max(1, 2_000_000 // (S * J))
                ps, pes, pcs = [], [], []
                for start in range(0, n, chunk):
                    R = copula_ranks(rng, min(chunk, n - start), S, J, rho)
                    p_pool, p_e, _ = pooled_p(R)
                    ps.append(p_pool)
                    pes.append(p_e)
                    pcs.append(check_p(rng, R, p_pool))
                key = {"S": S, "J": J, "rho": rho}
                add("pooled", key, np.concatenate(ps))
                add("seq. pooled", key, np.concatenate(pes))
                add("check", key, np.concatenate(pcs))
                if old is not None and S in (100, 200) and J == 10:
                    add("today", key, old_pooled_p(old, copula_ranks(rng, args.baseline_studies,
                                                                     S, J, rho)))  # fmt: skip
                print(f"  S={S} J={J} rho={rho}: {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr, flush=True)  # fmt: skip

    def note(studies: int) -> str:
        se = ", ".join(f"u={u:g}: {math.sqrt(u * (1 - u) / studies):.1g}" for u in LEVELS)
        return (
            f"Monte Carlo standard error of an entry with {studies} studies: {se}. '!' "
            "marks an entry above u + 3 standard errors; '—': fewer than 1/u studies."
        )

    titles = {
        "γ": "γ test of one quantity (S independent ranks)",
        "pooled": "Pooled group effects: pooled_test",
        "seq. pooled": "Sequential pooled rows (the pooled e-process, any number of looks)",
        "check": "Whole check: 4 scalars, J group effects and their pooled row, Holm",
        "today": "Today's pooled test (sbc ≤ 0.1, cluster-robust; S = 100, 200 and J = 10)",
    }
    for name, rows in tables.items():
        if rows:
            print_table(rows, f"{titles[name]}: P(p ≤ u)", note(rows[0]["studies"]))


def part_hierarchical(args, old) -> None:
    rng = np.random.default_rng([args.seed, 2])
    rows = []
    n = max(200, args.studies // (20 if args.quick else 5))
    for S, J in ((100, 10),) if args.quick else ((50, 10), (100, 10), (200, 10)):
        for tau in (1.0, 0.1, 0.03):
            R = hierarchical_ranks(rng, n, S, J, tau)
            p_pool, p_e, _ = pooled_p(R)
            row = {"S": S, "J": J, "tau": tau, "rho": round(posterior_correlation(J, 5, tau, 1, 2),
                   2), "studies": n}  # fmt: skip
            row |= {f"pooled {u:g}": r for u, r in zip(LEVELS, rates(p_pool), strict=True)}
            row |= {f"seq. {u:g}": r for u, r in zip(LEVELS, rates(p_e), strict=True)}
            if old is not None:
                p_old = old_pooled_p(old, R[: args.baseline_studies])
                row |= {f"today {u:g}": r for u, r in zip(LEVELS, rates(p_old), strict=True)}
            rows.append(row)
            print(f"  {row}", file=sys.stderr, flush=True)
    print_table(rows, "Exact hierarchical posteriors (θ_j of J groups, n = 5 each): P(p ≤ u)",
                f"rho: posterior correlation of two θ_j; standard error at 0.05: "
                f"{math.sqrt(0.0475 / n):.1g}")  # fmt: skip


def part_power(args, old) -> None:
    rng = np.random.default_rng([args.seed, 3])
    n = 100 if args.quick else 500
    cases = [("sd × 0.8", 0.8, 0.0), ("sd × 0.9", 0.9, 0.0), ("sd × 1.2", 1.2, 0.0),
             ("shift 0.2 sd", 1.0, 0.2), ("shift 0.5 sd", 1.0, 0.5)]  # fmt: skip
    rows = []
    for S in (100,) if args.quick else (100, 200):
        for rho in (0.0, 0.5, 0.9):
            for label, scale, shift in cases:
                R = copula_ranks(rng, n, S, 10, rho, scale, shift)
                p_pool, p_e, _ = pooled_p(R)
                row = {"S": S, "J": 10, "rho": rho, "effect": label,
                       "pooled": np.mean(p_pool < 0.01), "e-value part": np.mean(p_e < 0.01),
                       "one group (γ)": np.mean(gamma_p_values(R[:, :, 0], L) < 0.01)}  # fmt: skip
                if old is not None:
                    row["today"] = np.mean(old_pooled_p(old, R[: min(n, 200)]) < 0.01)
                rows.append(row)
                print(f"  {row}", file=sys.stderr, flush=True)
    print_table(rows, f"Power at α = 0.01 ({n} studies per row), effect shared by all 10 groups",
                "'today' is anti-conservative (see the size table): its power is not comparable "
                "at equal size.")  # fmt: skip


def part_shapes(args, old) -> None:
    rng = np.random.default_rng([args.seed, 4])
    n = 50 if args.quick else 200
    cases = [("sd × 0.7", 0.7, 0.0, {"narrow"}), ("sd × 1.4", 1.4, 0.0, {"wide"}),
             ("shift +0.5", 1.0, 0.5, {"up"}), ("shift −0.5", 1.0, -0.5, {"down"}),
             ("shift +1.5", 1.0, 1.5, {"up"}), ("shift −1.5", 1.0, -1.5, {"down"}),
             ("sd × 0.7, shift +0.5", 0.7, 0.5, {"narrow", "up"})]  # fmt: skip

    def words(text: str) -> frozenset:
        keys = {"narrow": "narrow", "wide": "wide", "biased up": "up", "biased down": "down",
                "misses": "misses"}  # fmt: skip
        return frozenset(v for k, v in keys.items() if k in text)

    rows = []
    for label, scale, shift, expected in cases:
        z = rng.standard_normal((n, 500))
        R = rng.binomial(L, stats.norm.cdf((z - shift) / scale))
        new = [words(sh.shape_diagnosis(r, L)) for r in R]
        row = {"case (N = 500)": label, "correct": np.mean([w == expected for w in new])}
        for key in ("narrow", "wide", "up", "down"):
            row[key] = np.mean([key in w for w in new])
        if old is not None:
            got = [words(old.shape_diagnosis(r, L, p_value=0.0)) for r in R]
            row["today correct"] = np.mean([w == expected for w in got])
        rows.append(row)
    print_table(rows, f"Shape words, {n} studies per case: share exactly right, and how often "
                "each word was said", "")  # fmt: skip


PARTS = {"size": part_size, "hierarchical": part_hierarchical, "power": part_power,
         "shapes": part_shapes}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=[*PARTS, "all"], default="all")
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--studies", type=int, help="null studies per size cell (default 10 000)")
    ap.add_argument("--baseline-studies", type=int, default=2000,
                    help="studies per cell for today's (slow) pooled test")  # fmt: skip
    ap.add_argument(
        "--baseline-rev",
        default=BASELINE_REV,
        help="git revision whose sbc/calibration.py is today's tests ('' for none)",
    )
    ap.add_argument("--gamma-studies", type=int, default=100_000,
                    help="null studies per S for the γ test (vectorised: cheap)")  # fmt: skip
    ap.add_argument("--S", type=int, nargs="+", help="size part: these S only (a full run "
                    "is hours; split it across processes)")  # fmt: skip
    ap.add_argument("--J", type=int, nargs="+", help="size part: these J only")
    ap.add_argument("--seed", type=int, default=20261126)
    args = ap.parse_args()
    args.studies = args.studies or (1000 if args.quick else 10_000)
    if args.quick:
        args.baseline_studies = min(args.baseline_studies, 300)
        args.gamma_studies = min(args.gamma_studies, 10_000)
    old = load_baseline(args.baseline_rev) if args.baseline_rev else None
    print(
        f"null_calibration: L = {L}, seed {args.seed}, baseline "
        f"{args.baseline_rev if old else 'none'}, {'quick' if args.quick else 'full'}"
    )
    t0 = time.perf_counter()
    for name, fn in PARTS.items():
        if args.part in (name, "all"):
            fn(args, old)
    print(f"\n(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
