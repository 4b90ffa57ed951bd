"""Everything that can be checked before a study runs, checked: the step `sbc run` takes
before it touches any results (and `sbc recover` before its one fit).
"""

from __future__ import annotations

from dataclasses import dataclass

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
    # derived quantities are named in the study on purpose: always ranked
    quantities = select_quantities(study.quantities.include, scalar_quantities(truth), where)
    quantities += list(study.quantities.derived)
    check_pool(study.quantities.pool, quantities, where)
    return Prepared(study=study, backend=backend, quantities=quantities, workers=workers)
