"""CmdStan's ADVI (automatic differentiation variational inference) through cmdstanpy.

``[backend] type = "cmdstan-variational"``: one `CmdStanModel.variational` run per
simulation, meanfield or fullrank, under cmdstanpy's names (`AdviSettings`). Its ranks come
from the ``output_samples`` approximate draws (independent draws of the fitted normal
approximation, one "chain"); the first row of CmdStan's CSV, the approximation's mean, is
not a draw and is not ranked.

What one fit reports (`DIAGNOSTICS`), read from what CmdStan 2.27 writes:

* the console's table of ELBO evaluations (every ``eval_elbo`` iterations: iteration, ELBO,
  mean and median relative ELBO change) and its notes. ``MEAN/MEDIAN ELBO CONVERGED`` ends
  the optimisation; "The maximum number of iterations is reached! The algorithm may not
  have converged." means it stopped at ``iter`` without converging (``not_converged``);
  "The ELBO at a previous iteration is larger than the ELBO upon convergence!" means it
  declared convergence at a worse optimum than one it had passed (``elbo_below_best``:
  stopped early). cmdstanpy is asked not to raise on non-convergence
  (``require_converged=False``): such a fit is kept, ranked and flagged, never dropped, as
  dropping fits by a diagnostic biases the ranks. A run that fails (no usable step size,
  an ELBO that cannot be computed, CmdStan exiting with an error) is a failed simulation
  with CmdStan's reason.
* Pareto k̂ of the importance ratios p(θ)/q(θ) over the draws (Yao, Vehtari, Simpson and
  Gelman 2018, "Yes, but did it work?"). Each draw's CSV row holds ``log_p__``, Stan's
  log density with every constant and the Jacobian (``log_prob<propto=false,
  jacobian=true>``) on the unconstrained scale, and ``log_g__`` = −½‖ζ‖², the standard
  normal log density of the draw ζ before the approximation's affine map (stan/variational/
  advi.hpp, ``run``; families/normal_meanfield.hpp and normal_fullrank.hpp,
  ``calc_log_g``). The omitted terms, −log|det(scale)| and −(d/2)·log 2π, are the same for
  every draw of a fit, so ``log_p__ − log_g__`` is log p/q up to a constant, which PSIS's
  self-normalised weights do not see: k̂ is computed honestly, with arviz-stats' PSIS
  (r_eff = 1: the draws are independent). k̂ > 0.7: the approximation is too far from the
  posterior for importance sampling to repair, so its draws should not be trusted
  (Yao et al. 2018; Vehtari et al. 2024 give min(1 − 1/log10(S), 0.7), 0.67 at S = 1000).

cmdstanpy 1.3 cannot read a variational CSV written with ``adapt_engaged = false`` (its
parser wants the "Stepsize adaptation complete." block that CmdStan writes only after
adapting; cmdstanpy fixed this once, in stan-dev/cmdstanpy#283). For that setting the fit's
CSV gets the block, with the ``eta`` it ran with, before cmdstanpy reads it.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sbc.backends import BackendSpec
from sbc.backends.cmdstan.program import StanProgram, initial_values
from sbc.errors import SBCError
from sbc.store import Diagnostic

#: Pareto k̂ above which an approximation is not trusted (Yao et al. 2018).
PARETO_K_LIMIT = 0.7


@dataclass(frozen=True)
class AdviSettings:
    """``[backend] type = "cmdstan-variational"``: the arguments of cmdstanpy's
    `CmdStanModel.variational` that make sense per fit, with CmdStan 2.27's defaults. The
    seed of each fit comes from the study's `seed` and the simulation index."""

    algorithm: str = field(default="meanfield", metadata={"choices": ("meanfield", "fullrank")})
    iter: int = field(default=10_000, metadata={"min": 1})  # most iterations
    grad_samples: int = field(default=1, metadata={"min": 1})  # draws per gradient
    elbo_samples: int = field(default=100, metadata={"min": 1})  # draws per ELBO estimate
    eta: float = 1.0  # step-size scale; adapted (from 100, 10, 1, 0.1, 0.01) if adapt_engaged
    adapt_engaged: bool = True
    adapt_iter: int = field(default=50, metadata={"min": 1})  # iterations per eta tried
    tol_rel_obj: float = 0.01  # relative ELBO change that counts as converged
    eval_elbo: int = field(default=100, metadata={"min": 1})  # iterations between ELBO checks
    # approximate draws (cmdstanpy >= 1.0 calls them `draws`)
    output_samples: int = field(default=1000, metadata={"min": 1, "aliases": ("draws",)})
    inits: float | str | None = field(default=None, metadata={"min": 0.0, "callable": True})
    sig_figs: int | None = field(default=None, metadata={"min": 1})
    refresh: int | None = field(default=None, metadata={"min": 1})
    timeout: float = 600.0  # seconds per fit; the fit is killed and recorded failed. 0: none

    def check(self, section: str, where: str) -> None:
        for name in ("eta", "tol_rel_obj"):
            if getattr(self, name) <= 0:
                raise SBCError(f"[{section}] {name}: must be > 0, got {getattr(self, name)}", where)
        if self.timeout < 0:
            raise SBCError(f"[{section}] timeout: must be >= 0 seconds, got {self.timeout}", where)
        if self.sig_figs is not None and self.sig_figs > 18:
            raise SBCError(f"[{section}] sig_figs: must be 1 to 18, got {self.sig_figs}", where)

    def draws_per_chain(self) -> tuple[int, str]:
        return self.output_samples, "output_samples"


