"""How many simulations does a question need? Power of SBC by simulation, before running it.

`plan("narrow:0.9", power=0.9, alpha=0.01, quantities=5)` answers: if one of 5 ranked
quantities had a posterior 10 % too narrow, how many simulations would the fixed-size
test (γ test + Holm over the 5 quantities, as in `sbc check`) need to flag it with
probability 0.9, and how many would the sequential test (`sbc.analysis.sequential`, as in
`sbc run --stop-early`) use?

The model (exact, no MCMC): the correct posterior of each quantity is normal, N(m, s²), so
z = (truth − m)/s ~ N(0, 1); the affected quantity's fitted posterior is
N(m + shift·s, (scale·s)²) and its rank among L draws is Binomial(L, Φ((z − shift)/scale))
given z (`sbc.analysis.rank_model.rank_pmf`). This is exactly what the exact backend's `sd_scale`
and `shift` produce. One quantity is affected; the other quantities − 1 are calibrated and
independent of it (their γ p-values are drawn uniform, their e-values are ignored: the
sequential threshold is Bonferroni's Q/α, which the monitor's e-Holm rule can only beat,
by less than α·100 % of the threshold here). Real quantities within a simulation are often
dependent; Holm and Bonferroni are valid under any dependence, and independence is the
case where they lose the most, so the plan errs on the safe side.

Effects (`parse_effect`): `narrow:F` (posterior sd × F, F < 1), `wide:F` (F > 1), `bias:B`
(posterior shifted by B of its sds; B > 0 = draws too high), `coverage:C` (the central 90 %
interval covers only 90 % − C: sd × Φ⁻¹((1 + 0.9 − C)/2)/Φ⁻¹(0.95); `coverage:C@80` for
another interval), or several joined by commas (`narrow:0.8,bias:0.2`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from sbc.analysis import uniformity as uni
from sbc.analysis.evalues import DEFAULT_DESIGN, Design, detection_times
from sbc.analysis.rank_model import rank_pmf
from sbc.errors import SBCError

#: Central interval levels (%) a coverage effect may name.
INTERVALS = (50, 80, 90, 95)

#: Sample sizes the power curve is evaluated at (those up to the cap, plus the cap).
NICE_N = (
    10,
    20,
    30,
    50,
    75,
    100,
    150,
    200,
    300,
    400,
    500,
    750,
    1000,
    1500,
    2000,
    3000,
    4000,
    5000,
    7500,
    10_000,
    15_000,
    20_000,
    30_000,
    50_000,
)
#: Rank sequences are simulated in blocks of this many simulations (so a longer cap reuses
#: the same random numbers: common random numbers across sample sizes).
BLOCK = 250


# ---------------------------------------------------------------------------------------------
# Effects
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    """A deliberate miscalibration of one quantity's posterior: sd × scale, shifted by
    shift posterior sds."""

    text: str
    scale: float = 1.0
    shift: float = 0.0

    def describe(self) -> str:
        parts = []
        if self.scale != 1.0:
            kind = "too narrow" if self.scale < 1 else "too wide"
            parts.append(f"posterior sd × {self.scale:.4g} ({kind})")
        if self.shift != 0.0:
            way = "up" if self.shift > 0 else "down"
            parts.append(f"posterior shifted {way} by {abs(self.shift):.4g} sd")
        return ", ".join(parts) or "no effect (calibrated)"

    def coverage(self, level: int = 90) -> float:
        """The true coverage of the fitted posterior's central `level` % interval."""
        z = stats.norm.isf((1 - level / 100) / 2)
        return float(
            stats.norm.cdf(self.shift + self.scale * z)
            - stats.norm.cdf(self.shift - self.scale * z)
        )


