"""A mixed model's structure from an lme4-style formula and a design, built with `formulae`
(what Bambi uses): X, and per grouping factor its levels, the level of each row and its Z.

formulae gives one group-specific term per (expression column, factor), e.g. ``1|subject``
and ``cond|subject`` for ``(1 + cond | subject)``; its design matrices are the same for
``(1 + x | g)`` and ``(1 | g) + (0 + x | g)`` (bambinos/formulae#55). Which terms are
correlated is read from formulae's own parse tree: the terms of one bar ``( ... | g)``
form one correlated block, terms of separate bars of the same factor are independent, as
in lme4 (formulae 0.9 has no ``||``; ``(1 | g) + (0 + x | g)`` is its spelling).

Names (the Stan program's and the ranks'): ``beta[k]`` (column k of X), ``sigma``, and per
factor f ``tau_f[q]``, ``rho_f`` (one correlated pair; a vector of the block's strict lower
triangle, column by column, for three or more terms) and ``b_f[j, q]`` (level j, column
q of Z_f). ``labels`` says what each one is in the formula's words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from sbc.errors import SBCError
from sbc.models.design import Design
from sbc.simulators.lmm import block_diagonal

_IDENT = re.compile(r"[^0-9A-Za-z_]+")


@dataclass(frozen=True)
class Factor:
    """One grouping factor: its levels, the level of each row and its columns of Z."""

    label: str  # as in the formula: "subject", "school:cls"
    name: str  # in Stan names: "subject", "school_cls"
    levels: tuple[str, ...]
    index: np.ndarray  # (N,) 0-based level of each row
    columns: tuple[str, ...]  # what each column of Z is: "Intercept", "cond[b]"
    Z: np.ndarray  # (N, Q) the columns' values in each row (the seed's compact Z)
    block: tuple[int, int] | None  # [start, stop) of the correlated columns, if any

    @property
    def J(self) -> int:
        return len(self.levels)

    @property
    def Q(self) -> int:
        return len(self.columns)

    def pairs(self) -> list[tuple[int, int]]:
        """(row, column) of each correlation, 0-based, strict lower triangle column by column."""
        if self.block is None:
            return []
        lo, hi = self.block
        return [(r, c) for c in range(lo, hi) for r in range(c + 1, hi)]

    def block_diagonal(self) -> sparse.csr_matrix:
        """The seed's N x (J*Q) Z for this factor, which multiplies b_f.ravel() (level by
        level, then column), built by the seed simulator's own code."""
        return block_diagonal(self.Z, self.index, self.J)


@dataclass(frozen=True)
class FormulaModel:
    """The structure of y = X beta + sum_f Z_f b_f + eps on one design."""

    formula: str
    response: str
    X: np.ndarray  # (N, K)
    columns: tuple[str, ...]  # what each column of X is: "Intercept", "cond[b]"
    codings: tuple[str, ...]  # how each categorical predictor is coded, in words
    factors: tuple[Factor, ...]

    @property
    def N(self) -> int:
        return self.X.shape[0]

    @property
    def K(self) -> int:
        return self.X.shape[1]

    def factor(self, name: str) -> Factor | None:
        return next((f for f in self.factors if f.name == name), None)

    def variables(self) -> dict[str, tuple[int, ...]]:
        """Every ranked variable and its shape (rho_f scalar for one pair), in model order."""
        out: dict[str, tuple[int, ...]] = {}
        if self.K:
            out["beta"] = (self.K,)
        out["sigma"] = ()
        for f in self.factors:
            out[f"tau_{f.name}"] = (f.Q,)
            n = len(f.pairs())
            if n:
                out[f"rho_{f.name}"] = () if n == 1 else (n,)
            out[f"b_{f.name}"] = (f.J, f.Q)
        return out

    def group_variables(self) -> list[str]:
        """The group effects, pooled over their levels in the analysis."""
        return [f"b_{f.name}" for f in self.factors]

    def labels(self) -> dict[str, str]:
        """What each scalar quantity (CmdStan's name) and pooled row is, in the formula's words."""
        out = {f"beta[{k + 1}]": c for k, c in enumerate(self.columns)}
        out["sigma"] = "residual sd"
        for f in self.factors:
            for q, c in enumerate(f.columns):
                out[f"tau_{f.name}[{q + 1}]"] = f"sd({c} | {f.label})"
                out[f"b_{f.name}[*,{q + 1}]"] = f"{c} | {f.label} (pooled)"
                for j, level in enumerate(f.levels):
                    out[f"b_{f.name}[{j + 1},{q + 1}]"] = f"{c} | {f.label}={level}"
            pairs = f.pairs()
            for i, (r, c) in enumerate(pairs):
                name = f"rho_{f.name}" if len(pairs) == 1 else f"rho_{f.name}[{i + 1}]"
                out[name] = f"cor({f.columns[c]}, {f.columns[r]} | {f.label})"
        return out

    def data(self, y: np.ndarray) -> dict[str, Any]:
        """The Stan data of the generated program (1-based levels)."""
        data: dict[str, Any] = {"N": self.N, "y": y}
        if self.K:
            data["X"] = self.X
        for f in self.factors:
            data[f"J_{f.name}"] = f.J
            data[f"g_{f.name}"] = f.index + 1
            data[f"Z_{f.name}"] = f.Z
        return data

    def describe(self) -> dict[str, Any]:
        return {
            "formula": self.formula,
            "N": self.N,
            "X": list(self.columns),
            "coding": list(self.codings),
            "factors": {
                f.label: {"levels": f.J, "Z": list(f.columns), "correlated": f.block is not None}
                for f in self.factors
            },
        }


