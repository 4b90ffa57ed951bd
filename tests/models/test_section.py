"""``[model]`` in a study file: what it makes of the Study (program, simulator, pooled rows,
quantities, labels, identity), and the study-level rules around it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from conftest import STUDIES

from sbc.errors import SBCError
from sbc.models.section import PROGRAM_NAME
from sbc.models.simulate import FormulaSimulator
from sbc.study import load_study, parse_study

CROSSED = STUDIES / "lmm_formula_crossed.toml"


def crossed(**changes) -> dict:
    raw = tomllib.loads(CROSSED.read_text())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            raw.setdefault(section, {})[name] = value
        else:
            raw[section] = value
    return raw


def test_the_crossed_study_declares_its_pooled_rows_quantities_and_labels():
    study = load_study(CROSSED)
    assert study.quantities.pool == ("b_subject", "b_item")
    assert study.quantities.include == (
        "beta", "sigma", "tau_subject", "rho_subject", "b_subject", "tau_item", "b_item",
    )  # fmt: skip
    assert isinstance(study.simulator, FormulaSimulator)
    assert study.stan.name == PROGRAM_NAME and study.stan.read_text() == study.model.program
    labels = study.labels
    assert labels["beta[2]"] == "cond[b]"
    assert labels["rho_subject"] == "cor(Intercept, cond[b] | subject)"
    assert labels["b_item[16,1]"] == "Intercept | item=16"
    described = study.describe()
    assert described["labels"] == labels
    assert described["model"]["factors"] == {
        "subject": {"levels": 20, "Z": ["Intercept", "cond[b]"], "correlated": True},
        "item": {"levels": 16, "Z": ["Intercept"], "correlated": False},
    }


def test_a_declared_pool_wins_even_an_empty_one():
    study = parse_study(crossed(quantities={"pool": []}), CROSSED)
    assert study.quantities.pool == ()
    study = parse_study(crossed(quantities={"pool": ["b_subject"]}), CROSSED)
    assert study.quantities.pool == ("b_subject",)


def test_the_parameterisation_changes_the_program_not_the_datasets():
    a = parse_study(crossed(model__parameterisation="centred"), CROSSED)
    b = parse_study(crossed(model__parameterisation="non-centered"), CROSSED)
    assert a.model.parameterisation == "centred" and b.model.parameterisation == "non-centred"
    assert a.stan != b.stan and a.model.program != b.model.program
    assert a.simulator.describe() == b.simulator.describe()  # `sbc compare` pairs them
    assert a.identity() == b.identity()  # the program's hash is the backend's identity


def test_the_design_and_priors_are_part_of_the_identity():
    base = parse_study(crossed(), CROSSED).identity_hash()
    other = crossed()
    other["model"]["design"]["groups"]["subject"] = 21
    assert parse_study(other, CROSSED).identity_hash() != base
    priors = parse_study(crossed(model__priors={"sigma": "normal(0, 2)"}), CROSSED)
    assert priors.identity_hash() != base


def test_a_simulator_formula_simulates_what_the_fit_lacks():
    study = load_study(STUDIES / "lmm_formula_crossed_missing_slope.toml")
    sim = study.simulator
    assert sim.model.formula.endswith("(1 + cond | item)")
    assert sim.fitted is not None and sim.fitted.formula.endswith("(1 | item)")
    assert study.model.simulated_by == sim.model.formula
    assert "(1 | item)" in study.model.program and "Z_item" in study.model.program
    assert study.describe()["model"]["simulated_by"] == sim.model.formula


def test_a_python_simulator_may_feed_a_generated_program(tmp_path: Path):
    raw = crossed(simulator={"function": "sbc.simulators.lmm:simulate"})
    study = parse_study(raw, CROSSED)
    assert study.simulator.function == "sbc.simulators.lmm:simulate"
    assert study.quantities.include == ()  # the function's truth decides


def test_a_design_table_beside_the_study(tmp_path: Path):
    (tmp_path / "trials.csv").write_text(
        "participant,word,cond,rt\n" + "".join(
            f"p{p},w{w},{'ab'[(p + w) % 2]},500\n" for p in range(3) for w in range(4)
        )
    )  # fmt: skip
    (tmp_path / "s.toml").write_text(
        'name = "s"\n[model]\nformula = "rt ~ cond + (1 | participant) + (1 | word)"\n'
        'design = "trials.csv"\n'
    )
    study = load_study(tmp_path / "s.toml")
    assert study.simulator.describe()["design"]["file"] == "trials.csv"
    assert study.model.model.response == "rt"
    assert study.labels["b_word[4,1]"] == "Intercept | word=w3"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model__colour": "red"}, r"\[model\] colour: unknown key"),
        ({"model": {"design": "x.csv"}}, r"\[model\] formula: missing"),
        ({"simulator": {"formula": "y ~ 1", "args": {}}}, r"\[simulator\] args: unknown key"),
        ({"model__priors": {"beta": 3}}, r"\[model\] priors\.beta: expected a prior"),
        ({"model__priors": {"tau": "normal(1, 5)"}}, r"must be centred at 0"),
        ({"model__priors": {"lkj": 0}}, r"\[model\] priors\.lkj: expected the LKJ shape"),
        ({"simulator": {"truth": {"rho_subject": 1.5}}}, r"truth\.rho_subject: not the corr"),
        ({"simulator": {"truth": {"tau_item": [1, 2]}}}, r"truth\.tau_item: expected finite "
         r"numbers of shape \(1,\)"),
    ],
)  # fmt: skip
def test_bad_model_sections_are_one_line(changes, message):
    with pytest.raises(SBCError, match=message):
        parse_study(crossed(**changes), CROSSED)


def test_an_unwritable_program_cache_is_one_line(tmp_path: Path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("SBC_CACHE", str(blocker))
    with pytest.raises(SBCError, match=r"\[model\]: cannot write the generated program to .*"
                       r"set SBC_CACHE to a writable folder$"):  # fmt: skip
        load_study(CROSSED)


def test_the_program_is_cached_by_its_hash(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SBC_CACHE", str(tmp_path))
    a, b = load_study(CROSSED), load_study(CROSSED)
    assert a.stan == b.stan and a.stan.is_relative_to(tmp_path / "programs")
    assert [p.name for p in (tmp_path / "programs").rglob("*")] == [
        a.stan.parent.name,
        "model.stan",
    ]
