"""A study from Python objects, as a notebook has them: ``sbc.run(stan=..., simulator=f, ...)``.

The keywords become the dict a study file would give (`parse_study` checks it the same way),
with function objects where a file names 'module:function': the simulator (a closure over
a design matrix, a function defined in a cell) and derived quantities. So a study made in a
notebook and one read from a file behave alike: same checks, same identity, same results.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sbc.errors import SBCError
from sbc.study import Study, parse_study

WHERE = "sbc.run"


def study_from_objects(
    *,
    stan: str | Path | Any = None,
    simulator: Callable[..., Any] | str | None = None,
    simulator_args: Mapping[str, Any] | None = None,
    sims: int | None = None,
    seed: int | None = None,
    out: str | Path | None = None,
    name: str | None = None,
    derived: Mapping[str, Callable[..., Any] | str] | None = None,
    backend: str | Mapping[str, Any] | None = None,
    sampler: Mapping[str, Any] | None = None,
    thin_ranks: int | None = None,
    keep_draws: bool | None = None,
    include: Sequence[str] | None = None,
    pool: Sequence[str] | None = None,
    description: str | None = None,
) -> Study:
    """A checked `Study` from keywords (see `sbc.run`); one-line SBCError on bad input."""
    if simulator is None:
        raise SBCError("simulator: missing (a function f(rng) -> (truth, data))", where=WHERE)
    stan_file = _stan_file(stan)
    raw: dict[str, Any] = {
        "simulator": {"function": simulator, "args": dict(simulator_args or {})},
        "name": name or _default_name(out, stan_file, simulator),
    }
    if stan_file is not None:
        raw["stan"] = str(stan_file)
    optional = {"sims": sims, "seed": seed, "keep_draws": keep_draws, "description": description}
    raw.update({k: v for k, v in optional.items() if v is not None})
    if out is not None:
        raw["out"] = str(Path(out).absolute())
    if backend is not None:
        raw["backend"] = {"type": backend} if isinstance(backend, str) else dict(backend)
    table = dict(sampler or {})
    if thin_ranks is not None:
        table["thin"] = thin_ranks  # `[sampler] thin` in a study file: every k-th draw ranked
    if table:
        raw["sampler"] = table
    quantities = {"derived": dict(derived or {}), "include": list(include or []),
                  "pool": list(pool or [])}  # fmt: skip
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
