"""`sbc rerank`: new versions of the ranks from kept draws, equal to a fresh run's, made
without starting CmdStan (or any process), never overwriting, refusing what it cannot do."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import ROOT, exact_study

import sbc
from sbc.errors import SBCError
from sbc.execution.rerank import rerank
from sbc.store import Store

HERE = Path(__file__).resolve().parent
DERIVED = HERE / "rerank_quantities.py"


def linreg_study(tmp_path: Path, name: str, derived: bool = False) -> Path:
    """A small normal-regression study of stan/linreg.stan that keeps its draws."""
    lines = [
        f'name = "{name}"',
        f'stan = "{ROOT / "stan" / "linreg.stan"}"',
        "sims = 5",
        "seed = 11",
        "keep_draws = true",
        f'out = "{tmp_path / name}"',
        "[simulator]",
        f'function = "{ROOT / "studies" / "linreg_simulator.py"}:simulate"',
        "args = { N = 15, K = 2 }",
        "[sampler]",
        "chains = 2",
        "warmup = 150",
        "draws = 150",
        "thin = 3",
    ]
    if derived:
        lines += ["[quantities]", f'derived = {{ loglik = "{DERIVED}:loglik" }}']
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


#: Runs `sbc rerank` under an audit hook that records every process started (the events
#: CPython raises for subprocess, fork, exec and spawn), then checks the hook sees one.
DRIVER = """
import json, subprocess, sys
started = []
def hook(event, args):
    if event in ("subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.system",
                 "os.exec", "os.spawn", "os.startfile"):
        started.append(event)
sys.addaudithook(hook)
import sbc.cli
code = sbc.cli.main(sys.argv[1:])
during = list(started)
subprocess.run(["true"])  # the control: a process the hook must see
print(json.dumps({"code": code, "during": during, "control": started[len(during):]}))
"""


@pytest.mark.stan
def test_rerank_equals_a_fresh_run_and_starts_no_process(cmdstan, tmp_path):
    folder = sbc.run(linreg_study(tmp_path, "kept"), workers=2, progress=False).folder
    before = sbc.load(folder).ranks

    done = subprocess.run(
        [sys.executable, "-c", DRIVER, "rerank", str(folder), "--quiet",
         "--derived", f"loglik={DERIVED.relative_to(ROOT)}:loglik"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["code"] == 0 and report["control"] == ["subprocess.Popen"]
    assert report["during"] == []  # no CmdStan, no worker: no process at all
    assert "ranks version 2 of 2" in done.stdout

    v2 = sbc.load(folder)
    assert v2.ranks_version == 2 and v2.version_info()["by"] == "rerank"
    fresh = sbc.load(sbc.run(linreg_study(tmp_path, "fresh", derived=True), workers=2,
                             progress=False))  # fmt: skip
    cols = ["sim", "quantity", "truth", "rank", "L"]
    pd.testing.assert_frame_equal(v2.ranks[cols], fresh.ranks[cols])
    model = v2.ranks["quantity"] != "loglik"  # moments of what was ranked: from every draw
    pd.testing.assert_frame_equal(v2.ranks[model], fresh.ranks[model.to_numpy()])
    assert v2.version_info()["moments_from_kept_draws"] == ["loglik"]
    pd.testing.assert_frame_equal(sbc.load(folder, ranks_version=1).ranks, before)

    # the analysis commands take the version; a study file with the same derived quantity
    # resumes into that version (no new one, no refit)
    check = subprocess.run([sys.executable, "-m", "sbc.cli", "check", str(folder),
                            "--ranks-version", "1"], capture_output=True, text=True)  # fmt: skip
    assert "loglik" not in check.stdout and check.returncode in (0, 1), check.stderr
    resumed = sbc.run(linreg_study(tmp_path, "kept", derived=True), sims=6, progress=False)
    assert resumed.rank_versions == (1, 2) and resumed.ranks_version == 2
    assert resumed.ranks["sim"].nunique() == 6


@pytest.fixture(scope="module")
def kept(tmp_path_factory) -> Path:
    """A finished exact-backend study that kept its draws (every 2nd)."""
    tmp = tmp_path_factory.mktemp("kept")
    path = exact_study(tmp, "kept", sims=12)
    path.write_text(path.read_text().replace("[backend]", "keep_draws = true\n[backend]", 1))
    return sbc.run(path, workers=1, progress=False).folder


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(folder, target)
    return target


def test_coarser_thinning_is_a_new_version(kept, tmp_path):
    folder = _copy(kept, tmp_path)
    assert rerank(folder, thin_ranks=4, progress=False) == 2
    v1, v2 = sbc.load(folder, ranks_version=1), sbc.load(folder)
    assert set(v1.ranks["L"]) == {50} and set(v2.ranks["L"]) == {26}  # 2 chains x 13 draws
    pd.testing.assert_frame_equal(v1.ranks[["sim", "quantity", "truth", "mean", "sd"]],
                                  v2.ranks[["sim", "quantity", "truth", "mean", "sd"]])
    assert rerank(folder, thin_ranks=4, progress=False) == 2  # these settings: stored already
    assert v2.version_info()["thin"] == 4 and v2.rank_versions == (1, 2)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"thin_ranks": 3}, "3 is not a multiple of 2, the stride the draws were kept with"),
        ({"derived": {"mu": "sbc.simulators.lmm:loglik"}}, "'mu' has the name of a model var"),
        ({"derived": {"x": "sbc.simulators.lmm:nothing"}}, "derived.x: .* no function 'noth"),
        ({"derived": {"bad": lambda p, d: 1 / 0}}, "simulation 0: a derived quantity failed: "
                                                   "ZeroDivisionError"),
        ({"from_version": 4}, r"no ranks version 4 \(stored: \[1\]\)"),
    ],
)
def test_what_cannot_be_reranked_is_refused_and_nothing_is_written(kept, tmp_path, kwargs, error):
    folder = _copy(kept, tmp_path)
    db = (folder / "sbc.sqlite").read_bytes()
    with pytest.raises(SBCError, match=error):
        rerank(folder, progress=False, **kwargs)
    assert (folder / "sbc.sqlite").read_bytes() == db


def test_a_changed_simulator_or_no_kept_draws_is_refused(kept, tmp_path):
    from sbc.simulate import PythonSimulator

    folder = _copy(kept, tmp_path)
    other = PythonSimulator("sbc.simulators.hierarchical:simulate", {})
    with pytest.raises(SBCError, match="is not the code these results were made with"):
        rerank(folder, thin_ranks=4, simulator=other, progress=False)
    legacy = _copy(HERE / "data" / "legacy_v0_1", tmp_path / "legacy")
    with pytest.raises(SBCError, match=r"kept no draws \(keep_draws = false\)"):
        rerank(legacy, thin_ranks=2, progress=False)


def test_an_old_store_gains_versions_without_losing_anything(tmp_path):
    """A store written before rank versions (sbc 0.1) is version 1; opening it for writing
    adds the versions table and changes no stored row."""
    folder = _copy(HERE / "data" / "legacy_exact", tmp_path)
    old = sbc.load(folder)
    assert old.rank_versions == (1,) and old.ranks_version == 1
    Store.open_for_writing(folder).close()
    again = sbc.load(folder)
    pd.testing.assert_frame_equal(again.ranks, old.ranks)
    pd.testing.assert_frame_equal(again.simulations, old.simulations)
    with pytest.raises(SBCError, match=r"no ranks version 2 \(stored: 1\)"):
        sbc.load(folder, ranks_version=2)
