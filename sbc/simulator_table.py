"""The ``[simulator]`` table of a study file: a Python function or a Stan program.

A simulator in Stan draws the parameters and the data in its generated quantities; the
table says which outputs are the truth (``truth``) and which are the fitted program's data
(``data``, model name -> simulator output); ``args`` is the simulator's own data (a table or
a CmdStan JSON file), passed through to the fit unchanged. Split from `sbc.study` so that
the study file's generic keys and the simulator's fit in one module each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sbc.errors import SBCError
from sbc.options import (
    check_callable_spec,
    check_file,
    check_names,
    check_str,
    check_table,
    no_unknown,
)
from sbc.simulate import CallableSimulator, PythonSimulator, Simulator, UserFunction

KEYS = {"function", "stan", "args", "truth", "data"}


def parse_simulator(raw: Any, where: str, base: Path) -> Simulator:
    """``[simulator]``: a Python function (``function``, a spec or a notebook's function
    object) or a Stan program (``stan``)."""
    table = check_table(raw, "simulator", where, required=True)
    no_unknown(table, KEYS, "simulator", where)
    if ("function" in table) == ("stan" in table):
        raise SBCError(
            "[simulator] function: missing (e.g. 'sbc.simulators.lmm:simulate'; or a Stan "
            "program: stan = 'simulator.stan')"
            if "function" not in table
            else "[simulator]: give function or stan, not both",
            where,
        )
    if "function" in table:
        for key in ("truth", "data"):
            if key in table:
                raise SBCError(f"[simulator] {key}: only for a simulator in Stan (stan = ...)",
                               where)  # fmt: skip
        args = check_table(table.get("args", {}), "[simulator] args", where)
        if callable(table["function"]):  # a notebook's function: `sbc.run(simulator=f)`
            return CallableSimulator(UserFunction(table["function"]), args)
        function = check_callable_spec(table["function"], "[simulator] function", where, base)
        return PythonSimulator(function=function, args=args)
    from sbc.backends.cmdstan.simulator import StanSimulator

    stan = check_file(base / check_str(table["stan"], "[simulator] stan", where),
                      "[simulator] stan", where, ".stan")  # fmt: skip
    if "truth" not in table:
        raise SBCError("[simulator] truth: missing (the simulator's outputs that are the "
                       "truth, e.g. ['beta', 'sigma'])", where)  # fmt: skip
    truth = _mapping(table["truth"], "[simulator] truth", where, lists=True)
    data = _mapping(table.get("data", {}), "[simulator] data", where, lists=False)
    args = _stan_args(table.get("args", {}), where, base)
    both = sorted(set(data) & set(args))
    if both:
        raise SBCError(f"[simulator] data: {both[0]!r} is also in [simulator] args", where)
    return StanSimulator(stan_file=stan, truth=truth, data=data, args=args)


def parse_stan_quantities(value: Any, where: str) -> tuple[str, ...]:
    """``[quantities] stan``: generated quantities of the fitted program, or ``lp__``."""
    names = check_names(value, "[quantities] stan", where)
    for name in names:
        if not (name.isidentifier() and (name == "lp__" or not name.endswith("__"))):
            raise SBCError(f"[quantities] stan: expected generated quantities (or lp__), "
                           f"got {name!r}", where)  # fmt: skip
    return names


def _mapping(value: Any, key: str, where: str, lists: bool) -> dict[str, str]:
    """``{model name: simulator output}`` from a table (or, for `lists`, a list of names)."""
    if lists and isinstance(value, list):
        value = {name: name for name in check_names(value, key, where)}
    if not isinstance(value, dict) or (lists and not value):
        form = "a list of names or a table" if lists else "a table"
        raise SBCError(f"{key}: expected {form} of Stan variable names", where)
    for target, source in value.items():
        if not (isinstance(source, str) and source.isidentifier() and target.isidentifier()):
            raise SBCError(f"{key}: expected Stan variable names, got {target} = {source!r}",
                           where)  # fmt: skip
    return dict(value)


def _stan_args(value: Any, where: str, base: Path) -> dict[str, Any]:
    """``[simulator] args`` of a Stan simulator: a table, or a JSON data file (CmdStan's)."""
    if not isinstance(value, str):
        return check_table(value, "[simulator] args", where)
    path = base / value
    if path.suffix != ".json":
        raise SBCError(f"[simulator] args: expected a table or a .json data file, got {value!r}",
                       where)  # fmt: skip
    if not path.is_file():
        raise SBCError(f"[simulator] args: file not found: {path}", where)
    try:
        args = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SBCError(f"[simulator] args: cannot read {path}: {exc}", where) from None
    if not isinstance(args, dict):
        raise SBCError(f"[simulator] args: {path} does not hold a JSON object", where)
    return args