DIAGNOSTICS = (
    Diagnostic("not_converged", "INTEGER", ">", 0, "1 if ADVI stopped at `iter` iterations "
               "before the relative ELBO change fell below tol_rel_obj (CmdStan: 'may not "
               "have converged')"),
    Diagnostic("elbo_below_best", "INTEGER", ">", 0, "1 if ADVI declared convergence at an "
               "ELBO more than 5 % below one it had reached before (CmdStan: 'may not have "
               "converged to a good optimum'): it stopped early"),
    Diagnostic("pareto_k", "REAL", ">", PARETO_K_LIMIT, "Pareto k-hat of the importance "
               "ratios p/q over the draws: above 0.7 the approximation is too far from the "
               "posterior to trust its draws (Yao et al. 2018)"),
    Diagnostic("iterations", "INTEGER", doc="iterations of stochastic gradient ascent run"),
    Diagnostic("elbo", "REAL", doc="ELBO at the last evaluation"),
    Diagnostic("elbo_change_mean", "REAL", doc="mean relative ELBO change over CmdStan's "
               "window at the last evaluation (converged below tol_rel_obj)"),
    Diagnostic("elbo_change_median", "REAL", doc="median relative ELBO change, ditto"),
    Diagnostic("eta", "REAL", doc="step-size scale used (adapted unless adapt_engaged = false)"),
    Diagnostic("n_draws", "INTEGER", doc="approximate posterior draws (output_samples)"),
)  # fmt: skip


@dataclass
class AdviFit:
    """One ADVI run: cmdstanpy's result and CmdStan's console (its ELBO table and notes)."""

    vb: Any  # cmdstanpy.CmdStanVB
    console: str


