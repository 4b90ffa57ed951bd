"""Study files: what the generic study reads, what the backend's declarations read, the resume
identity (unchanged since sbc 0.1, so its results resume) and `[quantities] pool`."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ROOT, STUDIES, exact_study

import sbc
from sbc.backends.cmdstan.sample import SampleSettings
from sbc.backends.exact import ExactOptions
from sbc.errors import SBCError
from sbc.execution.prepare import make_backend, prepare
from sbc.study import load_study, parse_study

#: `Study.identity_hash()` of the shipped studies as sbc 0.1 (commit f84dfb4) computed it:
#: results it wrote resume only if these stay the same. (linreg_sbc's includes the absolute
#: path of its simulator file, so it depends on where the checkout is.)
SBC_0_1_HASHES = {
    "exact_hierarchical.toml": "9c8b5e322d7b9e9d",
    "exact_normal.toml": "d0d1df512e2c7bb2",
    "exact_normal_narrow.toml": "937a0ee459028cf5",
    "lmm_recovery.toml": "97503eb00aa47749",
    "lmm_sbc.toml": "00088ecfb2e7ea40",
    "lmm_sbc_broken_tau.toml": "00088ecfb2e7ea40",
    "lmm_sbc_noncentered.toml": "00088ecfb2e7ea40",
}


@pytest.mark.parametrize("name", sorted(SBC_0_1_HASHES))
def test_identity_of_the_shipped_studies_is_what_sbc_0_1_wrote(name):
    assert load_study(STUDIES / name).identity_hash() == SBC_0_1_HASHES[name]


def test_the_sampler_table_is_the_cmdstan_backends_own(tmp_path):
    study = load_study(STUDIES / "lmm_sbc.toml")
    assert study.backend.type == "cmdstan"
    assert study.backend.sampler == SampleSettings(chains=2, warmup=250, draws=500,
                                                   adapt_delta=0.9)  # fmt: skip
    assert study.thin == 10  # generic: thinning for the ranks, not a NUTS setting
    assert study.stan == (ROOT / "stan" / "lmm_centered.stan").resolve()


def test_exact_backends_read_chains_and_draws_from_the_sampler_table(tmp_path):
    study = load_study(exact_study(tmp_path, backend={"sd_scale": 0.5, "draws": 30}))
    assert study.backend.options == ExactOptions(sd_scale=0.5, draws=30)
    assert study.backend.table == {"sd_scale": 0.5, "draws": 30}  # as written: the identity
    backend = make_backend(study, cores=1)
    assert (backend.chains, backend.draws_per_chain, backend.sd_scale) == (2, 30, 0.5)


def test_options_are_checked_by_their_declared_types(tmp_path):
    with pytest.raises(SBCError, match=r"\[backend\] draws: expected an integer, got 2\.5$"):
        load_study(exact_study(tmp_path, backend={"draws": 2.5}))
    with pytest.raises(SBCError, match=r"\[backend\] draws: expected an integer >= 1, got 0$"):
        load_study(exact_study(tmp_path, backend={"draws": 0}))
    with pytest.raises(SBCError, match=r"\[backend\] shift: expected a number, got 'up'$"):
        load_study(exact_study(tmp_path, backend={"shift": '"up"'}))
    with pytest.raises(SBCError, match=r"\[backend\] x: unknown key \(known: draws, sd_scale, sh"):
        load_study(exact_study(tmp_path, backend={"x": 1}))


def _raw(**changes):
    raw = {
        "name": "s",
        "backend": {"type": "exact"},
        "simulator": {"function": "sbc.simulators.normal:simulate"},
        "sampler": {"chains": 1, "draws": 10, "thin": 1},
    }
    raw.update(changes)
    return raw


def test_parse_study_from_a_dict_and_its_one_line_errors():
    assert parse_study(_raw()).backend.sampler.draws == 10
    with pytest.raises(SBCError, match=r"^study: \[sampler\] thin: 20 is more than draws \(10\)"):
        parse_study(_raw(sampler={"draws": 10, "thin": 20}))
    with pytest.raises(SBCError, match=r"^study: stan: missing \(the Stan program to calibrate"):
        parse_study(_raw(backend={}))  # cmdstan, the default, needs one
    with pytest.raises(SBCError, match=r"\[quantities\] pool: expected a list of names$"):
        parse_study(_raw(quantities={"pool": "theta"}))
    with pytest.raises(SBCError, match=r"\[quantities\] pool: expected variable names .*'b\[1\]'"):
        parse_study(_raw(quantities={"pool": ["b[1]"]}))
    with pytest.raises(SBCError, match=r"\[quantities\] trace: expected a list of names$"):
        parse_study(_raw(quantities={"trace": [1]}))


def test_pool_and_trace_are_not_part_of_the_identity(tmp_path):
    plain = parse_study(_raw())
    pooled = parse_study(_raw(quantities={"pool": ["mu"], "trace": ["mu"]}))
    assert plain.identity_hash() == pooled.identity_hash()
    assert pooled.describe()["quantities"]["pool"] == ("mu",)


def test_pool_must_name_a_ranked_vector(tmp_path):
    path = STUDIES / "exact_hierarchical.toml"
    study = load_study(path).with_overrides(sims=2)
    assert study.quantities.pool == ("theta",)
    prepare(study, progress=False)  # theta[1..J] are ranked: fine
    for pool, why in ((("mu",), "a scalar: nothing to pool"), (("sigma",), "ranked ones: theta")):
        bad = parse_study({**_hier(), "quantities": {"pool": list(pool)}}, path)
        with pytest.raises(SBCError, match=rf"\[quantities\] pool: '{pool[0]}' is not .*{why}"):
            prepare(bad.with_overrides(sims=2), progress=False)


def _hier():
    import tomllib

    return tomllib.loads((STUDIES / "exact_hierarchical.toml").read_text())


def test_the_manifest_records_the_pool_and_the_backends_diagnostics(tmp_path):
    folder = sbc.run(STUDIES / "exact_hierarchical.toml", sims=3, workers=1,
                     out=tmp_path / "h", progress=False)  # fmt: skip
    results = sbc.load(folder)
    assert results.manifest["study"]["quantities"]["pool"] == ["theta"]
    assert results.pool == ("theta",)
    assert [d.name for d in results.diagnostics][:2] == ["divergences", "treedepth_hits"]
    assert results.manifest["backend"] == {"type": "exact-hierarchical", "sd_scale": 1.0,
                                           "shift": 0.0}  # fmt: skip
    assert results.manifest["study"]["sampler"]["thin"] == 1


def test_overrides_are_checked_like_file_values(tmp_path):
    study = load_study(exact_study(tmp_path))
    assert study.with_overrides(sims=3, seed=4, workers=2).workers() == 2
    with pytest.raises(SBCError, match=r"^command line: --sims: expected an integer >= 1"):
        study.with_overrides(sims=0)
    with pytest.raises(SBCError, match=r"^command line: --stan: file not found"):
        study.with_overrides(stan=Path(tmp_path / "none.stan"))


# -- simulators and test quantities in Stan, the precheck's settings --------------------------


def test_a_stan_simulator_is_read_with_its_mapping():
    from sbc.backends.cmdstan.simulator import StanSimulator

    study = load_study(STUDIES / "lmm_sbc_stan_simulator.toml")
    sim = study.simulator
    assert isinstance(sim, StanSimulator)
    assert sim.stan_file == (ROOT / "stan" / "lmm_simulator.stan").resolve()
    assert sim.truth["rho"] == "rho" and sim.data == {"y": "y_sim"}
    assert sim.args["J"] == 10 and len(sim.args["g"]) == 100  # from lmm_design.json
    assert study.quantities.stan == ("log_lik_sum", "lp__")
    assert study.identity()["quantities"]["stan"] == ["log_lik_sum", "lp__"]
    assert "stan" not in load_study(STUDIES / "lmm_sbc.toml").identity()["quantities"]


def _with_simulator(tmp_path, simulator: str, extra: str = "") -> Path:
    path = tmp_path / "study.toml"
    path.write_text(f'name = "s"\nstan = "{ROOT / "stan" / "lmm_centered.stan"}"\n'
                    f"[simulator]\n{simulator}\n{extra}")  # fmt: skip
    return path


@pytest.mark.parametrize(
    ("simulator", "message"),
    [
        ('stan = "x.stan"', r"\[simulator\] stan: file not found: .*x\.stan$"),
        (f'stan = "{ROOT}/stan/lmm_simulator.stan"', r"\[simulator\] truth: missing"),
        (f'stan = "{ROOT}/stan/lmm_simulator.stan"\ntruth = []',
         r"\[simulator\] truth: expected a list of names or a table of Stan variable names$"),
        (f'stan = "{ROOT}/stan/lmm_simulator.stan"\ntruth = {{ beta = "a b" }}',
         r"\[simulator\] truth: expected Stan variable names, got beta = 'a b'$"),
        (f'stan = "{ROOT}/stan/lmm_simulator.stan"\ntruth = ["beta"]\ndata = ["y"]',
         r"\[simulator\] data: expected a table of Stan variable names$"),
        (f'stan = "{ROOT}/stan/lmm_simulator.stan"\ntruth = ["beta"]\nargs = "design.csv"',
         r"\[simulator\] args: expected a table or a \.json data file, got 'design\.csv'$"),
        (f'stan = "{ROOT}/stan/lmm_simulator.stan"\ntruth = ["beta"]\ndata = {{ N = "y" }}\n'
         "args = { N = 3 }", r"\[simulator\] data: 'N' is also in \[simulator\] args$"),
        ('function = "sbc.simulators.lmm:simulate"\ntruth = ["beta"]',
         r"\[simulator\] truth: only for a simulator in Stan \(stan = \.\.\.\)$"),
    ],
)  # fmt: skip
def test_stan_simulator_keys_are_checked(tmp_path, simulator, message):
    with pytest.raises(SBCError, match=message):
        load_study(_with_simulator(tmp_path, simulator))


def test_stan_args_from_a_json_file_must_be_an_object(tmp_path):
    (tmp_path / "design.json").write_text("[1, 2]")
    sim = f'stan = "{ROOT}/stan/lmm_simulator.stan"\ntruth = ["beta"]\nargs = "design.json"'
    with pytest.raises(SBCError, match=r"design\.json does not hold a JSON object$"):
        load_study(_with_simulator(tmp_path, sim))
    (tmp_path / "design.json").write_text("{N: 1}")
    with pytest.raises(SBCError, match=r"\[simulator\] args: cannot read .*design\.json"):
        load_study(_with_simulator(tmp_path, sim))


@pytest.mark.parametrize("name", ["accept_stat__", "log lik", ""])
def test_quantities_stan_are_generated_quantities_or_lp(tmp_path, name):
    extra = f'[quantities]\nstan = ["{name}"]\n'
    with pytest.raises(SBCError, match=r"\[quantities\] stan: expected"):
        load_study(_with_simulator(tmp_path, 'function = "sbc.simulators.lmm:simulate"', extra))


def test_the_precheck_settings_are_not_part_of_the_identity():
    study = load_study(STUDIES / "lmm_sbc_noncentered.toml")
    assert study.precheck.parameters == "sbc.simulators.lmm:noncentered_parameters"
    assert study.identity_hash() == SBC_0_1_HASHES["lmm_sbc_noncentered.toml"]
