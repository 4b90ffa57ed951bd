"""`sbc precheck` on correct models: its false-alarm rate, and the size of each test in the
tail Holm uses (issue 15).

    python benchmarks/precheck_size.py --part analytic    # closed-form scores, ~15 min
    python benchmarks/precheck_size.py --part cmdstan     # real prechecks, ~2 h
    python benchmarks/precheck_size.py --part cmdstan --reps 20 --only linreg   # a look
    python benchmarks/precheck_size.py --part tails --sims 12000   # the LMM's scores, ~3 min

analytic: the hierarchical model with unknown scales of `sbc.simulators.hierarchical`
(`unknown_scales_scores`: its scores in closed form, heavy-tailed like a mixed model's),
`--reps` repetitions of the statistics of `sbc.analysis.score` at n = 1000 draws: the
share of p-values below 0.05 ... 1e-4 of each single test (a Holm family of 22 tests at
alpha = 0.01 rejects at p < 0.01/22 = 4.5e-4), next to a plain t-test of the same
summands; then the family-wise false-alarm rate, and the power against a wrong prior scale
of tau and a missing Jacobian.

tails: one precheck of lmm_sbc.toml with `--sims` truths: per group of coordinates, how
heavy the summands' tails are (largest |x| over the median |x|, kurtosis) before and after
studentising, and the standard error of a plain mean next to the studentised one.

cmdstan: `--reps` repetitions (seeds study seed + k) of the real `sbc precheck` (CmdStan's
gradients, `--sims` simulated truths) on correct studies: the false-alarm rate at alpha =
0.01 with its 95 % Clopper-Pearson interval, the share of single-test p-values below 0.01
and 0.001, and the wall and CPU seconds per precheck.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sbc.analysis.score import score_check  # noqa: E402
from sbc.simulators.hierarchical import unknown_scales_scores  # noqa: E402

CORRECT = {  # label -> study file
    "lmm_sbc (centred, Python simulator)": ROOT / "studies/lmm_sbc.toml",
    "lmm_sbc_noncentered": ROOT / "studies/lmm_sbc_noncentered.toml",
    "lmm_sbc_stan_simulator": ROOT / "studies/lmm_sbc_stan_simulator.toml",
    "linreg_sbc": ROOT / "studies/linreg_sbc.toml",
}
LEVELS = (0.05, 0.01, 1e-3, 1e-4)


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    lo = stats.beta.ppf(a, k, n - k + 1) if k > 0 else 0.0
    hi = stats.beta.ppf(1 - a, k + 1, n - k) if k < n else 1.0
    return float(lo), float(hi)


def rate(k: int, n: int) -> str:
    lo, hi = clopper_pearson(k, n)
    return f"{k}/{n} = {k / n:.2g} [{lo:.2g}, {hi:.2g}]"


def analytic(reps: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    names = ["mu", "log_tau", "log_sigma", *(f"theta[{j}]" for j in range(1, 9))]
    p_studentised, p_plain, alarms = [], [], 0
    t0 = time.perf_counter()
    for _ in range(reps):
        u, g = unknown_scales_scores(rng, n)
        check = score_check(u, g, names, alpha=0.01)
        z = check.table[["score_z", "stein_z"]].to_numpy().ravel()
        p_studentised.append(2 * stats.norm.sf(np.abs(z)))
        alarms += not check.consistent
        plain = g.mean(axis=0) / (g.std(axis=0, ddof=1) / np.sqrt(n))  # the score, unweighted
        p_plain.append(2 * stats.norm.sf(np.abs(plain)))
    seconds = (time.perf_counter() - t0) / reps
    ps, pp = np.concatenate(p_studentised), np.concatenate(p_plain)
    print(f"analytic: hierarchical model with unknown scales, J = 8, n = {n} draws, "
          f"{reps} repetitions ({seconds:.2f} s of statistics each)")  # fmt: skip
    print(f"{'level':>8}  {'studentised (22 tests per repetition)':>44}  "
          f"{'plain t-test of the score (11 tests)':>40}")  # fmt: skip
    for a in LEVELS:
        print(f"{a:>8g}  {rate(int(np.sum(ps < a)), ps.size):>44}  "
              f"{rate(int(np.sum(pp < a)), pp.size):>40}")  # fmt: skip
    print(f"family-wise false alarms at alpha = 0.01 (Holm): {rate(alarms, reps)}")
    for label, kwargs in (("wrong prior scale of tau (1, not 5)", {"model_tau_scale": 1.0}),
                          ("missing Jacobian of sigma", {"jacobian": False})):  # fmt: skip
        caught = 0
        k = max(50, reps // 10)
        for _ in range(k):
            caught += not score_check(*unknown_scales_scores(rng, n, **kwargs), names).consistent
        print(f"power, {label}: {rate(caught, k)}")


def cmdstan(reps: int, sims: int, only: str | None, workers: int) -> None:
    from sbc.precheck import precheck
    from sbc.study import load_study

    print(f"cmdstan: {reps} prechecks per study, {sims} simulated truths each, alpha = 0.01")
    print(f"{'study':38} {'false alarms':>26} {'p<0.01':>9} {'p<0.001':>9} {'wall s':>7} "
          f"{'CPU s':>6}")  # fmt: skip
    for label, path in CORRECT.items():
        if only and only not in label:
            continue
        base = load_study(path)
        alarms, p, wall, cpu = 0, [], [], []
        for k in range(reps):
            c0 = _cpu()
            result = precheck(base, sims=sims, seed=base.seed + k, workers=workers,
                              progress=False)  # fmt: skip
            cpu.append(_cpu() - c0)
            wall.append(result.seconds)
            alarms += not result.consistent
            z = result.table[["score_z", "stein_z"]].to_numpy().ravel()
            p.append(2 * stats.norm.sf(np.abs(z[np.isfinite(z)])))
        p = np.concatenate(p)
        print(f"{label:38} {rate(alarms, reps):>26} {np.mean(p < 0.01):>9.4f} "
              f"{np.mean(p < 1e-3):>9.5f} {np.median(wall):>7.1f} {np.median(cpu):>6.1f}",
              flush=True)  # fmt: skip


def tails(sims: int, workers: int) -> None:
    from sbc.analysis.score import conditional_variance, identity_summands, scale_features
    from sbc.precheck import precheck

    result = precheck(ROOT / "studies/lmm_sbc.toml", sims=sims, workers=workers, progress=False)
    u, g, names = result.u, result.grad, list(result.table["coordinate"])
    n = len(u)
    fold = np.arange(n) % 5
    features = scale_features(u)
    groups = {"beta": [0, 1], "sigma": [2], "tau": [3, 4], "R": [5], "b[,1]": range(6, 16),
              "b[,2]": range(16, 26)}  # fmt: skip
    print(f"tails: lmm_sbc.toml, {n} simulated truths; per group the median over its "
          "coordinates")  # fmt: skip
    print(f"{'group':6} {'identity':8} {'max/median |x|':>15} {'kurtosis':>9} "
          f"{'studentised':>11} {'se plain':>9} {'se studentised':>14}")  # fmt: skip
    for label, idx in groups.items():
        for which in (0, 1):
            rows = []
            for i in idx:
                others = np.delete(np.arange(u.shape[1]), i)
                x = identity_summands(u[:, i], g[:, i], fold)[which]
                w = 1 / np.sqrt(conditional_variance(x**2, u[:, others], features[:, others],
                                                     fold))  # fmt: skip
                y = w * x
                rows.append([np.max(np.abs(x)) / np.median(np.abs(x)), stats.kurtosis(x),
                             stats.kurtosis(y), np.std(x) / np.sqrt(n),
                             np.std(y) / np.sqrt(n) / np.mean(w)])  # fmt: skip
            r = np.median(np.array(rows), axis=0)
            print(f"{label:6} {['score', 'stein'][which]:8} {r[0]:>15.0f} {r[1]:>9.0f} "
                  f"{r[2]:>11.1f} {r[3]:>9.3g} {r[4]:>14.3g}")  # fmt: skip
    assert names[:6] == ["beta[1]", "beta[2]", "sigma", "tau[1]", "tau[2]", "R[1]"]


def _cpu() -> float:
    """CPU seconds of this process and its finished children (CmdStan)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["analytic", "cmdstan", "tails"], required=True)
    ap.add_argument("--reps", type=int, help="repetitions (analytic 2000, cmdstan 200)")
    ap.add_argument("--sims", type=int, default=1000, help="simulated truths per precheck")
    ap.add_argument("--only", help="cmdstan: only studies whose label contains this")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--seed", type=int, default=20261125)
    args = ap.parse_args()
    if args.part == "analytic":
        analytic(args.reps or 2000, args.sims, args.seed)
    elif args.part == "tails":
        tails(args.sims, args.workers)
    else:
        cmdstan(args.reps or 200, args.sims, args.only, args.workers)


if __name__ == "__main__":
    main()
