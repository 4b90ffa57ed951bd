"""CmdStan's NUTS sampler through cmdstanpy: compile once per study, sample once per simulation.

The program's part (compiling and caching it, its variables, identity, remote hosts, initial
values) is `program.StanProgram`'s; this module adds NUTS's settings and what one fit gives.
Settings are cmdstanpy's `sample()` arguments under cmdstanpy's names, in ``[backend]``;
sbc 0.1's ``[sampler]`` table (`SampleSettings`) still works, its names mapped onto them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sbc.backends import BackendSpec
from sbc.backends.cmdstan.program import StanProgram, cmdstan_failure, initial_values
from sbc.errors import SBCError
from sbc.store import Diagnostic


@dataclass(frozen=True)
class SampleSettings:
    """sbc 0.1's ``[sampler]`` table: what the exact backends read, and the names NUTS's
    `NutsSettings` still accept there (``warmup`` = iter_warmup, ``draws`` = iter_sampling;
    its ``thin`` is `thin_ranks`, read by the study)."""

    chains: int = field(default=2, metadata={"min": 1})
    warmup: int = field(default=500, metadata={"min": 0})
    draws: int = field(default=500, metadata={"min": 1})  # per chain, before `thin`
    adapt_delta: float = 0.8
    max_treedepth: int = field(default=10, metadata={"min": 1})
    timeout: float = 600.0  # seconds per fit; the fit is killed and recorded failed. 0: none

    def check(self, section: str, where: str) -> None:
        _check_common(self, section, where)


def _check_common(s: Any, section: str, where: str) -> None:
    if not 0 < s.adapt_delta < 1:
        raise SBCError(f"[{section}] adapt_delta: must be in (0, 1), got {s.adapt_delta}", where)
    if s.timeout < 0:
        raise SBCError(f"[{section}] timeout: must be >= 0 seconds, got {s.timeout}", where)


def _v01(name: str, **meta: Any) -> dict[str, Any]:
    """Metadata of a setting sbc 0.1 had: its [sampler] name (the identity hashes it there)."""
    return {"sampler": name, **meta}


@dataclass(frozen=True)
class NutsSettings:
    """``[backend] type = "cmdstan"``: the arguments of cmdstanpy's `CmdStanModel.sample` that
    make sense per fit, under cmdstanpy's names and with CmdStan's defaults (None: CmdStan's
    own default, not passed). `thin` is CmdStan's thinning of the draws it writes; ranks are
    thinned by the study's `thin_ranks`. The seed is set per fit from the study's seed."""

    chains: int = field(default=2, metadata=_v01("chains", min=1))
    iter_warmup: int = field(default=500, metadata=_v01("warmup", min=0, aliases=("warmup",)))
    iter_sampling: int = field(default=500, metadata=_v01("draws", min=1, aliases=("draws",)))
    thin: int = field(default=1, metadata={"min": 1})
    adapt_delta: float = field(default=0.8, metadata=_v01("adapt_delta"))
    max_treedepth: int = field(default=10, metadata=_v01("max_treedepth", min=1))
    step_size: float | None = field(default=None, metadata={"min": 0.0})
    metric: str | None = field(default=None, metadata={"choices": ("diag_e", "dense_e", "unit_e")})
    adapt_engaged: bool = True
    adapt_init_phase: int | None = field(default=None, metadata={"min": 0})
    adapt_metric_window: int | None = field(default=None, metadata={"min": 0})
    adapt_step_size: int | None = field(default=None, metadata={"min": 0})
    # a number x: each unconstrained parameter starts uniform in (-x, x) (CmdStan: 2); or
    # "module:function" / "file.py:function", called as inits(rng, data) once per chain
    inits: float | str | None = field(default=None, metadata={"min": 0.0, "callable": True})
    refresh: int | None = field(default=None, metadata={"min": 1})
    sig_figs: int | None = field(default=None, metadata={"min": 1})
    timeout: float = field(default=600.0, metadata=_v01("timeout"))  # s per fit; 0: none

    def check(self, section: str, where: str) -> None:
        _check_common(self, section, where)
        if self.step_size is not None and self.step_size <= 0:
            raise SBCError(f"[{section}] step_size: must be > 0, got {self.step_size}", where)
        if self.sig_figs is not None and self.sig_figs > 18:
            raise SBCError(f"[{section}] sig_figs: must be 1 to 18, got {self.sig_figs}", where)
        if self.adapt_engaged and self.iter_warmup == 0:
            raise SBCError(
                f"[{section}] iter_warmup: 0 needs adapt_engaged = false (NUTS adapts during "
                "warm-up)",
                where,
            )
        windows = ("adapt_init_phase", "adapt_metric_window", "adapt_step_size")
        for name in windows if not self.adapt_engaged else ():
            if getattr(self, name) is not None:
                raise SBCError(f"[{section}] {name}: needs adapt_engaged = true", where)

    def draws_per_chain(self) -> tuple[int, str]:
        """Draws a chain yields for the ranks, and how to name them in a message."""
        n = math.ceil(self.iter_sampling / self.thin)
        return n, "iter_sampling" if self.thin == 1 else "iter_sampling / thin"


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

    settings: NutsSettings = NutsSettings()
    parallel_chains: int = 1
    name = "cmdstan"
    method = "NUTS (CmdStan's sample)"
    Options = NutsSettings
    diagnostics = DIAGNOSTICS
    lp_in_draws = True

    @classmethod
    def create(cls, spec: BackendSpec, stan: Path | None, cores: int) -> CmdStanBackend:
        settings = spec.options if isinstance(spec.options, NutsSettings) else NutsSettings()
        assert stan is not None  # the study checks `needs_stan`
        # chains run in parallel on the cores a fit has, one after the other beyond that
        return cls(
            stan_file=stan,
            settings=settings,
            parallel_chains=max(1, min(settings.chains, cores)),
        )

    # -- once per simulation, in a worker ---------------------------------------------------------
    def fit(self, data: dict[str, Any], seed: int, workdir: Path) -> Any:
        return self.sample(workdir, self.arguments(data, seed, workdir))

    def arguments(self, data: dict[str, Any], seed: int, workdir: Path) -> dict[str, Any]:
        """cmdstanpy's `sample()` arguments of one fit. A fit is continued by sampling again
        with these, changed: ``step_size`` and ``metric`` (inv_metric) of the first fit,
        ``adapt_engaged=False``, ``iter_warmup=0`` and ``inits`` from its last draws."""
        s = self.settings
        data_file = self.write_data(data, workdir)
        given = {
            "adapt_delta": s.adapt_delta if s.adapt_engaged else None,  # cmdstanpy refuses both
            "thin": s.thin,
            "step_size": s.step_size,
            "metric": s.metric,
            "adapt_init_phase": s.adapt_init_phase,
            "adapt_metric_window": s.adapt_metric_window,
            "adapt_step_size": s.adapt_step_size,
            "inits": initial_values(s.inits, seed, data, s.chains),
            "refresh": s.refresh,
            "sig_figs": s.sig_figs,
        }
        return {
            "data": str(data_file),
            "chains": s.chains,
            "parallel_chains": self.parallel_chains,
            "seed": seed,
            "iter_warmup": s.iter_warmup,
            "iter_sampling": s.iter_sampling,
            "max_treedepth": s.max_treedepth,
            "adapt_engaged": s.adapt_engaged,
            **{k: v for k, v in given.items() if v is not None},
            "output_dir": str(workdir),
            "show_progress": False,
            "show_console": False,
            "timeout": s.timeout or None,
        }

    def sample(self, workdir: Path, arguments: dict[str, Any]) -> Any:
        """One run of CmdStan's sampler; a failure is one line (the runner records it)."""
        try:
            return self.model().sample(**arguments)
        except TimeoutError:
            raise RuntimeError(
                f"fit exceeded the timeout of {self.settings.timeout:g} s; killed"
            ) from None
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
