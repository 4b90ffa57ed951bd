"""How far auto thinning's stopping rule tilts the ranks, on chains whose posterior is exact.

    python benchmarks/autothin_ranks.py            # 8 x 1000 fits per row (about 4 min)
    python benchmarks/autothin_ranks.py --fits 2000
    python benchmarks/autothin_ranks.py --L 100 --chains 1 --phi 0.87 --first 200 --ratios 0.5
                                                   # the LMM's shape (lmm_sbc_auto.toml)

Each fit is 2 AR(1) chains with N(0, 1) margins (tests/test_thinning.py's), the truth an
independent N(0, 1) draw, so its rank among L = 20 kept draws is uniform on 0..L exactly
when the kept draws are independent posterior draws. A rule that continues the chains
while their estimated ESS is below target stops more often when the chains happen to
agree, which leaves kept draws a little narrower than the posterior: ranks too often at
the extremes (a U-shape). Printed per row: the rank variance over the uniform's (1 =
uniform; standard error about 0.03 / sqrt(fits / 1000)), the share of ranks in the outer
seventh on either side (uniform: 6/21 = 0.286 at L = 20), and the draws per chain. The
defaults (first look at 10 draws, half the fixed stride's) show the effect at its largest;
the options give the LMM's shape: one chain whose worst quantity has ESS about 0.07 per
draw (phi 0.87), first look at 2 L draws, target 0.5 L. The fixed-stride rows
keep the same L from chains of fixed length with the same ESS, so the difference between
a rule's row and its fixed row is what reading the draws costs.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from joblib import Parallel, delayed

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _common import banner, cores, table
from test_thinning import ar1, plan

from sbc.ranks import rank_of_truth
from sbc.thinning import AutoThinning, kept


@dataclass(frozen=True)
class Shape:
    """The simulated fits: kept draws, chains, their autocorrelation, the first look."""

    L: int = 20
    chains: int = 2
    phi: float = 0.9
    first: int = 10


def ranks_of(seed: int, fits: int, ratio: float, rule: dict | None, fixed: int,
             shape: Shape) -> tuple:  # fmt: skip
    """Ranks of `fits` fits: auto thinning with `rule`'s constants (None: a fixed stride on
    `fixed` draws per chain), and the mean draws per chain."""
    rng = np.random.default_rng(seed)
    auto = AutoThinning(L=shape.L, min_ess_per_draw=ratio, max_draws=20_000)
    c, phi = shape.chains, shape.phi
    ranks, draws = [], []
    for _ in range(fits):
        if rule is None:
            x = ar1(rng, phi, c, fixed)  # the stride auto thinning would keep, never extended
            k = kept(x, plan(x, auto, can_extend=False))
        else:
            x = ar1(rng, phi, c, shape.first)
            while (t := plan(x, auto, **rule)).extend:
                x = np.concatenate([x, ar1(rng, phi, c, t.extend, start=x[:, -1])], axis=1)
            k = kept(x, t)
        ranks.append(int(rank_of_truth(rng.normal(size=1), k.reshape(-1, 1), rng)[0]))
        draws.append(x.shape[1])
    return np.asarray(ranks, dtype=float), float(np.mean(draws))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fits", type=int, default=1000, help="fits per seed")
    ap.add_argument("--seeds", type=int, default=8, help="seeds per row (from 6)")
    ap.add_argument("--L", type=int, default=Shape.L, help="kept draws per fit")
    ap.add_argument("--chains", type=int, default=Shape.chains)
    ap.add_argument("--phi", type=float, default=Shape.phi, help="AR(1) autocorrelation")
    ap.add_argument("--first", type=int, default=Shape.first, help="draws before the first look")
    ap.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5],
                    help="targets min_ess_per_draw")  # fmt: skip
    args = ap.parse_args()
    shape = Shape(L=args.L, chains=args.chains, phi=args.phi, first=args.first)
    L = shape.L
    banner("auto thinning: the stopping rule's tilt of the ranks (AR(1), exact)", "full")
    per_draw = (1 - shape.phi) / (1 + shape.phi)  # ESS per draw of the AR(1) chains
    old = {"max_growth": 2.0, "give_up": math.inf}
    rows_in = []
    for ratio in args.ratios:
        n = math.ceil(ratio * L / (shape.chains * per_draw))  # draws per chain: ESS ratio x L
        rows_in += [
            (f"auto, ESS >= {ratio:g} L, the rule now", ratio, {}, 0),
            (f"auto, ESS >= {ratio:g} L, the rule before (growth x3, no give-up)", ratio, old, 0),
            (f"fixed stride, {n} draws per chain (ESS {ratio:g} L)", ratio, None, n),
        ]
    rows = []
    uniform_var = ((L + 1) ** 2 - 1) / 12
    outer = round(3 * (L + 1) / 21)  # ranks 0..outer-1 and L-outer+1..L: 3 of 21 at L = 20
    for label, ratio, rule, fixed in rows_in:
        jobs = (delayed(ranks_of)(s, args.fits, ratio, rule, fixed, shape)
                for s in range(6, 6 + args.seeds))  # fmt: skip
        out = Parallel(n_jobs=cores())(jobs)
        r = np.concatenate([o[0] for o in out])
        rows.append({
            "rows": label, "fits": len(r),
            "var": float(((r - L / 2) ** 2).mean() / uniform_var),
            "outer": float(np.mean((r < outer) | (r > L - outer))),
            "draws": float(np.mean([o[1] for o in out])),
        })  # fmt: skip
        print(f"  {label}: done", flush=True)
    print()
    print(table(rows, [
        ("rows", "rule", ""), ("fits", "fits", "{}"),
        ("var", "rank variance / uniform", "{:.3f}"),
        ("outer", f"ranks in the outer {2 * outer} of {L + 1}", "{:.3f}"),
        ("draws", "draws per chain", "{:.0f}"),
    ], title=f"Ranks among L = {L} kept draws, AR(1) phi = {shape.phi}, {shape.chains} "
             f"chain(s), first look at {shape.first} draws (uniform: variance 1, outer share "
             f"{2 * outer / (L + 1):.3f})"))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
