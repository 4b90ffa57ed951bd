"""Reading a study's stored results back: simulations, one version of the ranks, the manifest.

Works on a study that is still running (SQLite WAL lets readers in while the runner
writes) and on a finished one alike. This is the bottom layer: it knows the store, not
the analysis. `sbc.load` and `sbc.run` hand back `sbc.Results` (`sbc.api`), a subclass
that adds verdicts, pictures, reports and re-ranking; everything that reads results
accepts either.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from sbc.errors import SBCError
from sbc.store import RANK_VERSIONS, Diagnostic, Store


@dataclass
class StoredResults:
    folder: Path
    manifest: dict[str, Any]  # the study's, with the `quantities` of the version read
    simulations: pd.DataFrame  # one row per simulation, failed ones included
    ranks: pd.DataFrame  # one row per (successful simulation, quantity), of `ranks_version`
    ranks_version: int = 1
    rank_versions: tuple[int, ...] = (1,)

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
    def method(self) -> str:
        """The inference method that produced the draws, in one line."""
        return method_line(self.manifest.get("backend") or {})

    @property
    def pool(self) -> tuple[str, ...]:
        """Variables whose components are pooled over their first index (`[quantities] pool`)."""
        return tuple(self.manifest.get("study", {}).get("quantities", {}).get("pool", ()))

    @property
    def labels(self) -> dict[str, str]:
        """What each quantity is in the model's words (formula models: beta[2] -> "x"), as the
        study recorded them; {} for other studies."""
        return dict(self.manifest.get("study", {}).get("labels", {}))

    @property
    def keep_draws(self) -> bool:
        return bool(self.manifest.get("study", {}).get("keep_draws"))

    def version_info(self, version: int | None = None) -> dict[str, Any]:
        """How a version of the ranks was made: thin, include, derived, quantities, ..."""
        return version_info(self.manifest, self.ranks_version if version is None else version)

    def draws(self, sim: int) -> dict[str, np.ndarray] | None:
        """Thinned draws of one simulation, if the study kept them (`keep_draws = true`)."""
        with Store.open_for_reading(self.folder) as store:
            blob = store.kept_draws(sim)
        if blob is None:
            return None
        with np.load(io.BytesIO(blob)) as npz:
            return {k: npz[k] for k in npz.files}


#: The method of results written before backends said theirs in the manifest.
_OLD_METHODS = {"cmdstan": "NUTS (CmdStan's sample)", "exact": "exact posterior draws"}


def method_line(backend: Mapping[str, Any]) -> str:
    """'<backend type>: <method>, CmdStan <version>' from a manifest's ``backend`` entry."""
    kind = str(backend.get("type", "unknown backend"))
    method = backend.get("method") or _OLD_METHODS.get(kind.split("-")[0], "")
    text = f"{kind}: {method}" if method else kind
    if backend.get("cmdstan_version"):
        text += f", CmdStan {backend['cmdstan_version']}"
    return text


#: The name this class had before `sbc.Results` (the notebook object) subclassed it.
Results = StoredResults


def version_info(manifest: dict[str, Any], version: int) -> dict[str, Any]:
    """A version's description; version 1 of a store written before versions existed is
    described by the study itself (it was the only one)."""
    described = (manifest.get(RANK_VERSIONS) or {}).get(str(version))
    if described is not None:
        return {"version": version, **described}
    if version != 1:
        return {"version": version}
    study = manifest.get("study") or {}
    q = study.get("quantities") or {}
    return {
        "version": 1,
        "thin": (study.get("sampler") or {}).get("thin"),
        "include": q.get("include", []),
        "derived": q.get("derived", {}),
        "quantities": manifest.get("quantities") or [],
        "by": "run",
    }


def load(folder: str | Path, ranks_version: int | None = None) -> StoredResults:
    """Simulations and one version of the ranks (default: the newest) as DataFrames."""
    folder = Path(folder)
    with Store.open_for_reading(folder) as store:
        versions = tuple(store.rank_versions())
        version = versions[-1] if ranks_version is None else ranks_version
        if version not in versions:
            raise SBCError(
                f"no ranks version {version} (stored: {', '.join(map(str, versions))})",
                where=str(folder),
            )
        manifest = store.manifest()
        info = version_info(manifest, version)
        if info.get("quantities"):
            manifest = {**manifest, "quantities": info["quantities"]}
        return StoredResults(
            folder=store.path.parent,
            manifest=manifest,
            simulations=store.simulations(),
            ranks=store.ranks(version),
            ranks_version=version,
            rank_versions=versions,
        )


def as_results(
    given: StoredResults | str | Path, ranks_version: int | None = None
) -> StoredResults:
    """Results as given, or read from a folder; `ranks_version` chooses another version."""
    if isinstance(given, StoredResults):
        if ranks_version is None or ranks_version == given.ranks_version:
            return given
        given = given.folder
    return load(given, ranks_version)
