"""Do the Stan simulator's truths agree in distribution with the Python simulator's? (issue 15)

    python benchmarks/stan_simulator_truths.py                    # runs both, --sims 20
    python benchmarks/stan_simulator_truths.py --stan results/lmm_sbc_stan_simulator \\
        --python results/lmm_sbc_20                               # reads finished studies

Runs (or reads) studies/lmm_sbc_stan_simulator.toml and studies/lmm_sbc.toml with the same
seed and `--sims` simulations, and compares the truths they stored: per ranked parameter
(beta, sigma, tau, rho, b), the exact two-sample Kolmogorov-Smirnov test of the Stan
simulator's truths against the Python simulator's, Holm over the parameters; and the same
truths of each against the exact priors (one-sample KS), Holm again.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sbc  # noqa: E402
from sbc.analysis.uniformity import holm  # noqa: E402

EXACT = {  # the priors of stan/lmm_centered.stan
    "beta": stats.norm(0, 10).cdf,
    "sigma": stats.halfnorm(scale=5).cdf,
    "tau": stats.halfnorm(scale=5).cdf,
    "rho": stats.beta(2, 2, loc=-1, scale=2).cdf,  # LKJ(2), 2 x 2
}


def truths(folder: Path, sims: int):
    ranks = sbc.load(folder).ranks
    table = ranks[ranks["sim"] < sims].pivot(index="sim", columns="quantity", values="truth")
    return table[[c for c in table.columns if c.split("[")[0] in ("beta", "sigma", "tau",
                                                                  "rho", "b")]]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sims", type=int, default=20)
    ap.add_argument("--stan", type=Path, help="results of lmm_sbc_stan_simulator.toml")
    ap.add_argument("--python", type=Path, help="results of lmm_sbc.toml (same seed)")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="sbc-truths-"))
    try:
        folders = {}
        for key, study in (("stan", "lmm_sbc_stan_simulator.toml"), ("python", "lmm_sbc.toml")):
            given = getattr(args, key)
            folders[key] = given or sbc.run(ROOT / "studies" / study, sims=args.sims,
                                            out=scratch / key, progress=False)  # fmt: skip
        stan, python = truths(folders["stan"], args.sims), truths(folders["python"], args.sims)
        assert list(stan.columns) == list(python.columns) and len(stan) == len(python) == args.sims
        p2 = [stats.ks_2samp(stan[c], python[c], method="exact").pvalue for c in stan.columns]
        adjusted = holm(p2)
        print(f"{args.sims} truths each, same seed; two-sample KS (exact) per parameter:")
        for c, p, a in zip(stan.columns, p2, adjusted, strict=True):
            if c.split("[")[0] != "b" or c in ("b[1,1]", "b[1,2]"):
                print(f"  {c:8} p = {p:.3f}  Holm {a:.3f}")
        print(f"  ... {len(p2)} parameters: smallest p {min(p2):.3f}, "
              f"smallest Holm-adjusted p {adjusted.min():.3f}")  # fmt: skip
        for key, table in (("stan", stan), ("python", python)):
            p1 = [stats.kstest(table[c], EXACT[c.split("[")[0]]).pvalue
                  for c in table.columns if c.split("[")[0] in EXACT]  # fmt: skip
            print(f"{key} truths against the exact priors (beta, sigma, tau, rho): smallest "
                  f"Holm-adjusted p {holm(p1).min():.3f}")  # fmt: skip
        b_std = {k: np.concatenate([t[f"b[{j},{q}]"] / t[f"tau[{q}]"] for j in range(1, 11)
                                    for q in (1, 2)])
                 for k, t in (("stan", stan), ("python", python))}  # fmt: skip
        print(f"b / tau pooled ({len(b_std['stan'])} values each), two-sample KS: p = "
              f"{stats.ks_2samp(b_std['stan'], b_std['python']).pvalue:.3f}")  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
