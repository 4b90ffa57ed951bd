"""`sbc check` on correct and broken Stan models, over several seeds: the verdicts issue's
acceptance runs (issue 12).

    python benchmarks/correct_models.py                       # 3 seeds × 200 simulations
    python benchmarks/correct_models.py --seeds 1 --sims 50   # a quick look

Correct models must pass (exit 0): the shipped centred and non-centred LMM studies, and an
independently written centred LMM (`benchmarks/independent_lmm/`: its own Stan program in
long format and its own simulator). Broken ones must fail, naming the same quantities:
`lmm_sbc_broken_tau` (a wrong prior on τ) and the exact "narrow" study (posterior sd × 0.7).
Results go to a scratch folder (kept with --keep); each row prints the verdict, the smallest
Holm-adjusted p, the failing quantities and the wall time.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import sbc  # noqa: E402
from sbc.checks import check  # noqa: E402

HERE = Path(__file__).resolve().parent
STUDIES = [
    # (label, study file, pooled variables, must pass)
    ("lmm_sbc (centred, shipped)", ROOT / "studies/lmm_sbc.toml", ["b"], True),
    ("lmm_sbc_noncentered (shipped)", ROOT / "studies/lmm_sbc_noncentered.toml", ["b"], True),
    ("independent centred LMM", HERE / "independent_lmm/lmm_long.toml", ["u0", "u1"], True),
    ("lmm_sbc_broken_tau", ROOT / "studies/lmm_sbc_broken_tau.toml", ["b"], False),
    ("exact_normal_narrow", ROOT / "studies/exact_normal_narrow.toml", [], False),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds per correct model")
    ap.add_argument("--sims", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", help="run only studies whose label contains this")
    ap.add_argument("--keep", action="store_true", help="keep the results folders")
    ap.add_argument("--out", type=Path, help="results folder to use (and resume; kept)")
    args = ap.parse_args()
    scratch = args.out or Path(tempfile.mkdtemp(prefix="sbc-correct-"))
    args.keep |= args.out is not None
    print(f"correct_models: {args.sims} simulations, results in {scratch}")
    print(f"{'study':32} {'seed':>9} {'verdict':>8} {'min p_holm':>11} {'wall s':>7}  failing")
    ok = True
    try:
        for label, path, pool, must_pass in STUDIES:
            if args.only and args.only not in label:
                continue
            for k in range(args.seeds if must_pass else 1):
                seed = 20261125 + k
                out = scratch / f"{path.stem}-{seed}"
                t0 = time.perf_counter()
                folder = sbc.run(path, sims=args.sims, seed=seed, out=out, workers=args.workers,
                                 progress=False)  # fmt: skip
                wall = time.perf_counter() - t0
                outcome = check(folder, alpha=0.01, pool=pool)
                v = outcome.verdicts
                failing = ", ".join(f"{q} ({s})" for q, s in zip(
                    outcome.calibration.failing()["quantity"],
                    outcome.calibration.failing()["shape"], strict=True))  # fmt: skip
                verdict = "pass" if outcome.passed else "FAIL"
                ok &= outcome.passed == must_pass
                print(f"{label:32} {seed:>9} {verdict:>8} {v['p_holm'].min():>11.3g} "
                      f"{wall:>7.0f}  {failing or '-'}", flush=True)  # fmt: skip
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    print("all as expected" if ok else "NOT as expected")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
