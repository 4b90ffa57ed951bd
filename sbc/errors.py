"""The one exception type users see as a single line.

Everything the user can fix (a study file, a simulator, a Stan program, a flag,
a results folder) raises `SBCError`; the CLI prints its message on one line and
exits with code 2. Anything else is a bug in sbc and keeps its traceback.
"""


class SBCError(Exception):
    """A problem with the user's input, explained in one line."""

    exit_code = 2

    def __init__(self, message: str, where: str | None = None):
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


def one_line(exc: BaseException) -> str:
    """An exception as one line: an SBCError's own message, else "Type: first line" (or, for
    an exception without a message, where it was raised)."""
    import traceback

    text = str(exc).strip().splitlines()
    msg = text[0] if text else ""
    if isinstance(exc, SBCError):
        return msg
    if not msg:
        frame = traceback.extract_tb(exc.__traceback__)[-1:]
        msg = f"at {frame[0].filename}:{frame[0].lineno}" if frame else ""
    return f"{type(exc).__name__}: {msg}"
