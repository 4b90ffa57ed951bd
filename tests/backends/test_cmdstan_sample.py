"""The CmdStan sample backend on real fits: its diagnostics from cmdstanpy's public accessors
agree with the sampler's own output columns, and `<exe> info` runs once per model."""

from __future__ import annotations

import re
from pathlib import Path

import cmdstanpy
import numpy as np
import pytest
from conftest import STUDIES

from sbc.backends.cmdstan import program
from sbc.backends.convergence import ebfmi
from sbc.execution.prepare import make_backend
from sbc.seeds import simulation_seeds
from sbc.simulate import call_simulator
from sbc.study import load_study

pytestmark = pytest.mark.stan


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
