"""A backend written outside sbc, as a plug-in would be: it imports only `sbc.backends`.

The conjugate normal model of `sbc.simulators.normal` (mu_k ~ N(0, prior_sd), y_ik ~
N(mu_k, sigma), sigma known), whose posterior is normal in closed form: its draws are
calibrated by construction, and `scale` makes them too narrow (< 1) or too wide (> 1).
It has no [sampler] table: `chains` and `draws` are its own options.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sbc.backends import BackendBase, BackendSpec, Diagnostic


@dataclass(frozen=True)
class Options:
    chains: int = field(default=2, metadata={"min": 1})
    draws: int = field(default=100, metadata={"min": 1})
    scale: float = 1.0


@dataclass
class ConjugateBackend(BackendBase):
    options: Options
    name = "conjugate-test"
    Options = Options
    diagnostics = (
        Diagnostic("posterior_sd", "REAL", ">", 10.0, "the data say next to nothing"),
        Diagnostic("draws_total", "INTEGER"),
    )

    @classmethod
    def create(cls, spec: BackendSpec, stan: Path | None, cores: int) -> ConjugateBackend:
        return cls(spec.options)

    def variables(self) -> dict[str, int]:
        return {"mu": 1}

    def fit(self, data: dict[str, Any], seed: int, workdir: Path) -> dict[str, np.ndarray]:
        y = np.asarray(data["y"], dtype=float).reshape(int(data["N"]), int(data["K"]))
        precision = 1 / data["prior_sd"] ** 2 + y.shape[0] / data["sigma"] ** 2
        mean = y.sum(axis=0) / data["sigma"] ** 2 / precision
        sd = self.options.scale / np.sqrt(precision)
        noise = np.random.default_rng(seed).standard_normal(
            (self.options.chains, self.options.draws, y.shape[1])
        )
        return {"mu": mean + sd * noise}

    def draws(self, fit: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return fit

    def diagnose(self, fit: dict[str, np.ndarray]) -> dict[str, float]:
        mu = fit["mu"]
        return {"posterior_sd": float(mu.std(axis=(0, 1)).max()), "draws_total": mu[..., 0].size}

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "scale": self.options.scale}


@dataclass
class LeakyBackend(ConjugateBackend):
    """Returns a diagnostic it does not declare: a bug the store must not let through."""

    name = "leaky-test"

    def diagnose(self, fit: dict[str, np.ndarray]) -> dict[str, float]:
        return {**super().diagnose(fit), "secret": 1.0}
