"""Exact posteriors for a conjugate normal model: SBC without MCMC, in milliseconds.

Model (see `sbc.simulators.normal`): mu_k ~ N(0, prior_sd), y_ik ~ N(mu_k, sigma)
with sigma known. The posterior of each mu_k is normal in closed form, so draws
from it are calibrated by construction. `sd_scale` and `shift` deliberately
break it (posterior too narrow/wide, or biased by `shift` posterior sds), which
is how the statistics prove they have power.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sbc.backends import Backend


@dataclass
class ExactNormalBackend(Backend):
    chains: int = 1
    draws_per_chain: int = 100
    sd_scale: float = 1.0
    shift: float = 0.0
    name = "exact"

    def variables(self) -> dict[str, int]:
        return {"mu": 1}

    def fit(self, data: dict[str, Any], seed: int, workdir: Path) -> dict[str, np.ndarray]:
        y = np.asarray(data["y"], dtype=float).reshape(int(data["N"]), int(data["K"]))
        precision = 1.0 / data["prior_sd"] ** 2 + y.shape[0] / data["sigma"] ** 2
        sd = np.sqrt(1.0 / precision)
        mean = y.sum(axis=0) / data["sigma"] ** 2 / precision
        rng = np.random.default_rng(seed)
        noise = rng.standard_normal((self.chains, self.draws_per_chain, y.shape[1]))
        return {"mu": mean + sd * (self.shift + self.sd_scale * noise)}

    def draws(self, fit: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return fit

    def diagnostics(self, fit: dict[str, np.ndarray]) -> dict[str, float]:
        return {"divergences": 0, "treedepth_hits": 0, "return_code": 0}

    def manifest(self) -> dict[str, Any]:
        return {"type": self.name, "sd_scale": self.sd_scale, "shift": self.shift}
