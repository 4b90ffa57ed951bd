"""The SQLite store: columns from the backend's declared diagnostics, old stores that still
open, resume and load, and a diagnostic nobody declared that is refused, never dropped."""

from __future__ import annotations

import shutil
import sqlite3

import pandas as pd
import pytest
from conftest import ROOT

import sbc
from sbc.errors import SBCError
from sbc.store import TIMINGS, Diagnostic, SimulationResult, Store

DATA = ROOT / "tests" / "data"
DECLARED = (
    Diagnostic("divergences", "INTEGER", ">", 0, "why"),
    Diagnostic("spread", "REAL"),
)


def _columns(folder) -> list[str]:
    with sqlite3.connect(folder / "sbc.sqlite") as con:
        return [row[1] for row in con.execute("PRAGMA table_info(simulations)")]


def _result(sim: int, **diagnostics) -> SimulationResult:
    rank = {"quantity": "mu", "truth": 0.5, "rank": 3, "L": 9, "mean": 0.4, "sd": 1.0}
    return SimulationResult(sim=sim, seed=7, status="ok", diagnostics=diagnostics, ranks=[rank])


def test_a_new_store_has_the_declared_columns_and_the_timings(tmp_path):
    with Store.open_for_writing(tmp_path, DECLARED) as store:
        store.add(_result(0, divergences=2, spread=0.5, wall_seconds=0.1))
    names = [d.name for d in TIMINGS]
    assert _columns(tmp_path) == ["sim", "status", "seed", "error", "divergences", "spread", *names]
    sims = sbc.load(tmp_path).simulations
    assert sims.loc[0, "divergences"] == 2 and sims.loc[0, "spread"] == 0.5
    assert pd.isna(sims.loc[0, "fit_seconds"])  # declared, not reported: NULL


def test_an_undeclared_diagnostic_is_refused_and_nothing_is_written(tmp_path):
    with Store.open_for_writing(tmp_path, DECLARED) as store:
        store.add(_result(0, divergences=0))
        with pytest.raises(SBCError, match=r"simulation 1: the backend returned diagnostics it "
                           r"does not declare: rhat_max \(a bug in the backend"):  # fmt: skip
            store.add(_result(1, divergences=0, rhat_max=1.2))
        assert store.done() == {0}
        assert store.con.execute("SELECT count(*) FROM ranks").fetchone() == (1,)


def test_reopening_with_more_declarations_adds_columns_and_keeps_rows(tmp_path):
    with Store.open_for_writing(tmp_path, DECLARED[:1]) as store:
        store.add(_result(0, divergences=1))
    with Store.open_for_writing(tmp_path, DECLARED) as store:  # e.g. a newer backend version
        store.add(_result(1, divergences=0, spread=2.0))
    sims = sbc.load(tmp_path).simulations.set_index("sim")
    assert sims.loc[0, "divergences"] == 1 and pd.isna(sims.loc[0, "spread"])
    assert sims.loc[1, "spread"] == 2.0


def test_a_store_written_by_sbc_0_1_loads_and_resumes(tmp_path):
    """tests/data/legacy_exact: 5 simulations of tests/data/legacy_exact.toml by sbc 0.1.

    Its schema has columns no backend declares now (return_code) and lacks the manifest's
    declarations; it loads, resumes to 8 simulations without a complaint that the study
    changed, and its ranks are those a fresh run of the same study gives."""
    folder = tmp_path / "legacy_exact"
    shutil.copytree(DATA / "legacy_exact", folder)
    old = sbc.load(folder)
    assert len(old.simulations) == 5 and "return_code" in old.simulations
    assert old.diagnostics is None  # sbc 0.1 did not record declarations
    before = old.ranks.copy()

    sbc.run(DATA / "legacy_exact.toml", sims=8, out=folder, workers=1, progress=False)
    resumed = sbc.load(folder)
    assert len(resumed.simulations) == 8 and (resumed.simulations["status"] == "ok").all()
    pd.testing.assert_frame_equal(resumed.ranks[resumed.ranks["sim"] < 5], before)
    assert [d.name for d in resumed.diagnostics][:2] == ["divergences", "treedepth_hits"]

    fresh = sbc.run(DATA / "legacy_exact.toml", sims=8, out=tmp_path / "fresh", workers=1,
                    progress=False)  # fmt: skip
    pd.testing.assert_frame_equal(sbc.load(fresh).ranks, resumed.ranks)


def test_check_writable_refuses_what_is_not_a_store(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SBCError, match="not a folder"):
        Store.check_writable(tmp_path / "file")
    other = tmp_path / "other"
    other.mkdir()
    with sqlite3.connect(other / "sbc.sqlite") as con:
        con.execute("CREATE TABLE accounts (x)")
    with pytest.raises(SBCError, match=r"not an sbc results database \(it has other tables: acc"):
        Store.check_writable(other)


def test_declarations_are_checked_when_written():
    with pytest.raises(ValueError, match="not a usable column name"):
        Diagnostic("seed", "INTEGER")
    with pytest.raises(ValueError, match="with a threshold"):
        Diagnostic("rhat", "REAL", ">")
    d = Diagnostic("ess", "REAL", "<", 0.5, "kept draws near-independent", per_kept_draw=True)
    assert Diagnostic.from_dict(d.to_dict()) == d


def test_a_group_commit_stores_whole_simulations_or_none(tmp_path):
    """`add_many`: several simulations in one transaction, replacing earlier failed attempts;
    if any row cannot be written, none of the group is (each simulation stays whole)."""
    with Store.open_for_writing(tmp_path, DECLARED) as store:
        store.add(SimulationResult(sim=1, seed=7, status="failed", error="fit: boom"))
        store.add_many([_result(0, divergences=0), _result(1, divergences=1), _result(2)])
        assert store.done() == {0, 1, 2}
        bad = _result(4)
        bad.ranks.append(dict(bad.ranks[0]))  # the same quantity twice: the primary key refuses
        with pytest.raises(sqlite3.IntegrityError):
            store.add_many([_result(3), bad, _result(5)])
        assert store.done() == {0, 1, 2}
        assert store.con.execute("SELECT count(*) FROM ranks").fetchone() == (3,)
    sims = sbc.load(tmp_path).simulations.set_index("sim")
    assert sims.loc[1, "status"] == "ok" and pd.isna(sims.loc[1, "error"])