def build_model(formula: str, design: Design, key: str, where: str) -> FormulaModel:
    """X and one (levels, index, Z) per grouping factor, from formulae's design matrices."""
    import formulae

    if not isinstance(formula, str) or not formula.strip():
        raise SBCError(f"{key}: expected a formula such as 'y ~ 1 + x + (1 + x | g)'", where)
    try:
        description = formulae.model_description(formula)
    except Exception as exc:  # formulae's ScanError, ParseError, ResolverError, ValueError
        raise SBCError(f"{key}: formulae rejects {formula!r}: {_reason(exc)}", where) from None
    if description.response is None:
        raise SBCError(f"{key}: {formula!r} has no response (write 'y ~ ...')", where=where)
    response = description.response.term.name
    table = design.table.drop(columns=[response], errors="ignore")
    _check_columns(description, table, formula, key, where)
    frame = table.assign(**{response: 0.0})
    try:
        dm = formulae.design_matrices(formula, frame, na_action="error", extra_namespace={"np": np})
    except KeyError as exc:
        missing = exc.args[0] if exc.args else "?"
        raise SBCError(
            f"{key}: {missing!r} is not a column of the design (its columns: "
            f"{', '.join(map(str, table.columns))})",
            where=where,
        ) from None
    except Exception as exc:
        raise SBCError(f"{key}: formulae cannot build {formula!r}: {_reason(exc)}", where) from None
    X, columns, codings = _common(dm, len(frame))
    factors = _factors(formula, dm, key, where)
    return FormulaModel(formula, response, X, columns, codings, factors)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _check_columns(description: Any, table: pd.DataFrame, formula: str, key: str, where: str):
    """Grouping columns present, with no missing value and at least two levels each."""
    names = [str(c) for c in table.columns]
    for term in description.group_terms:
        for var in sorted(term.factor.var_names):
            if var not in table.columns:
                raise SBCError(
                    f"{key}: grouping column {var!r} of {formula!r} is not in the design "
                    f"(its columns: {', '.join(names)})",
                    where=where,
                )
    used = [v for v in description.var_names if v in table.columns]
    for var in used:
        missing = table[var].isna().to_numpy()
        if missing.any():
            row = int(np.argmax(missing)) + 1
            raise SBCError(
                f"{key}: column {var!r} of the design has {int(missing.sum())} missing value(s) "
                f"(first in row {row}); give every row a value",
                where=where,
            )
    for term in description.group_terms:
        for var in sorted(term.factor.var_names):
            levels = pd.unique(table[var])
            if len(levels) < 2:
                raise SBCError(
                    f"{key}: grouping factor {var!r} has one level ({str(levels[0])!r}) in the "
                    "design; a group effect needs at least two levels",
                    where=where,
                )


def _common(dm: Any, n: int) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...]]:
    """X, its column names and the coding of each categorical term, as formulae made them."""
    if dm.common is None:
        return np.zeros((n, 0)), (), ()
    X = np.asarray(dm.common.design_matrix, dtype=float)
    columns: list[str] = []
    codings: list[str] = []
    for term in dm.common.terms.values():
        columns += list(term.labels)
        codings += _coding(term)
    return X, tuple(columns), tuple(codings)


def _coding(term: Any) -> list[str]:
    """How formulae coded each categorical component of a term, from its contrast matrix."""
    out = []
    for comp in getattr(term, "components", []):
        cm = getattr(comp, "contrast_matrix", None)
        if cm is None:
            continue
        rows = np.asarray(cm.matrix, dtype=float)
        levels = list(comp.levels)
        mapping = ", ".join(
            f"{lev} -> ({', '.join(f'{v:g}' for v in row)})"
            for lev, row in zip(levels, rows, strict=True)
        )
        cols = ", ".join(f"{comp.name}[{c}]" for c in cm.labels)
        kind = _kind(rows, levels)
        out.append(f"{comp.name}: {kind}; levels {mapping} in columns {cols}")
    return out


