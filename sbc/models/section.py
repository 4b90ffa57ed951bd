"""``[model]`` of a study file: a formula and a design become the Stan program and the
simulator, from one description (`FormulaModel` + `Priors`), so the two cannot disagree.

    [model]
    formula = "y ~ 1 + cond + (1 + cond | subject) + (1 | item)"
    design = "design.csv"            # or a generated design: a table (`sbc.models.design`)
    parameterisation = "non-centred" # or "centred" (the seed's multi_normal + lkj_corr)
    priors = { ... }                 # `sbc.models.priors`; defaults are the seed's

    [simulator]                      # optional: how the data are simulated, if not by [model]
    formula = "..."                  # another formula on the same design (a misspecified fit)
    priors = { ... }                 # default: [model]'s
    truth = { beta = [6, 4] }        # fixed values (a recovery study, not SBC)

The generated program is kept in the cache folder by its hash (compiled once, like any model)
and copied into each results folder that uses it (`ModelInfo.write`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sbc.errors import SBCError
from sbc.models.design import Design, load_design
from sbc.models.formula import FormulaModel, build_model
from sbc.models.priors import Priors, parse_priors
from sbc.models.program import CENTRED, NON_CENTRED, PARAMETERISATIONS, stan_program
from sbc.models.simulate import FormulaSimulator, fixed_truth

MODEL_KEYS = {"formula", "design", "parameterisation", "priors"}
SIMULATOR_KEYS = {"formula", "priors", "truth"}
#: The generated program's file name, in the cache and in each results folder.
PROGRAM_NAME = "model.stan"
#: The default parameterisation (see the README: measured on the crossed design).
DEFAULT_PARAMETERISATION = NON_CENTRED


@dataclass(frozen=True)
class ModelInfo:
    """What a study built from ``[model]`` records and shows: the program, names, labels."""

    model: FormulaModel
    parameterisation: str
    program: str
    stan_file: Path  # the program in the cache folder (what the backend compiles)
    labels: dict[str, str]
    simulated_by: str  # the formula that simulates the data

    def describe(self) -> dict[str, Any]:
        return {
            **self.model.describe(),
            "parameterisation": self.parameterisation,
            "simulated_by": self.simulated_by,
            "program": self.stan_file.name,
        }

    def write(self, folder: Path) -> Path:
        """The program beside the results, for users to read and reuse."""
        path = folder / self.stan_file.name
        if not path.is_file() or path.read_text() != self.program:
            path.write_text(self.program)
        return path


@dataclass(frozen=True)
class ModelStudy:
    info: ModelInfo
    simulator: Any  # a FormulaSimulator, or None when [simulator] names a Python function

    @property
    def include(self) -> list[str]:
        """The quantities ranked by default: the simulator's variables in the model's order
        (beta, sigma, tau, rho, b), not sorted; none for a Python simulator (it names them)."""
        return self.simulator.variables() if self.simulator is not None else []

    @property
    def pool(self) -> list[str]:
        """Pooled by default: every grouping factor's b (declared by the model, not guessed)."""
        return list(self.info.model.group_variables())


def parse_model(raw: Mapping[str, Any], base: Path, where: str) -> ModelStudy:
    """``[model]`` and, if it holds a formula or priors, ``[simulator]`` of one study."""
    table = _table(raw.get("model"), "model", where)
    unknown = sorted(set(table) - MODEL_KEYS)
    if unknown:
        raise SBCError(
            f"[model] {unknown[0]}: unknown key (known: {', '.join(sorted(MODEL_KEYS))})", where
        )
    for needed in ("formula", "design"):
        if needed not in table:
            raise SBCError(f"[model] {needed}: missing", where=where)
    design = load_design(table["design"], base, "[model] design", where)
    model = build_model(table["formula"], design, "[model] formula", where)
    priors = parse_priors(table.get("priors"), model, "[model] priors", where)
    style = table.get("parameterisation", DEFAULT_PARAMETERISATION)
    if style not in PARAMETERISATIONS:
        raise SBCError(
            f"[model] parameterisation: expected {CENTRED!r} or {NON_CENTRED!r}, got {style!r}",
            where=where,
        )
    style = PARAMETERISATIONS[style]

    simulator, simulated_by = None, model.formula
    sim_raw = raw.get("simulator")
    elsewhere = isinstance(sim_raw, Mapping) and bool({"function", "stan"} & set(sim_raw))
    own = sim_raw is None or (isinstance(sim_raw, Mapping) and not elsewhere)
    if own:  # else [simulator] names a Python function or a Stan program
        simulator = _formula_simulator(sim_raw or {}, table, design, model, priors, where)
        simulated_by = simulator.model.formula
    program = stan_program(model, priors, style)
    stan_file = _cached_program(program, where)
    info = ModelInfo(model, style, program, stan_file, model.labels(), simulated_by)
    return ModelStudy(info, simulator)


def _formula_simulator(
    sim_raw: Any,
    table: Mapping[str, Any],
    design: Design,
    model: FormulaModel,
    priors: Priors,
    where: str,
) -> FormulaSimulator:
    """The simulator of ``[model]``, or of ``[simulator] formula`` on the same design."""
    sim_raw = _table(sim_raw, "simulator", where)
    unknown = sorted(set(sim_raw) - SIMULATOR_KEYS)
    if unknown:
        raise SBCError(
            f"[simulator] {unknown[0]}: unknown key with a [model] (known: function, "
            f"{', '.join(sorted(SIMULATOR_KEYS))})",
            where=where,
        )
    sim_model, sim_priors = model, priors
    if "formula" in sim_raw:
        sim_model = build_model(sim_raw["formula"], design, "[simulator] formula", where)
        if "priors" not in sim_raw:  # [model]'s priors, checked against this formula
            sim_priors = parse_priors(table.get("priors"), sim_model, "[model] priors", where)
    if "priors" in sim_raw:
        sim_priors = parse_priors(sim_raw["priors"], sim_model, "[simulator] priors", where)
    truth = fixed_truth(sim_raw.get("truth"), sim_model, "[simulator] truth", where)
    source = {
        "formula": sim_model.formula,
        "design": design.source,
        "priors": sim_priors.describe(sim_model),
        **({"truth": {k: v.tolist() for k, v in truth.items()}} if truth else {}),
    }
    fitted = None if sim_model is model else model
    return FormulaSimulator(sim_model, sim_priors, source, fitted, truth)


def _table(value: Any, key: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SBCError(f"[{key}]: expected a table, got {value!r}", where=where)
    return value


def programs_dir() -> Path:
    """Generated programs, by hash: `$SBC_CACHE/programs`, else ~/.cache/sbc/programs (beside
    the compiled models of `sbc.backends.cmdstan.install.model_cache_dir`)."""
    if os.environ.get("SBC_CACHE"):
        return Path(os.environ["SBC_CACHE"]) / "programs"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sbc" / "programs"


def _cached_program(program: str, where: str) -> Path:
    """The program as `model.stan` in a folder named by its hash: studies that generate the
    same program share one file, and so one compiled executable."""
    digest = hashlib.sha256(program.encode()).hexdigest()[:16]
    path = programs_dir() / digest / PROGRAM_NAME
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(program)
        os.replace(tmp, path)  # atomic: concurrent readers never see half a program
    except OSError as exc:
        raise SBCError(
            f"[model]: cannot write the generated program to {path.parent} ({exc.strerror}); "
            "set SBC_CACHE to a writable folder",
            where=where,
        ) from None
    return path
