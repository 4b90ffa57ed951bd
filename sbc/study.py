"""Study files (TOML) parsed and validated into dataclasses, before anything runs.

Every problem is an `SBCError` naming the file and the key, e.g.
``studies/x.toml: [sampler] chains: expected an integer >= 1, got 0``.
Paths in a study file are relative to the file itself. What is generic (the simulator,
the quantities, `thin`, parallelism) is read here; ``[backend]`` and ``[sampler]`` are read
by the declarations of the backend that ``[backend] type`` names (`sbc.backends`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbc.backends import BackendSpec, backend_class
from sbc.errors import SBCError
from sbc.options import (
    check_bool,
    check_int,
    check_names,
    check_str,
    check_table,
    no_unknown,
    parse_options,
)
from sbc.simulate import PythonSimulator, Simulator


@dataclass(frozen=True)
class Quantities:
    include: tuple[str, ...] = ()  # variable or scalar names; empty = all with a truth
    derived: dict[str, str] = field(default_factory=dict)  # name -> "module:function"
    pool: tuple[str, ...] = ()  # variables pooled over their first index (group effects)
    trace: tuple[str, ...] = ()  # variables `sbc recover` plots; default: include's, else all


@dataclass(frozen=True)
class Parallel:
    workers: int = 0  # 0 = one per core
    scheduler: str = "local"  # "local" (joblib/loky), "local:N" or "tcp://host:port" (dask)


@dataclass(frozen=True)
class Study:
    name: str
    path: Path | None  # the study file, if there is one
    stan: Path | None
    sims: int
    seed: int
    simulator: Simulator
    backend: BackendSpec = field(default_factory=BackendSpec)
    thin: int = 10  # every thin-th draw is kept for the ranks (generic: not a backend option)
    quantities: Quantities = Quantities()
    parallel: Parallel = Parallel()
    out: Path | None = None
    keep_draws: bool = False
    description: str = ""
    model: Any = None  # a `sbc.models.ModelInfo` when the study has a [model] formula

    @property
    def labels(self) -> dict[str, str]:
        """What each quantity is, in the model's words (formula models): e.g. beta[2] -> x."""
        return dict(self.model.labels) if self.model is not None else {}

    @property
    def sampler(self) -> Any:
        """The backend's ``[sampler]`` settings (for CmdStan: NUTS), or None if it has none."""
        return self.backend.sampler

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    @property
    def results_dir(self) -> Path:
        return self.out if self.out is not None else Path("results") / self.name

    def workers(self) -> int:
        return self.parallel.workers or available_cores()

    def write_program(self, folder: Path) -> Path | None:
        """A program generated from ``[model]``, written beside the results to read and reuse
        (not when ``--stan`` replaced it)."""
        if self.model is None or self.stan != self.model.stan_file:
            return None
        return self.model.write(folder)

    def identity(self) -> dict[str, Any]:
        """What must not change for stored results to stay valid (sims and parallelism may).

        The sampler settings with their defaults, and the ``[backend]`` table as written:
        the form sbc 0.1 hashed, so that results it wrote resume. What only the analysis
        reads (`pool`, `trace`) is not part of it.
        """
        sampler = self.backend.sampler
        return {
            "seed": self.seed,
            "simulator": self.simulator.describe(),
            "sampler": {
                **(dataclasses.asdict(sampler) if sampler is not None else {}),
                "thin": self.thin,
            },
            "backend": {"type": self.backend.type, "options": dict(self.backend.table)},
            "quantities": {
                "include": list(self.quantities.include),
                "derived": self.quantities.derived,
            },
            "keep_draws": self.keep_draws,
        }

    def describe(self) -> dict[str, Any]:
        """The study as run, for the results manifest (``manifest["study"]``)."""
        return {
            "name": self.name,
            "description": self.description,
            "path": str(self.path) if self.path else None,
            "stan": str(self.stan) if self.stan else None,
            "sims": self.sims,
            "seed": self.seed,
            "simulator": self.simulator.describe(),
            "sampler": self.identity()["sampler"],
            "backend": self.identity()["backend"],
            "quantities": dataclasses.asdict(self.quantities),
            "parallel": dataclasses.asdict(self.parallel),
            "keep_draws": self.keep_draws,
            **({"model": self.model.describe(), "labels": self.labels} if self.model else {}),
        }

    def identity_hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def with_overrides(
        self,
        *,
        sims: int | None = None,
        seed: int | None = None,
        workers: int | None = None,
        scheduler: str | None = None,
        out: Path | str | None = None,
        stan: Path | str | None = None,
    ) -> Study:
        """The study with command-line overrides applied and checked like file values."""
        where = "command line"
        changes: dict[str, Any] = {}
        if sims is not None:
            changes["sims"] = check_int(sims, "--sims", where, minimum=1)
        if seed is not None:
            changes["seed"] = check_int(seed, "--seed", where, minimum=0)
        if workers is not None or scheduler is not None:
            changes["parallel"] = Parallel(
                workers=self.parallel.workers
                if workers is None
                else check_int(workers, "--workers", where, minimum=1),
                scheduler=self.parallel.scheduler
                if scheduler is None
                else _scheduler(scheduler, "--scheduler", where),
            )
        if out is not None:
            changes["out"] = Path(out)
        if stan is not None:
            changes["stan"] = _existing_file(Path(stan), "--stan", where, suffix=".stan")
        return dataclasses.replace(self, **changes)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# -- parsing -------------------------------------------------------------------------------------

