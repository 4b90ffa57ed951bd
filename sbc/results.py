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

from sbc.store import Diagnostic, Store


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
    def diagnostics(self) -> tuple[Diagnostic, ...] | None:
        """The columns of `simulations` the backend declared, with their rules (timings last);
        None for results written before backends declared them (sbc 0.1: CmdStan's)."""
        declared = self.manifest.get("diagnostics")
        return None if declared is None else tuple(Diagnostic.from_dict(d) for d in declared)

    @property
    def pool(self) -> tuple[str, ...]:
        """Variables whose components are pooled over their first index (`[quantities] pool`)."""
        return tuple(self.manifest.get("study", {}).get("quantities", {}).get("pool", ()))

    @property
    def labels(self) -> dict[str, str]:
        """What each quantity is in the model's words (formula models: beta[2] -> "x"), as the
        study recorded them; {} for other studies."""
        return dict(self.manifest.get("study", {}).get("labels", {}))

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
