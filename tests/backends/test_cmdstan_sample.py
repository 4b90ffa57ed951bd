"""The CmdStan sample backend on real fits: its diagnostics from cmdstanpy's public accessors
agree with the sampler's own output columns, and `<exe> info` runs once per model."""

from __future__ import annotations

import re
from pathlib import Path

import cmdstanpy
import numpy as np
import pytest
from conftest import ROOT, STUDIES

from sbc.backends.cmdstan import program
from sbc.backends.cmdstan.sample import CmdStanBackend
from sbc.backends.convergence import ebfmi
from sbc.execution.prepare import make_backend
from sbc.seeds import inits_rng, simulation_seeds
from sbc.simulate import call_simulator
from sbc.simulators.normal import simulate as simulate_normal
from sbc.study import load_study, parse_study

NORMAL_STAN = ROOT / "stan" / "normal_known_sigma.stan"


@pytest.fixture(scope="module")
def lmm(cmdstan):
    study = load_study(STUDIES / "lmm_sbc.toml")
    backend = make_backend(study, cores=1)
    backend.prepare(progress=False)
    return study, backend


def _fit(study, backend, sim: int, workdir: Path):
    rng, seed, _ = simulation_seeds(study.seed, sim)
    _, data = call_simulator(study.simulator, rng)
    workdir.mkdir()
    return backend.fit(data, seed, workdir)


@pytest.mark.stan
def test_diagnostics_agree_with_the_sampler_columns(lmm, tmp_path, monkeypatch):
    study, backend = lmm
    calls = []
    info = cmdstanpy.CmdStanModel.exe_info
    monkeypatch.setattr(cmdstanpy.CmdStanModel, "exe_info", lambda m: calls.append(1) or info(m))
    program._MODELS.clear()  # a fresh worker process
    fits = [_fit(study, backend, sim, tmp_path / str(sim)) for sim in (0, 1)]
    assert len(calls) == 1  # sample() asks every time; the executable is asked once

    for fit in fits:
        d = backend.diagnose(fit)
        assert set(d) <= {rule.name for rule in backend.diagnostics}
        arr, cols = fit.draws(), list(fit.column_names)

        def column(name, arr=arr, cols=cols):
            return arr[:, :, cols.index(name)].T  # (chains, draws)

        assert d["divergences"] == column("divergent__").sum()
        assert d["treedepth_hits"] == (column("treedepth__") >= 10).sum()
        assert d["stepsize"] == pytest.approx(column("stepsize__")[:, 0].mean(), rel=1e-12)
        assert d["ebfmi_min"] == np.min(ebfmi(column("energy__")))
        assert d["n_draws"] == 1000
        elapsed = [re.search(r"Elapsed Time: ([\d.]+) seconds \(Warm-up\)\s*#\s*([\d.]+)",
                             Path(f).read_text()) for f in fit.runset.csv_files]  # fmt: skip
        assert d["warmup_seconds"] == pytest.approx(sum(float(m[1]) for m in elapsed))
        assert d["sampling_seconds"] == pytest.approx(sum(float(m[2]) for m in elapsed))
        assert d["rhat_max"] >= 1 and d["ess_tail_min"] > 0 and d["ess_bulk_min"] > 0


# -- cmdstanpy's sample() arguments, under cmdstanpy's names (issue 14) -------------------------


def _nuts(tmp_path: Path, **backend) -> CmdStanBackend:
    raw = {
        "name": "n", "stan": str(NORMAL_STAN), "thin_ranks": 1,
        "backend": {"type": "cmdstan", **backend},
        "simulator": {"function": "sbc.simulators.normal:simulate"},
    }  # fmt: skip
    return make_backend(parse_study(raw, tmp_path / "n.toml"), cores=2)


def test_every_setting_reaches_cmdstanpy_under_its_own_name(tmp_path):
    backend = _nuts(tmp_path, chains=3, iter_warmup=100, iter_sampling=60, thin=2,
                    adapt_delta=0.95, max_treedepth=8, step_size=0.3, metric="dense_e",
                    adapt_init_phase=20, adapt_metric_window=30, adapt_step_size=40,
                    inits=0.5, refresh=7, sig_figs=9, timeout=0)  # fmt: skip
    _, data = simulate_normal(np.random.default_rng(0))
    args = backend.arguments(data, 123, tmp_path)
    assert args == {
        "data": str(tmp_path / "data.json"), "chains": 3, "parallel_chains": 2, "seed": 123,
        "iter_warmup": 100, "iter_sampling": 60, "max_treedepth": 8, "adapt_engaged": True,
        "adapt_delta": 0.95, "thin": 2, "step_size": 0.3, "metric": "dense_e",
        "adapt_init_phase": 20, "adapt_metric_window": 30, "adapt_step_size": 40,
        "inits": 0.5, "refresh": 7, "sig_figs": 9, "output_dir": str(tmp_path),
        "show_progress": False, "show_console": False, "timeout": None,
    }  # fmt: skip
    plain = _nuts(tmp_path).arguments(data, 1, tmp_path)
    assert "metric" not in plain and "inits" not in plain  # unset: CmdStan's own default
    fixed = _nuts(tmp_path, iter_warmup=0, adapt_engaged=False, step_size=0.1)
    assert "adapt_delta" not in fixed.arguments(data, 1, tmp_path)  # cmdstanpy refuses it