def _kind(rows: np.ndarray, levels: list[str]) -> str:
    """Treatment, sum or full dummy coding named when the matrix is one; else 'contrasts'."""
    n, k = rows.shape
    if k == n and np.array_equal(rows, np.eye(n)):
        return "one column per level (no intercept)"
    zero = np.flatnonzero(~rows.any(axis=1))
    if k == n - 1 and zero.size == 1 and np.array_equal(np.delete(rows, zero, 0), np.eye(k)):
        return f"treatment coding, reference level {levels[int(zero[0])]}"
    if k == n - 1 and np.array_equal(rows[:-1], np.eye(k)) and np.all(rows[-1] == -1):
        return "sum coding (last level -1)"
    return "contrasts"


def _factors(formula: str, dm: Any, key: str, where: str) -> tuple[Factor, ...]:
    """One Factor per grouping factor: its terms in formula order, grouped by bar."""
    if dm.group is None:
        return ()
    terms = dm.group.terms
    bars = _bars(formula)
    owner: dict[str, int] = {}
    for b, names in enumerate(bars):
        for name in names:
            if name in owner:
                raise SBCError(
                    f"{key}: the group-specific term ({name}) appears in two bars of "
                    f"{formula!r}; give each term once",
                    where=where,
                )
            owner[name] = b
    by_factor: dict[str, list[str]] = {}
    for name, term in terms.items():
        by_factor.setdefault(term.factor.name, []).append(name)
    out = []
    used: set[str] = set()
    for label, names in by_factor.items():
        names.sort(key=lambda n: (owner.get(n, -1), list(terms).index(n)))
        blocks: dict[int, list[str]] = {}
        for n in names:
            blocks.setdefault(owner.get(n, -1), []).append(n)
        correlated = [ns for ns in blocks.values() if len(_columns(terms, ns)) > 1]
        if len(correlated) > 1:
            raise SBCError(
                f"{key}: {label!r} has {len(correlated)} correlated bars in {formula!r}; sbc "
                "supports one per factor (join them into one bar, or split all but one into "
                "bars of one term each)",
                where=where,
            )
        columns = _columns(terms, names)
        block = None
        if correlated:
            start = len(_columns(terms, names[: names.index(correlated[0][0])]))
            block = (start, start + len(_columns(terms, correlated[0])))
        Z = np.column_stack([_expr_data(terms[n]) for n in names])
        first = terms[names[0]]
        index = np.asarray(first.factor.data).argmax(axis=1)
        name = _stan_name(label, used)
        out.append(Factor(label, name, tuple(map(str, first.groups)), index, columns, Z, block))
    return tuple(out)


def _columns(terms: Any, names: list[str]) -> tuple[str, ...]:
    cols: list[str] = []
    for n in names:
        expr = terms[n].expr
        cols += list(expr.labels) if hasattr(expr, "labels") else ["Intercept"]
    return tuple(cols)


def _expr_data(term: Any) -> np.ndarray:
    data = np.asarray(term.expr.data, dtype=float)
    return data[:, None] if data.ndim == 1 else data


def _stan_name(label: str, used: set[str]) -> str:
    """A factor's label as part of Stan identifiers (``school:cls`` -> ``school_cls``)."""
    base = _IDENT.sub("_", label).strip("_") or "g"
    name, n = base, 2
    while name in used:
        name, n = f"{base}_{n}", n + 1
    used.add(name)
    return name


def _bars(formula: str) -> list[set[str]]:
    """The group-specific term names of each bar ``( ... | g)`` of the formula, in order,
    from formulae's own parse tree and resolver (no parsing here)."""
    from formulae.expr import Binary, Grouping, Unary
    from formulae.parser import Parser
    from formulae.resolver import Resolver
    from formulae.scanner import Scanner

    found: list[set[str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, Binary) and node.operator.kind == "PIPE":
            resolved = Resolver(node).resolve()
            terms = getattr(resolved, "group_terms", None) or [resolved]
            found.append({t.name for t in terms})
        elif isinstance(node, Binary):
            walk(node.left)
            walk(node.right)
        elif isinstance(node, Grouping):
            walk(node.expression)
        elif isinstance(node, Unary):
            walk(node.right)

    walk(Parser(Scanner(formula).scan()).parse())
    return found