_TOP = {
    "name", "description", "stan", "sims", "seed", "keep_draws", "out",
    "simulator", "sampler", "backend", "quantities", "parallel", "model",
}  # fmt: skip
_SECTIONS: dict[str, set[str]] = {
    "simulator": {"function", "args"},
    "quantities": {"include", "derived", "pool", "trace"},
    "parallel": {"workers", "scheduler"},
}


def load_study(path: Path | str) -> Study:
    """Read and validate a study file; raise SBCError naming the file and key on any problem."""
    path = Path(path)
    where = str(path)
    if not path.is_file():
        raise SBCError("study file not found", where=where)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SBCError(f"not valid TOML: {exc}", where=where) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SBCError(f"cannot read study file: {exc}", where=where) from None
    return parse_study(raw, path)


def parse_study(raw: dict[str, Any], path: Path | None = None) -> Study:
    """Validate a study given as a dict (what `load_study` reads, or a notebook builds)."""
    where = str(path) if path else "study"
    base = path.parent if path else Path.cwd()
    no_unknown(raw, _TOP, "", where)

    name = check_str(raw.get("name", path.stem if path else None), "name", where)
    if not name or "/" in name or name.startswith("."):
        raise SBCError(f"name: must be a plain folder name, got {name!r}", where=where)

    backend, needs_stan = _backend(raw.get("backend", {}), where)
    stan = None
    model = simulator = None
    if "model" in raw:  # a formula: the Stan program (and the simulator) come from it
        if "stan" in raw:
            raise SBCError("stan: a study with a [model] formula generates its program; "
                           "give one of the two", where=where)  # fmt: skip
        from sbc.models.section import parse_model

        built = parse_model(raw, base, where)
        model, simulator, stan = built.info, built.simulator, built.info.stan_file
    elif "stan" in raw:
        stan = _existing_file(base / check_str(raw["stan"], "stan", where), "stan", where, ".stan")
    elif needs_stan:
        raise SBCError("stan: missing (the Stan program to calibrate)", where=where)

    if simulator is None:
        simulator = _python_simulator(raw.get("simulator"), where, base)

    backend, thin = _sampler(raw.get("sampler", {}), backend, where)
    q_raw = check_table(raw.get("quantities", {}), "quantities", where)
    no_unknown(q_raw, _SECTIONS["quantities"], "quantities", where)
    derived = check_table(q_raw.get("derived", {}), "[quantities] derived", where)
    derived = {
        k: _callable_spec(v, f"[quantities] derived.{k}", where, base) for k, v in derived.items()
    }
    quantities = Quantities(
        include=check_names(
            q_raw.get("include", _model_variables(simulator) if model else []),
            "[quantities] include",
            where,
        ),
        derived=derived,
        pool=_variables(
            q_raw.get("pool", model.model.group_variables() if model else []),
            "[quantities] pool",
            where,
        ),
        trace=_variables(q_raw.get("trace", []), "[quantities] trace", where),
    )
    p_raw = check_table(raw.get("parallel", {}), "parallel", where)
    no_unknown(p_raw, _SECTIONS["parallel"], "parallel", where)
    parallel = Parallel(
        workers=check_int(p_raw.get("workers", 0), "[parallel] workers", where, minimum=0),
        scheduler=_scheduler(p_raw.get("scheduler", "local"), "[parallel] scheduler", where),
    )
    out = raw.get("out")
    return Study(
        name=name,
        path=path,
        stan=stan,
        sims=check_int(raw.get("sims", 100), "sims", where, minimum=1),
        seed=check_int(raw.get("seed", 0), "seed", where, minimum=0),
        simulator=simulator,
        backend=backend,
        thin=thin,
        quantities=quantities,
        parallel=parallel,
        out=(base / check_str(out, "out", where)) if out is not None else None,
        keep_draws=check_bool(raw.get("keep_draws", False), "keep_draws", where),
        description=check_str(raw.get("description", ""), "description", where),
        model=model,
    )


