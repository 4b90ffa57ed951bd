"""The notebook API: sbc.run with Python objects, Results and its methods, the ArviZ export,
no side effects on the calling process, and resuming from a new process."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT

import sbc
from sbc.errors import SBCError

LINREG = ROOT / "stan" / "linreg.stan"

#: A notebook cell: a simulator that closes over a design matrix, defined in a function.
#: Executed here and, as a user re-running the cell, in a new process (as `__main__`, with no
#: source file: its fingerprint is then taken from the bytecode and the values it reads).
CELL = """
import numpy as np

def make_simulator(X):
    N, K = X.shape
    def simulate(rng):
        alpha = rng.normal(0.0, 2.0)
        beta = rng.normal(0.0, 1.0, size=K)
        sigma = rng.exponential(1.0)
        y = rng.normal(alpha + X @ beta, sigma)
        return {"alpha": alpha, "beta": beta, "sigma": sigma}, {"N": N, "K": K, "X": X, "y": y}
    return simulate

X = np.column_stack([np.linspace(-1, 1, 12), np.cos(np.arange(12.0))]) + SHIFT
SAMPLER = {"chains": 1, "warmup": 150, "draws": 150}
"""


def cell(shift: float = 0.0) -> dict:
    namespace = {"__name__": "__main__", "SHIFT": shift}
    exec(CELL, namespace)
    return namespace


RESUME = """
import json, sys
import sbc
out, shift, sims = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
namespace = {"__name__": "__main__", "SHIFT": shift}
exec(CELL, namespace)
try:
    res = sbc.run(stan=STAN, simulator=namespace["make_simulator"](namespace["X"]),
                  sims=sims, seed=5, out=out, sampler=namespace["SAMPLER"], thin_ranks=3,
                  workers=1, progress=False)
except sbc.SBCError as exc:
    print(json.dumps({"error": str(exc)}))
else:
    print(json.dumps({"sims": len(res.simulations), "ranks": res.ranks.to_dict("list")}))
