"""CmdStan's NUTS sampler through cmdstanpy: compile once per study, sample once per simulation.

The program's part (compiling and caching it, its variables, identity, remote hosts) is
`program.StanProgram`'s; this module adds NUTS's settings and what one fit gives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sbc.backends import BackendSpec
from sbc.backends.cmdstan.program import StanProgram, cmdstan_failure
from sbc.errors import SBCError
from sbc.store import Diagnostic


@dataclass(frozen=True)
class SampleSettings:
    """NUTS settings (``[sampler]`` in a study file), named as in cmdstanpy's `sample`."""

    chains: int = field(default=2, metadata={"min": 1})
    warmup: int = field(default=500, metadata={"min": 0})
    draws: int = field(default=500, metadata={"min": 1})  # per chain, before `thin`
    adapt_delta: float = 0.8
    max_treedepth: int = field(default=10, metadata={"min": 1})
    timeout: float = 600.0  # seconds per fit; the fit is killed and recorded failed. 0: none

    def check(self, section: str, where: str) -> None:
        if not 0 < self.adapt_delta < 1:
            raise SBCError(
                f"[{section}] adapt_delta: must be in (0, 1), got {self.adapt_delta}", where
            )
        if self.timeout < 0:
            raise SBCError(f"[{section}] timeout: must be >= 0 seconds, got {self.timeout}", where)


#: What `diagnose` reports per fit, with the rules of `sbc.analysis.diagnostics`, which has
#: their sources: divergences, max-treedepth hits, E-BFMI < 0.3 (CmdStan's `diagnose`), and
#: ESS per kept draw < 0.5 (R SBC's `min_ess_to_rank`: the L ranked draws must be close to
#: independent). R-hat's limit depends on L and the chains (the R-hat an ESS of L/2
#: implies), which a fixed threshold cannot say: the analysis applies it.
DIAGNOSTICS = (
    Diagnostic("divergences", "INTEGER", ">", 0, "divergent transitions after warm-up: the "
               "sampler missed part of the posterior"),
    Diagnostic("treedepth_hits", "INTEGER", ">", 0, "iterations that hit max_treedepth: "
               "trajectories cut short, exploration may be incomplete"),
    Diagnostic("ebfmi_min", "REAL", "<", 0.3, "lowest E-BFMI over chains: momentum "
               "resampling cannot follow the energy (heavy tails, funnels)"),
    Diagnostic("rhat_max", "REAL", doc="largest rank-normalised split R-hat: chains disagree "
               "(flagged above sqrt(1 + chains/(L/2)), by the analysis)"),
    Diagnostic("ess_bulk_min", "REAL", "<", 0.5, "smallest bulk effective sample size",
               per_kept_draw=True),
    Diagnostic("ess_tail_min", "REAL", "<", 0.5, "smallest tail (5 %, 95 %) effective sample "
               "size", per_kept_draw=True),
    Diagnostic("stepsize", "REAL", doc="adapted step size, mean over chains"),
    Diagnostic("warmup_seconds", "REAL", doc="CmdStan's warm-up time, summed over chains"),
    Diagnostic("sampling_seconds", "REAL", doc="CmdStan's sampling time, summed over chains"),
    Diagnostic("n_draws", "INTEGER", doc="posterior draws (chains x draws), before thinning"),
)  # fmt: skip


@dataclass
class CmdStanBackend(StanProgram):
    """``[backend] type = "cmdstan"`` (the default): NUTS on a Stan program."""

    settings: SampleSettings = SampleSettings()
    parallel_chains: int = 1
    name = "cmdstan"
    Sampler = SampleSettings
    diagnostics = DIAGNOSTICS
    lp_in_draws = True

    @classmethod
    def create(cls, spec: BackendSpec, stan: Path | None, cores: int) -> CmdStanBackend:
        settings = spec.sampler or SampleSettings()
        assert stan is not None  # the study checks `needs_stan`
        # chains run in parallel on the cores a fit has, one after the other beyond that
        return cls(
            stan_file=stan,
            settings=settings,
            parallel_chains=max(1, min(settings.chains, cores)),
        )

    # -- once per simulation, in a worker ---------------------------------------------------------
    def fit(self, data: dict[str, Any], seed: int, workdir: Path) -> Any:
        import cmdstanpy

        s = self.settings
        model = self.model()
        data_file = workdir / "data.json"
        cmdstanpy.write_stan_json(str(data_file), data)
        try:
            return model.sample(
                data=str(data_file),
                chains=s.chains,
                parallel_chains=self.parallel_chains,
                seed=seed,
                iter_warmup=s.warmup,
                iter_sampling=s.draws,
                adapt_delta=s.adapt_delta,
                max_treedepth=s.max_treedepth,
                output_dir=str(workdir),
                show_progress=False,
                show_console=False,
                timeout=s.timeout or None,
            )
        except TimeoutError:
            raise RuntimeError(f"fit exceeded the timeout of {s.timeout:g} s; killed") from None
        except RuntimeError as exc:
            raise RuntimeError(cmdstan_failure(str(exc))) from None

    def draws(self, fit: Any) -> dict[str, np.ndarray]:
        """Every variable of the program, and ``lp__`` (rankable: ``[quantities] stan``)."""
        chains = fit.chains
        out = {}
        for name in fit.metadata.stan_vars:
            value = fit.stan_variable(name)
            out[name] = value.reshape(chains, -1, *value.shape[1:])
        out["lp__"] = fit.method_variables()["lp__"].T  # (draws, chains) -> (chains, draws)
        return out

    def diagnose(self, fit: Any) -> dict[str, float]:
        """The declared `DIAGNOSTICS`, from cmdstanpy's public accessors of the fit.

        (A fit that returns had every chain end with return code 0: cmdstanpy raises
        otherwise, and the runner records that simulation as failed, with the reason.)
        """
        from sbc.backends.convergence import convergence, ebfmi

        arr = fit.draws()  # (draws, chains, columns)
        method = set(fit.metadata.method_vars)  # lp__, accept_stat__, ..., energy__
        keep = [i for i, c in enumerate(fit.column_names) if c not in method]
        params = np.moveaxis(arr[:, :, keep], 2, 0).transpose(0, 2, 1)  # (params, chains, draws)
        varying = params[np.ptp(params.reshape(len(params), -1), axis=1) > 0]
        diag: dict[str, float] = {"n_draws": int(arr.shape[0] * arr.shape[1])}
        if fit.divergences is not None:  # None: a model without parameters (fixed_param)
            diag["divergences"] = int(fit.divergences.sum())
            diag["treedepth_hits"] = int(fit.max_treedepths.sum())
            diag["ebfmi_min"] = float(np.min(ebfmi(fit.method_variables()["energy__"].T)))
            diag["stepsize"] = float(np.mean(fit.step_size))
        if len(varying) and arr.shape[1] * arr.shape[0] >= 8:
            rhat, ess_bulk, ess_tail = convergence(varying)
            diag["rhat_max"] = float(np.nanmax(rhat))
            diag["ess_bulk_min"] = float(np.nanmin(ess_bulk))
            diag["ess_tail_min"] = float(np.nanmin(ess_tail))
        diag["warmup_seconds"] = sum(t.get("warmup", 0.0) for t in fit.time)
        diag["sampling_seconds"] = sum(t.get("sampling", 0.0) for t in fit.time)
        return diag
