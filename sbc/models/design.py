"""The design a formula model is built on: the user's table (CSV/TSV), or one generated from
a small spec (grouping factors crossed, rows per cell, predictor values), as the seed's LMM
simulator takes ``groups``, ``group_sizes`` and ``x``.

The design holds predictors and grouping columns only; sbc simulates the response. A
response column the user's table happens to have is ignored, never read.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sbc.errors import SBCError

#: Suffixes read as tables, with their field separators.
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
#: The `by` value that cycles a predictor over the rows of one cell of the crossed factors.
ROW = "row"


@dataclass(frozen=True)
class Design:
    """A design table and what fixes it (for the results' identity and the manifest)."""

    table: pd.DataFrame
    source: dict[str, Any]  # {"file": name, "sha256": ...} or {"generated": spec}

    @property
    def rows(self) -> int:
        return len(self.table)


def load_design(value: Any, base: Path, key: str, where: str) -> Design:
    """``[model] design``: a table file (path relative to the study file) or a generated spec."""
    if isinstance(value, str):
        return read_table(base / value, key, where)
    if isinstance(value, Mapping):
        return generate(value, key, where)
    raise SBCError(
        f'{key}: expected a table file ("design.csv") or a generated design '
        f"(a table with groups, rows and predictors), got {value!r}",
        where=where,
    )


def read_table(path: Path, key: str, where: str) -> Design:
    """A CSV or TSV file with a header row, one row per observation."""
    sep = TABLE_SUFFIXES.get(path.suffix.lower())
    if sep is None:
        raise SBCError(f"{key}: expected a .csv or .tsv table, got {path.name!r}", where=where)
    if not path.is_file():
        raise SBCError(f"{key}: file not found: {path}", where=where)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
        if "\x00" in text:
            raise ValueError("it holds NUL bytes (a binary file?)")
        import io

        table = pd.read_csv(io.StringIO(text), sep=sep, skipinitialspace=True)
    except (UnicodeDecodeError, ValueError, pd.errors.ParserError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SBCError(f"{key}: {path.name} is not a table: {reason}", where=where) from None
    if table.empty or table.shape[1] == 0:
        raise SBCError(f"{key}: {path.name} is not a table: it has no rows", where=where)
    # a column without a name (pandas' index written by to_csv) cannot be in a formula
    table = table.loc[:, [not str(c).startswith("Unnamed:") for c in table.columns]]
    table.columns = [str(c).strip() for c in table.columns]
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return Design(table, {"file": path.name, "sha256": digest})


# -- generated designs -----------------------------------------------------------------------------

_SPEC_KEYS = {"groups", "rows", "predictors"}


def generate(spec: Mapping[str, Any], key: str, where: str) -> Design:
    """A design from ``{groups = {subject = 20, item = 16}, rows = 1, predictors = {...}}``.

    groups: grouping factors and their numbers of levels, crossed (every combination is a
        cell); levels are 1..J. rows: rows per cell (a number), or one number per cell in
        the order of the crossing (the first factor slowest). predictors: name ->
        ``{values = [...], by = ...}``: the row of cell (i, j, ...) and replicate r gets
        ``values[(sum of the named indices) mod len(values)]``, the indices 0-based, where
        ``by`` names grouping factors and/or "row" (the replicate within the cell).
    """
    unknown = sorted(set(spec) - _SPEC_KEYS)
    if unknown:
        raise SBCError(
            f"{key}.{unknown[0]}: unknown key (known: {', '.join(sorted(_SPEC_KEYS))})", where
        )
    groups = spec.get("groups")
    if not isinstance(groups, Mapping) or not groups:
        raise SBCError(
            f"{key}.groups: expected a table of grouping factors and their numbers of levels, "
            "e.g. { subject = 20, item = 16 }",
            where=where,
        )
    levels: dict[str, int] = {}
    for name, n in groups.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise SBCError(f"{key}.groups.{name}: expected a whole number >= 1, got {n!r}", where)
        levels[str(name)] = n
    cells = list(itertools.product(*(range(n) for n in levels.values())))
    sizes = _rows(spec.get("rows", 1), len(cells), f"{key}.rows", where)
    index = {name: np.repeat([c[k] for c in cells], sizes) for k, name in enumerate(levels)}
    replicate = np.concatenate([np.arange(n) for n in sizes]) if sizes.sum() else np.zeros(0)
    if replicate.size == 0:
        raise SBCError(f"{key}.rows: the design has no rows", where=where)
    columns: dict[str, Any] = {name: idx + 1 for name, idx in index.items()}
    predictors = spec.get("predictors", {})
    if not isinstance(predictors, Mapping):
        raise SBCError(f"{key}.predictors: expected a table, got {predictors!r}", where=where)
    for name, p in predictors.items():
        label = f"{key}.predictors.{name}"
        if name in columns:
            raise SBCError(f"{label}: {name!r} is already a grouping factor", where=where)
        values, by = _predictor(p, label, where, [*levels, ROW])
        position = sum(replicate if b == ROW else index[b] for b in by)
        columns[str(name)] = np.asarray(values, dtype=object)[position % len(values)]
        if all(not isinstance(v, str) for v in values):
            columns[str(name)] = columns[str(name)].astype(float)
    generated = {"groups": levels, "rows": spec.get("rows", 1), "predictors": dict(predictors)}
    return Design(pd.DataFrame(columns), {"generated": generated})


def _rows(value: Any, cells: int, key: str, where: str) -> np.ndarray:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise SBCError(f"{key}: expected a whole number >= 1, got {value}", where=where)
        return np.full(cells, value)
    if isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    ):
        if len(value) != cells:
            raise SBCError(
                f"{key}: {len(value)} entries for {cells} cells of the crossed groups; give one "
                "per cell (the first factor slowest) or one number for all",
                where=where,
            )
        return np.asarray(value, dtype=int)
    raise SBCError(
        f"{key}: expected a whole number, or a list of them (one per cell), got {value!r}", where
    )


def _predictor(p: Any, key: str, where: str, allowed: list[str]) -> tuple[list, list[str]]:
    if not isinstance(p, Mapping) or set(p) - {"values", "by"} or "values" not in p:
        raise SBCError(
            f"{key}: expected {{ values = [...], by = ... }} (by: a grouping factor, a list "
            f'of them, or "row"), got {p!r}',
            where=where,
        )
    values = p["values"]
    numbers = isinstance(values, list) and all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values
    )
    texts = isinstance(values, list) and all(isinstance(v, str) and v for v in values)
    if not values or not (numbers or texts):
        raise SBCError(
            f"{key}.values: expected a non-empty list of numbers or of level names", where=where
        )
    by = p.get("by", ROW)
    by = [by] if isinstance(by, str) else by
    if not isinstance(by, list) or not by or any(b not in allowed for b in by):
        raise SBCError(
            f"{key}.by: expected one or more of {', '.join(map(repr, allowed))}, got "
            f"{p.get('by')!r}",
            where=where,
        )
    return list(values), list(by)
