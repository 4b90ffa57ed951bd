"""Figures of SBC results: rank histograms, ECDF differences, coverage, trace plots.

Each function takes DataFrames (or a draws dict) and returns a matplotlib `Figure` with
one small panel per quantity, titled with its CmdStan name. Figures are built without
pyplot (no global state, no GUI backend; they render with Agg) and written by `save`.
They take a `Calibration` (or a ranks table, with the variables to pool); all statistics
come from `sbc.analysis`, nothing is recomputed here.

Group effects the study pools (e.g. b[j,q]) get one pooled panel per column (`b[*,q]`),
plus individual panels only for the first few groups (`max_group_members`), so a study
with many groups stays readable.

As in ArviZ, `var_names` chooses what is drawn (a variable name selects its components and
its pooled rows, a CmdStan name one panel, "~name" leaves it out) and `ax` draws into the
caller's axes (one per panel, in order; the figure returned is theirs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MultipleLocator, PercentFormatter

from sbc.analysis import coverage as cov
from sbc.analysis import pooled as pl
from sbc.analysis import uniformity as uni
from sbc.analysis.quantities import (
    Panel,
    common_ranks,
    pooled_name,
    quantity_panels,
    select_var_names,
)
from sbc.analysis.verdicts import Calibration, calibrate
from sbc.ranks import scalar_names

Data = Calibration | pd.DataFrame
VarNames = str | Sequence[str] | None
AxesArg = Axes | Sequence[Axes] | np.ndarray | None

MAX_COLS = 5
MAX_PANELS = 40
MAX_GROUP_MEMBERS = 4

_BAR = "#4C72B0"
_BAND = "#9ecae1"
_GREY = "#b0b0b0"
_PANEL_W, _PANEL_H = 2.7, 2.0


def save(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` as PNG (or whatever the suffix says), creating folders; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def _grid(n: int, max_cols: int, title: str, ax: AxesArg = None) -> tuple[Figure, list[Axes]]:
    """A figure with exactly n panels in rows of at most max_cols, or the caller's `ax`."""
    if ax is not None:
        axes = [ax] if isinstance(ax, Axes) else list(np.ravel(np.asarray(ax, dtype=object)))
        if len(axes) != n:
            raise ValueError(f"ax: {n} panel{'s' * (n != 1)} to draw, {len(axes)} axes given")
        for a in axes:
            a.tick_params(labelsize=7)
        return axes[0].figure, axes
    n = max(n, 1)
    ncols = min(max_cols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(_PANEL_W * ncols, _PANEL_H * nrows + 0.5), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        fig.delaxes(ax)
    fig.suptitle(title, fontsize=10)
    for ax in axes[:n]:
        ax.tick_params(labelsize=7)
    return fig, axes[:n]


def _select(
    panels: list[Panel], max_group_members: int, max_panels: int
) -> tuple[list[Panel], str]:
    """Scalars and pooled panels, members of each group up to the cap, at most max_panels."""
    seen: dict[str, int] = {}
    kept, dropped_members = [], 0
    for p in panels:
        if p.kind == "member":
            key = pooled_name(p.name)
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > max_group_members:
                dropped_members += 1
                continue
        kept.append(p)
    notes = []
    if dropped_members:
        notes.append(f"first {max_group_members} groups shown individually")
    if len(kept) > max_panels:
        notes.append(f"first {max_panels} of {len(kept)} panels")
        kept = kept[:max_panels]
    return kept, ("; " + "; ".join(notes)) if notes else ""


def _calibration(data: Data, pool: Sequence[str]) -> Calibration:
    cal = data if isinstance(data, Calibration) else calibrate(data, pool=pool)
    if cal.ranks.empty:
        raise ValueError("the ranks table is empty: nothing to plot")
    return cal


def _panels(
    cal: Calibration, max_group_members: int, max_panels: int, var_names: VarNames = None
) -> tuple[list[Panel], str]:
    panels = quantity_panels(cal.ranks, cal.pool, cal.order)
    if var_names is not None:
        keep = set(select_var_names([p.name for p in panels], var_names))
        panels = [p for p in panels if p.name in keep]
    return _select(panels, max_group_members, max_panels)


def _title(ax: Axes, panel: Panel) -> None:
    label = panel.name + ("  (pooled)" if panel.kind == "pooled" else "")
    ax.set_title(label, fontsize=9)


def _study_label(ranks_df: pd.DataFrame) -> str:
    Ls = sorted(set(ranks_df["L"].astype(int)))
    L = str(Ls[0]) if len(Ls) == 1 else f"{Ls[0]}–{Ls[-1]}"
    return f"{ranks_df['sim'].nunique()} simulations, L = {L}"


def _steps(values: np.ndarray) -> np.ndarray:
    """Repeat the last value so step='post' fills the last interval too."""
    return np.append(values, values[-1])


# ---------------------------------------------------------------------------------------------


def rank_histograms(
    data: Data,
    bins: int | None = None,
    level: float = 0.99,
    pool: Sequence[str] = (),
    max_group_members: int = MAX_GROUP_MEMBERS,
    max_cols: int = MAX_COLS,
    max_panels: int = MAX_PANELS,
    *,
    var_names: VarNames = None,
    ax: AxesArg = None,
) -> Figure:
    """Histograms of ranks with the grey band each bin's count stays in with probability
    `level` under uniformity, and the expected count (Talts et al. 2018).

    ∪ = posterior too narrow, ∩ = too wide, mass on the right = truth above the draws
    (posterior biased down), on the left = biased up. Pooled panels get a band that holds
    under any dependence between the groups of a simulation (`pooled.pooled_histogram_band`).
    """
    cal = _calibration(data, pool)
    panels, note = _panels(cal, max_group_members, max_panels, var_names)
    title = (
        f"Rank histograms ({_study_label(cal.ranks)}); grey: {level:.0%} band of each bin "
        f"under uniformity, black: expected count{note}"
    )
    fig, axes = _grid(len(panels), max_cols, title, ax)
    for ax, panel in zip(axes, panels, strict=True):
        ranks, L = common_ranks(panel.rows)
        edges, counts, expected, lo, hi = uni.histogram_band(ranks, L, bins=bins, level=level)
        if panel.clusters is not None:
            S = int(np.unique(panel.clusters).size)
            lo, hi = pl.pooled_histogram_band(S, ranks.size / S, np.diff(edges) / (L + 1), level)
        ax.fill_between(edges, _steps(lo), _steps(hi), step="post", color=_GREY, alpha=0.45, lw=0)
        for bound in (lo, hi):
            ax.step(edges, _steps(bound), where="post", color="0.4", lw=0.6, zorder=4)
        ax.bar(
            edges[:-1],
            counts,
            width=np.diff(edges),
            align="edge",
            color=_BAR,
            alpha=0.6,
            edgecolor="white",
            linewidth=0.5,
            zorder=3,
        )
        ax.step(edges, _steps(expected), where="post", color="black", lw=0.9, zorder=5)
        ax.set_xlim(0, L + 1)
        ax.set_ylim(0, max(counts.max(), hi.max()) * 1.08)
        ax.set_xlabel("rank", fontsize=7)
        _title(ax, panel)
    return fig


def ecdf_diff(
    data: Data,
    alpha: float = uni.BAND_ALPHA,
    pool: Sequence[str] = (),
    max_group_members: int = MAX_GROUP_MEMBERS,
    max_cols: int = MAX_COLS,
    max_panels: int = MAX_PANELS,
    *,
    var_names: VarNames = None,
    ax: AxesArg = None,
) -> Figure:
    """ECDF of the fractional ranks minus the uniform CDF, F(z) − z, with the simultaneous
    (1 − alpha) band (shaded), as R SBC's `plot_ecdf_diff`: a calibrated quantity stays
    inside the band everywhere with probability 1 − alpha.

    Reading it: above zero = too many low ranks (posterior biased up), below zero = too
    many high ranks (biased down); above zero on the left and below on the right = ∪
    (posterior too narrow); the reverse = ∩ (too wide).
    Pooled panels are drawn on a coarser grid with a band that holds under any dependence
    between the groups of a simulation (`pooled.pooled_band`; wider than the verdict's test
    needs, which is `pooled.pooled_test`).
    """
    cal = _calibration(data, pool)
    panels, note = _panels(cal, max_group_members, max_panels, var_names)
    title = (
        f"ECDF difference F(z) − z ({_study_label(cal.ranks)}); "
        f"shaded: {1 - alpha:.0%} simultaneous band{note}"
    )
    fig, axes = _grid(len(panels), max_cols, title, ax)
    for ax, panel in zip(axes, panels, strict=True):
        ranks, L = common_ranks(panel.rows)
        _ecdf_panel(ax, panel, ranks, L, alpha, "z (fractional rank)")
    return fig


def _ecdf_panel(ax: Axes, panel: Panel, ranks: np.ndarray, L: int, alpha: float, x: str) -> None:
    """F(z) − z of ranks uniform under calibration, with its simultaneous band: the γ band,
    or for pooled ranks the band valid under any dependence, on a coarser grid."""
    if panel.clusters is None:
        z, d = uni.ecdf_diff(ranks, L)
        zb, lo, hi = uni.ecdf_band(ranks.size, L, alpha)
    else:
        S = int(np.unique(panel.clusters).size)
        K = pl.pooled_n_eval(S, L)
        z, d = uni.ecdf_diff(ranks, L, n_eval_points=K)
        zb, lo, hi = pl.pooled_band(S, L, K, alpha)
    ax.fill_between(zb, lo - zb, hi - zb, step="post", color=_BAND, alpha=0.6, lw=0)
    ax.axhline(0, color=_GREY, lw=0.6, ls="--")
    ax.step(z, d, where="post", color="black", lw=1.0)
    ax.set_xlim(0, 1)
    lim = max(np.abs(hi - zb).max(), np.abs(lo - zb).max(), np.abs(d).max()) * 1.1
    ax.set_ylim(-lim, lim)
    ax.set_xlabel(x, fontsize=7)
    _title(ax, panel)


def coverage_plot(
    data: Data,
    pool: Sequence[str] = (),
    max_group_members: int = MAX_GROUP_MEMBERS,
    max_cols: int = MAX_COLS,
    max_panels: int = MAX_PANELS,
    *,
    var_names: VarNames = None,
    ax: AxesArg = None,
) -> Figure:
    """Coverage of the central 50/80/90/95 % intervals, from the ranks (exact under
    calibration), with 95 % Clopper–Pearson intervals (Korn–Graubard for pooled panels) and
    the diagonal. Points below the diagonal = intervals too narrow (overconfident)."""
    cal = _calibration(data, pool)
    panels, note = _panels(cal, max_group_members, max_panels, var_names)
    table = cal.coverage
    title = (
        f"Coverage of central intervals ({_study_label(cal.ranks)}); "
        f"bars: 95 % Clopper–Pearson{note}"
    )
    fig, axes = _grid(len(panels), max_cols, title, ax)
    for ax, panel in zip(axes, panels, strict=True):
        rows = table[table["quantity"] == panel.name].sort_values("nominal")
        est, lo, hi = (rows[c].to_numpy() for c in ("estimate", "lo", "hi"))
        bottom = min(0.4, float(np.nanmin(lo)) - 0.03)
        ax.plot([bottom, 1], [bottom, 1], color=_GREY, lw=0.8, ls="--")
        ax.errorbar(
            rows["nominal"],
            est,
            yerr=[est - lo, hi - est],
            fmt="o",
            ms=3.5,
            color=_BAR,
            ecolor=_BAR,
            elinewidth=1.2,
            capsize=2,
        )
        ax.set_xlim(bottom, 1.0)
        ax.set_ylim(bottom, 1.04)  # room for error bars at 100 %
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_major_locator(MultipleLocator(0.2))
            axis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_xlabel("nominal", fontsize=7)
        _title(ax, panel)
    return fig


def coverage_diff_plot(
    data: Data,
    alpha: float = uni.BAND_ALPHA,
    pool: Sequence[str] = (),
    max_group_members: int = MAX_GROUP_MEMBERS,
    max_cols: int = MAX_COLS,
    max_panels: int = MAX_PANELS,
    *,
    var_names: VarNames = None,
    ax: AxesArg = None,
) -> Figure:
    """Coverage minus width of central intervals at every width from 0 to 1, with a
    simultaneous (1 − alpha) band, as R SBC's `plot_coverage_diff`. Below zero: intervals of
    that width are too narrow (overconfident); above: too wide.

    Coverage comes from the ranks: ordering the rank values from the centre outwards, the
    coverage of the m most central ones is the ECDF of each truth's position in that order
    (`coverage.centrality_ranks`), which is uniform under calibration, so the γ band (for
    pooled panels, the band valid under any dependence) is a simultaneous band here too."""
    cal = _calibration(data, pool)
    panels, note = _panels(cal, max_group_members, max_panels, var_names)
    title = (
        f"Coverage − width of central intervals ({_study_label(cal.ranks)}); "
        f"shaded: {1 - alpha:.0%} simultaneous band{note}"
    )
    fig, axes = _grid(len(panels), max_cols, title, ax)
    for ax, panel in zip(axes, panels, strict=True):
        ranks, L = common_ranks(panel.rows)
        central = cov.centrality_ranks(ranks, L)
        _ecdf_panel(ax, panel, central, L, alpha, "width of the central interval")
    return fig


def _estimates(cal: Calibration, max_group_members: int, max_panels: int, var_names: VarNames):
    panels, note = _panels(cal, max_group_members, max_panels, var_names)
    out = []
    for panel in panels:
        rows = panel.rows
        truth = rows["truth"].to_numpy(float)
        mean, sd = rows["mean"].to_numpy(float), rows["sd"].to_numpy(float)
        out.append((panel, truth, mean, sd))
    return out, note


def recovery_plot(
    data: Data,
    pool: Sequence[str] = (),
    max_group_members: int = MAX_GROUP_MEMBERS,
    max_cols: int = MAX_COLS,
    max_panels: int = MAX_PANELS,
    *,
    var_names: VarNames = None,
    ax: AxesArg = None,
) -> Figure:
    """Posterior mean against the truth, one point per simulation, with mean ± 1.645
    posterior sd (a 90 % interval if the posterior is close to normal) and the diagonal, as R
    SBC's `plot_sim_estimated`. Points on the diagonal with short bars: the data identify the
    quantity; a flat cloud: the posterior is the prior."""
    cal = _calibration(data, pool)
    items, note = _estimates(cal, max_group_members, max_panels, var_names)
    title = f"Posterior mean vs truth ({_study_label(cal.ranks)}); bars: mean ± 1.645 sd{note}"
    fig, axes = _grid(len(items), max_cols, title, ax)
    for ax, (panel, truth, mean, sd) in zip(axes, items, strict=True):
        ax.errorbar(truth, mean, yerr=1.645 * sd, fmt="o", ms=2, color=_BAR, ecolor=_BAND,
                    elinewidth=0.6, alpha=0.7)  # fmt: skip
        lo = float(np.nanmin([truth.min(), (mean - 1.645 * sd).min()]))
        hi = float(np.nanmax([truth.max(), (mean + 1.645 * sd).max()]))
        ax.plot([lo, hi], [lo, hi], color=_GREY, lw=0.8, ls="--")
        ax.set_xlabel("truth", fontsize=7)
        ax.set_ylabel("posterior mean", fontsize=7)
        _title(ax, panel)
    return fig


def contraction_plot(
    data: Data,
    pool: Sequence[str] = (),
    max_group_members: int = MAX_GROUP_MEMBERS,
    max_cols: int = MAX_COLS,
    max_panels: int = MAX_PANELS,
    *,
    var_names: VarNames = None,
    ax: AxesArg = None,
) -> Figure:
    """Posterior sd / prior sd against the z-score (posterior mean − truth)/posterior sd, one
    point per simulation (Schad, Betancourt & Vasishth 2021; R SBC's `plot_contraction`).
    The prior sd is that of the truths over simulations (they are prior draws). Low on the y
    axis: the data are informative; z-scores mostly within ±2: no bias at that precision."""
    cal = _calibration(data, pool)
    items, note = _estimates(cal, max_group_members, max_panels, var_names)
    title = f"Posterior sd / prior sd vs z-score ({_study_label(cal.ranks)}){note}"
    fig, axes = _grid(len(items), max_cols, title, ax)
    for ax, (panel, truth, mean, sd) in zip(axes, items, strict=True):
        prior_sd = float(np.std(truth, ddof=1)) if truth.size > 1 else np.nan
        with np.errstate(divide="ignore", invalid="ignore"):
            z = (mean - truth) / sd
            ratio = sd / prior_sd
        ax.scatter(z, ratio, s=4, color=_BAR, alpha=0.6, lw=0)
        for x in (-2, 0, 2):
            ax.axvline(x, color=_GREY, lw=0.6, ls="--" if x else "-")
        ax.set_ylim(0, max(1.05, float(np.nanmax(ratio)) * 1.05) if np.isfinite(ratio).any()
                    else 1.05)  # fmt: skip
        ax.set_xlabel("z-score", fontsize=7)
        ax.set_ylabel("posterior sd / prior sd", fontsize=7)
        _title(ax, panel)
    return fig


def trace_plot(
    draws: Mapping[str, np.ndarray],
    variables: list[str] | None = None,
    max_panels: int = MAX_PANELS,
    max_cols: int = MAX_COLS,
) -> Figure:
    """Trace plots (as rstan::traceplot): one panel per scalar component, one line per chain.

    `draws` maps Stan variable names to (chains, draws, *shape) arrays; `variables` chooses
    which (default: all); at most `max_panels` panels, and the title says when some were
    left out.
    """
    if variables is None:
        variables = list(draws)
    missing = [v for v in variables if v not in draws]
    if missing:
        raise ValueError(f"no draws for {', '.join(missing)}")
    series: list[tuple[str, np.ndarray]] = []
    for var in variables:
        arr = np.asarray(draws[var], dtype=float)
        if arr.ndim < 2:
            raise ValueError(f"draws of {var} must be shaped (chains, draws, ...)")
        flat = arr.reshape(arr.shape[0], arr.shape[1], -1)
        for i, name in enumerate(scalar_names(var, arr.shape[2:])):
            series.append((name, flat[:, :, i]))
    total = len(series)
    series = series[:max_panels]
    chains, n = series[0][1].shape if series else (0, 0)
    title = f"Trace plots ({chains} chains × {n} draws)"
    if total > len(series):
        title += f"; first {len(series)} of {total} panels"
    fig, axes = _grid(len(series), max_cols, title)
    colours = [f"C{i % 10}" for i in range(chains)]
    for ax, (name, x) in zip(axes, series, strict=False):
        for c in range(chains):
            ax.plot(np.arange(1, n + 1), x[c], color=colours[c], lw=0.5, alpha=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_xlim(1, n)
    if series and chains > 1:
        fig.legend(
            axes[0].lines[:chains],
            [f"chain {c + 1}" for c in range(chains)],
            loc="outside lower center",
            ncols=min(chains, 8),
            fontsize=8,
            frameon=False,
        )
    return fig
