"""Values from study files, checked where they enter: one `SBCError` line naming file and key.

`parse_options` turns a TOML table into a frozen dataclass by the dataclass's own field
types, so a backend declares its options once (as a dataclass) and gets the checks and
the messages of every other key: ``studies/x.toml: [sampler] chains: expected an integer
>= 1, got 0``. What a field's ``metadata`` may add:

* ``"min"``: a lower bound (``field(metadata={"min": 1})``);
* ``"choices"``: the strings a text field accepts;
* ``"aliases"``: other names the field is written under (``warmup`` for ``iter_warmup``);
  writing two names of one field is an error;
* ``"callable"``: a text value is a 'module:function' or 'file.py:function' spec (the file
  relative to the study file, as for simulators);
* ``"sampler"``: the field's name in sbc 0.1's ``[sampler]`` table (`sbc.study` reads it
  from there too, and the resume identity hashes it under that name).

Anything more (a range, a relation between fields) goes in the dataclass's
``check(label, where)``. `read_options` reads one dataclass from several tables (``[backend]``
and ``[sampler]``), each key named as written in messages.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sbc.errors import SBCError

T = TypeVar("T")


@dataclass(frozen=True)
class Written:
    """One table of a study file that holds settings of a dataclass.

    `names` maps the keys this table accepts to fields (None: every field under its own
    name and its aliases); `also_known`: keys of the table the caller reads itself.
    """

    section: str
    table: Mapping[str, Any]
    names: Mapping[str, str] | None = None
    also_known: frozenset[str] = field(default_factory=frozenset)

    def label(self, key: str) -> str:
        return f"[{self.section}] {key}" if self.section else key


def field_names(cls: type) -> dict[str, str]:
    """Every name a field of `cls` may be written under -> the field's name."""
    names: dict[str, str] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        names[f.name] = f.name
        for alias in f.metadata.get("aliases", ()):
            names[alias] = f.name
    return names


def written_fields(
    cls: type, sources: Sequence[Written], where: str
) -> dict[str, tuple[Written, str, Any]]:
    """field -> (table, key as written, raw value); unknown keys and fields given twice refused."""
    out: dict[str, tuple[Written, str, Any]] = {}
    for src in sources:
        names = dict(src.names) if src.names is not None else field_names(cls)
        no_unknown(src.table, set(names) | set(src.also_known), src.section, where)
        for key, value in src.table.items():
            if key in src.also_known:
                continue
            name = names[key]
            if name in out:
                first = out[name]
                raise SBCError(
                    f"{src.label(key)}: the same setting as {first[0].label(first[1])}; "
                    "give it once",
                    where=where,
                )
            out[name] = (src, key, value)
    return out


def read_options(
    cls: type[T], sources: Sequence[Written], where: str, base: Path | None = None
) -> T:
    """The dataclass `cls` from the tables `sources`, every value checked by its field."""
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, (src, key, value) in written_fields(cls, sources, where).items():
        meta = fields[name].metadata
        values[name] = _typed(value, hints[name], src.label(key), where, meta, base)
    options = cls(**values)
    check = getattr(options, "check", None)
    if callable(check):
        check(sources[0].section if sources else "", where)
    return options


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
    return read_options(cls, [Written(section, table, also_known=frozenset(also_known))], where)


def _typed(
    value: Any, hint: Any, key: str, where: str, meta: Mapping[str, Any], base: Path | None
) -> Any:
    """`value` checked against a field's type (int, float, bool, str, a union of them, or one
    of them | None) and its metadata."""
    kinds = [hint]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(hint) if a is not type(None)]
    if not kinds or any(k not in (bool, int, float, str) for k in kinds):
        raise TypeError(f"{key}: unsupported option type {hint!r}")  # a bug in the dataclass
    kind = kinds[0] if len(kinds) == 1 else _kind_of(value, kinds, key, where)
    minimum = meta.get("min")
    if kind is bool:
        return check_bool(value, key, where)
    if kind is int:
        return check_int(value, key, where, minimum=minimum if minimum is not None else -(2**63))
    if kind is float:
        number = check_float(value, key, where)
        if minimum is not None and number < minimum:
            raise SBCError(f"{key}: expected a number >= {minimum}, got {number}", where=where)
        return number
    text = check_str(value, key, where)
    choices = meta.get("choices")
    if choices and text not in choices:
        raise SBCError(f"{key}: expected one of {', '.join(choices)}, got {text!r}", where=where)
    if meta.get("callable"):
        return check_callable_spec(text, key, where, base or Path.cwd())
    return text


def _kind_of(value: Any, kinds: list[type], key: str, where: str) -> type:
    """Which type of a union a written value is (a whole number may be a float)."""
    if isinstance(value, bool):
        if bool in kinds:
            return bool
    elif isinstance(value, int) and int in kinds:
        return int
    elif isinstance(value, int | float) and float in kinds:
        return float
    elif isinstance(value, str) and str in kinds:
        return str
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    expected = " or ".join(dict.fromkeys(words[k] for k in kinds))
    raise SBCError(f"{key}: expected {expected}, got {value!r}", where=where)


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


def check_callable_spec(value: Any, key: str, where: str, base: Path) -> str:
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


def check_file(path: Path, key: str, where: str, suffix: str) -> Path:
    """An existing file with the given suffix (a Stan program), made absolute."""
    if path.suffix != suffix:
        raise SBCError(f"{key}: expected a {suffix} file, got {str(path)!r}", where=where)
    if not path.is_file():
        raise SBCError(f"{key}: file not found: {path}", where=where)
    return path.resolve()