@dataclass
class CmdStanVariationalBackend(StanProgram):
    """``[backend] type = "cmdstan-variational"``: ADVI on a Stan program."""

    settings: AdviSettings = AdviSettings()
    name = "cmdstan-variational"
    Options = AdviSettings
    diagnostics = DIAGNOSTICS

    @property
    def method(self) -> str:  # type: ignore[override]
        return f"ADVI {self.settings.algorithm} (CmdStan's variational)"

    @classmethod
    def create(cls, spec: BackendSpec, stan: Path | None, cores: int) -> CmdStanVariationalBackend:
        settings = spec.options if isinstance(spec.options, AdviSettings) else AdviSettings()
        assert stan is not None  # the study checks `needs_stan`
        return cls(stan_file=stan, settings=settings)

    # -- once per simulation, in a worker ---------------------------------------------------------
    def fit(self, data: dict[str, Any], seed: int, workdir: Path) -> AdviFit:
        s = self.settings
        model = self.model()
        given = {
            "inits": initial_values(s.inits, seed, data, chains=1),
            "sig_figs": s.sig_figs,
            "refresh": s.refresh,
        }
        # cmdstanpy >= 1.0 names output_samples `draws` (and warns about the old name)
        n_draws = "draws" if "draws" in inspect.signature(model.variational).parameters else None
        arguments = {
            "data": str(self.write_data(data, workdir)),
            "seed": seed,
            "algorithm": s.algorithm,
            "iter": s.iter,
            "grad_samples": s.grad_samples,
            "elbo_samples": s.elbo_samples,
            "eta": s.eta,
            "adapt_engaged": s.adapt_engaged,
            "adapt_iter": s.adapt_iter,
            "tol_rel_obj": s.tol_rel_obj,
            "eval_elbo": s.eval_elbo,
            n_draws or "output_samples": s.output_samples,
            **{k: v for k, v in given.items() if v is not None},
            "require_converged": False,  # kept, ranked and flagged: see the module's docstring
            "output_dir": str(workdir),
            "show_console": False,
            "timeout": s.timeout or None,
        }
        try:
            vb = model.variational(**arguments)
        except TimeoutError:
            raise RuntimeError(f"fit exceeded the timeout of {s.timeout:g} s; killed") from None
        except RuntimeError as exc:
            raise RuntimeError(advi_failure(_console(workdir), str(exc))) from None
        except ValueError:
            if s.adapt_engaged:
                raise
            vb = _read_without_adaptation(workdir, s.eta)
        return AdviFit(vb, _console(workdir))

    def draws(self, fit: AdviFit) -> dict[str, np.ndarray]:
        """Each variable's approximate draws as one chain: (1, output_samples, *shape)."""
        vb = fit.vb
        n = len(vb.variational_sample)
        return {
            name: np.asarray(vb.stan_variable(name, mean=False), dtype=float).reshape(
                1, n, *var.dimensions
            )
            for name, var in vb.metadata.stan_vars.items()
        }

    def diagnose(self, fit: AdviFit) -> dict[str, float]:
        """The declared `DIAGNOSTICS`, from CmdStan's console and the draws' log densities."""
        diag: dict[str, float] = {**elbo_trace(fit.console)}
        if diag.get("not_converged"):  # ran to `iter`, past the last ELBO evaluation printed
            diag["iterations"] = self.settings.iter
        columns = list(fit.vb.column_names)
        sample = np.asarray(fit.vb.variational_sample, dtype=float)
        diag["n_draws"] = len(sample)
        if {"log_p__", "log_g__"} <= set(columns):
            log_ratios = sample[:, columns.index("log_p__")] - sample[:, columns.index("log_g__")]
            diag["pareto_k"] = pareto_k(log_ratios)
        with contextlib.suppress(AttributeError, ValueError):
            diag["eta"] = float(fit.vb.eta)
        return diag


# -- CmdStan's console ---------------------------------------------------------------------------

_ELBO_ROW = re.compile(
    r"^\s*(\d+)\s+(\S+)\s+(\S+)\s+(\S+)(.*)$"
)  # iter, ELBO, delta_ELBO_mean, delta_ELBO_med, notes


