"""Which quantities a study ranked, in what order, and which are pooled as group effects.

Names follow CmdStan (`tau[1]`, `b[3,2]`). Nothing here knows a model: the order is the
study's (the `quantities` its manifest records, i.e. the order of `[quantities] include`),
and the variables pooled over their first index are the ones the study declares
(`[quantities] pool = ["b"]`), never guessed from shapes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

_NAME = re.compile(r"^(?P<base>[^\[\]]+)(?:\[(?P<idx>[^\]]*)\])?$")


def parse_quantity(name: str) -> tuple[str, tuple[int, ...]]:
    """`b[3,2]` -> ("b", (3, 2)); `sigma` -> ("sigma", ()); unparseable -> (name, ())."""
    m = _NAME.match(name)
    if not m or m.group("idx") is None:
        return name, ()
    try:
        return m.group("base"), tuple(int(i) for i in m.group("idx").split(","))
    except ValueError:
        return name, ()


def pooled_name(name: str) -> str:
    """`b[3,2]` -> `b[*,2]`; `b[3]` -> `b[*]`."""
    base, idx = parse_quantity(name)
    rest = ",".join(str(i) for i in idx[1:])
    return f"{base}[*{',' + rest if rest else ''}]"


def is_pooled(name: str) -> bool:
    return "[*" in name


class Panel(NamedTuple):
    """One quantity to test or draw: its rows of the ranks table and, if pooled, the
    simulation (cluster) and group (member) of each row."""

    name: str
    kind: str  # "scalar", "pooled" or "member" (of a pooled group)
    rows: pd.DataFrame
    clusters: np.ndarray | None
    members: np.ndarray | None


def order_quantities(
    names: Iterable[str], pool: Sequence[str] = (), order: Sequence[str] | None = None
) -> list[str]:
    """Study order: quantities as in `order` (then in order of appearance), except that each
    pooled variable goes last, as a block: its pooled rows first, then its members by
    (column, group)."""
    names = list(dict.fromkeys(names))
    rank = {q: i for i, q in enumerate(dict.fromkeys([*(order or ()), *names]))}
    pooled_vars = set(pool)

    def key(name: str) -> tuple:
        base, idx = parse_quantity(name.replace("*", "0"))
        if base in pooled_vars and idx:
            first = min((rank[q] for q in names if parse_quantity(q)[0] == base), default=0)
            return (1, first, base, 0 if is_pooled(name) else 1, idx[1:], idx[:1])
        return (0, rank.get(name, len(rank)), "", 0, (), ())

    return sorted(names, key=key)


def quantity_panels(
    ranks_df: pd.DataFrame, pool: Sequence[str] = (), order: Sequence[str] | None = None
) -> list[Panel]:
    """Every quantity of the ranks table, plus a pooled row `v[*,...]` per column of each
    pooled variable v, in study order."""
    quantities = list(dict.fromkeys(ranks_df["quantity"]))
    pooled_vars = set(pool)
    by_q = dict(iter(ranks_df.groupby("quantity", sort=False)))
    groups: dict[str, list[str]] = {}
    for q in quantities:
        base, idx = parse_quantity(q)
        if base in pooled_vars and idx:
            groups.setdefault(pooled_name(q), []).append(q)
    members = {m for ms in groups.values() for m in ms}
    panels = {
        q: Panel(q, "member" if q in members else "scalar", by_q[q], None, None) for q in quantities
    }
    for name, qs in groups.items():
        sub = pd.concat([by_q[q] for q in qs], ignore_index=True)
        group = np.repeat([parse_quantity(q)[1][0] for q in qs], [len(by_q[q]) for q in qs])
        panels[name] = Panel(name, "pooled", sub, sub["sim"].to_numpy(), group)
    return [panels[n] for n in order_quantities(list(panels), pool, order)]


def common_ranks(sub: pd.DataFrame) -> tuple[np.ndarray, int]:
    """Ranks on one scale. If L differs between rows (e.g. a fit kept fewer draws), ranks are
    moved to the smallest L by a randomised PIT, which keeps them exactly uniform under
    calibration: u = (r + U)/(L + 1), r' = ⌊u·(L' + 1)⌋ (fixed seed)."""
    ranks = sub["rank"].to_numpy(dtype=np.int64)
    Ls = sub["L"].to_numpy(dtype=np.int64)
    L = int(Ls.min())
    if np.all(Ls == L):
        return ranks, L
    rng = np.random.default_rng([20220322, ranks.size])
    u = (ranks + rng.uniform(size=ranks.size)) / (Ls + 1)
    return np.minimum((u * (L + 1)).astype(np.int64), L), L


def select_var_names(names: Sequence[str], var_names: str | Sequence[str]) -> list[str]:
    """ArviZ's `var_names` over quantity names: those to keep (a variable name keeps all its
    components and pooled rows, a CmdStan name one quantity), or all but those written
    "~name"; a name that matches nothing is an error (ValueError), as in ArviZ."""
    wanted = [var_names] if isinstance(var_names, str) else list(var_names)
    drop = [n[1:] for n in wanted if n.startswith("~")]
    keep = [n for n in wanted if not n.startswith("~")]

    def matches(name: str, pattern: str) -> bool:
        return name == pattern or name.split("[")[0] == pattern

    missing = [n for n in keep + drop if not any(matches(q, n) for q in names)]
    if missing:
        known = sorted({q.split("[")[0] for q in names})
        raise ValueError(
            f"var_names: {', '.join(missing)} not ranked (variables: {', '.join(known)})"
        )
    return [
        q
        for q in names
        if (not keep or any(matches(q, n) for n in keep)) and not any(matches(q, n) for n in drop)
    ]
