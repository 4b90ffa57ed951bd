"""Values from study files, checked where they enter: one `SBCError` line naming file and key.

`parse_options` turns a TOML table into a frozen dataclass by the dataclass's own field
types, so a backend declares its options once (as a dataclass) and gets the checks and
the messages of every other key: ``studies/x.toml: [sampler] chains: expected an integer
>= 1, got 0``. A field's lower bound is ``field(metadata={"min": 1})``; anything more
(a range, a relation between fields) goes in the dataclass's ``check(label, where)``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from sbc.errors import SBCError

T = TypeVar("T")


def parse_options(
    cls: type[T],
    table: Mapping[str, Any],
    section: str,
    where: str,
    also_known: Iterable[str] = (),
) -> T:
    """The dataclass `cls` from `table` ([`section`] of a study file), every value checked.

    `also_known`: keys of the same table that the caller reads itself (they are not
    unknown, and not passed to `cls`).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    also = set(also_known)
    no_unknown(table, set(fields) | also, section, where)
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in also:
            continue
        label = f"[{section}] {key}"
        values[key] = _typed(value, hints[key], label, where, fields[key].metadata.get("min"))
    options = cls(**values)
    check = getattr(options, "check", None)
    if callable(check):
        check(section, where)
    return options


def _typed(value: Any, hint: Any, key: str, where: str, minimum: Any) -> Any:
    """`value` checked against a field's type: int, float, bool, str or one of them | None."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or len(kinds) != 1:
            raise TypeError(f"{key}: unsupported option type {hint!r}")  # a bug in the dataclass
        hint = kinds[0]
    if hint is bool:
        return check_bool(value, key, where)
    if hint is int:
        return check_int(value, key, where, minimum=minimum if minimum is not None else -(2**63))
    if hint is float:
        number = check_float(value, key, where)
        if minimum is not None and number < minimum:
            raise SBCError(f"{key}: expected a number >= {minimum}, got {number}", where=where)
        return number
    if hint is str:
        return check_str(value, key, where)
    raise TypeError(f"{key}: unsupported option type {hint!r}")  # a bug in the dataclass


# -- small validators ------------------------------------------------------------------------------


def no_unknown(raw: Mapping[str, Any], known: set[str], section: str, where: str) -> None:
    for key in raw:
        if key not in known:
            label = f"[{section}] {key}" if section else key
            hint = f" (known: {', '.join(sorted(known))})" if known else " (it takes no keys)"
            raise SBCError(f"{label}: unknown key{hint}", where=where)


def check_table(value: Any, key: str, where: str, required: bool = False) -> dict[str, Any]:
    if value is None and required:
        raise SBCError(f"[{key}]: missing section", where=where)
    if not isinstance(value, dict):
        raise SBCError(f"{key}: expected a table, got {type(value).__name__}", where=where)
    return value


def check_int(value: Any, key: str, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SBCError(f"{key}: expected an integer, got {value!r}", where=where)
    if value < minimum:
        raise SBCError(f"{key}: expected an integer >= {minimum}, got {value}", where=where)
    return value


def check_float(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SBCError(f"{key}: expected a number, got {value!r}", where=where)
    if value != value or value in (float("inf"), float("-inf")):
        raise SBCError(f"{key}: expected a finite number, got {value!r}", where=where)
    return float(value)


def check_bool(value: Any, key: str, where: str) -> bool:
    if not isinstance(value, bool):
        raise SBCError(f"{key}: expected true or false, got {value!r}", where=where)
    return value


def check_str(value: Any, key: str, where: str) -> str:
    if not isinstance(value, str):
        raise SBCError(f"{key}: expected a string, got {value!r}", where=where)
    return value


def check_names(value: Any, key: str, where: str) -> tuple[str, ...]:
    """A list of non-empty names."""
    if not isinstance(value, list) or not all(isinstance(q, str) and q for q in value):
        raise SBCError(f"{key}: expected a list of names", where=where)
    return tuple(value)