def elbo_trace(console: str) -> dict[str, float]:
    """What CmdStan's console says about the optimisation (its table after "Begin stochastic
    gradient ascent.", and its notes): the last row's values and the convergence flags."""
    out: dict[str, float] = {}
    _, begun, table = console.partition("Begin stochastic gradient ascent.")
    if not begun:
        return out
    last = None
    for line in table.splitlines():
        m = _ELBO_ROW.match(line)
        if m and _number(m.group(2)) is not None:
            last = m
    if last is not None:
        out["iterations"] = int(last.group(1))
        for key, group in (("elbo", 2), ("elbo_change_mean", 3), ("elbo_change_median", 4)):
            value = _number(last.group(group))
            if value is not None:
                out[key] = value
    out["not_converged"] = int("The algorithm may not have converged" in table)
    out["elbo_below_best"] = int("ELBO at a previous iteration is larger" in table)
    return out


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if np.isfinite(value) else None


def advi_failure(console: str, message: str) -> str:
    """One line saying why an ADVI run failed: ADVI's own error, a failed initialisation
    with the last reason CmdStan gave, else the last error line, else cmdstanpy's words."""
    lines = [ln.strip() for ln in console.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith(("Exception:", "Error"))]
    own = [ln for ln in lines if "stan::variational::" in ln]
    if own:
        return "CmdStan: " + own[-1]
    init = [ln for ln in lines if re.match(r"Initialization between .* failed", ln)]
    if init:
        last = f" (last: {errors[-1]})" if errors else ""
        return f"CmdStan: {init[-1]}{last}"
    if errors:
        return "CmdStan: " + errors[-1]
    words = [ln.strip() for ln in message.splitlines() if ln.strip()]
    return "CmdStan variational failed: " + (" ".join(words[:2]) if words else "no message")


def _console(workdir: Path) -> str:
    """The run's console transcript (cmdstanpy writes it beside the CSV)."""
    files = sorted(workdir.glob("*-stdout.txt"))
    return files[-1].read_text(errors="replace") if files else ""


def _read_without_adaptation(workdir: Path, eta: float) -> Any:
    """cmdstanpy's result of a run with adapt_engaged = false (see the module docstring)."""
    import cmdstanpy

    (csv,) = sorted(workdir.glob("*.csv"))
    lines = csv.read_text().splitlines(keepends=True)
    header = next(i for i, ln in enumerate(lines) if not ln.startswith("#"))
    block = ["# Stepsize adaptation complete.\n", f"# eta = {eta:g}\n"]
    csv.write_text("".join([*lines[: header + 1], *block, *lines[header + 1 :]]))
    return cmdstanpy.from_csv(str(csv), method="variational")


# -- Pareto k̂ ------------------------------------------------------------------------------------


def pareto_k(log_ratios: np.ndarray) -> float:
    """PSIS's Pareto k̂ of importance ratios given on the log scale (any constant offset).

    NaN when it cannot be estimated (a NaN or +inf ratio, fewer than 25 draws); −inf when
    the ratios are all equal (the approximation is the posterior); +inf when the largest
    ratios of the tail PSIS fits (the min(S/5, 3√S) largest) differ by more than e^700,
    beyond what the fit can hold in floating point: one draw carries all the weight.
    """
    from arviz_stats.base import array_stats

    lr = np.asarray(log_ratios, dtype=float)
    finite = lr[np.isfinite(lr)]
    if np.isnan(lr).any() or np.isposinf(lr).any() or len(finite) < 25:
        return float("nan")
    if np.ptp(finite) == 0:
        return float("-inf")
    n = len(lr)
    tail = int(3 * np.sqrt(n)) if n > 225 else n // 5
    top = np.sort(finite)[::-1]
    if top[0] - top[min(tail, len(top)) - 1] > 700:
        return float("inf")
    lr = np.where(np.isfinite(lr), lr, finite.min() - 745.0)  # a weight of 0 stays 0
    with np.errstate(all="ignore"):
        # arviz-stats' psislw takes log-likelihoods and weights by their negatives (PSIS-LOO)
        _, k = array_stats.psislw(-lr, r_eff=1.0)
    return float(k) if np.isfinite(k) else float("nan")
