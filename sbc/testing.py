"""Calibration checks inside pytest: `assert_calibrated(results_folder)`.

The same verdict as `sbc check`, raised as an AssertionError whose message is the
verdict table, so a failing CI log shows which quantity broke and how.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sbc.checks import check
from sbc.results import StoredResults


def assert_calibrated(
    results: StoredResults | str | Path,
    alpha: float = 0.01,
    max_divergent_share: float | None = None,
    max_failed_share: float | None = None,
    pool: Sequence[str] | None = None,
    ranks_version: int | None = None,
) -> None:
    outcome = check(
        results,
        alpha=alpha,
        max_divergent_share=max_divergent_share,
        max_failed_share=max_failed_share,
        pool=pool,
        ranks_version=ranks_version,
    )
    if not outcome.passed:
        raise AssertionError(
            outcome.headline
            + "\n  "
            + "\n  ".join(outcome.reasons)
            + "\n\n"
            + outcome.verdicts.to_string(index=False)
        )
