"""Generated Stan programs: what they state (priors, names, the seed's centred form), and that
each of them, for a range of formulas in both parameterisations, passes CmdStan 2.27's stanc
(the full C++ build of one of them is in test_formula_study.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from sbc.models.design import generate
from sbc.models.formula import build_model
from sbc.models.priors import parse_priors
from sbc.models.program import CENTRED, NON_CENTRED, stan_program

DESIGN = generate(
    {
        "groups": {"subject": 4, "item": 3},
        "rows": 2,
        "predictors": {
            "cond": {"values": ["a", "b"], "by": ["subject", "item"]},
            "x": {"values": [0.5, 1.5, 2.0], "by": ["item", "row"]},
        },
    },
    "design",
    "t",
)
FORMULAS = [
    "y ~ 1 + x + (x | subject)",
    "y ~ 1 + cond + (1 + cond | subject) + (1 | item)",
    "y ~ 0 + cond + (0 + cond | subject)",
    "y ~ x + (1 | subject) + (0 + x | subject)",
    "y ~ x + (1 + x | subject) + (0 + cond | subject) + (1 + cond + x | item)",
    "y ~ cond * x + (1 | subject/item)",
    "y ~ 1 + x",
    "y ~ 0 + (1 | subject)",
]


def program(formula: str, style: str, priors: dict | None = None) -> str:
    m = build_model(formula, DESIGN, "[model] formula", "t")
    return stan_program(m, parse_priors(priors or {}, m, "p", "t"), style)


def test_the_seeds_formula_gives_the_seeds_centred_model():
    text = program("y ~ 1 + x + (x | subject)", CENTRED)
    for line in [
        "beta ~ normal(0, 10);",
        "sigma ~ normal(0, 5);",
        "tau_subject ~ normal(0, 5);",
        "R_subject ~ lkj_corr(2);",
        "rows ~ multi_normal(rep_row_vector(0, 2), quad_form_diag(R_subject, tau_subject));",
        "y ~ normal(X * beta + rows_dot_product(Z_subject, b_subject[g_subject]), sigma);",
        "real rho_subject = R_subject[2, 1];",
        "array[N] int<lower=1, upper=J_subject> g_subject;",
    ]:
        assert line in text, line
    nc = program("y ~ 1 + x + (x | subject)", NON_CENTRED)
    assert "L_subject ~ lkj_corr_cholesky(2);" in nc
    assert "b_subject = (diag_pre_multiply(tau_subject, L_subject) * z_subject)';" in nc
    assert "multi_normal" not in nc


def test_priors_from_the_study_are_stated():
    text = program(
        "y ~ 1 + cond + (1 + cond | subject) + (1 | item)",
        CENTRED,
        {"beta": {"cond[b]": "normal(0, 2.5)"}, "sigma": "exponential(1)",
         "tau_item": "student_t(3, 0, 1)", "lkj": 4},
    )  # fmt: skip
    assert "beta[1] ~ normal(0, 10);  // Intercept" in text
    assert "beta[2] ~ normal(0, 2.5);  // cond[b]" in text
    assert "sigma ~ exponential(1);" in text
    assert "tau_item ~ student_t(3, 0, 1);  // half-student-t" in text
    assert "R_subject ~ lkj_corr(4);" in text


@pytest.mark.parametrize("formula", FORMULAS)
def test_programs_use_only_27_syntax_and_are_deterministic(formula):
    for style in (CENTRED, NON_CENTRED):
        text = program(formula, style)
        assert text == program(formula, style)
        assert not re.search(r"\bint\s+\w+\[", text)  # old array syntax
        assert text.isascii()


@pytest.mark.stan
def test_every_program_passes_stanc_2_27(cmdstan: Path, tmp_path: Path):
    """stanc (the Stan-to-C++ step) on each formula and parameterisation: syntax and types."""
    stanc = cmdstan / "bin" / "stanc"
    for i, formula in enumerate(FORMULAS):
        for style in (CENTRED, NON_CENTRED):
            path = tmp_path / f"m{i}_{style.replace('-', '_')}.stan"
            path.write_text(program(formula, style))
            proc = subprocess.run(
                [str(stanc), str(path), f"--o={path.with_suffix('.hpp')}"],
                capture_output=True,
                text=True,
            )
            assert proc.returncode == 0, f"{formula} ({style}):\n{proc.stderr}"


def test_variables_in_the_program_are_the_models():
    """Every variable the simulator's truth has is declared by both programs, same shape."""
    formula = FORMULAS[4]
    m = build_model(formula, DESIGN, "f", "t")
    for style in (CENTRED, NON_CENTRED):
        text = program(formula, style)
        for name, shape in m.variables().items():
            if not shape:
                pattern = rf"real(<lower=0>)? {name}\b"
            elif len(shape) == 1:
                pattern = rf"vector(<lower=0>)?\[{shape[0]}\] {name}\b"
            else:
                pattern = rf"matrix\[J_\w+, {shape[1]}\] {name}\b"
            assert re.search(pattern, text), (style, name, shape)