def _model_variables(simulator: Simulator) -> list[str]:
    """A formula model's variables in its own order (beta, sigma, tau, rho, b), not sorted."""
    variables = getattr(simulator, "variables", None)
    return variables() if callable(variables) else []


def _python_simulator(raw: Any, where: str, base: Path) -> PythonSimulator:
    """``[simulator] function = "module:function"`` with ``args``."""
    sim_raw = check_table(raw, "simulator", where, required=True)
    no_unknown(sim_raw, _SECTIONS["simulator"], "simulator", where)
    if "function" not in sim_raw:
        raise SBCError("[simulator] function: missing (e.g. 'sbc.simulators.lmm:simulate')", where)
    return PythonSimulator(
        function=_callable_spec(sim_raw["function"], "[simulator] function", where, base),
        args=check_table(sim_raw.get("args", {}), "[simulator] args", where),
    )


def _backend(raw: Any, where: str) -> tuple[BackendSpec, bool]:
    """``[backend]``: its type, and the rest checked by that backend's declared `Options`."""
    table = dict(check_table(raw, "backend", where))
    kind = check_str(table.pop("type", "cmdstan"), "[backend] type", where)
    cls = backend_class(kind, where)
    options = parse_options(cls.Options, table, "backend", where)
    return BackendSpec(type=kind, options=options, table=table), bool(cls.needs_stan)


def _sampler(raw: Any, backend: BackendSpec, where: str) -> tuple[BackendSpec, int]:
    """``[sampler]``: `thin` (for the ranks, generic) and the backend's own sampler settings."""
    table = check_table(raw, "sampler", where)
    thin = check_int(table.get("thin", 10), "[sampler] thin", where, minimum=1)
    cls = backend_class(backend.type, where)
    if cls.Sampler is None:
        no_unknown(table, {"thin"}, "sampler", where)
        return backend, thin
    sampler = parse_options(cls.Sampler, table, "sampler", where, also_known={"thin"})
    draws = getattr(sampler, "draws", None)
    if isinstance(draws, int) and thin > draws:
        raise SBCError(
            f"[sampler] thin: {thin} is more than draws ({draws}); no draws would be left", where
        )
    return dataclasses.replace(backend, sampler=sampler), thin


def _variables(value: Any, key: str, where: str) -> tuple[str, ...]:
    names = check_names(value, key, where)
    for name in names:
        if not name.isidentifier():
            raise SBCError(f"{key}: expected variable names (like 'b'), got {name!r}", where)
    return names


# -- small validators ------------------------------------------------------------------------------


def _existing_file(path: Path, key: str, where: str, suffix: str) -> Path:
    if path.suffix != suffix:
        raise SBCError(f"{key}: expected a {suffix} file, got {str(path)!r}", where=where)
    if not path.is_file():
        raise SBCError(f"{key}: file not found: {path}", where=where)
    return path.resolve()


def _callable_spec(value: Any, key: str, where: str, base: Path) -> str:
    """'module:function' stays as is; 'file.py:function' becomes an absolute path."""
    spec = check_str(value, key, where)
    target, sep, func = spec.rpartition(":")
    if not sep or not target or not func.isidentifier():
        raise SBCError(
            f"{key}: expected 'module:function' or 'file.py:function', got {spec!r}", where=where
        )
    if target.endswith(".py"):
        file = (base / target).resolve()
        if not file.is_file():
            raise SBCError(f"{key}: file not found: {file}", where=where)
        return f"{file}:{func}"
    return spec


def _scheduler(value: Any, key: str, where: str) -> str:
    s = check_str(value, key, where)
    if s == "local" or s.startswith("tcp://") or s.startswith("tls://"):
        return s
    if s.startswith("local:"):
        n = s.removeprefix("local:")
        if not n.isdigit() or int(n) < 1:
            raise SBCError(f"{key}: 'local:N' needs N >= 1, got {s!r}", where=where)
        return s
    raise SBCError(
        f"{key}: expected 'local', 'local:N' or 'tcp://host:port', got {s!r}", where=where
    )
