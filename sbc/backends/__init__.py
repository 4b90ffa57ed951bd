"""How a dataset becomes posterior draws.

A backend has three small methods, as in the R package SBC: `fit` runs one
inference, `draws` takes the posterior draws out of that fit, and `diagnostics`
says how the inference went. The runner never looks inside a fit otherwise, so
adding a backend means adding one module here and one entry in `BACKENDS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np


class Backend(ABC):
    """One inference method, prepared once per study and shipped to worker processes."""

    #: name used in study files (`[backend] type = ...`)
    name: str

    def prepare(self, progress: bool = True) -> None:  # noqa: B027 - optional hook
        """Expensive one-time work in the main process (compiling), before workers start."""

    @abstractmethod
    def variables(self) -> dict[str, int] | None:
        """Variable names the model produces with their number of dimensions, if known."""

    @abstractmethod
    def fit(self, data: dict[str, Any], seed: int, workdir: Path) -> Any:
        """Run inference on one dataset; raise on failure (the runner records the reason)."""

    @abstractmethod
    def draws(self, fit: Any) -> dict[str, np.ndarray]:
        """Posterior draws per variable, shaped (chains, draws, *variable shape)."""

    @abstractmethod
    def diagnostics(self, fit: Any) -> dict[str, float]:
        """Sampler diagnostics, keyed as the store's columns (`sbc.store.SIM_COLUMNS`)."""

    def manifest(self) -> dict[str, Any]:
        """What to record about this backend in the results manifest."""
        return {"type": self.name}

    def close(self, fit: Any) -> None:  # noqa: B027 - optional hook
        """Release what a fit holds on disk once its results are stored."""
