"""Results as an xarray `DataTree` in ArviZ's layout: `Results.to_datatree()`.

ArviZ's SBC tool (simuk) hands back a DataTree whose ``prior_sbc`` group holds, per
variable, the rank of each simulation's true value among its posterior draws, on the
sample dimensions ``(chain, draw)`` with one chain and one draw per simulation; that is what
`arviz_plots.plot_ecdf_pit` draws. sbc writes its ranks the same way (CmdStan's names
become variables with ``<var>_dim_<i>`` dimensions, 0-based as ArviZ's converters name
them; ``draw`` is the simulation index) and puts beside them what the ranks rest on:

* ``prior_sbc``: ranks, 0..L (integers);
* ``truth``: the true values (the prior draws each dataset was simulated from);
* ``posterior_mean``, ``posterior_sd``: of every draw of each fit;
* ``sbc_L``: L, the thinned draws each rank is out of;
* ``diagnostics``: one row per simulation (failed ones too), the backend's diagnostics and
  timings, on dimension ``sim``.

Attributes name the study, the results folder, the ranks version and sbc's version.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

from sbc.results import StoredResults

_INDEX = re.compile(r"^(?P<var>[A-Za-z_]\w*)(?:\[(?P<idx>[\d,]+)\])?$")


def to_datatree(results: StoredResults) -> Any:
    """The results as an `xarray.DataTree` (needs xarray ≥ 2024.10)."""
    try:
        import xarray as xr
    except ImportError:  # pragma: no cover - xarray comes with the arviz extra
        raise ImportError("to_datatree needs xarray: pip install 'stan-sbc[arviz]'") from None
    from sbc import __version__

    ranks = results.ranks
    sims = np.sort(ranks["sim"].unique()) if len(ranks) else np.array([], dtype=int)
    groups = {
        "prior_sbc": "rank",
        "truth": "truth",
        "posterior_mean": "mean",
        "posterior_sd": "sd",
        "sbc_L": "L",
    }
    tree: dict[str, Any] = {}
    for group, column in groups.items():
        tree[group] = xr.Dataset(_variables(ranks, sims, column))
    tree["diagnostics"] = _diagnostics(results.simulations, xr)
    attrs = {
        "created_by": "sbc",
        "sbc_version": __version__,
        "study": results.name,
        "results_folder": str(results.folder),
        "ranks_version": results.ranks_version,
        "seed": (results.manifest.get("study") or {}).get("seed"),
    }
    return xr.DataTree.from_dict({"/": xr.Dataset(attrs={k: v for k, v in attrs.items()
                                                          if v is not None}), **tree})  # fmt: skip


def _variables(ranks: pd.DataFrame, sims: np.ndarray, column: str) -> dict[str, Any]:
    """{variable: DataArray (chain, draw, *component dims)} of one column of the ranks."""
    import xarray as xr

    parsed = ranks["quantity"].str.extract(_INDEX)
    out: dict[str, Any] = {}
    position = {int(s): i for i, s in enumerate(sims)}
    for var, rows in ranks.groupby(parsed["var"], sort=False):
        idx = parsed.loc[rows.index, "idx"]
        if idx.isna().all():
            shape: tuple[int, ...] = ()
            cells = [()] * len(rows)
        else:
            cells = [tuple(int(i) - 1 for i in s.split(",")) for s in idx]
            shape = tuple(int(n) + 1 for n in np.max(cells, axis=0))
        integer = column in ("rank", "L") and rows[column].notna().all()
        values = np.full((1, len(sims), *shape), np.nan)
        draw = [position[int(s)] for s in rows["sim"]]
        for d, cell, v in zip(draw, cells, rows[column].to_numpy(float), strict=True):
            values[(0, d, *cell)] = v
        if integer and not np.isnan(values).any():
            values = values.astype(np.int64)
        dims = ["chain", "draw", *(f"{var}_dim_{i}" for i in range(len(shape)))]
        coords = {"chain": [0], "draw": sims.astype(int)}
        coords.update({f"{var}_dim_{i}": np.arange(n) for i, n in enumerate(shape)})
        out[str(var)] = xr.DataArray(values, dims=dims, coords=coords)
    return out


def _diagnostics(sims: pd.DataFrame, xr: Any) -> Any:
    frame = sims.set_index("sim") if "sim" in sims else sims
    frame = frame.drop(columns=[c for c in ("error",) if c in frame])
    return xr.Dataset.from_dataframe(frame)
