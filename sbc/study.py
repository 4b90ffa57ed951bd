"""Study files (TOML) parsed and validated into dataclasses, before anything runs.

Every problem is an `SBCError` naming the file and the key, e.g.
``studies/x.toml: [sampler] chains: expected an integer >= 1, got 0``.
Paths in a study file are relative to the file itself. What is generic (the simulator,
the quantities, `thin_ranks`, parallelism) is read here; ``[backend]`` and ``[sampler]`` are
read by the declarations of the backend that ``[backend] type`` names (`sbc.backends`).

Where a method's settings live: beside ``type`` in ``[backend]``, under cmdstanpy's names
(or in ``[backend.<name>]``, so one file can hold the settings of several methods and
``--backend <name>`` picks one). ``[sampler]`` is sbc 0.1's spelling of NUTS's settings
and keeps its meanings (``warmup``, ``draws``, and ``thin`` = `thin_ranks`); it belongs to
the file's own ``type``. `thin_ranks` is generic (R's SBC passes it to the ranking, not to
the backend).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sbc.backends import BackendSpec, backend_class, known_backends
from sbc.errors import SBCError
from sbc.options import (
    Written,
    check_bool,
    check_callable_spec,
    check_file,
    check_int,
    check_names,
    check_str,
    check_table,
    field_names,
    no_unknown,
    parse_options,
    read_options,
)
from sbc.simulate import (
    FunctionSpec,
    Simulator,
    UserFunction,
    describe_function,
)
from sbc.simulator_table import parse_simulator, parse_stan_quantities
from sbc.study_thin import auto_thinning_setting, check_auto, draws_per_chain, thin_ranks_setting
from sbc.thinning import AutoThinning


@dataclass(frozen=True)
class Quantities:
    include: tuple[str, ...] = ()  # variable or scalar names; empty = all with a truth
    derived: dict[str, FunctionSpec] = field(default_factory=dict)  # "module:function" or object
    pool: tuple[str, ...] = ()  # variables pooled over their first index (group effects)
    trace: tuple[str, ...] = ()  # variables `sbc recover` plots; default: include's, else all
    stan: tuple[str, ...] = ()  # the model's generated quantities (or lp__), ranked at the truth


@dataclass(frozen=True)
class PrecheckSettings:
    """``[precheck]``: what `sbc precheck` needs beyond the study (never part of its identity)."""

    parameters: str | None = None  # f(truth, data) -> the program's parameters the truth lacks


@dataclass(frozen=True)
class Parallel:
    workers: int = 0  # 0 = one per core
    scheduler: str = "local"  # "local" (joblib/loky), "local:N", "tcp://..." or "tls://..."
    # for a tls:// scheduler (PEM files, as `dask scheduler --tls-*` takes them); unset: dask's
    # own config (distributed.comm.tls.ca-file, .client.cert, .client.key)
    tls_ca_file: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None

    def tls_files(self) -> dict[str, Path]:
        """The TLS files given, by `dask.distributed.Security`'s names."""
        named = {"tls_ca_file": self.tls_ca_file, "tls_client_cert": self.tls_cert,
                 "tls_client_key": self.tls_key}  # fmt: skip
        return {k: v for k, v in named.items() if v is not None}


