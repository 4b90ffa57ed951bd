"""Shared fixtures: a real CmdStan when one is available, exact-backend studies otherwise."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STUDIES = ROOT / "studies"


@pytest.fixture(scope="session")
def cmdstan() -> Path:
    """The CmdStan `sbc setup` provisioned; tests that need Stan are skipped without one."""
    from sbc.backends.cmdstan.install import find_cmdstan

    path = find_cmdstan()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must provision CmdStan (`sbc setup`) before the tests")
        pytest.skip("no CmdStan here; run `sbc setup`")
    return path


def exact_study(tmp_path: Path, name: str = "exact", sims: int = 50, **extra) -> Path:
    """Write an exact-backend study file (conjugate normal model) and return its path."""
    backend = extra.pop("backend", {})
    lines = [
        f'name = "{name}"',
        f"sims = {sims}",
        f"seed = {extra.pop('seed', 11)}",
        f'out = "{tmp_path / "results" / name}"',
        "[backend]",
        'type = "exact"',
        *(f"{k} = {v}" for k, v in backend.items()),
        "[simulator]",
        'function = "sbc.simulators.normal:simulate"',
        "args = { K = 2, N = 5 }",
        "[sampler]",
        "chains = 2",
        "draws = 50",
        "thin = 2",
    ]
    assert not extra, extra
    path = tmp_path / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def stop_processes(procs: Sequence[subprocess.Popen]) -> None:
    """Terminate processes started by a fixture (last first), killing any that linger."""
    for proc in reversed(procs):
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
