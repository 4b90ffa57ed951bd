"""The Python face of sbc, for notebooks and scripts: `run(...)` and `load(folder)` give a
`Results`, whose methods are the CLI's commands and the pictures.

Layers: the stored data (`sbc.results.StoredResults`) is the bottom layer, which may not
import the analysis, the views or the runner. `Results` subclasses it here, at the top
(only `sbc.cli` sits above), and delegates: verdicts to `sbc.analysis`, `check`/`compare`
to `sbc.checks`, pictures to `sbc.plots`, the report and the notebook summary to
`sbc.reports`, the ArviZ export to `sbc.datatree`, re-ranking to `sbc.execution.rerank`.
Everything that accepts stored results accepts a `Results`, and a `Results` is a path-like
object (`os.fspath(results)` is its folder), so scripts that used `sbc.run`'s returned
folder keep working.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sbc.analysis.quantities import select_var_names
from sbc.analysis.verdicts import Calibration
from sbc.results import StoredResults, as_results
from sbc.study import Study

__all__ = ["Results", "load", "rerank", "run"]


class Results(StoredResults):
    """A study's results, to work with in a notebook: `check`, `verdicts`, `compare`,
    `report`, the `plot_*` pictures (matplotlib Figures, ArviZ's `var_names=` and `ax=`),
    `to_datatree`, `rerank`; shown in Jupyter as the verdict in one sentence and a table.

    Its DataFrames (`simulations`, `ranks`) and `folder` are those `sbc.load` always had."""

    study: Study | None = None  # the study that made it in this session (its Python objects)
    #: Derived quantities given as functions in this session (by the study or a rerank), so
    #: that re-ranking again can compute them from the kept draws.
    functions: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance by `of`

    @classmethod
    def of(
        cls,
        stored: StoredResults,
        study: Study | None = None,
        functions: Mapping[str, Any] | None = None,
    ) -> Results:
        out = cls(**{f: getattr(stored, f) for f in StoredResults.__dataclass_fields__})
        out.study = study
        known = dict(study.quantities.derived) if study is not None else {}
        out.functions = {**known, **(functions or {})}
        return out

    # -- a path, for scripts written when `sbc.run` returned the results folder ---------------
    def __fspath__(self) -> str:
        return os.fspath(self.folder)

    def __str__(self) -> str:
        return str(self.folder)

    def __truediv__(self, name: str | os.PathLike[str]) -> Path:
        """`results / "report.html"`: a path in the results folder, as with the old return."""
        return self.folder / name

    def __repr__(self) -> str:
        n = len(self.simulations)
        version = f", ranks version {self.ranks_version}" if len(self.rank_versions) > 1 else ""
        return f"<sbc.Results {self.name!r}: {n} simulations in {self.folder}{version}>"

    # -- verdicts ------------------------------------------------------------------------------
    def calibration(self, alpha: float = 0.01, pool: Sequence[str] | None = None) -> Calibration:
        """The analysis every verdict and picture reads (computed once per alpha and pool)."""
        cache = self.__dict__.setdefault("_calibrations", {})
        key = (alpha, None if pool is None else tuple(pool))
        if key not in cache:
            cache[key] = Calibration.from_results(self, alpha=alpha, pool=pool)
        return cache[key]

    def check(self, alpha: float = 0.01, **limits: Any) -> Any:
        """`sbc check`: a `CheckOutcome` (`.passed`, `.headline`, `.reasons`, `.verdicts`);
        `limits`: max_divergent_share, max_failed_share, pool."""
        from sbc.checks import check

        return check(self, alpha=alpha, **limits)

    def verdicts(self, alpha: float = 0.01, var_names: str | Sequence[str] | None = None):
        """The verdict table: one row per quantity (and pooled row), in study order."""
        table = self.calibration(alpha).table
        if var_names is None:
            return table
        keep = select_var_names(list(table["quantity"]), var_names)
        return table[table["quantity"].isin(keep)].reset_index(drop=True)

    def compare(self, other: StoredResults | str | Path, alpha: float = 0.01, **kwargs: Any):
        """`sbc compare` with this study as the baseline: a `Comparison`."""
        from sbc.checks import compare

        return compare(self, other, alpha=alpha, **kwargs)

    def report(self, path: str | Path | None = None, alpha: float = 0.01) -> Path:
        """Write the HTML report (default: `<folder>/report.html`) and return its path."""
        from sbc.reports import write_report

        return write_report(self, out=Path(path) if path is not None else None, alpha=alpha)

    # -- pictures ------------------------------------------------------------------------------
    def plot_ranks(self, var_names=None, ax=None, **kwargs: Any):
        """Rank histograms with the band each bin stays in under uniformity."""
        return self._plot("rank_histograms", var_names, ax, kwargs)

    def plot_ecdf_diff(self, var_names=None, ax=None, **kwargs: Any):
        """ECDF of the ranks minus the uniform CDF, with the simultaneous band."""
        return self._plot("ecdf_diff", var_names, ax, kwargs)

    def plot_coverage(self, var_names=None, ax=None, difference: bool = True, **kwargs: Any):
        """Coverage minus width of central intervals at every width, with a simultaneous
        band (R SBC's `plot_coverage_diff`); `difference=False`: coverage of the 50, 80,
        90 and 95 % intervals against the diagonal."""
        name = "coverage_diff_plot" if difference else "coverage_plot"
        return self._plot(name, var_names, ax, kwargs)

    def plot_recovery(self, var_names=None, ax=None, **kwargs: Any):
        """Posterior mean ± 1.645 sd against the truth (R SBC's `plot_sim_estimated`)."""
        return self._plot("recovery_plot", var_names, ax, kwargs)

    def plot_contraction(self, var_names=None, ax=None, **kwargs: Any):
        """Posterior sd / prior sd against the z-score (R SBC's `plot_contraction`)."""
        return self._plot("contraction_plot", var_names, ax, kwargs)

    def _plot(self, name: str, var_names: Any, ax: Any, kwargs: dict[str, Any]):
        from sbc import plots

        _figures_shown_in_ipython()
        return getattr(plots, name)(self.calibration(), var_names=var_names, ax=ax, **kwargs)

    # -- other forms and versions --------------------------------------------------------------
    def to_datatree(self) -> Any:
        """An `xarray.DataTree` in ArviZ's layout (``prior_sbc``: the ranks), which
        `arviz_plots.plot_ecdf_pit` draws; truths, posterior moments and diagnostics beside."""
        from sbc.datatree import to_datatree

        return to_datatree(self)

    def rerank(
        self,
        derived: Mapping[str, Callable[..., Any] | str] | None = None,
        thin_ranks: int | None = None,
        simulator: Callable[..., Any] | None = None,
        progress: bool = True,
    ) -> Results:
        """`sbc rerank`: rank the kept draws again with `derived` quantities added (functions
        f(params, data), or 'module:function') or every `thin_ranks`-th draw, without
        refitting; stored as a new version of the ranks. Returns that version's Results."""
        return rerank(self, derived=derived, thin_ranks=thin_ranks, simulator=simulator,
                      progress=progress)  # fmt: skip

    def version(self, ranks_version: int) -> Results:
        """These results with another stored version of the ranks."""
        return Results.of(as_results(self.folder, ranks_version), self.study, self.functions)

    def reload(self) -> Results:
        """Read the results again (a study still running has more by now)."""
        return Results.of(as_results(self.folder, self.ranks_version), self.study, self.functions)

    def _repr_html_(self) -> str:
        from sbc.reports.notebook import summary_html

        return summary_html(self, self.calibration())


def _figures_shown_in_ipython() -> None:
    """In Jupyter, a Figure returned by a cell is drawn as a PNG, as ArviZ's are, even if
    pyplot (which registers that on import) was never imported. Elsewhere: nothing."""
    import sys

    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is None:
        return
    from functools import partial

    from IPython.core.pylabtools import print_figure
    from matplotlib.figure import Figure

    formatters = shell.display_formatter.formatters
    if not any(Figure in f.type_printers for f in formatters.values()):
        formatters["image/png"].for_type(Figure, partial(print_figure, fmt="png", base64=True))


def load(folder: str | Path | StoredResults, ranks_version: int | None = None) -> Results:
    """A study's results (default: the newest version of its ranks), from its folder or from
    a `Results` (`sbc.load(sbc.run(...))` keeps working)."""
    given = folder if isinstance(folder, StoredResults) else Path(folder)
    study = folder.study if isinstance(folder, Results) else None
    functions = folder.functions if isinstance(folder, Results) else None
    if isinstance(given, StoredResults):
        given = given.folder  # read again: the caller asks for what is stored now
    return Results.of(as_results(given, ranks_version), study, functions)


def run(
    study: Study | str | Path | None = None,
    *,
    stan: Any = None,
    simulator: Callable[..., Any] | str | None = None,
    simulator_args: Mapping[str, Any] | None = None,
    sims: int | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    name: str | None = None,
    derived: Mapping[str, Callable[..., Any] | str] | None = None,
    backend: str | Mapping[str, Any] | None = None,
    sampler: Mapping[str, Any] | None = None,
    thin_ranks: int | None = None,
    keep_draws: bool | None = None,
    include: Sequence[str] | None = None,
    pool: Sequence[str] | None = None,
    progress: bool = True,
    **options: Any,
) -> Results:
    """Run (or resume) a study and return its `Results`: `sbc run` from Python.

    Either a study (a file, or a `Study`) with the command line's overrides (sims, seed,
    out, workers, scheduler, ...), or the study itself as Python objects::

        sbc.run(stan="model.stan", simulator=simulate, sims=200, seed=1, out="results/m",
                derived={"loglik": loglik}, backend="cmdstan", sampler={"chains": 2})

    where `stan` is a path or a `cmdstanpy.CmdStanModel`, `simulator` a function
    f(rng, **simulator_args) -> (truth, data) (a closure, one defined in a cell: it is
    shipped to the workers with cloudpickle, and its code and the values it reads are part of
    what a resumed study must match), `derived` functions f(params, data) -> one value per
    draw, `thin_ranks` ranks every k-th draw, `keep_draws` keeps them for `rerank`. With a
    study, `backend="NAME"` runs that inference method on the same datasets instead of the
    study's own (as ``sbc run --backend NAME``): its settings from the file's
    ``[backend.NAME]``, its results in ``results/<name>-NAME``.
    `options`: workers, scheduler, tls, retry_failed, new, stop_early, alpha, look_every.
    """
    from sbc.errors import SBCError
    from sbc.execution.run import run as run_study

    objects = {
        "stan": stan, "simulator": simulator, "simulator_args": simulator_args, "name": name,
        "derived": derived, "backend": backend, "sampler": sampler, "thin_ranks": thin_ranks,
        "keep_draws": keep_draws, "include": include, "pool": pool,
    }  # fmt: skip
    given = sorted(k for k, v in objects.items() if v is not None)
    switch = None
    if study is not None and given == ["backend"] and isinstance(backend, str):
        switch, given = backend, []  # `sbc run study.toml --backend NAME`: another method
    if study is not None and given:
        raise SBCError(
            f"sbc.run: give a study, or the study as keywords ({', '.join(given)}), not both"
        )
    if study is None:
        from sbc.study_objects import study_from_objects

        study = study_from_objects(**objects, sims=sims, seed=seed, out=out)
        sims = seed = out = None  # already in the study
    folder = run_study(
        study, sims=sims, seed=seed, out=out, backend=switch, progress=progress, **options
    )
    return Results.of(as_results(folder), study if isinstance(study, Study) else None)


def rerank(
    results: StoredResults | str | Path,
    derived: Mapping[str, Callable[..., Any] | str] | None = None,
    thin_ranks: int | None = None,
    simulator: Callable[..., Any] | None = None,
    progress: bool = True,
) -> Results:
    """`sbc rerank` from Python (see `Results.rerank`)."""
    from sbc.execution.rerank import rerank as rerank_store
    from sbc.simulate import CallableSimulator, Simulator, UserFunction

    study = results.study if isinstance(results, Results) else None
    known = dict(results.functions) if isinstance(results, Results) else {}
    given = {k: v if isinstance(v, str | UserFunction) else UserFunction(v) if callable(v) else v
             for k, v in (derived or {}).items()}  # fmt: skip
    sim: Simulator | None = study.simulator if study is not None else None
    if simulator is not None:
        args = (study.simulator.describe().get("args") if study is not None else None) or {}
        sim = simulator if isinstance(simulator, Simulator) else CallableSimulator(
            UserFunction(simulator), args)  # fmt: skip
    folder = results.folder if isinstance(results, StoredResults) else Path(results)
    version = rerank_store(folder, derived=given, thin_ranks=thin_ranks, simulator=sim,
                           progress=progress, known=known)  # fmt: skip
    return Results.of(as_results(folder, version), study, {**known, **given})