@dataclass(frozen=True)
class Study:
    name: str
    path: Path | None  # the study file, if there is one
    stan: Path | None
    sims: int
    seed: int
    simulator: Simulator
    backend: BackendSpec = field(default_factory=BackendSpec)
    thin_ranks: int | str = 10  # every thin_ranks-th draw of each chain is ranked, or "auto"
    #: the settings of thin_ranks = "auto" (``[thin_ranks_auto]``), None otherwise
    auto_thinning: AutoThinning | None = None
    quantities: Quantities = Quantities()
    parallel: Parallel = Parallel()
    precheck: PrecheckSettings = PrecheckSettings()
    out: Path | None = None
    keep_draws: bool = False
    description: str = ""
    model: Any = None  # a `sbc.models.ModelInfo` when the study has a [model] formula
    #: ``[backend]``, ``[sampler]`` and `thin_ranks` as written: `with_overrides(backend=...)`
    #: picks another method's settings from them.
    settings: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def labels(self) -> dict[str, str]:
        """What each quantity is, in the model's words (formula models): e.g. beta[2] -> x."""
        return dict(self.model.labels) if self.model is not None else {}

    @property
    def thin(self) -> int | str:
        """sbc 0.1's name of `thin_ranks`."""
        return self.thin_ranks

    @property
    def sampler(self) -> Any:
        """The backend's sbc 0.1 ``[sampler]`` settings if it reads them as its own table
        (the exact backends), else None: the CmdStan backends' are `backend.options`."""
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

        The form sbc 0.1 hashed, so that results it wrote resume: ``sampler`` holds its
        ``[sampler]`` settings (for CmdStan under their sbc 0.1 names, whatever spelling
        the file uses) and ``thin`` (= `thin_ranks`), ``backend`` the type and the other
        settings (the backend's `settings_identity`). What only the analysis reads
        (`pool`, `trace`) is not part of it. ``thin_ranks = "auto"`` adds its settings
        (they change the fits: chains are continued to reach them); without it the
        identity is what it always was.
        """
        sampler, options = _settings_identity(self.backend)
        auto = {}
        if self.auto_thinning is not None:
            auto = {"thin_ranks_auto": dataclasses.asdict(self.auto_thinning)}
        quantities: dict[str, Any] = {
            "include": list(self.quantities.include),
            "derived": self.derived_described(),
        }
        if self.quantities.stan:  # only when used: older identities stay as they were
            quantities["stan"] = list(self.quantities.stan)
        return {
            "seed": self.seed,
            "simulator": self.simulator.describe(),
            "sampler": {**sampler, "thin": self.thin_ranks},
            "backend": {"type": self.backend.type, "options": options},
            "quantities": quantities,
            "keep_draws": self.keep_draws,
            **auto,
        }

    def derived_described(self) -> dict[str, str]:
        return {k: describe_function(v) for k, v in self.quantities.derived.items()}

    def fit_identity(self) -> dict[str, Any]:
        """What changes the fits: the part of `identity` a re-ranking cannot make up for."""
        return split_identity(self.identity())[0]

    def rank_identity(self) -> dict[str, Any]:
        """What changes only the ranks (thinning, quantities): re-ranking kept draws can."""
        return split_identity(self.identity())[1]

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
            "quantities": {
                "include": self.quantities.include,
                "derived": self.derived_described(),
                "pool": self.quantities.pool,
                "trace": self.quantities.trace,
                **({"stan": self.quantities.stan} if self.quantities.stan else {}),
            },
            "parallel": {
                k: str(v) if isinstance(v, Path) else v
                for k, v in dataclasses.asdict(self.parallel).items()
            },
            "keep_draws": self.keep_draws,
            **{k: v for k, v in self.identity().items() if k == "thin_ranks_auto"},
            **({"model": self.model.describe(), "labels": self.labels} if self.model else {}),
        }

    def identity_hash(self) -> str:
        return identity_hash(self.identity())

    def with_overrides(
        self,
        *,
        sims: int | None = None,
        seed: int | None = None,
        workers: int | None = None,
        scheduler: str | None = None,
        out: Path | str | None = None,
        stan: Path | str | None = None,
        backend: str | None = None,
        tls: Mapping[str, Path | str | None] | None = None,
    ) -> Study:
        """The study with command-line overrides applied and checked like file values.

        `backend` runs another method on the same datasets, with the settings the file
        gives it in ``[backend.<name>]`` (else its defaults); its results go to
        ``results/<name>-<backend>`` unless `out` says otherwise. `tls`: `Parallel`'s TLS
        fields (tls_ca_file, tls_cert, tls_key) to replace."""
        where = "command line"
        changes: dict[str, Any] = {}
        if backend is not None and backend != self.backend.type:
            changes.update(self._switched(backend, rename=out is None and self.out is None))
        if sims is not None:
            changes["sims"] = check_int(sims, "--sims", where, minimum=1)
        if seed is not None:
            changes["seed"] = check_int(seed, "--seed", where, minimum=0)
        parallel: dict[str, Any] = {}
        if workers is not None:
            parallel["workers"] = check_int(workers, "--workers", where, minimum=1)
        if scheduler is not None:
            parallel["scheduler"] = _scheduler(scheduler, "--scheduler", where)
        for name, value in (tls or {}).items():
            if name not in _TLS_KEYS:
                raise TypeError(f"with_overrides: unknown TLS field {name!r}")
            if value is not None:
                flag = "--" + name.replace("_", "-")
                parallel[name] = _tls_file(str(value), flag, where, Path.cwd())
        if parallel:
            changes["parallel"] = dataclasses.replace(self.parallel, **parallel)
        if out is not None:
            changes["out"] = Path(out)
        if stan is not None:
            changes["stan"] = check_file(Path(stan), "--stan", where, suffix=".stan")
        return dataclasses.replace(self, **changes)

    def _switched(self, backend: str, rename: bool) -> dict[str, Any]:
        """What changes when `backend` is run instead of the file's own method."""
        if backend not in known_backends():
            raise SBCError(
                f"--backend: unknown backend {backend!r} (known: {', '.join(known_backends())})",
                where="command line",
            )
        where = str(self.path) if self.path else "study"
        spec, needs_stan, thin, auto = _settings(
            self.settings, where, self.base_dir, choose=backend
        )
        if needs_stan and self.stan is None:
            raise SBCError(f"stan: missing (backend {backend} fits a Stan program)", where=where)
        changes: dict[str, Any] = {"backend": spec, "thin_ranks": thin, "auto_thinning": auto}
        if rename:
            changes["name"] = f"{self.name}-{backend}"
        return changes


def identity_hash(identity: dict[str, Any]) -> str:
    """The hash a results manifest records (sbc 0.1's form, so its results still resume)."""
    blob = json.dumps(identity, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def split_identity(identity: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`Study.identity()` as (what changes the fits, what changes only the ranks).

    The fits: seed, simulator, the sampler's settings but `thin`, the backend, keep_draws.
    The ranks: `thin` and the quantities ranked (include, derived). A study that differs
    from stored results in the second part only can be re-ranked from kept draws.
    """
    sampler = dict(identity["sampler"])
    thin = sampler.pop("thin", None)
    fits = {k: v for k, v in identity.items() if k not in ("sampler", "quantities")}
    fits["sampler"] = sampler
    ranks = {"thin": thin, **identity["quantities"]}
    return fits, ranks


def identity_from_manifest(study: dict[str, Any]) -> dict[str, Any] | None:
    """`Study.identity()` rebuilt from a manifest's ``study`` entry (what `describe` wrote),
    or None if the entry lacks a part; the caller checks it against the recorded hash."""
    try:
        q = study["quantities"]
        return {
            "seed": study["seed"],
            "simulator": study["simulator"],
            "sampler": study["sampler"],
            "backend": study["backend"],
            "quantities": {
                "include": q["include"],
                "derived": q["derived"],
                **({"stan": list(q["stan"])} if q.get("stan") else {}),
            },
            "keep_draws": study["keep_draws"],
            **{k: v for k, v in study.items() if k == "thin_ranks_auto"},
        }
    except (KeyError, TypeError):
        return None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# -- parsing -------------------------------------------------------------------------------------

_TOP = {
    "name", "description", "stan", "sims", "seed", "keep_draws", "out", "thin_ranks",
    "thin_ranks_auto", "simulator", "sampler", "backend", "quantities", "parallel", "precheck",
    "model",
}  # fmt: skip
#: What a study says about how it is fitted and thinned (`Study.settings`).
_SETTINGS = ("backend", "sampler", "thin_ranks", "thin_ranks_auto")
_SECTIONS: dict[str, set[str]] = {
    "quantities": {"include", "derived", "pool", "trace", "stan"},
    "parallel": {"workers", "scheduler", "tls_ca_file", "tls_cert", "tls_key"},
    "precheck": {"parameters"},
}
_TLS_KEYS = ("tls_ca_file", "tls_cert", "tls_key")


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

    settings = {k: raw[k] for k in _SETTINGS if k in raw}
    backend, needs_stan, thin_ranks, auto_thinning = _settings(settings, where, base)
    stan = None
    built = None
    if "model" in raw:  # a formula: the Stan program (and the simulator) come from it
        if "stan" in raw:
            raise SBCError("stan: a study with a [model] formula generates its program; "
                           "give one of the two", where=where)  # fmt: skip
        from sbc.models.section import parse_model

        built = parse_model(raw, base, where)
        stan = built.info.stan_file
    elif "stan" in raw:
        stan = check_file(base / check_str(raw["stan"], "stan", where), "stan", where, ".stan")
    elif needs_stan:
        raise SBCError("stan: missing (the Stan program to calibrate)", where=where)

    simulator = (built and built.simulator) or parse_simulator(raw.get("simulator"), where, base)

    q_raw = check_table(raw.get("quantities", {}), "quantities", where)
    no_unknown(q_raw, _SECTIONS["quantities"], "quantities", where)
    derived = check_table(q_raw.get("derived", {}), "[quantities] derived", where)
    derived = {k: _function_spec(v, f"[quantities] derived.{k}", where, base)
               for k, v in derived.items()}  # fmt: skip
    quantities = Quantities(
        include=check_names(
            q_raw.get("include", built.include if built else []), "[quantities] include", where
        ),
        derived=derived,
        pool=_variables(q_raw.get("pool", built.pool if built else []), "[quantities] pool", where),
        trace=_variables(q_raw.get("trace", []), "[quantities] trace", where),
        stan=parse_stan_quantities(q_raw.get("stan", []), where),
    )
    c_raw = check_table(raw.get("precheck", {}), "precheck", where)
    no_unknown(c_raw, _SECTIONS["precheck"], "precheck", where)
    precheck = PrecheckSettings(
        parameters=check_callable_spec(c_raw["parameters"], "[precheck] parameters", where, base)
        if "parameters" in c_raw
        else None
    )
    p_raw = check_table(raw.get("parallel", {}), "parallel", where)
    no_unknown(p_raw, _SECTIONS["parallel"], "parallel", where)
    parallel = Parallel(
        workers=check_int(p_raw.get("workers", 0), "[parallel] workers", where, minimum=0),
        scheduler=_scheduler(p_raw.get("scheduler", "local"), "[parallel] scheduler", where),
        **{k: _tls_file(p_raw[k], f"[parallel] {k}", where, base) for k in _TLS_KEYS if k in p_raw},
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
        thin_ranks=thin_ranks,
        auto_thinning=auto_thinning,
        quantities=quantities,
        parallel=parallel,
        precheck=precheck,
        out=(base / check_str(out, "out", where)) if out is not None else None,
        keep_draws=check_bool(raw.get("keep_draws", False), "keep_draws", where),
        description=check_str(raw.get("description", ""), "description", where),
        model=built.info if built else None,
        settings=settings,
    )


def _settings(
    raw: Mapping[str, Any], where: str, base: Path, choose: str | None = None
) -> tuple[BackendSpec, bool, int | str, AutoThinning | None]:
    """The settings of the method a study runs: (its spec, whether it needs a Stan program,
    thin_ranks, the settings of thin_ranks = "auto" or None). `raw` holds ``[backend]``,
    ``[sampler]``, `thin_ranks` and ``[thin_ranks_auto]`` as written; `choose` runs another
    backend than ``[backend] type``. Every method's table is checked, the ones not run too,
    so a typo never waits for the day its method runs."""
    table = dict(check_table(raw.get("backend", {}), "backend", where))
    own = check_str(table.pop("type", "cmdstan"), "[backend] type", where)
    backend_class(own, where)
    subs = {k: table.pop(k) for k in [k for k, v in table.items() if isinstance(v, dict)]}
    for name in subs:
        if name not in known_backends():
            raise SBCError(
                f"[backend.{name}]: unknown backend {name!r} (known: "
                f"{', '.join(known_backends())})",
                where=where,
            )
    if own in subs and table:
        raise SBCError(
            f"[backend.{own}]: backend {own}'s settings go beside type or in [backend.{own}], "
            "not both",
            where=where,
        )
    tables = {name: Written(f"backend.{name}", t) for name, t in subs.items()}
    tables.setdefault(own, Written("backend", table))
    sampler = dict(check_table(raw.get("sampler", {}), "sampler", where))
    chosen = choose or own
    thin_ranks, label = thin_ranks_setting(raw.get("thin_ranks"), sampler.get("thin"), where)
    auto = auto_thinning_setting(raw.get("thin_ranks_auto"), thin_ranks, where)
    specs = {name: _spec(name, t, sampler if name == own else None, where, base)
             for name, t in tables.items()}  # fmt: skip
    spec = specs.get(chosen) or _spec(chosen, Written(f"backend.{chosen}", {}), None, where, base)
    draws = draws_per_chain(spec)
    if auto is not None:
        spec = dataclasses.replace(spec, extend_chains=True)
        check_auto(spec, auto, draws, where)
    elif draws is not None and thin_ranks > draws[0]:
        raise SBCError(
            f"{label}: {thin_ranks} is more than {draws[1]} ({draws[0]}); no draws would be left",
            where,
        )
    return spec, bool(backend_class(chosen, where).needs_stan), thin_ranks, auto


def _spec(
    name: str, written: Written, sampler: dict[str, Any] | None, where: str, base: Path
) -> BackendSpec:
    """One backend's settings from its table, and from ``[sampler]`` if it is the file's own
    (None otherwise): sbc 0.1's table of its own (`Sampler`), or mapped onto the options."""
    cls = backend_class(name, where)
    _not_another_backends(name, cls, written, where)
    sources = [written]
    parsed_sampler = None
    if sampler is not None and cls.Sampler is not None:
        parsed_sampler = parse_options(cls.Sampler, sampler, "sampler", where, also_known={"thin"})
    elif sampler is not None:
        names = {
            f.metadata["sampler"]: f.name
            for f in dataclasses.fields(cls.Options)
            if "sampler" in f.metadata
        }
        for key in sampler:
            if key != "thin" and not names:
                raise SBCError(
                    f"[sampler] {key}: unknown key (backend {name} has no [sampler] settings; "
                    "[sampler] thin is thin_ranks; its settings go in [backend])",
                    where=where,
                )
        sources.append(Written("sampler", sampler, names=names, also_known=frozenset({"thin"})))
    options = read_options(cls.Options, sources, where, base)
    return BackendSpec(type=name, options=options, sampler=parsed_sampler, table=written.table)


def _not_another_backends(name: str, cls: type, written: Written, where: str) -> None:
    """A key that is some other backend's setting is named as such, in one line."""
    own = field_names(cls.Options)
    for key in written.table:
        if key in own:
            continue
        if key == "seed":
            raise SBCError(
                f"{written.label(key)}: each fit's seed comes from the study's `seed` and the "
                "simulation index; set `seed` at the top of the study file",
                where=where,
            )
        owners = [other for other in known_backends() if other != name and key in _keys(other)]
        if owners:
            raise SBCError(
                f"{written.label(key)}: a setting of backend {', '.join(owners)}, not of {name} "
                f"(known: {', '.join(sorted(own)) or 'none'})",
                where=where,
            )


def _keys(backend: str) -> set[str]:
    """Every setting name a backend accepts (none if it cannot be loaded)."""
    try:
        return set(field_names(backend_class(backend).Options))
    except SBCError:
        return set()


def _settings_identity(spec: BackendSpec) -> tuple[dict[str, Any], dict[str, Any]]:
    cls = backend_class(spec.type)
    own = getattr(cls, "settings_identity", None)
    if own is not None:
        return own(spec)
    sampler = dataclasses.asdict(spec.sampler) if spec.sampler is not None else {}
    return sampler, dict(spec.table)  # a plugin without BackendBase: sbc 0.1's form


def _variables(value: Any, key: str, where: str) -> tuple[str, ...]:
    names = check_names(value, key, where)
    for name in names:
        if not name.isidentifier():
            raise SBCError(f"{key}: expected variable names (like 'b'), got {name!r}", where)
    return names


# -- small validators ------------------------------------------------------------------------------


def _tls_file(value: Any, key: str, where: str, base: Path) -> Path:
    """A certificate or key file (PEM) for a tls:// scheduler: it must exist now."""
    path = (base / check_str(value, key, where)).resolve()
    if not path.is_file():
        raise SBCError(f"{key}: file not found: {path}", where=where)
    return path


def _function_spec(value: Any, key: str, where: str, base: Path) -> FunctionSpec:
    """A spec string (checked by `check_callable_spec`) or a function object (a notebook's)."""
    if isinstance(value, UserFunction):
        return value
    if callable(value):
        return UserFunction(value)
    return check_callable_spec(value, key, where, base)


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
        f"{key}: expected 'local', 'local:N', 'tcp://host:port' or 'tls://host:port', got {s!r}",
        where=where,
    )
