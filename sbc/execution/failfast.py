"""No study that fails every time: stop when the first simulations all fail the same way.

Some mistakes only a fit can reveal (a truth of length 5 against the model's `vector[J]
theta` with J = 8, a data value Stan rejects for every dataset). Each simulation then
fails for the same reason and a study would spend its whole budget recording that. The
runner stops instead once the first `FAIL_FAST` simulations of a study have all failed for
one reason (numbers and paths inside the reason do not count), keeping what it stored; a
run of at most `FAIL_FAST` simulations has no budget to save and runs to its end.

The false stop this can cause is a study whose simulations fail for one reason at some rate
p without being broken: the first FAIL_FAST all fail with probability p^FAIL_FAST, 1e-3 at
p = 0.5 and 1e-7 at p = 0.2. It is checked only until a simulation succeeds (here or in a
run before), so a working study is never stopped by a later run of failures.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from sbc.errors import SBCError
from sbc.store import SimulationResult

#: Failures in a row, all for one reason and before any success, that stop a study.
FAIL_FAST = 10

_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^\s/:'\"()\[\],;]+)+/?")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def normalise(reason: str) -> str:
    """A failure's reason without what differs between simulations: paths and numbers."""
    return _NUMBER.sub("#", _PATH.sub("<path>", reason))


class FailFast:
    """Watches results as they arrive; `check` raises SBCError when the study should stop."""

    def __init__(self, todo: int, succeeded_before: bool, where: str):
        # a run of FAIL_FAST or fewer simulations has no budget to save: it runs to its end
        # (and `sbc run` exits 1 if every simulation failed)
        self.active = not succeeded_before and todo > FAIL_FAST
        self.where = where
        self.failures: list[str] = []

    def check(self, results: Iterable[SimulationResult]) -> None:
        if not self.active:
            return
        for result in results:
            if result.status == "ok":
                self.active = False
                return
            self.failures.append(result.error or "no reason recorded")
        if len(self.failures) < FAIL_FAST:
            return
        first = self.failures[:FAIL_FAST]
        self.active = False
        if len({normalise(e) for e in first}) > 1:
            return  # failing in more than one way: not one systematic mistake
        raise SBCError(
            f"the first {FAIL_FAST} simulations all failed the same way, so the study stopped: "
            f"{first[0]} (stored as failed: fix the cause, then run again with --retry-failed)",
            where=self.where,
        )


def most_common_reason(errors: Iterable[str | None]) -> str | None:
    """The failure reason that occurs most often (numbers and paths aside), as first seen."""
    seen: dict[str, tuple[int, str]] = {}
    for error in errors:
        if error:
            key = normalise(error)
            count, first = seen.get(key, (0, error))
            seen[key] = (count + 1, first)
    return max(seen.values(), key=lambda v: v[0])[1] if seen else None
