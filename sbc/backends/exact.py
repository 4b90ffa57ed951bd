"""Exact posteriors for conjugate normal models: SBC without MCMC, in milliseconds.

`exact`: mu_k ~ N(0, prior_sd), y_ik ~ N(mu_k, sigma) with sigma known
(`sbc.simulators.normal`); independent ranks. `exact-hierarchical`: μ ~ N(0, prior_sd),
θ_j ~ N(μ, tau), y_ij ~ N(θ_j, sigma) with known scales (`sbc.simulators.hierarchical`);
the ranks of θ_1..θ_J are dependent within a simulation, as group effects are. Both
posteriors are normal in closed form, so their draws are calibrated by construction.
`sd_scale` and `shift` deliberately break them (posterior too narrow/wide, or biased by
`shift` posterior sds), which is how the statistics prove they have power.
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


@dataclass
class ExactHierarchicalBackend(Backend):
    chains: int = 1
    draws_per_chain: int = 100
    sd_scale: float = 1.0
    shift: float = 0.0
    name = "exact-hierarchical"

    def variables(self) -> dict[str, int]:
        return {"mu": 0, "theta": 1}

    def fit(self, data: dict[str, Any], seed: int, workdir: Path) -> dict[str, np.ndarray]:
        from sbc.simulators.hierarchical import posterior, posterior_draws

        rng = np.random.default_rng(seed)
        draws = posterior_draws(data, rng, (self.chains, self.draws_per_chain))
        if self.sd_scale == 1.0 and self.shift == 0.0:
            return draws
        mean, cov = posterior(data)
        sd = np.sqrt(np.diag(cov))
        out = {}
        for name, m, s in (("mu", mean[0], sd[0]), ("theta", mean[1:], sd[1:])):
            out[name] = m + s * self.shift + self.sd_scale * (draws[name] - m)
        return out

    def draws(self, fit: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return fit

    def diagnostics(self, fit: dict[str, np.ndarray]) -> dict[str, float]:
        return {"divergences": 0, "treedepth_hits": 0, "return_code": 0}

    def manifest(self) -> dict[str, Any]:
        return {"type": self.name, "sd_scale": self.sd_scale, "shift": self.shift}