@pytest.mark.stan
def test_cmdstan_runs_with_them(cmdstan, tmp_path):
    backend = _nuts(tmp_path, chains=2, iter_warmup=100, iter_sampling=60, thin=2,
                    metric="dense_e", adapt_init_phase=20, adapt_metric_window=30,
                    adapt_step_size=40, step_size=0.3, sig_figs=9)  # fmt: skip
    backend.prepare(progress=False)
    _, data = simulate_normal(np.random.default_rng(0))
    fit = backend.fit(data, 5, tmp_path)
    config = fit.metadata.cmdstan_config
    assert (config["thin"], config["metric"], config["stepsize"], config["sig_figs"]) == (
        2, "dense_e", 0.3, 9)  # fmt: skip
    assert (config["init_buffer"], config["window"], config["term_buffer"]) == (20, 30, 40)
    assert backend.draws(fit)["mu"].shape == (2, 30, 3)  # CmdStan kept every 2nd of 60
    assert backend.diagnose(fit)["n_draws"] == 60


@pytest.mark.stan
def test_an_inits_function_starts_each_chain_where_it_says(cmdstan, tmp_path):
    (tmp_path / "inits.py").write_text(
        "def inits(rng, data):\n    return {'mu': 10 + rng.normal(size=data['K'])}\n"
    )
    # no warm-up and a tiny step: the first draw is (within 1e-6) where the chain started
    backend = _nuts(tmp_path, chains=2, iter_warmup=0, iter_sampling=1, adapt_engaged=False,
                    step_size=1e-9, inits="inits.py:inits")  # fmt: skip
    backend.prepare(progress=False)
    _, data = simulate_normal(np.random.default_rng(0))
    starts = []
    for run in ("a", "b"):
        (tmp_path / run).mkdir()
        starts.append(backend.draws(backend.fit(data, 5, tmp_path / run))["mu"][:, 0])
    rng = inits_rng(5)
    expected = np.array([10 + rng.normal(size=3) for _ in range(2)])
    assert np.allclose(starts[0], expected, atol=1e-4)  # chain c got the c-th call
    assert np.array_equal(starts[0], starts[1])  # the same fit seed, the same inits


# -- continuing a fit (thin_ranks = "auto", issue 18) --------------------------------------------

#: A posterior with one stiff direction: x1 - x2 has sd 0.1. A chain that starts afresh (inits
#: uniform in (-2, 2), no warm-up) keeps most of its initial x1 - x2 for many draws with
#: max_treedepth = 3 (Hamiltonian dynamics conserve that energy); a continued chain is in the
#: posterior from its first draw.
CORRELATED = """
parameters { vector[2] x; }
model { x ~ multi_normal([0, 0]', [[1, 0.995], [0.995, 1]]); }
"""


@pytest.mark.stan
@pytest.mark.parametrize("metric", [None, "dense_e"])  # dense: lmm_sbc_auto.toml's
def test_a_continued_fit_continues_each_chain(cmdstan, tmp_path, metric):
    stan = tmp_path / "correlated.stan"
    stan.write_text(CORRELATED)
    raw = {
        "name": "c", "stan": str(stan), "thin_ranks": "auto", "thin_ranks_auto": {"L": 40},
        "backend": {"type": "cmdstan", "chains": 8, "iter_warmup": 300, "iter_sampling": 100,
                    "max_treedepth": 3, **({"metric": metric} if metric else {})},
        "simulator": {"function": "sbc.simulators.normal:simulate"},
    }  # fmt: skip
    backend = make_backend(parse_study(raw, tmp_path / "c.toml"), cores=2)
    backend.prepare(progress=False)
    _, data = simulate_normal(np.random.default_rng(0))
    first = backend.fit(data, 5, tmp_path)
    fit = backend.extend(first, 60, 77, tmp_path)
    again = fit.runs[1]
    draws = backend.draws(fit)["x"]
    assert draws.shape == (8, 160, 2)
    assert np.array_equal(draws[:, :100], backend.draws(first)["x"])  # the old draws, first

    # the same sampler: no warm-up, no adaptation, each chain's adapted step size and metric
    config = again.metadata.cmdstan_config
    assert (config["num_warmup"], config["engaged"], config["num_samples"]) == (0, 0, 60)
    assert config["seed"] == 77 and config["sig_figs"] == 18
    assert np.array_equal(again.step_size, first.step_size)
    assert again.metric_type == first.metric_type == (metric or "diag_e")
    assert again.inv_metric.shape == ((8, 2, 2) if metric == "dense_e" else (8, 2))
    assert np.allclose(again.inv_metric, first.inv_metric, rtol=1e-12)

    # ... from each chain's last draw: its first new draw is already a posterior draw (the
    # chain is stationary), |x1 - x2| < 0.5 = 5 posterior sd (a continued chain misses that
    # with probability 6e-7). A chain started afresh without warm-up lands there with
    # probability about 0.4 (measured: |x1 - x2| of 0.04 to 1.9), all 8 of them 7e-4.
    assert (np.abs(draws[:, 100, 0] - draws[:, 100, 1]) < 0.5).all()

    d = backend.diagnose(fit)
    assert d["n_draws"] == 8 * 160 and d["extensions"] == 1
    leapfrogs = sum(r.method_variables()["n_leapfrog__"].sum() for r in fit.runs)
    assert d["n_leapfrog"] == leapfrogs
    assert d["stepsize"] == pytest.approx(float(np.mean(first.step_size)))
    fit = backend.extend(fit, 10, 78, tmp_path)  # and again, from the continuation's end
    assert backend.draws(fit)["x"].shape == (8, 170, 2)
    assert backend.diagnose(fit)["extensions"] == 2
