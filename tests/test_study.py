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
