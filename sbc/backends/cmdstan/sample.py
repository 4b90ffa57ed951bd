"""CmdStan's NUTS sampler through cmdstanpy: compile once per study, sample once per simulation.

The executable is cached by the hash of the Stan source and the CmdStan version and folder
(`~/.cache/sbc/models/<hash>/`), so a second study of the same program, and every worker
process, reuses it. Workers get the executable's path and never compile; a dask worker on
another host gets the Stan source and builds the model there once (`remote.py`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import os
import re
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sbc.backends import BackendBase, BackendSpec
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


def quiet_cmdstanpy() -> None:
    """cmdstanpy logs every chain start and stop; a study shows its own progress instead."""
    from cmdstanpy.utils import get_logger

    get_logger().disabled = True


@dataclass
class CmdStanBackend(BackendBase):
    """``[backend] type = "cmdstan"`` (the default): NUTS on a Stan program."""

    stan_file: Path
    settings: SampleSettings = SampleSettings()
    parallel_chains: int = 1
    exe_file: Path | None = None
    cmdstan: Path | None = None
    _variables: dict[str, int] | None = field(default=None, repr=False)
    name = "cmdstan"
    Sampler = SampleSettings
    diagnostics = DIAGNOSTICS
    needs_stan = True

    @classmethod
    def create(cls, spec: BackendSpec, stan: Path | None, cores: int) -> CmdStanBackend:
        settings = spec.sampler or SampleSettings()
        assert stan is not None  # the study checks `needs_stan`
        # chains run in parallel on the cores a fit has, one after the other beyond that
        return cls(stan, settings, parallel_chains=max(1, min(settings.chains, cores)))

    # -- once per study, in the main process ---------------------------------------------------
    def prepare(self, progress: bool = True) -> None:
        from sbc.backends.cmdstan.install import cmdstan_version, ensure_cmdstan, model_cache_dir

        quiet_cmdstanpy()
        self.cmdstan = ensure_cmdstan(progress=progress)
        source = Path(self.stan_file).read_bytes()
        # the executable links CmdStan's TBB by path: a different CmdStan is a different model
        toolchain = f"{cmdstan_version(self.cmdstan)}\0{self.cmdstan}".encode()
        digest = hashlib.sha256(source + b"\0" + toolchain).hexdigest()[:16]
        folder = model_cache_dir() / digest
        folder.mkdir(parents=True, exist_ok=True)
        exe = folder / Path(self.stan_file).stem
        with open(folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one compile per host, however many processes ask
            if not exe.is_file():
                self._compile(exe, progress)
            self._variables = _read_variables(Path(self.stan_file), exe)
        self.exe_file = exe

    def _compile(self, exe: Path, progress: bool) -> None:
        import sys

        import cmdstanpy

        staging = exe.parent / f".build-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        stan_copy = staging / Path(self.stan_file).name
        shutil.copyfile(self.stan_file, stan_copy)
        if progress:
            print(f"sbc: compiling {self.stan_file} (once; cached by source hash)", file=sys.stderr)
        try:
            model = cmdstanpy.CmdStanModel(stan_file=stan_copy)
            os.replace(model.exe_file, exe)  # atomic: a half-written executable is never used
        except (ValueError, RuntimeError) as exc:
            raise SBCError(_stanc_message(str(exc)), where=str(self.stan_file)) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def variables(self) -> dict[str, int] | None:
        return self._variables

    def identity(self) -> dict[str, str]:
        return {"stan_source": hashlib.sha256(Path(self.stan_file).read_bytes()).hexdigest()}

    def describe(self) -> dict[str, Any]:
        from sbc.backends.cmdstan.install import cmdstan_version

        return {
            "type": self.name,
            "stan_file": str(self.stan_file),
            "exe_file": str(self.exe_file),
            "cmdstan": str(self.cmdstan),
            "cmdstan_version": cmdstan_version(self.cmdstan) if self.cmdstan else None,
        }

    # -- on a dask worker host ------------------------------------------------------------------
    def remote_payload(self) -> Any:
        from sbc.backends.cmdstan.remote import shipment

        return shipment(self) if self.exe_file is not None else None

    def on_host(self, payload: Any) -> CmdStanBackend:
        from sbc.backends.cmdstan.remote import for_this_host

        return for_this_host(self, payload) if payload is not None else self

    def with_paths(self, stan_file: Path) -> CmdStanBackend:
        """This backend for another copy of its Stan program, not yet prepared."""
        return dataclasses.replace(self, stan_file=stan_file, exe_file=None, cmdstan=None)

    # -- once per simulation, in a worker ---------------------------------------------------------
    def fit(self, data: dict[str, Any], seed: int, workdir: Path) -> Any:
        import cmdstanpy

        s = self.settings
        model = _model(str(self.exe_file), str(self.cmdstan))
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
            raise RuntimeError(_cmdstan_failure(str(exc))) from None

    def draws(self, fit: Any) -> dict[str, np.ndarray]:
        chains = fit.chains
        out = {}
        for name in fit.metadata.stan_vars:
            value = fit.stan_variable(name)
            out[name] = value.reshape(chains, -1, *value.shape[1:])
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


# -- helpers ---------------------------------------------------------------------------------------

_MODELS: dict[tuple[str, str], Any] = {}


def _model(exe_file: str, cmdstan: str) -> Any:
    """One model per worker process (wrapping an existing executable: no compile)."""
    key = (exe_file, cmdstan)
    if key not in _MODELS:
        import cmdstanpy

        quiet_cmdstanpy()
        cmdstanpy.set_cmdstan_path(cmdstan)
        _MODELS[key] = _model_with_fixed_info(cmdstanpy.CmdStanModel)(exe_file=exe_file)
    return _MODELS[key]


@functools.cache
def _model_with_fixed_info(base: type) -> type:
    """`CmdStanModel` whose public `exe_info()` runs the executable once, not once per fit.

    cmdstanpy's `sample()` calls `exe_info()`, which starts a process (`<exe> info`) every
    time: 4 ms of a 2 s fit (benchmarks/README.md, "Per-fit Python costs"), for an answer
    that cannot change while the executable does not. Overriding the public method in a
    subclass keeps that saving without touching cmdstanpy's internals; if a later cmdstanpy
    stops calling it, nothing breaks.
    """

    class Model(base):  # type: ignore[misc,valid-type]
        _info: dict[str, str] | None = None

        def exe_info(self) -> dict[str, str]:
            if self._info is None:
                self._info = super().exe_info()
            return dict(self._info)

    return Model


def _read_variables(stan_file: Path, exe: Path) -> dict[str, int]:
    """Names and dimensions of parameters and generated quantities (from `stanc --info`)."""
    import json

    cache = exe.parent / "variables.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    import cmdstanpy

    # the executable is named after the program (folder/<stem>), as cmdstanpy requires
    info = cmdstanpy.CmdStanModel(stan_file=stan_file, exe_file=exe).src_info()
    out = {
        name: int(v["dimensions"])
        for block in ("parameters", "transformed parameters", "generated quantities")
        for name, v in info.get(block, {}).items()
    }
    tmp = cache.with_suffix(f".{os.getpid()}")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, cache)
    return out


def _stanc_message(text: str) -> str:
    """The useful line of a stanc failure (syntax or semantic error and its position)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for i, line in enumerate(lines):
        if re.search(r"(Syntax|Semantic) error", line):
            pos = re.search(r"line (\d+), column (\d+)", line)
            detail = next(
                (
                    ln
                    for ln in lines[i + 1 :]
                    if not re.match(r"^(\d+:|\||-+|\^)", ln) and "---" not in ln
                ),
                "",
            )
            kind = "syntax error" if "Syntax" in line else "semantic error"
            where = f" at line {pos.group(1)}, column {pos.group(2)}" if pos else ""
            return f"Stan {kind}{where}: {detail}".rstrip(": ")
    return "Stan program failed to compile: " + (lines[-1] if lines else "no message")


def _cmdstan_failure(text: str) -> str:
    """One line out of cmdstanpy's multi-line sampling error.

    A chain killed by a signal is named by its signal: its console may still hold an earlier,
    harmless "Exception:" line (a rejected proposal) that did not end it."""
    codes = re.search(r"retcodes=\[([-\d, ]*)\]", text)
    # -1 is also cmdstanpy's "not run" placeholder: only other negative codes are signals
    signals = [-int(c) for c in codes.group(1).split(",") if int(c) < -1] if codes else []
    if signals:
        try:
            name = signal.Signals(signals[0]).name
        except ValueError:
            name = f"signal {signals[0]}"
        return f"CmdStan was killed by {name} (return code {-signals[0]})"
    for pattern in (r"Rejecting initial value.*", r"Error.*", r"Exception: .*"):
        m = re.search(pattern, text)
        if m and not m.group(0).startswith("Error during sampling"):
            return "CmdStan: " + m.group(0).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return "CmdStan failed: " + (lines[1] if len(lines) > 1 else text.strip())
