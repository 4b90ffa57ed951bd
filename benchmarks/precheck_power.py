"""`sbc precheck` on deliberate mismatches of simulator and program: what it catches, next to
what SBC says on the same study (issue 15).

    python benchmarks/precheck_power.py                 # 5 seeds per case, ~10 min
    python benchmarks/precheck_power.py --seeds 1 --sbc 200   # and SBC at 200 simulations

Cases (each a shipped study, or lmm_sbc.toml with one simulator argument changed):

* broken tau: stan/lmm_broken_tau.stan, prior N+(0, 1) on tau where the simulator draws N+(0, 5);
* missing Jacobian: stan/linreg_missing_jacobian.stan (log_sigma, prior on sigma, no
  `target += log_sigma`), 20 observations per dataset;
* LKJ shape: the simulator draws R from LKJ(1), the program says LKJ(2);
* sigma's prior scale: the simulator draws sigma from N+(0, 2.5), the program says N+(0, 5);
  100 observations per dataset dominate sigma's posterior: the precheck is expected to
  miss it (and SBC too), a limit docs/precheck.md states.

Per case: how many of the seeds the precheck flags at alpha = 0.01, the coordinates it names,
the median smallest Holm-adjusted p and the wall time of one precheck; with `--sbc N`, the
verdict of `sbc check` on an N-simulation SBC study of the same case (first seed only).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sbc  # noqa: E402
from sbc.checks import check  # noqa: E402
from sbc.precheck import precheck  # noqa: E402
from sbc.study import Study, load_study, parse_study  # noqa: E402

STUDIES = ROOT / "studies"


def lmm_with(name: str, **args: float) -> Study:
    """lmm_sbc.toml whose simulator draws with other prior parameters than the program's."""
    raw = tomllib.loads((STUDIES / "lmm_sbc.toml").read_text())
    raw["name"] = name
    raw["simulator"]["args"].update(args)
    return parse_study(raw, STUDIES / "lmm_sbc.toml")


CASES = {
    "broken tau (prior scale 1, not 5)": lambda: load_study(STUDIES / "lmm_sbc_broken_tau.toml"),
    "missing Jacobian (20 observations)": lambda: load_study(
        STUDIES / "linreg_missing_jacobian.toml"
    ),
    "LKJ shape (1 in the simulator, 2)": lambda: lmm_with("lkj_mismatch", lkj_eta=1.0),
    "sigma's prior scale (2.5, not 5)": lambda: lmm_with("sigma_mismatch", sigma_scale=2.5),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sims", type=int, default=1000, help="simulated truths per precheck")
    ap.add_argument("--sbc", type=int, default=0, metavar="N", help="also run SBC, N sims")
    ap.add_argument("--only", help="only cases whose label contains this")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="sbc-precheck-power-"))
    print(f"precheck_power: {args.seeds} seeds x {args.sims} simulated truths, alpha = 0.01")
    print(f"{'case':38} {'flagged':>8} {'median min p_holm':>18} {'wall s':>7}  named")
    try:
        for label, make in CASES.items():
            if args.only and args.only not in label:
                continue
            study = make()
            flagged, named, min_p, wall = 0, Counter(), [], []
            for k in range(args.seeds):
                result = precheck(study, sims=args.sims, seed=study.seed + k, progress=False)
                flagged += not result.consistent
                named.update(result.check.failing())
                min_p.append(result.table["p_holm"].min())
                wall.append(result.seconds)
            names = ", ".join(f"{n} ({c})" for n, c in named.most_common(4)) or "-"
            print(f"{label:38} {flagged:>4}/{args.seeds:<3} {np.median(min_p):>18.2g} "
                  f"{np.median(wall):>7.1f}  {names}", flush=True)  # fmt: skip
            if args.sbc:
                t0 = time.perf_counter()
                folder = sbc.run(study, sims=args.sbc, out=scratch / study.name,
                                 progress=False)  # fmt: skip
                outcome = check(folder, alpha=0.01)
                print(f"{'':38} SBC, {args.sbc} simulations ({time.perf_counter() - t0:.0f} s): "
                      f"{outcome.headline}", flush=True)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
