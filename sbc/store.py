"""The results store: one SQLite file per study, append-only and resumable.

Only the runner's main process writes; finished simulations are committed in
transactions of one or more whole simulations (each with its `simulations` row,
its `ranks` rows and, if asked, its kept draws), so a killed runner leaves either
all of a simulation or none of it.
WAL mode lets `sbc report` and `sbc check` read while a study runs.

Ranks come in versions. Version 1 is the `ranks` table (every store has it; sbc 0.1's
stores have only it). `sbc rerank` computes ranks again from kept draws, with other test
quantities or thinning, and stores them as a new version in `reranks`, in one
transaction with its description (manifest ``rank_versions``): an older version is never
overwritten, and a version is there whole or not at all.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from sbc.errors import SBCError

__all__ = ["DB_NAME", "Diagnostic", "SimulationResult", "Store"]

DB_NAME = "sbc.sqlite"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Diagnostic:
    """One per-simulation number a backend reports: its store column and when it flags a fit.

    `flag_when` (">" or "<") and `threshold` say which fits deserve a warning
    (``divergences > 0``), compared with the value divided by the fit's kept draws L if
    `per_kept_draw` (``ess_bulk_min / L < 0.5``); a diagnostic without them is recorded and
    shown, never flagged. `doc` says what it is and why the rule is what it is. Backends
    declare theirs (`Backend.diagnostics`); results record them (`Results.diagnostics`).
    """

    name: str
    sql_type: str  # "INTEGER" or "REAL"
    flag_when: str | None = None
    threshold: float | None = None
    doc: str = ""
    per_kept_draw: bool = False

    def __post_init__(self) -> None:  # declarations are code: a bad one is a bug, not input
        if not self.name.isidentifier() or self.name in BASE_COLUMNS:
            raise ValueError(f"diagnostic name {self.name!r}: not a usable column name")
        if self.sql_type not in ("INTEGER", "REAL"):
            raise ValueError(f"diagnostic {self.name}: sql_type must be INTEGER or REAL")
        if self.flag_when not in (None, ">", "<") or (self.flag_when is None) != (
            self.threshold is None
        ):
            raise ValueError(f"diagnostic {self.name}: flag_when is '>' or '<' with a threshold")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Diagnostic:
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


#: Columns of every simulation row, whatever the backend.
BASE_COLUMNS = ("sim", "status", "seed", "error")

#: Where a simulation's time went; measured by the task, so every study has them.
TIMINGS = (
    Diagnostic("simulate_seconds", "REAL", doc="running the simulator"),
    Diagnostic("fit_seconds", "REAL", doc="the backend's fit, draws and diagnostics"),
    Diagnostic("rank_seconds", "REAL", doc="ranks, intervals and derived quantities"),
    Diagnostic("wall_seconds", "REAL", doc="the whole simulation in its worker"),
)

RANK_COLUMNS: dict[str, str] = {
    "truth": "REAL",
    "rank": "INTEGER",
    "L": "INTEGER",
    "mean": "REAL",
    "sd": "REAL",
}
#: Interval hits from draw quantiles, written by sbc ≤ 0.1 (biased; coverage now comes from
#: the ranks): kept in old databases, left out of what `ranks()` returns.
LEGACY_RANK_COLUMNS = tuple(f"hit{p}" for p in (50, 80, 90, 95))


def _schema(columns: Sequence[Diagnostic]) -> str:
    """The tables; `simulations` gets one column per diagnostic (an old store may have more)."""
    diagnostics = "".join(f",\n    {d.name} {d.sql_type}" for d in columns)
    return f"""
