"""Study files: what the generic study reads, what the backend's declarations read, the resume
identity (unchanged since sbc 0.1, so its results resume) and `[quantities] pool`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from conftest import ROOT, STUDIES, exact_study

import sbc
from sbc.backends.cmdstan.sample import NutsSettings
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

#: The identity of every study file in the repository before issue 14 (main at c4dcce7),
#: hashed with the checkout's path replaced by "<root>" so that studies whose simulator is a
#: file (linreg_sbc, most bad-input cases) are pinned too: results stored by any of them
#: must keep resuming, whatever spelling their settings move to.
IDENTITIES_BEFORE_ISSUE_14 = {
    "studies/exact_hierarchical.toml": "9c8b5e322d7b9e9d",
    "studies/exact_normal.toml": "d0d1df512e2c7bb2",
    "studies/exact_normal_narrow.toml": "937a0ee459028cf5",
    "studies/linreg_sbc.toml": "820144b6df734e1f",
    "studies/lmm_recovery.toml": "97503eb00aa47749",
    "studies/lmm_sbc.toml": "00088ecfb2e7ea40",
    "studies/lmm_sbc_broken_tau.toml": "00088ecfb2e7ea40",
    "studies/lmm_sbc_noncentered.toml": "00088ecfb2e7ea40",
    "tests/bad_inputs/compare_seed1.toml": "b60e508fc06275a0",
    "tests/bad_inputs/compare_seed2.toml": "a656afa354b46c28",
    "tests/bad_inputs/derived_not_importable.toml": "540bbf18e53a3dd9",
    "tests/bad_inputs/include_absent.toml": "734c8622da5aa1d0",
    "tests/bad_inputs/simulator_data_not_dict.toml": "f8178eb21f328fab",
    "tests/bad_inputs/simulator_function_missing.toml": "bc3f5c150262ebd8",
    "tests/bad_inputs/simulator_global_numpy_random.toml": "5eac7afa3abc0e81",
    "tests/bad_inputs/simulator_module_missing.toml": "e235c05e3e816495",
    "tests/bad_inputs/simulator_not_callable.toml": "5fa23af7c4b1bac0",
    "tests/bad_inputs/simulator_raises.toml": "ef30bb3694fa57b5",
    "tests/bad_inputs/simulator_raises_at_import.toml": "67ddea7c76354470",
    "tests/bad_inputs/simulator_random_module.toml": "1a731226f3ac80e8",
    "tests/bad_inputs/simulator_returns_list.toml": "b1d6d51a97017ae2",
    "tests/bad_inputs/simulator_returns_three.toml": "7230387cc60b6c9e",
    "tests/bad_inputs/simulator_syntax_error.toml": "dc0d8f38214870d6",
    "tests/bad_inputs/simulator_truth_bad_name.toml": "5967db2fd60e5560",
    "tests/bad_inputs/simulator_truth_empty.toml": "b42b642e92e6a4ff",
    "tests/bad_inputs/simulator_truth_nan.toml": "950fdd03a2aa6306",
    "tests/bad_inputs/simulator_truth_not_numeric.toml": "ba9db32fd2fbdbfa",
    "tests/bad_inputs/simulator_unknown_arg.toml": "a8aa0ea3af079798",
    "tests/bad_inputs/simulator_wrong_signature.toml": "e6e3a163ecfa23ad",
    "tests/bad_inputs/stan_semantic_error.toml": "2c0b45c24d862f93",
    "tests/bad_inputs/stan_syntax_error.toml": "2c0b45c24d862f93",
    "tests/bad_inputs/truth_not_in_model.toml": "ab0aa208bb55fa52",
    "tests/bad_inputs/truth_wrong_dimensions.toml": "b036e4bf04347b51",
    "tests/bad_inputs/valid_exact.toml": "2d70b542d12fd5dd",
    "tests/data/legacy_exact.toml": "4307773edf0d1dbd",
}


@pytest.mark.parametrize("name", sorted(SBC_0_1_HASHES))
def test_identity_of_the_shipped_studies_is_what_sbc_0_1_wrote(name):
    assert load_study(STUDIES / name).identity_hash() == SBC_0_1_HASHES[name]


@pytest.mark.parametrize("path", sorted(IDENTITIES_BEFORE_ISSUE_14))
def test_identity_of_every_study_file_in_the_repository_is_pinned(path):
    identity = load_study(ROOT / path).identity()
    blob = json.dumps(identity, sort_keys=True, default=str).replace(str(ROOT), "<root>")
    assert hashlib.sha256(blob.encode()).hexdigest()[:16] == IDENTITIES_BEFORE_ISSUE_14[path]


def test_the_sampler_table_is_sbc_0_1s_spelling_of_the_nuts_settings(tmp_path):
    study = load_study(STUDIES / "lmm_sbc_noncentered.toml")  # still written with [sampler]
    assert study.backend.type == "cmdstan"
    assert study.backend.options == NutsSettings(chains=2, iter_warmup=250, iter_sampling=500,
                                                 adapt_delta=0.9)  # fmt: skip
    assert study.thin_ranks == study.thin == 10  # generic: thinning for the ranks
    assert study.stan == (ROOT / "stan" / "lmm_noncentered.stan").resolve()


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
# -- where a method's settings live (issue 14) ---------------------------------------------------


def _lmm(**tables):
    """lmm_sbc.toml as a dict, its settings replaced by `tables` (raw TOML tables)."""
    import tomllib

    raw = tomllib.loads((STUDIES / "lmm_sbc.toml").read_text())
    for key in ("backend", "sampler", "thin_ranks"):
        raw.pop(key, None)
    raw.update(tables)
    return raw


def _parse(raw):
    return parse_study(raw, STUDIES / "lmm_sbc.toml")


def test_one_nuts_setting_spelled_four_ways_has_one_identity():
    old = _lmm(sampler={"chains": 2, "warmup": 250, "draws": 500, "thin": 10, "adapt_delta": 0.9})
    new = _lmm(thin_ranks=10, backend={"type": "cmdstan", "chains": 2, "iter_warmup": 250,
                                       "iter_sampling": 500, "adapt_delta": 0.9})  # fmt: skip
    alias = _lmm(thin_ranks=10, backend={"warmup": 250, "draws": 500, "adapt_delta": 0.9})
    table = _lmm(thin_ranks=10, backend={"type": "cmdstan", "cmdstan": {
        "iter_warmup": 250, "iter_sampling": 500, "adapt_delta": 0.9}})  # fmt: skip
    studies = [_parse(raw) for raw in (old, new, alias, table)]
    assert {s.identity_hash() for s in studies} == {"00088ecfb2e7ea40"}  # sbc 0.1's, pinned
    assert {s.backend.options for s in studies} == {
        NutsSettings(chains=2, iter_warmup=250, iter_sampling=500, adapt_delta=0.9)
    }


def test_new_settings_enter_the_identity_only_away_from_their_defaults():
    base = _parse(_lmm(backend={"iter_warmup": 250}))
    at_default = _parse(_lmm(backend={"iter_warmup": 250, "thin": 1, "adapt_engaged": True}))
    assert at_default.identity_hash() == base.identity_hash()
    thinned = _parse(_lmm(backend={"iter_warmup": 250, "thin": 2, "metric": "dense_e"}))
    assert thinned.identity()["backend"]["options"] == {"thin": 2, "metric": "dense_e"}
    assert thinned.identity()["sampler"]["thin"] == 10  # thin_ranks: sbc 0.1's key
    assert thinned.identity_hash() != base.identity_hash()


@pytest.mark.parametrize(
    ("tables", "error"),
    [
        ({"sampler": {"warmup": 100}, "backend": {"iter_warmup": 200}},
         r"\[sampler\] warmup: the same setting as \[backend\] iter_warmup; give it once$"),
        ({"backend": {"warmup": 100, "iter_warmup": 200}},
         r"\[backend\] iter_warmup: the same setting as \[backend\] warmup; give it once$"),
        ({"thin_ranks": 5, "sampler": {"thin": 5}},
         r"thin_ranks: also given as \[sampler\] thin \(its old name\); give it once$"),
        ({"backend": {"iter_sampling": 40, "thin": 4}, "thin_ranks": 20},
         r"thin_ranks: 20 is more than iter_sampling / thin \(10\); no draws would be left$"),
        ({"backend": {"type": "cmdstan-variational", "output_samples": 50}, "thin_ranks": 100},
         r"thin_ranks: 100 is more than output_samples \(50\); no draws would be left$"),
        ({"backend": {"type": "cmdstan-variational", "adapt_delta": 0.9}},
         r"\[backend\] adapt_delta: a setting of backend cmdstan, not of cmdstan-variational "
         r"\(known: adapt_engaged, adapt_iter, algorithm, draws, elbo_samples, eta, "),
        ({"backend": {"algorithm": "fullrank"}},
         r"\[backend\] algorithm: a setting of backend cmdstan-variational, not of cmdstan "),
        ({"backend": {"type": "cmdstan-variational", "algorithm": "fullrnak"}},
         r"\[backend\] algorithm: expected one of meanfield, fullrank, got 'fullrnak'$"),
        ({"backend": {"type": "cmdstan-variational", "iter": -5}},
         r"\[backend\] iter: expected an integer >= 1, got -5$"),
        ({"backend": {"type": "cmdstan-variational", "tol_rel_obj": 0}},
         r"\[backend\] tol_rel_obj: must be > 0, got 0\.0$"),
        ({"backend": {"type": "cmdstan-variational"}, "sampler": {"chains": 2}},
         r"\[sampler\] chains: unknown key \(backend cmdstan-variational has no \[sampler\] "),
        ({"backend": {"seed": 3}},
         r"\[backend\] seed: each fit's seed comes from the study's `seed` and the simulation "),
        ({"backend": {"metric": "dense"}},
         r"\[backend\] metric: expected one of diag_e, dense_e, unit_e, got 'dense'$"),
        ({"backend": {"inits": True}},
         r"\[backend\] inits: expected a number or a string, got True$"),
        ({"backend": {"inits": -1}}, r"\[backend\] inits: expected a number >= 0\.0, got -1\.0$"),
        ({"backend": {"inits": "no_file.py:inits"}}, r"\[backend\] inits: file not found: .*"),
        ({"backend": {"step_size": 0}}, r"\[backend\] step_size: must be > 0, got 0\.0$"),
        ({"backend": {"iter_warmup": 0}},
         r"\[backend\] iter_warmup: 0 needs adapt_engaged = false \(NUTS adapts during "),
        ({"backend": {"adapt_engaged": False, "adapt_step_size": 5}},
         r"\[backend\] adapt_step_size: needs adapt_engaged = true$"),
        ({"backend": {"type": "cmdstan", "iter_warmup": 10, "cmdstan": {"iter_warmup": 10}}},
         r"\[backend\.cmdstan\]: backend cmdstan's settings go beside type or in "),
        ({"backend": {"pymc": {"draws": 10}}},
         r"\[backend\.pymc\]: unknown backend 'pymc' \(known: cmdstan, cmdstan-variational, "),
        ({"backend": {"cmdstan-variational": {"algorithm": "fullrank", "adapt_delt": 0.9}}},
         r"\[backend\.cmdstan-variational\] adapt_delt: unknown key \(known: adapt_engaged, "),
    ],
)  # fmt: skip
def test_settings_errors_are_one_line_naming_the_key(tables, error):
    with pytest.raises(SBCError, match=error) as info:
        _parse(_lmm(**tables))
    assert "\n" not in str(info.value)


def test_inits_are_a_number_or_a_function_spec_resolved_like_a_simulator(tmp_path):
    assert _parse(_lmm(backend={"inits": 0.5})).backend.options.inits == 0.5
    assert _parse(_lmm(backend={"inits": 1})).backend.options.inits == 1.0
    spec = _parse(_lmm(backend={"inits": "../studies/linreg_simulator.py:simulate"}))
    assert spec.backend.options.inits == f"{STUDIES / 'linreg_simulator.py'}:simulate"


def test_backend_override_runs_another_method_on_the_same_datasets(tmp_path):
    from sbc.backends.cmdstan.variational import AdviSettings
    from sbc.checks import datasets_key

    nuts = _parse(_lmm(thin_ranks=10, backend={
        "type": "cmdstan", "iter_sampling": 500,
        "cmdstan-variational": {"algorithm": "fullrank", "output_samples": 200}}))  # fmt: skip
    advi = nuts.with_overrides(backend="cmdstan-variational")
    assert advi.backend.type == "cmdstan-variational"
    assert advi.backend.options == AdviSettings(algorithm="fullrank", output_samples=200)
    assert advi.name == "lmm_sbc-cmdstan-variational" and advi.thin_ranks == 10
    assert datasets_key(advi) == datasets_key(nuts)  # `sbc compare` pairs them
    assert advi.identity_hash() != nuts.identity_hash()
    assert advi.with_overrides(backend="cmdstan").identity_hash() == nuts.identity_hash()
    defaults = _parse(_lmm()).with_overrides(backend="cmdstan-variational", out=tmp_path)
    assert defaults.backend.options == AdviSettings() and defaults.name == "lmm_sbc"
    with pytest.raises(SBCError, match=r"^command line: --backend: unknown backend 'pymc'"):
        nuts.with_overrides(backend="pymc")
    small = _parse(_lmm(thin_ranks=10, backend={"cmdstan-variational": {"output_samples": 5}}))
    with pytest.raises(SBCError, match=r"thin_ranks: 10 is more than output_samples \(5\)"):
        small.with_overrides(backend="cmdstan-variational")


def test_the_shipped_advi_studies_simulate_lmm_sbcs_datasets():
    from sbc.checks import datasets_key

    nuts = load_study(STUDIES / "lmm_sbc.toml")
    for algorithm in ("meanfield", "fullrank"):
        advi = load_study(STUDIES / f"lmm_sbc_advi_{algorithm}.toml")
        assert advi.backend.type == "cmdstan-variational"
        assert advi.backend.options.algorithm == algorithm
        assert datasets_key(advi) == datasets_key(nuts)
        assert advi.quantities == nuts.quantities and advi.stan == nuts.stan
        assert advi.thin_ranks == 10 and advi.backend.options.output_samples == 1000
