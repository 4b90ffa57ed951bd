"""`sbc.run` leaves the calling process as it found it: a notebook's kernel goes on after it.

Running a study points cmdstanpy at a CmdStan (which sets ``$CMDSTAN``) and silences
cmdstanpy's logger while it compiles; worker processes stay silenced, but the caller's
own cmdstanpy calls afterwards must log and find CmdStan as before. So the runner restores
the environment variables and every logger's `disabled` flag when it ends, however it ends.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator


@contextlib.contextmanager
def process_state_kept() -> Iterator[None]:
    """Restore ``os.environ`` and the loggers' `disabled` flags on the way out."""
    environ = dict(os.environ)
    disabled = {name: logger.disabled for name, logger in _loggers()}
    try:
        yield
    finally:
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        for name, logger in _loggers():
            logger.disabled = disabled.get(name, False)  # a logger made meanwhile: enabled


def _loggers() -> Iterator[tuple[str, logging.Logger]]:
    yield "", logging.getLogger()
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger):
            yield name, logger
