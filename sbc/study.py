"""Study files (TOML) parsed and validated into dataclasses, before anything runs.

Every problem is an `SBCError` naming the file and the key, e.g.
``studies/x.toml: [sampler] chains: expected an integer >= 1, got 0``.
Paths in a study file are relative to the file itself.
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

from sbc.errors import SBCError


@dataclass(frozen=True)
class Sampler:
    """NUTS settings, named as in cmdstanpy's `sample` (`thin` is for ranks, not for CmdStan)."""

    chains: int = 2
    warmup: int = 500
    draws: int = 500
    thin: int = 10
    adapt_delta: float = 0.8
    max_treedepth: int = 10
    timeout: float = 600.0  # seconds per fit; 0 = no limit


@dataclass(frozen=True)
class Simulator:
    function: str  # "package.module:function" or "path/to/file.py:function"
    args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Backend:
    type: str = "cmdstan"  # or "exact"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Quantities:
    include: tuple[str, ...] = ()  # variable or scalar names; empty = all with a truth
    derived: dict[str, str] = field(default_factory=dict)  # name -> "module:function"


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
    sampler: Sampler = Sampler()
    backend: Backend = Backend()
    quantities: Quantities = Quantities()
    parallel: Parallel = Parallel()
    out: Path | None = None
    keep_draws: bool = False
    description: str = ""

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    @property
    def results_dir(self) -> Path:
        return self.out if self.out is not None else Path("results") / self.name

    def workers(self) -> int:
        return self.parallel.workers or available_cores()

    def identity(self) -> dict[str, Any]:
        """What must not change for stored results to stay valid (sims and parallelism may)."""
        return {
            "seed": self.seed,
            "simulator": dataclasses.asdict(self.simulator),
            "sampler": dataclasses.asdict(self.sampler),
            "backend": dataclasses.asdict(self.backend),
            "quantities": {
                "include": list(self.quantities.include),
                "derived": self.quantities.derived,
            },
            "keep_draws": self.keep_draws,
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
            changes["sims"] = _int(sims, "--sims", where, minimum=1)
        if seed is not None:
            changes["seed"] = _int(seed, "--seed", where, minimum=0)
        if workers is not None or scheduler is not None:
            changes["parallel"] = Parallel(
                workers=self.parallel.workers
                if workers is None
                else _int(workers, "--workers", where, minimum=1),
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
    "simulator", "sampler", "backend", "quantities", "parallel",
}  # fmt: skip
_SECTIONS: dict[str, set[str]] = {
    "simulator": {"function", "args"},
    "sampler": {f.name for f in dataclasses.fields(Sampler)},
    "quantities": {"include", "derived"},
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
    _no_unknown(raw, _TOP, "", where)

    name = _str(raw.get("name", path.stem if path else None), "name", where)
    if not name or "/" in name or name.startswith("."):
        raise SBCError(f"name: must be a plain folder name, got {name!r}", where=where)

    backend = _backend(raw.get("backend", {}), where)
    stan = None
    if "stan" in raw:
        stan = _existing_file(base / _str(raw["stan"], "stan", where), "stan", where, ".stan")
    elif backend.type == "cmdstan":  # the exact backends know their posterior
        raise SBCError("stan: missing (the Stan program to calibrate)", where=where)

    sim_raw = _table(raw.get("simulator"), "simulator", where, required=True)
    _no_unknown(sim_raw, _SECTIONS["simulator"], "simulator", where)
    if "function" not in sim_raw:
        raise SBCError("[simulator] function: missing (e.g. 'sbc.simulators.lmm:simulate')", where)
    simulator = Simulator(
        function=_callable_spec(sim_raw["function"], "[simulator] function", where, base),
        args=_table(sim_raw.get("args", {}), "[simulator] args", where),
    )

    sampler = _sampler(_table(raw.get("sampler", {}), "sampler", where), where)
    q_raw = _table(raw.get("quantities", {}), "quantities", where)
    _no_unknown(q_raw, _SECTIONS["quantities"], "quantities", where)
    include = q_raw.get("include", [])
    if not isinstance(include, list) or not all(isinstance(q, str) and q for q in include):
        raise SBCError("[quantities] include: expected a list of names", where=where)
    derived = _table(q_raw.get("derived", {}), "[quantities] derived", where)
    derived = {
        k: _callable_spec(v, f"[quantities] derived.{k}", where, base) for k, v in derived.items()
    }
    p_raw = _table(raw.get("parallel", {}), "parallel", where)
    _no_unknown(p_raw, _SECTIONS["parallel"], "parallel", where)
    parallel = Parallel(
        workers=_int(p_raw.get("workers", 0), "[parallel] workers", where, minimum=0),
        scheduler=_scheduler(p_raw.get("scheduler", "local"), "[parallel] scheduler", where),
    )
    out = raw.get("out")
    return Study(
        name=name,
        path=path,
        stan=stan,
        sims=_int(raw.get("sims", 100), "sims", where, minimum=1),
        seed=_int(raw.get("seed", 0), "seed", where, minimum=0),
        simulator=simulator,
        sampler=sampler,
        backend=backend,
        quantities=Quantities(include=tuple(include), derived=derived),
        parallel=parallel,
        out=(base / _str(out, "out", where)) if out is not None else None,
        keep_draws=_bool(raw.get("keep_draws", False), "keep_draws", where),
        description=_str(raw.get("description", ""), "description", where),
    )


def _sampler(raw: dict[str, Any], where: str) -> Sampler:
    _no_unknown(raw, _SECTIONS["sampler"], "sampler", where)
    d = Sampler()
    s = Sampler(
        chains=_int(raw.get("chains", d.chains), "[sampler] chains", where, minimum=1),
        warmup=_int(raw.get("warmup", d.warmup), "[sampler] warmup", where, minimum=0),
        draws=_int(raw.get("draws", d.draws), "[sampler] draws", where, minimum=1),
        thin=_int(raw.get("thin", d.thin), "[sampler] thin", where, minimum=1),
        adapt_delta=_float(raw.get("adapt_delta", d.adapt_delta), "[sampler] adapt_delta", where),
        max_treedepth=_int(
            raw.get("max_treedepth", d.max_treedepth), "[sampler] max_treedepth", where, minimum=1
        ),
        timeout=_float(raw.get("timeout", d.timeout), "[sampler] timeout", where),
    )
    if not 0 < s.adapt_delta < 1:
        raise SBCError(f"[sampler] adapt_delta: must be in (0, 1), got {s.adapt_delta}", where)
    if s.timeout < 0:
        raise SBCError(f"[sampler] timeout: must be >= 0 seconds, got {s.timeout}", where)
    if s.thin > s.draws:
        raise SBCError(
            f"[sampler] thin: {s.thin} is more than draws ({s.draws}); no draws would be left",
            where,
        )
    return s


_BACKEND_OPTIONS = {
    "cmdstan": set(),
    "exact": {"sd_scale", "shift", "draws"},
    "exact-hierarchical": {"sd_scale", "shift", "draws"},
}


def _backend(raw: Any, where: str) -> Backend:
    raw = dict(_table(raw, "backend", where))
    kind = _str(raw.pop("type", "cmdstan"), "[backend] type", where)
    if kind not in _BACKEND_OPTIONS:
        raise SBCError(
            f"[backend] type: unknown backend {kind!r} (known: {', '.join(_BACKEND_OPTIONS)})",
            where,
        )
    _no_unknown(raw, _BACKEND_OPTIONS[kind], "backend", where)
    for key, value in raw.items():
        _float(value, f"[backend] {key}", where)
    return Backend(type=kind, options=raw)


# -- small validators ------------------------------------------------------------------------------


def _no_unknown(raw: dict[str, Any], known: set[str], section: str, where: str) -> None:
    for key in raw:
        if key not in known:
            label = f"[{section}] {key}" if section else key
            hint = f" (known: {', '.join(sorted(known))})" if known else ""
            raise SBCError(f"{label}: unknown key{hint}", where=where)


def _table(value: Any, key: str, where: str, required: bool = False) -> dict[str, Any]:
    if value is None and required:
        raise SBCError(f"[{key}]: missing section", where=where)
    if not isinstance(value, dict):
        raise SBCError(f"{key}: expected a table, got {type(value).__name__}", where=where)
    return value


def _int(value: Any, key: str, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SBCError(f"{key}: expected an integer, got {value!r}", where=where)
    if value < minimum:
        raise SBCError(f"{key}: expected an integer >= {minimum}, got {value}", where=where)
    return value


def _float(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SBCError(f"{key}: expected a number, got {value!r}", where=where)
    if value != value or value in (float("inf"), float("-inf")):
        raise SBCError(f"{key}: expected a finite number, got {value!r}", where=where)
    return float(value)


def _bool(value: Any, key: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise SBCError(f"{key}: expected true or false, got {value!r}", where=where)
    return value


def _str(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise SBCError(f"{key}: expected a string, got {value!r}", where=where)
    return value


def _existing_file(path: Path, key: str, where: str, suffix: str) -> Path:
    if path.suffix != suffix:
        raise SBCError(f"{key}: expected a {suffix} file, got {str(path)!r}", where=where)
    if not path.is_file():
        raise SBCError(f"{key}: file not found: {path}", where=where)
    return path.resolve()


def _callable_spec(value: Any, key: str, where: str, base: Path) -> str:
    """'module:function' stays as is; 'file.py:function' becomes an absolute path."""
    spec = _str(value, key, where)
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
    s = _str(value, key, where)
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
