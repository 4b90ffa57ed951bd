"""Backends as plug-ins: registered from outside sbc (programmatically, and through the
entry-point group "sbc.backends" of an installed distribution), then used by real studies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from plugin_backend import ConjugateBackend, LeakyBackend

import sbc
from sbc.backends import backend_class, known_backends, register_backend
from sbc.errors import SBCError

HERE = Path(__file__).resolve().parent


def _study(tmp_path: Path, backend: str, sims: int = 20, **options) -> Path:
    lines = [
        f'name = "{backend}"',
        f"sims = {sims}",
        "seed = 5",
        f'out = "{tmp_path / "results" / backend}"',
        "[backend]",
        f'type = "{backend}"',
        *(f"{k} = {v}" for k, v in options.items()),
        "[simulator]",
        'function = "sbc.simulators.normal:simulate"',
        "args = { K = 2, N = 5 }",
        "[sampler]",
        "thin = 2",  # generic: every backend's draws are thinned for the ranks
    ]
    path = tmp_path / f"{backend}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_registered_backend_runs_a_study_on_worker_processes(tmp_path):
    register_backend("conjugate-test", ConjugateBackend)
    assert "conjugate-test" in known_backends()
    study = _study(tmp_path, "conjugate-test", draws=40, chains=1)
    folder = sbc.run(study, workers=2, progress=False)
    results = sbc.load(folder)
    sims, ranks = results.simulations, results.ranks
    assert len(sims) == 20 and (sims["status"] == "ok").all()
    assert set(ranks["quantity"]) == {"mu[1]", "mu[2]"} and (ranks["L"] == 20).all()
    assert (sims["draws_total"] == 40).all() and (sims["posterior_sd"] > 0).all()
    assert [d.name for d in results.diagnostics][:2] == ["posterior_sd", "draws_total"]
    assert results.manifest["backend"] == {"type": "conjugate-test", "scale": 1.0}
    assert results.manifest["study"]["backend"] == {
        "type": "conjugate-test",
        "options": {"draws": 40, "chains": 1},
    }
    assert "divergences" not in sims  # columns are the backend's, not CmdStan's


def test_its_options_are_checked_by_their_declared_types(tmp_path):
    register_backend("conjugate-test", ConjugateBackend)
    with pytest.raises(SBCError, match=r"\[backend\] draws: expected an integer >= 1, got 0$"):
        sbc.run(_study(tmp_path, "conjugate-test", draws=0), progress=False)
    path = _study(tmp_path, "conjugate-test")
    path.write_text(path.read_text() + "chains = 2\n")  # a NUTS key under [sampler]
    with pytest.raises(SBCError, match=r"\[sampler\] chains: unknown key \(backend "
                       r"conjugate-test has no \[sampler\] settings; \[sampler\] thin is "
                       r"thin_ranks; its settings go in \[backend\]\)$"):  # fmt: skip
        sbc.run(path, progress=False)
    assert not (tmp_path / "results").exists()


def test_an_undeclared_diagnostic_stops_the_study_in_one_line(tmp_path):
    register_backend("leaky-test", LeakyBackend)
    with pytest.raises(SBCError, match=r"does not declare: secret \(a bug in the backend"):
        sbc.run(_study(tmp_path, "leaky-test"), workers=1, progress=False)
    assert len(sbc.load(tmp_path / "results" / "leaky-test").simulations) == 0


def test_an_unknown_backend_names_the_known_ones():
    with pytest.raises(SBCError, match=r"unknown backend 'nope' \(known: cmdstan, .*exact"):
        backend_class("nope")


def _distribution(root: Path, entry_points: str) -> None:
    """An installed distribution, as pip would leave it: metadata and its entry points."""
    info = root / "sbc_test_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sbc-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_a_backend_from_an_entry_point_runs_through_the_cli(tmp_path):
    site = tmp_path / "site"
    _distribution(site, "[sbc.backends]\nconjugate-ep = plugin_backend:ConjugateBackend\n"
                        "broken-ep = plugin_backend:NoSuchClass\n")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(HERE)])}
    study = _study(tmp_path, "conjugate-ep", sims=8, scale=0.5)
    proc = subprocess.run([sys.executable, "-m", "sbc.cli", "run", str(study), "--quiet",
                           "--workers", "1"], env=env, capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    results = sbc.load(tmp_path / "results" / "conjugate-ep")
    assert len(results.ranks) == 16 and results.manifest["backend"]["scale"] == 0.5

    broken = _study(tmp_path, "broken-ep")
    proc = subprocess.run([sys.executable, "-m", "sbc.cli", "run", str(broken)], env=env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"sbc: error: {broken}: [backend] type: cannot load backend 'broken-ep' from "
        "plugin_backend:NoSuchClass: AttributeError: module 'plugin_backend' has no attribute "
        "'NoSuchClass'"
    ]