def _number(text: str, part: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise SBCError(f"effect {part!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise SBCError(f"effect {part!r}: the value must be finite")
    return value


def parse_effect(text: str) -> Effect:
    """`narrow:0.9`, `wide:1.2`, `bias:0.2`, `coverage:0.05` (or `coverage:0.1@80`), or
    several joined by commas. Raises SBCError with a one-line message on anything else."""
    if not isinstance(text, str) or not text.strip():
        raise SBCError("empty effect; use e.g. narrow:0.9, wide:1.2, bias:0.2 or coverage:0.05")
    scale, shift = 1.0, 0.0
    for part in (p.strip() for p in text.split(",")):
        kind, sep, value = part.partition(":")
        kind = kind.strip().lower()
        if not sep or not value.strip():
            raise SBCError(f"effect {part!r}: expected KIND:VALUE, e.g. narrow:0.9")
        if kind == "narrow":
            f = _number(value, part)
            if not 0 < f < 1:
                raise SBCError(f"effect {part!r}: narrow needs a factor in (0, 1); use wide:F")
            scale *= f
        elif kind == "wide":
            f = _number(value, part)
            if not 1 < f <= 100:
                raise SBCError(f"effect {part!r}: wide needs a factor in (1, 100]; use narrow:F")
            scale *= f
        elif kind == "bias":
            b = _number(value, part)
            if b == 0 or abs(b) > 20:
                raise SBCError(f"effect {part!r}: bias needs a non-zero shift within ±20 sd")
            shift += b
        elif kind == "coverage":
            amount, at, level_text = value.partition("@")
            c = _number(amount, part)
            level = 90
            if at:
                try:
                    level = int(level_text)
                except ValueError:
                    level = -1
                if level not in INTERVALS:
                    raise SBCError(
                        f"effect {part!r}: the interval must be one of "
                        f"{', '.join(map(str, INTERVALS))} (%)"
                    )
            nominal = level / 100
            if c == 0 or not -(1 - nominal) < c < nominal:
                raise SBCError(
                    f"effect {part!r}: the coverage shortfall must be non-zero and within "
                    f"({-(1 - nominal):g}, {nominal:g}) for the {level} % interval"
                )
            scale *= float(
                stats.norm.ppf((1 + nominal - c) / 2) / stats.norm.ppf((1 + nominal) / 2)
            )
        else:
            raise SBCError(
                f"effect {part!r}: unknown kind {kind!r}; use narrow, wide, bias or coverage"
            )
    return Effect(text=text.strip(), scale=scale, shift=shift)


# ---------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------


def simulate_ranks(
    effect: Effect, L: int, studies: int, n: int, seed: int | tuple[int, ...]
) -> np.ndarray:
    """(studies, n) ranks of the affected quantity, block b of BLOCK simulations drawn from
    the generator seeded by [*seed, b] (so the first n are the same whatever n)."""
    cdf = np.cumsum(rank_pmf(L, effect.scale, effect.shift))
    seeds = (seed,) if isinstance(seed, int) else tuple(seed)
    out = np.empty((studies, n), dtype=np.int32)
    for b in range(math.ceil(n / BLOCK)):
        rng = np.random.default_rng([*seeds, b])
        u = rng.random((studies, BLOCK))
        width = min(BLOCK, n - b * BLOCK)
        out[:, b * BLOCK : b * BLOCK + width] = np.minimum(
            np.searchsorted(cdf, u[:, :width], side="right"), L
        )
    return out


def gamma_p_values(ranks: np.ndarray, L: int, up_to: float = 1.0) -> np.ndarray:
    """`uniformity.gamma_test(r, L).p_value` for each row of a (studies, N) array, at once
    (p-values above `up_to`, which cannot pass a test at that level, are returned as 1)."""
    r = np.asarray(ranks, dtype=np.int64)
    S, N = r.shape
    K = uni.n_eval(N, L)
    t, _ = uni.grid(L, K)
    offsets = (L + 1) * np.arange(S, dtype=np.int64)[:, None]
    hist = np.bincount((r + offsets).ravel(), minlength=S * (L + 1)).reshape(S, L + 1)
    gamma = uni.gamma_of_counts(N, L, K, hist.cumsum(axis=1)[:, t - 1])
    return uni.gamma_p_values(gamma, N, L, K, up_to)


def holm_first(p: np.ndarray) -> np.ndarray:
    """Holm-adjusted p-value of column 0 of each row of p (studies, Q)."""
    p = np.asarray(p, dtype=float)
    Q = p.shape[1]
    order = np.argsort(p, axis=1, kind="stable")
    srt = np.take_along_axis(p, order, axis=1)
    adj = np.minimum(1.0, np.maximum.accumulate((Q - np.arange(Q)) * srt, axis=1))
    pos = np.argmax(order == 0, axis=1)
    return adj[np.arange(p.shape[0]), pos]


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


@dataclass
class PlanResult:
    """The answer of `plan`: a summary table, the power curve, and the raw detection times."""

    effect: Effect
    power: float
    alpha: float
    quantities: int
    L: int
    studies: int
    look_every: int
    cap: int  # longest study simulated
    n_fixed: int | None  # simulations the fixed-size test needs (None: more than cap)
    n_sequential: int | None  # cap at which the sequential test reaches `power`
    table: pd.DataFrame  # one row per test
    curve: pd.DataFrame  # power against the number of simulations, both tests
    detection: np.ndarray = field(repr=False)  # sequential: first look with a rejection

    def plot(self, path: str | Path) -> Path:
        """Save the power curves (fixed-size and sequential) as a PNG."""
        return save_power_curve(self, path)


def _nice_grid(cap: int) -> list[int]:
    return sorted({n for n in NICE_N if n < cap} | {cap})


def plan(
    effect: str | Effect,
    power: float = 0.9,
    alpha: float = 0.01,
    quantities: int = 1,
    L: int = 100,
    *,
    studies: int = 1000,
    look_every: int = 1,
    seed: int = 20261125,
    max_sims: int = 10_000,
    design: Design = DEFAULT_DESIGN,
) -> PlanResult:
    """Simulations needed to detect `effect` in one of `quantities` quantities with
    probability `power` at family-wise level `alpha`, for both tests (see the module doc).

    Simulates `studies` studies of growing length (doubling from 500 up to `max_sims`)
    until both tests reach `power`. Fixed-size: power at each N of a grid, and the smallest
    N with power ≥ `power` by bisection (same random numbers at every N). Sequential: the
    time T of the first rejection in each study; a study capped at N has power P(T ≤ N),
    the needed cap is the `power`-quantile of T, and the simulations it uses on average
    are E[min(T, cap)] (when nothing is wrong it runs to the cap).
    """
    eff = parse_effect(effect) if isinstance(effect, str) else effect
    if not 0 < power < 1:
        raise SBCError(f"power must be between 0 and 1, got {power}")
    if not 0 < alpha < 1:
        raise SBCError(f"alpha must be between 0 and 1, got {alpha}")
    if quantities < 1 or L < 1 or studies < 20 or look_every < 1 or max_sims < 20:
        raise SBCError("quantities, L, look_every ≥ 1, studies ≥ 20 and max_sims ≥ 20 needed")
    Q = int(quantities)
    log_thr = math.log(Q / alpha)
    null_p = np.random.default_rng([seed, 1]).random((studies, Q - 1))

    def fixed_power(ranks: np.ndarray, n: int) -> float:
        p = gamma_p_values(ranks[:, :n], L, up_to=alpha)
        return float(np.mean(holm_first(np.column_stack([p, null_p])) < alpha))

    cap = min(500, max_sims)
    while True:
        ranks = simulate_ranks(eff, L, studies, cap, (seed, 0))
        times = detection_times(ranks, L, log_thr, look_every, design)
        seq_ok = np.mean(times <= cap) >= power
        fix_ok = fixed_power(ranks, cap) >= power
        if (seq_ok and fix_ok) or cap >= max_sims:
            break
        cap = min(2 * cap, max_sims)

    grid = _nice_grid(cap)
    powers = {n: fixed_power(ranks, n) for n in grid}
    n_fixed = next((n for n in grid if powers[n] >= power), None)
    if n_fixed is not None:
        lo = max([m for m in grid if m < n_fixed], default=1)
        hi = n_fixed
        while hi - lo > 1:
            mid = (lo + hi) // 2
            powers[mid] = fixed_power(ranks, mid)
            lo, hi = (lo, mid) if powers[mid] >= power else (mid, hi)
        n_fixed = hi
    sorted_times = np.sort(times)
    k = math.ceil(power * studies) - 1
    n_seq = int(sorted_times[k]) if sorted_times[k] <= cap else None

    ns = sorted(set(grid) | {n for n in (n_fixed, n_seq) if n is not None})
    curve = pd.DataFrame(
        {
            "n_sims": ns,
            "power_fixed": [powers[n] if n in powers else fixed_power(ranks, n) for n in ns],
            "power_sequential": [float(np.mean(times <= n)) for n in ns],
            "mean_sims_sequential": [float(np.mean(np.minimum(times, n))) for n in ns],
        }
    )
    table = _summary(curve, times, n_fixed, n_seq, cap, power)
    return PlanResult(
        effect=eff,
        power=power,
        alpha=alpha,
        quantities=Q,
        L=L,
        studies=studies,
        look_every=look_every,
        cap=cap,
        n_fixed=n_fixed,
        n_sequential=n_seq,
        table=table,
        curve=curve,
        detection=times,
    )


def _summary(
    curve: pd.DataFrame,
    times: np.ndarray,
    n_fixed: int | None,
    n_seq: int | None,
    cap: int,
    power: float,
) -> pd.DataFrame:
    at = curve.set_index("n_sims")
    rows = [
        {
            "test": "fixed-size (γ test + Holm)",
            "n_sims": n_fixed,
            "power": at.loc[n_fixed, "power_fixed"] if n_fixed else np.nan,
            "mean_sims": float(n_fixed) if n_fixed else np.nan,
            "median_sims": float(n_fixed) if n_fixed else np.nan,
            "p90_sims": float(n_fixed) if n_fixed else np.nan,
        }
    ]
    if n_seq is not None:
        used = np.minimum(times, n_seq)
        rows.append(
            {
                "test": "sequential (e-process, stop at first rejection)",
                "n_sims": n_seq,
                "power": float(np.mean(times <= n_seq)),
                "mean_sims": float(used.mean()),
                "median_sims": float(np.median(used)),
                "p90_sims": float(np.quantile(used, 0.9)),
            }
        )
    else:
        rows.append(
            {
                "test": "sequential (e-process, stop at first rejection)",
                "n_sims": None,
                "power": float(np.mean(times <= cap)),
                "mean_sims": np.nan,
                "median_sims": np.nan,
                "p90_sims": np.nan,
            }
        )
    df = pd.DataFrame(rows)
    df["n_sims"] = df["n_sims"].astype("Int64")
    return df


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def format_plan(result: PlanResult, curve_rows: int = 14) -> str:
    """The plan as text: the question, the summary table and the power curve."""
    r = result
    lines = [
        f"effect: {r.effect.text} = {r.effect.describe()}; true coverage of the 90% interval "
        f"{r.effect.coverage():.3f}",
        f"on 1 of {r.quantities} quantities (the others calibrated), L = {r.L}, "
        f"alpha = {r.alpha:g} (family-wise), target power {r.power:g}, "
        f"looks every {r.look_every} simulation(s); {r.studies} simulated studies per point "
        f"(power ± {2 * math.sqrt(r.power * (1 - r.power) / r.studies):.3f})",
        "",
    ]
    t = r.table.copy()
    shown = pd.DataFrame(
        {
            "test": t["test"],
            "sims needed": [f"{n}" if pd.notna(n) else f"> {r.cap}" for n in t["n_sims"]],
            "power there": [f"{p:.3f}" if pd.notna(p) else "" for p in t["power"]],
            "mean sims used": [f"{v:.0f}" if pd.notna(v) else "" for v in t["mean_sims"]],
            "median": [f"{v:.0f}" if pd.notna(v) else "" for v in t["median_sims"]],
            "90th pct": [f"{v:.0f}" if pd.notna(v) else "" for v in t["p90_sims"]],
        }
    )
    lines.append(shown.to_string(index=False))
    lines.append("")
    if r.n_sequential is not None:
        lines.append(
            f"sequential: run with --stop-early and sims = {r.n_sequential}; it stops on "
            f"average after {t['mean_sims'].iloc[1]:.0f} simulations if the effect is there, "
            f"and runs all {r.n_sequential} if the model is calibrated."
        )
    else:
        lines.append(f"sequential: power only {t['power'].iloc[1]:.3f} within {r.cap} simulations.")
    if r.n_fixed is None:
        lines.append(f"fixed-size: power only {r.curve['power_fixed'].iloc[-1]:.3f} at {r.cap}.")
    lines.append("")
    c = r.curve
    if len(c) > curve_rows:
        keep = np.unique(np.round(np.linspace(0, len(c) - 1, curve_rows)).astype(int))
        c = c.iloc[keep]
    lines.append(
        pd.DataFrame(
            {
                "sims": c["n_sims"],
                "power fixed": c["power_fixed"].map("{:.3f}".format),
                "power sequential": c["power_sequential"].map("{:.3f}".format),
                "mean sims sequential": c["mean_sims_sequential"].map("{:.0f}".format),
            }
        ).to_string(index=False)
    )
    return "\n".join(lines)


def power_curve_figure(result: PlanResult):
    """A matplotlib Figure (no pyplot): power against simulations, fixed and sequential."""
    from matplotlib.figure import Figure

    r = result
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    c = r.curve
    ax.plot(c["n_sims"], c["power_fixed"], "o-", color="C0", ms=3, label="fixed-size: power at N")
    sorted_times = np.sort(r.detection)
    ecdf = np.arange(1, sorted_times.size + 1) / sorted_times.size
    keep = sorted_times <= r.cap
    ax.step(
        sorted_times[keep],
        ecdf[keep],
        where="post",
        color="C1",
        label="sequential: P(stopped by N)",
    )
    ax.axhline(r.power, color="grey", lw=0.8, ls=":")
    if r.n_fixed is not None:
        ax.axvline(r.n_fixed, color="C0", lw=0.8, ls="--")
        ax.annotate(f"fixed {r.n_fixed}", (r.n_fixed, 0.04), color="C0", fontsize=8)
    if r.n_sequential is not None:
        ax.axvline(r.n_sequential, color="C1", lw=0.8, ls="--")
        mean_used = r.table["mean_sims"].iloc[1]
        ax.axvline(mean_used, color="C1", lw=0.8, ls=":")
        ax.annotate(
            f"cap {r.n_sequential}\nmean used {mean_used:.0f}",
            (r.n_sequential, 0.12),
            color="C1",
            fontsize=8,
        )
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("simulations")
    ax.set_ylabel(f"power (alpha = {r.alpha:g}, {r.quantities} quantities)")
    ax.set_title(f"{r.effect.text}: {r.effect.describe()}", fontsize=9)
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def save_power_curve(result: PlanResult, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    power_curve_figure(result).savefig(path, dpi=110)
    return path


# ---------------------------------------------------------------------------------------------
# `sbc plan`
# ---------------------------------------------------------------------------------------------


__all__ = [
    "Effect",
    "PlanResult",
    "format_plan",
    "parse_effect",
    "plan",
]