"""


def _resume_in_new_process(out: Path, shift: float, sims: int) -> dict:
    code = f"CELL = {CELL!r}\nSTAN = {str(LINREG)!r}\n" + RESUME
    done = subprocess.run([sys.executable, "-c", code, str(out), str(shift), str(sims)],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.stan
def test_a_closure_runs_a_stan_study_which_a_new_process_resumes(cmdstan, tmp_path, monkeypatch):
    """The cell's closure over X runs through sbc.run(stan=..., simulator=...); a new
    process that re-runs the cell resumes the study (same ranks, only the missing
    simulations fitted); one whose X differs is refused. The run leaves cmdstanpy's logger
    and $CMDSTAN (cmdstanpy's CmdStan path) as they were."""
    import cmdstanpy

    monkeypatch.delenv("CMDSTAN", raising=False)
    before = cmdstanpy.cmdstan_path()  # cmdstanpy's own pick, which it records in $CMDSTAN
    monkeypatch.delenv("CMDSTAN")  # as in a fresh kernel: sbc must not set it for the user
    logger = logging.getLogger("cmdstanpy")
    logger.disabled = False
    ns = cell()
    out = tmp_path / "linreg"
    res = sbc.run(stan=LINREG, simulator=ns["make_simulator"](ns["X"]), sims=4, seed=5,
                  out=out, sampler=ns["SAMPLER"], thin_ranks=3, workers=2,
                  progress=False)  # fmt: skip
    assert isinstance(res, sbc.Results) and res.folder == out and os.fspath(res) == str(out)
    assert len(res.simulations) == 4 and (res.simulations["status"] == "ok").all()
    assert set(res.ranks["quantity"]) == {"alpha", "beta[1]", "beta[2]", "sigma"}
    assert (res.ranks["L"] == 50).all()  # 150 draws, every 3rd
    assert logger.disabled is False  # silenced only in the workers
    assert "CMDSTAN" not in os.environ
    assert cmdstanpy.cmdstan_path() == before
    before = res.ranks.copy()

    resumed = _resume_in_new_process(out, shift=0.0, sims=6)
    assert resumed["sims"] == 6
    after = pd.DataFrame(resumed["ranks"])
    pd.testing.assert_frame_equal(after[after["sim"] < 4].reset_index(drop=True),
                                  before.reset_index(drop=True))  # fmt: skip
    assert set(after["sim"]) == set(range(6))

    other = _resume_in_new_process(out, shift=1.0, sims=6)  # another design matrix
    assert "the simulator's code" in other["error"] and "changed" in other["error"]


# -- exact-backend studies: Results, its methods, the ArviZ export ---------------------------------


def normal_simulator(K: int):
    """A closure (over the prior sd of each mean) for the exact backend's conjugate model."""
    prior_sd = np.ones(K)

    def simulate(rng):
        mu = rng.normal(0.0, prior_sd)
        y = rng.normal(mu, 1.0, size=(5, K))
        return {"mu": mu}, {"N": 5, "K": K, "y": y, "prior_sd": 1.0, "sigma": 1.0}

    return simulate


def exact_run(out: Path, sims: int = 40, **kwargs) -> sbc.Results:
    options = {"backend": "exact", "sampler": {"chains": 2, "draws": 40}, "thin_ranks": 2,
               "seed": 3, "workers": 1, "progress": False}  # fmt: skip
    return sbc.run(sims=sims, out=out, **{"simulator": normal_simulator(2), **options, **kwargs})


@pytest.fixture(scope="module")
def narrow(tmp_path_factory) -> sbc.Results:
    """A miscalibrated study: the posterior is 0.5 times too narrow."""
    out = tmp_path_factory.mktemp("nb") / "narrow"
    return exact_run(out, sims=60, backend={"type": "exact", "sd_scale": 0.5})


def test_results_methods_and_the_notebook_summary(narrow, tmp_path):
    outcome = narrow.check(alpha=0.01)
    assert not outcome.passed and outcome.headline.startswith("Not calibrated")
    table = narrow.verdicts()
    assert list(table["quantity"]) == ["mu[1]", "mu[2]"] and not table["calibrated"].any()
    assert list(narrow.verdicts(var_names="mu[2]")["quantity"]) == ["mu[2]"]
    page = narrow._repr_html_()
    assert outcome.headline.split(":")[0] in page and "mu[1]" in page and "✗" in page
    assert narrow.report(tmp_path / "r.html").read_text().count("<img ") >= 6
    assert sbc.load(narrow).ranks.equals(narrow.ranks)  # load accepts Results: path-like
    assert str(narrow) == str(narrow.folder) and Path(narrow) == narrow.folder


def test_every_plot_takes_var_names_and_ax(narrow):
    from matplotlib.figure import Figure

    for name in ("plot_ranks", "plot_ecdf_diff", "plot_coverage", "plot_recovery",
                 "plot_contraction"):  # fmt: skip
        plot = getattr(narrow, name)
        fig = plot()
        assert isinstance(fig, Figure) and len(fig.axes) == 2, name
        assert [a.get_title() for a in plot(var_names="~mu[1]").axes] == ["mu[2]"], name
        mine = Figure()
        axes = mine.subplots(1, 2)
        assert plot(ax=axes) is mine and all(a.has_data() for a in axes), name
        with pytest.raises(ValueError, match="2 panels to draw, 1 axes given"):
            plot(ax=axes[0])
        with pytest.raises(ValueError, match="var_names: tau not ranked"):
            plot(var_names="tau")
    assert len(narrow.plot_coverage(difference=False).axes) == 2


def test_to_datatree_is_drawn_by_arviz_plots(narrow):
    """ArviZ's layout: `prior_sbc` holds the ranks on (chain, draw) = (1, simulations), which
    arviz_plots.plot_ecdf_pit draws, one panel per component of mu."""
    arviz_plots = pytest.importorskip("arviz_plots")
    dt = narrow.to_datatree()
    ranks = dt["prior_sbc"]["mu"]
    assert ranks.dims == ("chain", "draw", "mu_dim_0") and ranks.shape == (1, 60, 2)
    stored = narrow.ranks.pivot(index="sim", columns="quantity", values="rank")
    np.testing.assert_array_equal(ranks.values[0], stored[["mu[1]", "mu[2]"]].to_numpy())
    np.testing.assert_allclose(dt["truth"]["mu"].values[0, :, 0],
                               narrow.ranks.query("quantity == 'mu[1]'")["truth"])  # fmt: skip
    assert set(dt.children) >= {"prior_sbc", "truth", "posterior_mean", "posterior_sd",
                                "diagnostics"}  # fmt: skip
    assert dt["diagnostics"]["status"].size == 60
    pc = arviz_plots.plot_ecdf_pit(dt, backend="matplotlib")
    lines = pc.viz["ecdf_lines"]["mu"].values
    assert lines.size == 2  # one ECDF difference per component
    for line in lines.ravel():
        x, y = line.get_data()
        assert len(x) > 10 and np.all(np.isfinite(y))
    # the band is what 60 ranks of a calibrated quantity stay in; these are too narrow (∪):
    # the ECDF difference leaves it, as sbc's own γ test says
    assert narrow.verdicts()["log_gamma_ratio"].max() < 0


def test_bad_keywords_are_one_line_errors(tmp_path):
    with pytest.raises(SBCError, match="simulator: missing"):
        sbc.run(stan=LINREG, sims=2, out=tmp_path / "x")
    with pytest.raises(SBCError, match="give a study, or the study as keywords"):
        sbc.run(ROOT / "studies" / "exact_normal.toml", simulator=normal_simulator(2))
    with pytest.raises(SBCError, match=r"^sbc.run: stan: expected a .stan file or a "):
        sbc.run(stan=42, simulator=normal_simulator(2), out=tmp_path / "y")
    with pytest.raises(SBCError, match=r"^sbc.run: \[sampler\] chains: expected an integer"):
        exact_run(tmp_path / "z", sampler={"chains": "two"})
    with pytest.raises(SBCError, match="gives different results for the same rng seed"):
        exact_run(tmp_path / "w", simulator=lambda rng: ({"mu": np.random.normal(size=2)}, {}))
    assert not any(tmp_path.iterdir())  # nothing written


def test_derived_quantities_as_functions_and_resuming_with_one_more(tmp_path):
    """A study that kept its draws resumes with a derived quantity added: the stored
    simulations are re-ranked into a new version (no refit), the new ones fitted."""
    out = tmp_path / "kept"
    first = exact_run(out, sims=10, keep_draws=True)
    assert first.rank_versions == (1,)

    def total(params, data):
        return params["mu"].sum(axis=-1)

    more = exact_run(out, sims=14, keep_draws=True, derived={"total": total})
    assert more.rank_versions == (1, 2) and more.ranks_version == 2
    assert set(more.ranks["quantity"]) == {"mu[1]", "mu[2]", "total"}
    assert more.ranks["sim"].nunique() == 14
    assert sbc.load(out, ranks_version=1).ranks["sim"].nunique() == 10  # never overwritten
    fresh = exact_run(tmp_path / "fresh", sims=14, keep_draws=True, derived={"total": total})
    cols = ["sim", "quantity", "truth", "rank", "L"]
    pd.testing.assert_frame_equal(more.ranks[cols], fresh.ranks[cols])
    again = exact_run(out, sims=14, keep_draws=True, derived={"total": total})
    assert again.rank_versions == (1, 2)  # the version with these settings, found again


def test_fingerprints_follow_code_and_data_not_where_the_function_lives():
    from sbc.fingerprint import function_fingerprint

    a, b, shifted = cell(), cell(), cell(1.0)
    fa = function_fingerprint(a["make_simulator"](a["X"]))
    assert fa == function_fingerprint(b["make_simulator"](b["X"]))  # the cell run again
    assert fa != function_fingerprint(shifted["make_simulator"](shifted["X"]))  # other data
    edited = {"__name__": "__main__", "SHIFT": 0.0}
    exec(CELL.replace("rng.exponential(1.0)", "rng.exponential(2.0)"), edited)
    assert fa != function_fingerprint(edited["make_simulator"](edited["X"]))  # other code
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, sys.argv[1])
        from test_notebook_api import cell
        from sbc.fingerprint import function_fingerprint
        ns = cell()
        print(function_fingerprint(ns["make_simulator"](ns["X"])))
    """)
    done = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent)],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert done.stdout.strip() == fa  # the same in another process
