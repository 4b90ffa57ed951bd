"""`[simulator] stan`: a simulator written in Stan, run with fixed_param, mapped explicitly."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, STUDIES
from scipy import stats

import sbc
from sbc.analysis.uniformity import holm
from sbc.backends.cmdstan.simulator import StanSimulator
from sbc.errors import SBCError
from sbc.seeds import simulation_seeds
from sbc.simulate import call_simulator
from sbc.simulators import lmm
from sbc.study import load_study

pytestmark = pytest.mark.stan

STUDY = STUDIES / "lmm_sbc_stan_simulator.toml"


@pytest.fixture(scope="module")
def simulator(cmdstan) -> StanSimulator:
    sim = load_study(STUDY).simulator
    assert isinstance(sim, StanSimulator)
    sim.prepare("test", progress=False)
    return sim


def test_the_study_file_maps_outputs_to_the_models_names(simulator):
    assert simulator.truth == {k: k for k in ("beta", "sigma", "tau", "R", "rho", "b")}
    assert simulator.data == {"y": "y_sim"}
    assert simulator.args["N"] == 100 and len(simulator.args["X"]) == 100  # the design file
    described = simulator.describe()
    assert described["args"] == simulator.args  # the design is part of the resume identity
    assert described["stan"].endswith("lmm_simulator.stan")
    assert simulator.source_hash() == load_study(STUDY).simulator.source_hash()


def test_one_draw_per_simulation_seeded_by_the_simulation(simulator):
    rng = simulation_seeds(20261125, 3)[0]
    truth, data = call_simulator(simulator, rng)
    again, _ = call_simulator(simulator, simulation_seeds(20261125, 3)[0])
    other, _ = call_simulator(simulator, simulation_seeds(20261125, 4)[0])
    assert all(np.array_equal(truth[k], again[k]) for k in truth)
    assert not np.array_equal(truth["beta"], other["beta"])
    assert {k: np.shape(v) for k, v in truth.items()} == {
        "beta": (2,), "sigma": (), "tau": (2,), "R": (2, 2), "rho": (1,), "b": (10, 2)
    }  # fmt: skip
    assert set(data) == {"N", "K", "Q", "J", "X", "Z", "g", "y"}  # args + the mapped y
    assert data["y"].shape == (100,)
    # y is the simulator's own draw given its truth: its residuals are N(0, sigma²)
    mu = np.asarray(data["X"]) @ truth["beta"] + np.sum(
        np.asarray(data["Z"]) * truth["b"][np.asarray(data["g"]) - 1], axis=1
    )
    assert abs(np.std((data["y"] - mu) / truth["sigma"]) - 1) < 0.3


def test_integer_outputs_are_integers_in_the_data(tmp_path, cmdstan):
    stan = tmp_path / "counts.stan"
    stan.write_text(
        "data { int N; }\n"
        "generated quantities {\n  real lambda = exponential_rng(1);\n"
        "  array[N] int k;\n  for (n in 1:N) k[n] = poisson_rng(lambda);\n}\n"
    )
    sim = StanSimulator(stan_file=stan, truth={"lambda": "lambda"}, data={"y": "k"},
                        args={"N": 4})  # fmt: skip
    sim.prepare("test", progress=False)
    _, data = sim.simulate(np.random.default_rng(1))
    assert data["y"].dtype.kind == "i" and data["y"].shape == (4,) and data["N"] == 4


def test_the_stan_simulator_draws_the_priors_of_the_python_one(simulator):
    """3000 draws of each: the exact priors (one-sample KS) and each other (two-sample KS),
    Holm over the 12 tests at 0.001: a false failure for 1 seed in 1000."""
    draws = simulator.simulate_many(np.random.default_rng(2), 3000)
    stan = _summaries([t for t, _ in draws])
    python = _summaries([lmm.simulate(np.random.default_rng(10_000 + i))[0] for i in range(3000)])
    exact = {
        "beta[1]": stats.norm(0, 10).cdf,
        "sigma": stats.halfnorm(scale=5).cdf,
        "tau[2]": stats.halfnorm(scale=5).cdf,
        "rho": stats.beta(2, 2, loc=-1, scale=2).cdf,  # LKJ(2) for 2 x 2
        "b[1,1]/tau[1]": stats.norm().cdf,
        "b[3,2]/tau[2]": stats.norm().cdf,
    }
    p = [stats.kstest(stan[k], cdf).pvalue for k, cdf in exact.items()]
    p += [stats.ks_2samp(stan[k], python[k]).pvalue for k in exact]
    assert holm(p).min() > 1e-3, dict(zip([*exact, *exact], p, strict=True))


def _summaries(truths: list[dict]) -> dict[str, np.ndarray]:
    return {
        "beta[1]": np.array([t["beta"][0] for t in truths]),
        "sigma": np.array([float(t["sigma"]) for t in truths]),
        "tau[2]": np.array([t["tau"][1] for t in truths]),
        "rho": np.array([t["rho"][0] for t in truths]),
        "b[1,1]/tau[1]": np.array([t["b"][0, 0] / t["tau"][0] for t in truths]),
        "b[3,2]/tau[2]": np.array([t["b"][2, 1] / t["tau"][1] for t in truths]),
    }


def test_a_worker_without_the_executable_gets_it_from_the_shipped_source(simulator):
    """What a dask worker on another host does (remote.py): find or compile by source hash."""
    moved = pickle.loads(pickle.dumps(simulator))
    moved.program = dataclasses.replace(moved.program, exe_file=Path("/nonexistent/exe"))
    truth, _ = moved.simulate(np.random.default_rng(5))
    expected, _ = simulator.simulate(np.random.default_rng(5))
    assert np.array_equal(truth["b"], expected["b"])


def test_a_study_with_simulator_and_quantities_in_stan(tmp_path, cmdstan):
    """log_lik_sum from Stan ranks as the Python loglik does on the same fits."""
    text = STUDY.read_text().replace('"../stan/', f'"{ROOT}/stan/')
    text = text.replace('args = "lmm_design.json"', f'args = "{STUDIES}/lmm_design.json"')
    for old, new in (("iter_warmup = 250", "iter_warmup = 100"),
                     ("iter_sampling = 500", "iter_sampling = 100")):  # fmt: skip
        assert old in text, f"{STUDY.name} no longer says {old!r}: follow it here"
        text = text.replace(old, new)
    path = tmp_path / "study.toml"
    path.write_text(text)
    study = load_study(path).with_overrides(sims=3, out=tmp_path / "out")
    folder = sbc.run(study, workers=1, progress=False)
    ranks = sbc.load(folder).ranks.pivot(index="sim", columns="quantity", values="rank")
    assert {"log_lik_sum", "lp__", "loglik", "b[10,2]"} <= set(ranks.columns)
    assert (ranks["log_lik_sum"] == ranks["loglik"]).all()
    truths = sbc.load(folder).ranks.pivot(index="sim", columns="quantity", values="truth")
    assert np.allclose(truths["log_lik_sum"], truths["loglik"], rtol=0, atol=1e-8)
    # the ranks' identity holds [quantities] stan: more simulations resume version 1
    sbc.run(study.with_overrides(sims=4), workers=1, progress=False)
    stored = sbc.load(folder)
    assert stored.ranks_version == 1 and sorted(stored.ranks["sim"].unique()) == [0, 1, 2, 3]
    with pytest.raises(SBCError, match=r"simulated by a Stan program \(lmm_simulator\.stan\)"):
        sbc.rerank(folder, thin_ranks=20, progress=False)
