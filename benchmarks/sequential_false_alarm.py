"""Sequential SBC (`sbc run --stop-early`) on the exact backend: false alarms and detection.

    python benchmarks/sequential_false_alarm.py                 # both parts (a few minutes)
    python benchmarks/sequential_false_alarm.py --part false-alarm --studies 2000 --sims 1000
    python benchmarks/sequential_false_alarm.py --part detection --studies 1000

Studies are the shipped `exact_normal` study (3 independent normal means, 10 observations
each, 100 exact posterior draws, L = 100), simulated many studies at once with the real
simulator (`sbc.simulators.normal.simulate`), the real backend (`ExactNormalBackend.fit`,
whose `sd_scale` makes the wrong variants) and the real ranking (`sbc.ranks.rank_of_truth`),
on one array whose columns are (study, simulation, quantity). The monitor is evaluated with
`sbc.analysis.sequential.first_rejections`, the vectorised `SequentialMonitor`; a subset of
studies is replayed through `SequentialMonitor` itself to show they agree exactly.

1. False alarms: calibrated studies, looks after every simulation (and every 25), up to
   `--sims` simulations each; share of studies with any rejection, with its one-sided 95 %
   Clopper–Pearson upper bound, against α.
2. Detection: the sd × 0.7 and sd × 0.9 variants (all three quantities affected, as in
   `exact_normal_narrow.toml`): simulations until the first rejection (mean, median, 90th
   percentile), against the fixed-size γ test + Holm at the same power (0.9): the smallest N
   whose power is 0.9, and the simulations the sequential study uses on average when capped
   at its own 90th percentile (power 0.9 too).
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

from sbc.analysis.evalues import false_alarm_bound, first_rejections
from sbc.analysis.power import gamma_p_values
from sbc.analysis.sequential import SequentialMonitor
from sbc.backends.exact import ExactNormalBackend
from sbc.ranks import rank_of_truth
from sbc.simulators.normal import simulate

L = 100


def exact_ranks(
    seed: int,
    studies: int,
    sims: int,
    quantities: int = 3,
    sd_scale: float = 1.0,
    shift: float = 0.0,
    affected: int | None = None,
    n_obs: int = 10,
    draws: int = L,
    max_columns: int = 100_000,
) -> np.ndarray:
    """(studies, sims, quantities) ranks of exact-backend SBC studies; the first `affected`
    quantities (default: all) get the wrong posterior (sd × sd_scale, shifted by `shift`)."""
    affected = quantities if affected is None else affected
    right = ExactNormalBackend(chains=1, draws_per_chain=draws)
    wrong = ExactNormalBackend(chains=1, draws_per_chain=draws, sd_scale=sd_scale, shift=shift)
    out = np.empty((studies, sims, quantities), dtype=np.int16)
    per = max(1, max_columns // (sims * quantities))
    children = np.random.SeedSequence(seed).spawn(math.ceil(studies / per))
    for block, start in enumerate(range(0, studies, per)):
        s = min(per, studies - start)
        rng = np.random.default_rng(children[block])
        truth, data = simulate(rng, K=s * sims * quantities, N=n_obs)
        mu = truth["mu"]
        is_wrong = (np.arange(mu.size) % quantities) < affected
        ranks = np.empty(mu.size, dtype=np.int64)
        for backend, sel in ((wrong, is_wrong), (right, ~is_wrong)):
            if not sel.any():
                continue
            part = {**data, "K": int(sel.sum()), "y": data["y"][:, sel]}
            fit = backend.fit(part, seed=int(rng.integers(2**31)), workdir=Path("."))
            kept = backend.draws(fit)["mu"].reshape(-1, int(sel.sum()))  # thin = 1, one chain
            ranks[sel] = rank_of_truth(mu[sel], kept, rng)
        out[start : start + s] = ranks.reshape(s, sims, quantities)
    return out


def monitor_replay(ranks: np.ndarray, alpha: float, look_every: int) -> list[tuple[int, str]]:
    """(n_sims, quantity) at which `SequentialMonitor` stops each study (0, '' if never)."""
    names = [f"mu[{q + 1}]" for q in range(ranks.shape[2])]
    out = []
    for study in ranks:
        mon = SequentialMonitor(names, L, alpha, look_every)
        for sim, row in enumerate(study):
            mon.update(
                [{"quantity": q, "rank": int(v)} for q, v in zip(names, row, strict=True)], sim=sim
            )
            if mon.decision() is not None:
                break
        d = mon.decision()
        out.append((d.n_sims, d.quantity) if d else (0, ""))
    return out


def false_alarms(args: argparse.Namespace) -> None:
    print(
        f"== false alarms: {args.studies} calibrated exact studies x up to {args.sims} sims "
        f"x 3 quantities (L = {L}) =="
    )
    t0 = time.perf_counter()
    ranks = exact_ranks(args.seed, args.studies, args.sims)
    sd0 = math.sqrt(L * (L + 2) / 12)
    print(
        f"simulated in {time.perf_counter() - t0:.0f} s; rank mean {ranks.mean():.3f} "
        f"(uniform: {L / 2}), sd {ranks.std():.3f} (uniform: {sd0:.3f})"
    )
    rows = []
    for alpha in (0.05, 0.01):
        for look_every in (1, 25):
            t0 = time.perf_counter()
            first = first_rejections(ranks, L, alpha, look_every)
            alarms = int((first.min(axis=1) <= args.sims).sum())
            rows.append(
                {
                    "alpha": alpha,
                    "look_every": look_every,
                    "looks": args.sims // look_every,
                    "studies": args.studies,
                    "false_alarms": alarms,
                    "rate": alarms / args.studies,
                    "mc_sd": math.sqrt(alpha * (1 - alpha) / args.studies),
                    "upper95_CP": false_alarm_bound(alarms, args.studies),
                    "rate<=alpha+2sd": alarms / args.studies
                    <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / args.studies),
                    "seconds": round(time.perf_counter() - t0, 1),
                }
            )
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    k = min(args.replay, args.studies)
    t0 = time.perf_counter()
    replay = monitor_replay(ranks[:k], 0.05, 1)
    first = first_rejections(ranks[:k], L, 0.05, 1)
    stop = first.min(axis=1)
    vec = [
        (int(s), f"mu[{int(np.argmax(f == s)) + 1}]") if s <= args.sims else (0, "")
        for s, f in zip(stop, first, strict=True)
    ]
    same = sum(a == b for a, b in zip(replay, vec, strict=True))
    print(
        f"SequentialMonitor replay of the first {k} studies (alpha 0.05, every sim): "
        f"{same}/{k} identical stops ({time.perf_counter() - t0:.0f} s)"
    )


def _fixed_n_for_power(ranks: np.ndarray, alpha: float, power: float) -> tuple[int, float]:
    """Smallest N with P(Holm over the quantities rejects at least one) ≥ power (bisection
    over prefixes of the same studies)."""
    Q = ranks.shape[2]

    def pw(n: int) -> float:
        p = np.column_stack([gamma_p_values(ranks[:, :n, q], L) for q in range(Q)])
        return float(np.mean(p.min(axis=1) * Q < alpha))  # Holm's first step

    lo, hi = 1, ranks.shape[1]
    if pw(hi) < power:
        return -1, pw(hi)
    grid = [n for n in (25, 50, 100, 200, 400, 800, 1600, 3200) if n < hi]
    for n in grid:
        if pw(n) >= power:
            hi = n
            break
        lo = n
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if pw(mid) >= power else (mid, hi)
    return hi, pw(hi)


def detection(args: argparse.Namespace) -> None:
    alpha, power = args.alpha, 0.9
    print(
        f"== detection: {args.studies} exact studies per variant, 3 quantities all affected, "
        f"alpha = {alpha}, looks after every simulation =="
    )
    rows = []
    for scale, cap in ((0.7, 400), (0.9, 3000)):
        t0 = time.perf_counter()
        ranks = exact_ranks(args.seed + 1, args.studies, cap, sd_scale=scale)
        first = first_rejections(ranks, L, alpha, 1)
        stop = first.min(axis=1)
        detected = stop <= cap
        q90 = int(np.sort(stop)[math.ceil(power * args.studies) - 1])
        n_fixed, p_fixed = _fixed_n_for_power(ranks, alpha, power)
        rows.append(
            {
                "variant": f"sd x {scale}",
                "detected_by_cap": f"{detected.mean():.3f} (cap {cap})",
                "seq_mean_T": float(np.minimum(stop, cap).mean()),
                "seq_median_T": float(np.median(stop)),
                "seq_p90_T=cap_for_power_0.9": q90,
                "seq_mean_sims_at_that_cap": float(np.minimum(stop, q90).mean()),
                "fixed_N_for_power_0.9": n_fixed,
                "fixed_power_there": p_fixed,
                "ratio_mean_seq/fixed": float(np.minimum(stop, q90).mean()) / n_fixed,
                "seconds": round(time.perf_counter() - t0),
            }
        )
    print(pd.DataFrame(rows).T.to_string(header=False, float_format=lambda v: f"{v:.3f}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["false-alarm", "detection", "all"], default="all")
    ap.add_argument("--studies", type=int, default=None)
    ap.add_argument("--sims", type=int, default=1000, help="false-alarm part: sims per study")
    ap.add_argument("--alpha", type=float, default=0.01, help="detection part: alpha")
    ap.add_argument("--replay", type=int, default=40, help="studies replayed by the monitor")
    ap.add_argument("--seed", type=int, default=20261125)
    args = ap.parse_args()
    if args.part in ("false-alarm", "all"):
        false_alarms(argparse.Namespace(**{**vars(args), "studies": args.studies or 2000}))
    if args.part in ("detection", "all"):
        detection(argparse.Namespace(**{**vars(args), "studies": args.studies or 1000}))


if __name__ == "__main__":
    main()
