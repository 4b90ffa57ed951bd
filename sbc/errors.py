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
