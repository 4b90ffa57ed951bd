"""A study from Python objects, as a notebook has them: ``sbc.run(stan=..., simulator=f, ...)``.

The keywords become the dict a study file would give (`parse_study` checks it the same way),
with function objects where a file names 'module:function': the simulator (a closure over
a design matrix, a function defined in a cell) and derived quantities. So a study made in a
notebook and one read from a file behave alike: same checks, same identity, same results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sbc.errors import SBCError
from sbc.study import Study, parse_study

WHERE = "sbc.run"


#: The keywords of `sbc.run` that describe the study itself (see `sbc.api.run`).
KEYWORDS = (
    "stan", "simulator", "simulator_args", "sims", "seed", "out", "name", "derived", "backend",
    "sampler", "thin_ranks", "keep_draws", "include", "pool", "description",
)  # fmt: skip


def study_from_objects(**given: Any) -> Study:
    """A checked `Study` from `sbc.run`'s keywords (`KEYWORDS`; None: not given), one-line
    SBCError on bad input: stan (a path or a CmdStanModel), simulator (a function, or a
    'module:function' spec), derived ({name: function or spec}), backend (a type name, or
    the ``[backend]`` table), sampler (the ``[sampler]`` table), thin_ranks, ..."""
    unknown = sorted(set(given) - set(KEYWORDS))
    if unknown:
        raise TypeError(f"study_from_objects() got unexpected keywords: {', '.join(unknown)}")
    g: dict[str, Any] = {k: given.get(k) for k in KEYWORDS}
    simulator, stan, out = g["simulator"], g["stan"], g["out"]
    if simulator is None:
        raise SBCError("simulator: missing (a function f(rng) -> (truth, data))", where=WHERE)
    stan_file = _stan_file(stan)
    raw: dict[str, Any] = {
        "simulator": {"function": simulator, "args": dict(g["simulator_args"] or {})},
        "name": g["name"] or _default_name(out, stan_file, simulator),
    }
    if stan_file is not None:
        raw["stan"] = str(stan_file)
    optional = ("sims", "seed", "keep_draws", "description")
    raw.update({k: g[k] for k in optional if g[k] is not None})
    if out is not None:
        raw["out"] = str(Path(out).absolute())
    backend = g["backend"]
    if backend is not None:
        raw["backend"] = {"type": backend} if isinstance(backend, str) else dict(backend)
    if g["sampler"]:
        raw["sampler"] = dict(g["sampler"])  # sbc 0.1's spelling of NUTS's settings
    if g["thin_ranks"] is not None:
        raw["thin_ranks"] = g["thin_ranks"]
    quantities = {"derived": dict(g["derived"] or {}), "include": list(g["include"] or []),
                  "pool": list(g["pool"] or [])}  # fmt: skip
    raw["quantities"] = {k: v for k, v in quantities.items() if v}
    try:
        return parse_study(raw)
    except SBCError as exc:
        raise SBCError(str(exc).removeprefix("study: "), where=WHERE) from None


def _stan_file(stan: Any) -> Path | None:
    """A path, or a `cmdstanpy.CmdStanModel` (its Stan file: sbc compiles and caches it)."""
    if stan is None or isinstance(stan, str | Path):
        return Path(stan).absolute() if stan is not None else None
    source = getattr(stan, "stan_file", None)
    if source is None:
        what = type(stan).__name__ + (" without a Stan file" if hasattr(stan, "exe_file") else "")
        raise SBCError(
            f"stan: expected a .stan file or a cmdstanpy.CmdStanModel made from one, got {what}",
            where=WHERE,
        )
    return Path(source).absolute()


def _default_name(out: Any, stan: Path | None, simulator: Any) -> str:
    if out is not None:
        return Path(out).name
    if stan is not None:
        return stan.stem
    return getattr(simulator, "__name__", "study").strip("<>") or "study"
