"""A results folder while it is written: one writer at a time, and a store that cannot be
written (disk full) ends the run in one line, with everything stored so far complete.
Shared by `sbc run` and `sbc rerank`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sbc.errors import SBCError
from sbc.store import DB_NAME


@contextlib.contextmanager
def store_errors(folder: Path) -> Iterator[None]:
    """A store that cannot be written (disk full, I/O error) ends the run in one line."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        raise SBCError(
            f"cannot write the results ({exc}); every simulation stored so far is complete: "
            "free space and run again to resume",
            where=str(folder / DB_NAME),
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        raise SBCError(
            f"cannot write the results ({exc.strerror}); every simulation stored so far is "
            "complete: free space and run again to resume",
            where=str(folder),
        ) from None


@contextlib.contextmanager
def results_lock(folder: Path) -> Iterator[None]:
    """One writer per results folder; a second `sbc run` is refused at once."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SBCError(
            f"cannot create the results folder: {exc.strerror}", where=str(folder)
        ) from None
    with open(folder / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SBCError(
                "another sbc run is writing these results; wait for it or use --out",
                where=str(folder),
            ) from None
        yield
