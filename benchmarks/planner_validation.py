"""Does `sbc plan` predict the power of real SBC studies? Predicted vs simulated power.

    python benchmarks/planner_validation.py              # 5 settings x 1000 studies (minutes)
    python benchmarks/planner_validation.py --studies 400 --settings narrow:0.7/3

For each setting (effect / number of quantities, alpha = 0.01, L = 100) the planner runs with
its default seed. Then, with an independent seed, the same number of exact-backend studies
are simulated end to end (real simulator, `ExactNormalBackend` with the effect's `sd_scale`
and `shift` on the first quantity only, real ranking; see sequential_false_alarm.py) and
tested the way `sbc check` and `sbc run --stop-early` would: the γ test + Holm over all the
quantities at a fixed N, and `SequentialMonitor`'s e-Holm rule (vectorised) after every
simulation. Compared at every N of the planner's power curve where it predicts 10-99 %
power, and at the N it recommends: power of each test, and the mean number of simulations
a `--stop-early` study capped at the recommended N uses (stopping at its first rejection,
of any quantity).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sequential_false_alarm import exact_ranks

from sbc.analysis.evalues import first_rejections
from sbc.analysis.power import gamma_p_values, holm_first, plan

L = 100
ALPHA = 0.01
SETTINGS = ("narrow:0.9/3", "narrow:0.7/3", "bias:0.3/3", "wide:1.2/1", "coverage:0.05/5")


def validate(setting: str, studies: int, seed: int) -> pd.DataFrame:
    text, _, q = setting.partition("/")
    Q = int(q or 1)
    t0 = time.perf_counter()
    res = plan(text, power=0.9, alpha=ALPHA, quantities=Q, L=L, studies=studies)
    t_plan = time.perf_counter() - t0
    c = res.curve.set_index("n_sims")
    checks = [n for n in c.index if 0.1 <= c.loc[n, "power_fixed"] <= 0.99]
    checks += [n for n in c.index if 0.1 <= c.loc[n, "power_sequential"] <= 0.99]
    checks = sorted({*checks, *(n for n in (res.n_fixed, res.n_sequential) if n)})
    n_max = max(checks)
    t0 = time.perf_counter()
    eff = res.effect
    ranks = exact_ranks(seed, studies, n_max, Q, sd_scale=eff.scale, shift=eff.shift, affected=1)
    first = first_rejections(ranks, L, ALPHA)  # (studies, Q): first look rejecting each
    stop = first.min(axis=1)
    rows = []
    for n in checks:
        p = np.column_stack([gamma_p_values(ranks[:, :n, j], L) for j in range(Q)])
        rows.append(
            {
                "setting": setting,
                "n_sims": n,
                "test": "fixed",
                "predicted": c.loc[n, "power_fixed"],
                "simulated": float(np.mean(holm_first(p) < ALPHA)),
            }
        )
        rows.append(
            {
                "setting": setting,
                "n_sims": n,
                "test": "sequential",
                "predicted": c.loc[n, "power_sequential"],
                "simulated": float(np.mean(first[:, 0] <= n)),
            }
        )
    if res.n_sequential:
        n = res.n_sequential
        rows.append(
            {
                "setting": setting,
                "n_sims": n,
                "test": "mean sims used (stop-early, capped)",
                "predicted": c.loc[n, "mean_sims_sequential"],
                "simulated": float(np.mean(np.minimum(stop, n))),
            }
        )
    df = pd.DataFrame(rows)
    df["diff"] = df["simulated"] - df["predicted"]
    pw = df["test"] != "mean sims used (stop-early, capped)"
    p = df.loc[pw, "predicted"]
    df.loc[pw, "mc_sd_diff"] = np.sqrt(2 * p * (1 - p) / studies)
    wrong = int(((first[:, 1:] <= n_max).any(axis=1) & (first[:, 0] > n_max)).sum()) if Q > 1 else 0
    print(
        f"{setting}: plan {t_plan:.0f} s (fixed N {res.n_fixed}, sequential cap "
        f"{res.n_sequential}, mean used {res.table['mean_sims'].iloc[1]:.0f}); simulation "
        f"{time.perf_counter() - t0:.0f} s; studies flagging only a calibrated quantity: {wrong}",
        flush=True,
    )
    return df


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=777, help="independent of the planner's seed")
    ap.add_argument("--settings", nargs="*", default=list(SETTINGS), help="EFFECT/QUANTITIES")
    args = ap.parse_args()
    print(
        f"planner vs {args.studies} simulated exact-backend studies per setting, "
        f"alpha = {ALPHA}, L = {L}, target power 0.9"
    )
    out = pd.concat([validate(s, args.studies, args.seed) for s in args.settings])
    with pd.option_context("display.width", 160, "display.max_rows", 500):
        print(out.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    pw = out[out["test"] != "mean sims used (stop-early, capped)"]
    worst = pw["diff"].abs().max()
    z = (pw["diff"].abs() / pw["mc_sd_diff"]).max()
    print(
        f"power: max |simulated - predicted| = {worst:.3f} over {len(pw)} comparisons "
        f"(max {z:.2f} Monte Carlo sd of the difference); mean |diff| = "
        f"{pw['diff'].abs().mean():.3f}"
    )
    used = out[out["test"] == "mean sims used (stop-early, capped)"]
    rel = (used["diff"] / used["predicted"]).abs().max()
    print(f"mean sims used by --stop-early: max relative difference {rel:.1%}")
    if not math.isfinite(worst):
        sys.exit(1)


if __name__ == "__main__":
    main()
