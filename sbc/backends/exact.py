"""Exact posteriors for conjugate normal models: SBC without MCMC, in milliseconds.

`exact`: mu_k ~ N(0, prior_sd), y_ik ~ N(mu_k, sigma) with sigma known
(`sbc.simulators.normal`); independent ranks. `exact-hierarchical`: μ ~ N(0, prior_sd),
θ_j ~ N(μ, tau), y_ij ~ N(θ_j, sigma) with known scales (`sbc.simulators.hierarchical`);
the ranks of θ_1..θ_J are dependent within a simulation, as group effects are. Both
posteriors are normal in closed form, so their draws are calibrated by construction.
`sd_scale` and `shift` deliberately break them (posterior too narrow/wide, or biased by
`shift` posterior sds), which is how the statistics prove they have power.

They stand in for a sampler: `chains` and `draws` come from the study's ``[sampler]``
table, which they read as the CmdStan backend does (its other keys are checked, unused);
``[backend] draws`` overrides ``[sampler] draws``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sbc.backends import BackendBase, BackendSpec
from sbc.backends.cmdstan.sample import SampleSettings
from sbc.store import Diagnostic


@dataclass(frozen=True)
class ExactOptions:
    """``[backend]`` of the exact backends."""

    sd_scale: float = 1.0  # posterior sd times this: < 1 too narrow, > 1 too wide
    shift: float = 0.0  # posterior mean moved by this many posterior sds
    draws: int | None = field(default=None, metadata={"min": 1})  # default: [sampler] draws


#: Exact draws have no sampler to go wrong: always 0. Declared so that exact studies stand in
#: for NUTS ones wherever the views read these columns (`sbc check --max-divergent-share`).
DIAGNOSTICS = (
    Diagnostic("divergences", "INTEGER", ">", 0, "always 0: exact draws"),
    Diagnostic("treedepth_hits", "INTEGER", ">", 0, "always 0: exact draws"),
)


@dataclass
class ExactNormalBackend(BackendBase):
    chains: int = 1
    draws_per_chain: int = 100
    sd_scale: float = 1.0
    shift: float = 0.0
    name: ClassVar[str] = "exact"
    Options: ClassVar[type] = ExactOptions
    Sampler: ClassVar[type | None] = SampleSettings
    diagnostics: ClassVar[tuple[Diagnostic, ...]] = DIAGNOSTICS

    @classmethod
    def create(cls, spec: BackendSpec, stan: Path | None, cores: int) -> ExactNormalBackend:
        sampler = spec.sampler or SampleSettings()
        options: ExactOptions = spec.options
        return cls(
            chains=sampler.chains,
            draws_per_chain=options.draws if options.draws is not None else sampler.draws,
            sd_scale=options.sd_scale,
            shift=options.shift,
        )

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

    def diagnose(self, fit: dict[str, np.ndarray]) -> dict[str, float]:
        return {"divergences": 0, "treedepth_hits": 0}

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "sd_scale": self.sd_scale, "shift": self.shift}


@dataclass
class ExactHierarchicalBackend(ExactNormalBackend):
    name: ClassVar[str] = "exact-hierarchical"

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
