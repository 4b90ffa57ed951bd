"""Reading a study's results back: `sbc.load(folder)`.

Works on a study that is still running (SQLite WAL lets readers in while the
runner writes) and on a finished one alike.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sbc.store import TIMINGS, Diagnostic, Store

#: The rules sbc applied to every study before backends declared their diagnostics
#: (results written then record none): R-hat > 1.01 follows R SBC's default;
#: divergences/treedepth > 0 R SBC's NUTS diagnostics; E-BFMI < 0.3 CmdStan's `diagnose`;
#: ESS < 100 Stan's rule of thumb.
_UNDECLARED_RULES = (
    Diagnostic("divergences", "INTEGER", ">", 0),
    Diagnostic("treedepth_hits", "INTEGER", ">", 0),
    Diagnostic("ebfmi_min", "REAL", "<", 0.3),
    Diagnostic("rhat_max", "REAL", ">", 1.01),
    Diagnostic("ess_bulk_min", "REAL", "<", 100),
    Diagnostic("ess_tail_min", "REAL", "<", 100),
)


@dataclass
class Results:
    folder: Path
    manifest: dict[str, Any]
    simulations: pd.DataFrame  # one row per simulation, failed ones included
    ranks: pd.DataFrame  # one row per (successful simulation, quantity)

    @property
    def name(self) -> str:
        return self.manifest.get("study", {}).get("name", self.folder.name)

    @property
    def diagnostics(self) -> tuple[Diagnostic, ...]:
        """The backend's diagnostics with their rules (columns of `simulations`), timings last.

        Results written before backends declared them get the rules sbc applied then.
        """
        declared = self.manifest.get("diagnostics")
        if declared is None:
            present = set(self.simulations.columns)
            return tuple(d for d in (*_UNDECLARED_RULES, *TIMINGS) if d.name in present)
        return tuple(Diagnostic.from_dict(d) for d in declared)

    @property
    def pool(self) -> tuple[str, ...]:
        """Variables whose components are pooled over their first index (`[quantities] pool`)."""
        return tuple(self.manifest.get("study", {}).get("quantities", {}).get("pool", ()))

    def draws(self, sim: int) -> dict[str, np.ndarray] | None:
        """Thinned draws of one simulation, if the study kept them (`keep_draws = true`)."""
        with Store.open_for_reading(self.folder) as store:
            blob = store.kept_draws(sim)
        if blob is None:
            return None
        with np.load(io.BytesIO(blob)) as npz:
            return {k: npz[k] for k in npz.files}


def load(folder: str | Path) -> Results:
    """Simulations and ranks of a study as pandas DataFrames."""
    folder = Path(folder)
    with Store.open_for_reading(folder) as store:
        return Results(
            folder=store.path.parent,
            manifest=store.manifest(),
            simulations=store.simulations(),
            ranks=store.ranks(),
        )