CREATE TABLE IF NOT EXISTS manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS simulations (
    sim INTEGER PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    seed INTEGER NOT NULL,
    error TEXT{diagnostics}
);
CREATE TABLE IF NOT EXISTS ranks (
    sim INTEGER NOT NULL REFERENCES simulations(sim) ON DELETE CASCADE,
    quantity TEXT NOT NULL,
    {", ".join(f'"{name}" {kind}' for name, kind in RANK_COLUMNS.items())},
    PRIMARY KEY (sim, quantity)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS reranks (
    version INTEGER NOT NULL CHECK (version >= 2),
    sim INTEGER NOT NULL REFERENCES simulations(sim) ON DELETE CASCADE,
    quantity TEXT NOT NULL,
    {", ".join(f'"{name}" {kind}' for name, kind in RANK_COLUMNS.items())},
    PRIMARY KEY (version, sim, quantity)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS draws (
    sim INTEGER PRIMARY KEY REFERENCES simulations(sim) ON DELETE CASCADE,
    npz BLOB NOT NULL
);
"""


_TABLES = {"manifest", "simulations", "ranks", "reranks", "draws"}
#: The manifest key describing rank versions 2, 3, ... (version 1 is the study's own).
RANK_VERSIONS = "rank_versions"


@dataclass
class SimulationResult:
    """Everything one simulation produced; the unit the store commits atomically."""

    sim: int
    seed: int
    status: str  # "ok" or "failed"
    error: str | None = None
    diagnostics: dict[str, float] = field(default_factory=dict)
    ranks: list[dict[str, Any]] = field(default_factory=list)  # one dict per quantity
    draws_npz: bytes | None = None  # thinned draws, kept only with keep_draws


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}"
    con = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
    con.execute("PRAGMA foreign_keys = ON")
    return con


class Store:
    """A study's SQLite database: `open_for_writing` (the runner) or `open_for_reading`."""

    def __init__(self, con: sqlite3.Connection, path: Path, columns: Sequence[Diagnostic] = ()):
        self.con = con
        self.path = path
        self.columns = tuple(columns)  # what `add` may write besides BASE_COLUMNS

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def open_for_writing(cls, folder: Path, diagnostics: Sequence[Diagnostic] = ()) -> Store:
        """Create or open a study's store, with a column for each of the backend's diagnostics.

        A store written before (by an older sbc, or with another backend's columns) keeps
        its columns and gets the missing ones: ALTER TABLE ADD COLUMN, NULL in old rows.
        """
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / DB_NAME
        columns = (*diagnostics, *TIMINGS)
        con = _connect(path, readonly=False)
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = FULL")
        con.executescript(_schema(columns))
        have = {row[1] for row in con.execute("PRAGMA table_info(simulations)")}
        for d in columns:
            if d.name not in have:
                con.execute(f'ALTER TABLE simulations ADD COLUMN "{d.name}" {d.sql_type}')
        return cls(con, path, columns)

    @staticmethod
    def check_writable(folder: Path) -> None:
        """Refuse, before anything is written, a folder that cannot hold (or resume) a study."""
        if folder.exists() and not folder.is_dir():
            raise SBCError("not a folder (results go in a folder)", where=str(folder))
        path = folder / DB_NAME
        if not path.exists():
            return
        try:
            con = _connect(path, readonly=True)
            try:
                tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
            finally:
                con.close()
        except sqlite3.DatabaseError as exc:
            raise SBCError(f"not an sbc results database ({exc})", where=str(path)) from None
        foreign = sorted(t for t in tables - _TABLES if not t.startswith("sqlite_"))
        if foreign:
            raise SBCError(
                f"not an sbc results database (it has other tables: {', '.join(foreign)})",
                where=str(path),
            )

    @classmethod
    def open_for_reading(cls, folder: Path | str) -> Store:
        folder = Path(folder)
        if not folder.exists():
            raise SBCError("no such results folder", where=str(folder))
        path = folder / DB_NAME if folder.is_dir() else folder
        if not path.is_file():
            raise SBCError(f"no results here (expected {DB_NAME})", where=str(folder))
        try:
            con = _connect(path, readonly=True)
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master")}
        except sqlite3.DatabaseError as exc:
            raise SBCError(f"not an sbc results database ({exc})", where=str(path)) from None
        if not {"manifest", "simulations", "ranks"} <= tables:
            raise SBCError("not an sbc results database (tables missing)", where=str(path))
        return cls(con, path)

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- manifest ----------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        return {k: json.loads(v) for k, v in self.con.execute("SELECT key, value FROM manifest")}

    def update_manifest(self, entries: Mapping[str, Any]) -> None:
        with self._transaction():
            self.con.executemany(
                "INSERT INTO manifest(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [(k, json.dumps(v, sort_keys=True)) for k, v in entries.items()],
            )

    # -- simulations -------------------------------------------------------------------------
    def done(self, include_failed: bool = True) -> set[int]:
        """Simulation indices already stored (the ones a resumed run skips)."""
        where = "" if include_failed else " WHERE status = 'ok'"
        return {r[0] for r in self.con.execute(f"SELECT sim FROM simulations{where}")}

    def add(self, result: SimulationResult, ranks_version: int = 1) -> None:
        """Commit one simulation, replacing an earlier failed attempt at it."""
        self.add_many([result], ranks_version)

    def add_many(self, results: Sequence[SimulationResult], ranks_version: int = 1) -> None:
        """Commit several simulations in one transaction (a group commit): each is stored
        whole or not at all, and so are they together; an earlier failed attempt at one of
        them is replaced; their ranks go to `ranks_version` (the version whose settings the
        running study has). One transaction costs one sync of the file, whatever it holds,
        so a runner that receives many cheap simulations at once stores them together.

        A diagnostic the backend did not declare is refused, never dropped: it is a bug in
        the backend (`Backend.diagnostics` lists every key its `diagnose` returns).
        """
        known = [d.name for d in self.columns]
        for result in results:
            undeclared = sorted(set(result.diagnostics) - set(known))
            if undeclared:
                raise SBCError(
                    f"simulation {result.sim}: the backend returned diagnostics it does not "
                    f"declare: {', '.join(undeclared)} (a bug in the backend: declare them in "
                    f"its `diagnostics`; declared: {', '.join(known)})",
                    where=str(self.path),
                )
        sim_cols = [*BASE_COLUMNS, *known]
        sim_rows = [
            [r.sim, r.status, r.seed, r.error, *(_sql_value(r.diagnostics.get(c)) for c in known)]
            for r in results
        ]
        table, rank_cols, rank_rows = _rank_rows(ranks_version, 0, [])
        for r in results:
            rank_rows += _rank_rows(ranks_version, r.sim, r.ranks)[2]
        draws = [(r.sim, r.draws_npz) for r in results if r.draws_npz is not None]
        with self._transaction():
            self.con.executemany(
                "DELETE FROM simulations WHERE sim = ?", [(r.sim,) for r in results]
            )
            self.con.executemany(
                f"INSERT INTO simulations({', '.join(_quoted(sim_cols))}) "
                f"VALUES ({', '.join('?' * len(sim_cols))})",
                sim_rows,
            )
            self.con.executemany(_insert(table, rank_cols), rank_rows)
            if draws:
                self.con.executemany("INSERT INTO draws(sim, npz) VALUES (?, ?)", draws)

    def add_rank_version(
        self, version: int, ranks: Mapping[int, Sequence[Mapping[str, Any]]], info: Mapping
    ) -> None:
        """Store a new version of the ranks ({sim: rows}) with its description, atomically."""
        if version < 2 or version in self.rank_versions():
            raise ValueError(f"rank version {version} exists or is not a new version")
        versions = dict(self.manifest().get(RANK_VERSIONS) or {})
        versions[str(version)] = dict(info)
        with self._transaction():
            for sim, rows in ranks.items():
                table, cols, values = _rank_rows(version, sim, rows)
                self.con.executemany(_insert(table, cols), values)
            self.con.execute(
                "INSERT INTO manifest(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (RANK_VERSIONS, json.dumps(versions, sort_keys=True)),
            )

    def rank_versions(self) -> list[int]:
        """Versions of the ranks stored: 1 (the study's own), then any re-rankings."""
        if not self._has_table("reranks"):
            return [1]
        more = [r[0] for r in self.con.execute("SELECT DISTINCT version FROM reranks")]
        described = [int(v) for v in self.manifest().get(RANK_VERSIONS) or {}]
        return sorted({1, *more, *described})

    def _has_table(self, name: str) -> bool:
        query = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
        return self.con.execute(query, (name,)).fetchone() is not None

    def _transaction(self):
        return _Transaction(self.con)

    # -- reading -----------------------------------------------------------------------------
    def simulations(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT * FROM simulations ORDER BY sim", self.con)

    def ranks(self, version: int = 1) -> pd.DataFrame:
        """One row per (successful simulation, quantity) of a version of the ranks."""
        table, where, params = "ranks", "", ()
        if version != 1:
            if not self._has_table("reranks"):  # a store from before rank versions
                return pd.DataFrame(columns=["sim", "quantity", *RANK_COLUMNS])
            table, where, params = "reranks", " AND r.version = ?", (version,)
        df = pd.read_sql_query(
            f"SELECT r.* FROM {table} r JOIN simulations s USING (sim) "
            f"WHERE s.status = 'ok'{where} ORDER BY r.sim, r.quantity",
            self.con,
            params=params,
        )
        return df.drop(columns=[c for c in (*LEGACY_RANK_COLUMNS, "version") if c in df])

    def kept_draws(self, sim: int) -> bytes | None:
        row = self.con.execute("SELECT npz FROM draws WHERE sim = ?", (sim,)).fetchone()
        return row[0] if row else None


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, con: sqlite3.Connection):
        self.con = con

    def __enter__(self) -> None:
        self.con.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type:
            self.con.execute("ROLLBACK")
            return
        try:
            self.con.execute("COMMIT")
        except sqlite3.Error:  # e.g. disk full: a failed COMMIT may leave the transaction open
            if self.con.in_transaction:
                self.con.execute("ROLLBACK")
            raise


def _rank_rows(
    version: int, sim: int, rows: Iterable[Mapping[str, Any]]
) -> tuple[str, list[str], list[list[Any]]]:
    """(table, columns, values) of one simulation's ranks in a version of the ranks."""
    cols = ["sim", "quantity", *RANK_COLUMNS]
    values = [[sim, r["quantity"], *(_sql_value(r.get(c)) for c in RANK_COLUMNS)] for r in rows]
    if version == 1:
        return "ranks", cols, values
    return "reranks", ["version", *cols], [[version, *v] for v in values]


def _insert(table: str, cols: Sequence[str]) -> str:
    return f"INSERT INTO {table}({', '.join(_quoted(cols))}) VALUES ({', '.join('?' * len(cols))})"


def _quoted(names: Iterable[str]) -> list[str]:
    return [f'"{n}"' for n in names]


def _sql_value(value: Any) -> Any:
    """numpy scalars to Python; NaN stays NaN for REAL columns (SQLite stores it as NULL)."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value
