"""The bad-input corpus: every misuse gives exit code 2, one line, no traceback, no writes.

Each case in `tests/bad_inputs/cases.toml` runs the real `sbc` command in a subprocess
(from an empty working folder) and must print exactly one line, `sbc: error: ...`, on
stderr that names the problem and where it is (the case's `error` regex), nothing on
stdout, and leave every folder it was pointed at as it was: `{out}` still absent,
`{empty}` still empty, copies and result folders byte-identical, and the corpus itself
untouched.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import exact_study

import sbc
from sbc.backends.cmdstan.install import model_cache_dir

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "bad_inputs"
CASES: list[dict] = tomllib.loads((CORPUS / "cases.toml").read_text())["case"]
IDS = [re.sub(r"[\s/]+", "_", c["name"]) for c in CASES]


def _tree(path: Path) -> dict[str, str]:
    """Every file under `path` (relative name -> content hash); {} if it does not exist.

    SQLite's shared-memory index (`-shm`) and an empty write-ahead log (`-wal`) are what
    any reader of a WAL database leaves; they hold no data and are not counted as writes.
    """
    if not path.exists():
        return {}
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {
        str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "/"
        for p in sorted(path.rglob("*"))
        if not (p.name.endswith("-shm") or (p.name.endswith("-wal") and p.stat().st_size == 0))
    }


@dataclass
class Outcome:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    problems: list[str]  # what the case wrote where it must not


def _run_case(case: dict, tmp: Path, results: dict[str, Path], cmdstan: Path | None) -> Outcome:
    tmp.mkdir(parents=True)
    cwd, out, empty = tmp / "cwd", tmp / "out", tmp / "empty"
    cwd.mkdir()
    empty.mkdir()
    subs = {"{dir}": str(CORPUS), "{out}": str(out), "{empty}": str(empty)}
    subs.update({f"{{{k}}}": str(v) for k, v in results.items()})
    copy = None
    if "copy" in case:
        copy = tmp / "copy"
        shutil.copytree(CORPUS / case["copy"], copy)
        subs["{copy}"] = str(copy)
    argv = []
    for arg in case["argv"]:
        for key, value in subs.items():
            arg = arg.replace(key, value)
        argv.append(arg)
    watched = {str(copy): copy} if copy else {}
    watched.update({str(p): p for p in results.values() if str(p) in argv})
    before = {name: _tree(p) for name, p in watched.items()}
    env = {
        **os.environ,
        "PYTHONDONTWRITEBYTECODE": "1",  # importing a simulator must not write __pycache__
        # without CmdStan a case must fail before it needs one, never start provisioning
        "CMDSTAN": str(cmdstan) if cmdstan else str(tmp / "no-cmdstan"),
        "SBC_SKIP_INSTALL_CMDSTAN": "1",
        "COLUMNS": "200",
    }
    with subprocess.Popen(
        [sys.executable, "-m", "sbc.cli", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        stdout, stderr = proc.communicate(timeout=300)
    problems = []
    staging = list(model_cache_dir().glob(f"*/.build-{proc.pid}"))
    if staging:
        problems.append(f"a failed compile left {staging}")
    if out.exists():
        problems.append(f"{{out}} was created: {sorted(_tree(out))}")
    if any(empty.iterdir()):
        problems.append(f"{{empty}} was written to: {sorted(_tree(empty))}")
    if any(cwd.iterdir()):
        problems.append(f"the working folder was written to: {sorted(_tree(cwd))}")
    for name, path in watched.items():
        if _tree(path) != before[name]:
            problems.append(f"{name} changed")
    return Outcome(argv, proc.returncode, stdout, stderr, problems)


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, Path]:
    """Two finished exact-backend studies with different seeds (different datasets)."""
    tmp = tmp_path_factory.mktemp("results")
    a = sbc.run(exact_study(tmp, "results_a", sims=6, seed=1), workers=1, progress=False).folder
    b = sbc.run(exact_study(tmp, "results_b", sims=6, seed=2), workers=1, progress=False).folder
    return {"results_a": a, "results_b": b}


@pytest.fixture(scope="module")
def outcomes(results, tmp_path_factory) -> dict[str, Outcome]:
    """The cases that need no CmdStan, run a few at a time (each is a fresh Python)."""
    tmp = tmp_path_factory.mktemp("cases")
    before = _tree(CORPUS)
    todo = [(i, c) for i, c in zip(IDS, CASES, strict=True) if not c.get("stan")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {i: pool.submit(_run_case, c, tmp / i, results, None) for i, c in todo}
        done = {i: f.result() for i, f in futures.items()}
    assert _tree(CORPUS) == before, "the corpus folder was written to"
    return done


def _assert_clean_failure(case: dict, outcome: Outcome) -> None:
    shown = f"sbc {' '.join(outcome.argv)}\nstdout: {outcome.stdout!r}\nstderr: {outcome.stderr!r}"
    assert "Traceback" not in outcome.stderr + outcome.stdout, shown
    assert outcome.returncode == 2, shown
    lines = outcome.stderr.rstrip("\n").split("\n")
    assert len(lines) == 1 and lines[0].strip(), shown
    line = lines[0]
    assert line.startswith("sbc: error: "), shown
    assert re.search(case["error"], line), f"{shown}\nexpected to match: {case['error']}"
    assert outcome.stdout == "", shown
    assert not outcome.problems, f"{shown}\n" + "\n".join(outcome.problems)


PARAMS = [
    pytest.param(c, id=i, marks=[pytest.mark.stan] if c.get("stan") else [])
    for i, c in zip(IDS, CASES, strict=True)
]


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input_gives_one_line_and_exit_code_2(case, request, results, tmp_path):
    if case.get("stan"):  # compiles a Stan program: skipped without CmdStan
        cmdstan = request.getfixturevalue("cmdstan")
        outcome = _run_case(case, tmp_path / "case", results, cmdstan)
    else:
        outcome = request.getfixturevalue("outcomes")[IDS[CASES.index(case)]]
    _assert_clean_failure(case, outcome)


def test_corpus_is_large_and_every_file_is_used():
    assert len(CASES) >= 30
    assert len(set(IDS)) == len(IDS), "case names must be distinct"
    referenced = "\n".join(p.read_text(errors="replace") for p in CORPUS.glob("*.toml"))
    unused = [p.name for p in CORPUS.iterdir() if p.name not in referenced + "cases.toml"]
    assert not unused, f"files in tests/bad_inputs that no case uses: {unused}"
