"""Everything that can be checked before a study runs, checked: the step `sbc run` takes
before it touches any results (and `sbc recover` before its one fit).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sbc.backends import Backend, backend_class
from sbc.errors import SBCError
from sbc.simulate import (
    check_data_against_program,
    check_pool,
    check_simulator,
    check_truth_against_model,
    resolve_function,
    scalar_quantities,
    select_quantities,
)
from sbc.study import Study, available_cores


@dataclass
class Prepared:
    """A checked study with its prepared (compiled) backend and the quantities it ranks."""

    study: Study
    backend: Backend
    quantities: list[str]
    workers: int


def make_backend(study: Study, cores: int) -> Backend:
    """The study's backend, configured but not yet prepared; `cores`: what one fit may use."""
    cls = backend_class(study.backend.type, str(study.path or study.name))
    return cls.create(study.backend, study.stan, cores)


def prepare(study: Study, progress: bool = True) -> Prepared:
    """Check the simulator, derived quantities and quantity names; prepare the backend; check
    the simulator's first (truth, data) against what the backend says the model takes and
    produces (before any worker starts)."""
    where = str(study.path or study.name)
    study.simulator.prepare(where, progress=progress)
    truth, data = check_simulator(study.simulator, study.seed, study.sims, where)
    for name, spec in study.quantities.derived.items():
        try:
            resolve_function(spec)
        except SBCError as exc:
            raise SBCError(f"[quantities] derived.{name}: {exc}", where=where) from None
    workers = study.workers()
    backend = make_backend(study, cores=available_cores() // max(1, workers))
    backend.prepare(progress=progress)
    model = f"the model {study.stan.name}" if study.stan else "the model"
    inputs = backend.inputs() if hasattr(backend, "inputs") else None  # optional
    if inputs is not None:
        check_data_against_program(data, inputs, model, where)
    produced = backend.variables()
    if produced is not None:
        check_truth_against_model(truth, produced, model, where)
    backend.check_truth(truth, data, where)
    # derived quantities and the model's own are named in the study on purpose: always ranked
    quantities = select_quantities(study.quantities.include, scalar_quantities(truth), where)
    quantities += list(study.quantities.derived)
    quantities += stan_quantities(study, backend, truth, data, where)
    check_pool(study.quantities.pool, quantities, where)
    return Prepared(study=study, backend=backend, quantities=quantities, workers=workers)


def stan_quantities(
    study: Study, backend: Backend, truth: Mapping[str, np.ndarray], data: Mapping[str, Any],
    where: str,
) -> list[str]:  # fmt: skip
    """The scalar names of ``[quantities] stan``, evaluated once at the first truth to check
    that the model can (and to learn their sizes)."""
    names = study.quantities.stan
    if not names:
        return []
    with tempfile.TemporaryDirectory(prefix="sbc-quantities-") as tmp:
        try:
            values = backend.quantities_at_truth(truth, data, names, Path(tmp))
        except SBCError as exc:
            raise SBCError(f"[quantities] stan: {exc}", where=where) from None
    taken = [n for n in names if n in truth or n in study.quantities.derived]
    if taken:
        raise SBCError(f"[quantities] stan: {taken[0]!r} is already the name of the simulator's "
                       "truth or of a derived quantity", where=where)  # fmt: skip
    return [q for name in names for q in scalar_quantities({name: values[name]})]
