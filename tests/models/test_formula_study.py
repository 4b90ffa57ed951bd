"""Formula models end to end on a real CmdStan: a small study (program beside the results,
labels in the verdict table, pooled rows declared by the model), and the seed's example
through the formula against the hand-written program on the same dataset."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, STUDIES
from scipy.stats import norm

import sbc
from sbc.backends.convergence import ess_bulk
from sbc.execution.prepare import make_backend
from sbc.seeds import simulation_seeds
from sbc.simulate import call_simulator
from sbc.study import load_study, parse_study

pytestmark = pytest.mark.stan


def small(tmp_path: Path, name: str, sims: int = 4) -> Path:
    """A shipped formula study with few simulations and a short sampler."""
    text = (STUDIES / f"{name}.toml").read_text()
    text = re.sub(r"^sims = \d+", f"sims = {sims}", text, flags=re.M)
    text = re.sub(r"^iter_warmup = \d+", "iter_warmup = 150", text, flags=re.M)
    text = re.sub(r"^iter_sampling = \d+", "iter_sampling = 150", text, flags=re.M)
    text = re.sub(r"^thin_ranks = \d+", "thin_ranks = 3", text, flags=re.M)
    text = text.replace(f'name = "{name}"', f'name = "{name}"\nout = "{tmp_path / "out"}"')
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def test_a_formula_study_runs_checks_and_keeps_its_program(cmdstan, tmp_path):
    path = small(tmp_path, "lmm_formula_seed")
    proc = subprocess.run(
        [sys.executable, "-m", "sbc.cli", "run", str(path), "--quiet", "--workers", "2"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    folder = tmp_path / "out"
    study = load_study(path)
    assert (folder / "model.stan").read_text() == study.model.program
    res = sbc.load(folder)
    assert res.labels["beta[2]"] == "x" and res.pool == ("b_group",)
    assert res.manifest["study"]["model"]["parameterisation"] == "centred"
    assert res.manifest["stan_source"] == study.model.program
    assert list(res.manifest["quantities"][:6]) == [
        "beta[1]", "beta[2]", "sigma", "tau_group[1]", "tau_group[2]", "rho_group",
    ]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "sbc.cli", "check", str(folder)],
                          capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert proc.returncode in (0, 1), proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("draws from cmdstan: NUTS"), lines[0]
    assert lines[1].split()[:2] == ["quantity", "label"]
    assert any(re.match(r"\s*b_group\[\*,2\]\s+x \| group \(pooled\)", row) for row in lines)
    assert any(re.match(r"\s*tau_group\[1\]\s+sd\(Intercept \| group\)", row) for row in lines)


def _per_scalar(draws: dict, names: list[str]) -> np.ndarray:
    """(quantity, chain, draw): the named variables' components, in order."""
    parts = [draws[n].reshape(*draws[n].shape[:2], -1) for n in names]
    return np.moveaxis(np.concatenate(parts, axis=2), 2, 0)


@pytest.mark.slow  # two fits of 4 x 2000 iterations: about 2 minutes on a loaded machine
def test_the_seeds_example_through_the_formula_matches_the_hand_written_program(cmdstan, tmp_path):
    """lmm_recovery.toml and lmm_formula_recovery.toml simulate the same dataset (bit for bit);
    fitted by lmm_centered.stan and by the generated program (different NUTS seeds), every
    posterior mean agrees within Monte Carlo error: z = (m1 - m2) / sqrt(mcse1² + mcse2²)
    with mcse = sd / sqrt(bulk ESS), |z| below the Bonferroni limit for a family-wise
    false-failure rate of 0.001 over the 26 quantities (|z| < 3.9; fixed seeds). A real
    difference shows: a prior sd of 1 instead of 10 on beta moves beta[1] by about 3 posterior
    sds here, over 100 MCSEs."""
    studies = [load_study(STUDIES / f) for f in ("lmm_recovery.toml", "lmm_formula_recovery.toml")]
    datasets = [call_simulator(s.simulator, simulation_seeds(s.seed, 0)[0])[1] for s in studies]
    np.testing.assert_array_equal(datasets[0]["y"], datasets[1]["y"])
    names = (["beta", "sigma", "tau", "rho", "b"],
             ["beta", "sigma", "tau_group", "rho_group", "b_group"])  # fmt: skip
    scalars = []
    for study, data, seed, vars_ in zip(studies, datasets, (11, 12), names, strict=True):
        backend = make_backend(study, cores=2)
        backend.prepare(progress=False)
        workdir = tmp_path / f"fit{seed}"
        workdir.mkdir()
        fit = backend.fit(data, seed, workdir)
        scalars.append(_per_scalar(backend.draws(fit), vars_))
    hand, formula = scalars
    assert hand.shape == formula.shape == (26, 4, 1000)
    mcse = [d.std(axis=(1, 2)) / np.sqrt(ess_bulk(d)) for d in (hand, formula)]
    z = (hand.mean(axis=(1, 2)) - formula.mean(axis=(1, 2))) / np.hypot(*mcse)
    assert np.max(np.abs(z)) < norm.isf(0.001 / 2 / len(z)), z


def test_on_one_nuts_seed_the_generated_program_draws_what_the_hand_written_one_draws(
    cmdstan, tmp_path
):
    """The generated centred program is the seed's program in other names: the same
    parameters in the same order and the same arithmetic, so on the same dataset and the same
    NUTS seed CmdStan draws the very same numbers (short chains: this is about identity, not
    about the posterior; the slow test above compares posteriors with different seeds)."""
    names = (["beta", "sigma", "tau", "rho", "b"],
             ["beta", "sigma", "tau_group", "rho_group", "b_group"])  # fmt: skip
    scalars = []
    for file, vars_ in zip(("lmm_recovery.toml", "lmm_formula_recovery.toml"), names, strict=True):
        raw = tomllib.loads((STUDIES / file).read_text())
        raw["backend"].update(chains=2, iter_warmup=150, iter_sampling=150)
        study = parse_study(raw, STUDIES / file)
        data = call_simulator(study.simulator, simulation_seeds(study.seed, 3)[0])[1]
        backend = make_backend(study, cores=1)
        backend.prepare(progress=False)
        workdir = tmp_path / file
        workdir.mkdir()
        scalars.append(_per_scalar(backend.draws(backend.fit(data, 7, workdir)), vars_))
    hand, formula = scalars
    assert hand.shape == formula.shape == (26, 2, 150)
    np.testing.assert_array_equal(hand, formula)
