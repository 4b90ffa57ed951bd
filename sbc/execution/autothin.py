"""``thin_ranks = "auto"`` in a worker: one fit's chains continued until the quantities it
ranks have the effective sample size its kept draws need, then its stride chosen.

The rule is `sbc.thinning.plan_thinning` (pure); this is the loop around it: the ESS of
every ranked quantity (derived ones too, which only the runner computes) over every draw,
then the backend's `extend` with a seed of its own for each continuation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sbc.backends import Backend
from sbc.backends.convergence import ess_bulk, ess_tail
from sbc.errors import SBCError, one_line
from sbc.ranks import derived_truth_and_draws, ranked_columns
from sbc.seeds import continuation_seed
from sbc.thinning import AutoThinning, Thinning, plan_thinning


@dataclass
class Thinned:
    """A fit after auto thinning: the fit (continued or not), its truth and draws with the
    derived quantities, and the thinning of its ranks."""

    fit: Any
    truth: dict[str, Any]
    draws: dict[str, np.ndarray]
    thinning: Thinning

    def diagnostics(self) -> dict[str, float]:
        return {"ess_ranked_min": self.thinning.ess, "thin_every": self.thinning.every}


def thin_automatically(
    backend: Backend,
    fit: Any,
    model: Mapping[str, np.ndarray],
    truth: Mapping[str, Any],
    data: Mapping[str, Any],
    derived: Mapping[str, Callable[..., Any]],
    quantities: list[str] | None,
    rule: AutoThinning,
    fit_seed: int,
    workdir: Path,
) -> Thinned:
    """Continue `fit` until `rule` is met (or its budget is spent), then thin it. `model`:
    the fit's draws as the backend gives them (read once by the caller)."""
    k = 0
    while True:
        full_truth, draws = dict(truth), dict(model)
        if derived:
            try:
                d_truth, d_draws = derived_truth_and_draws(derived, truth, model, data)
            except Exception as exc:
                raise SBCError(f"derived quantities: {one_line(exc)}") from None
            full_truth.update(d_truth)
            draws.update(d_draws)
        names, _, columns = ranked_columns(full_truth, draws, quantities)
        chains, n = (columns if names else next(iter(model.values()))).shape[:2]
        x = np.moveaxis(columns, 2, 0)  # (quantities, chains, draws)
        thinning = plan_thinning(ess_bulk(x), ess_tail(x), chains, n, rule)
        if not thinning.extend:
            return Thinned(fit, full_truth, draws, thinning)
        k += 1
        extend = backend.extend  # type: ignore[attr-defined]  # the study checked it has one
        fit = extend(fit, thinning.extend, continuation_seed(fit_seed, k), workdir)
        model = backend.draws(fit)
