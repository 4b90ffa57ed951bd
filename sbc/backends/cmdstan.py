"""CmdStan through cmdstanpy: compile once per study, sample once per simulation.

The executable is cached by the hash of the Stan source and the CmdStan version
(`~/.cache/sbc/models/<hash>/`), so a second study of the same program, and every
worker process, reuses it. Workers get the executable's path and never compile.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sbc.backends import Backend
from sbc.errors import SBCError

SAMPLER_COLUMNS = (
    "lp__", "accept_stat__", "stepsize__", "treedepth__", "n_leapfrog__", "divergent__",
    "energy__",
)  # fmt: skip


def model_cache_dir() -> Path:
    if os.environ.get("SBC_CACHE"):
        return Path(os.environ["SBC_CACHE"]) / "models"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sbc" / "models"


def quiet_cmdstanpy() -> None:
    """cmdstanpy logs every chain start and stop; a study shows its own progress instead."""
    from cmdstanpy.utils import get_logger

    get_logger().disabled = True


@dataclass
class CmdStanBackend(Backend):
    stan_file: Path
    chains: int = 2
    warmup: int = 500
    draws_per_chain: int = 500
    adapt_delta: float = 0.8
    max_treedepth: int = 10
    timeout: float = 0.0
    parallel_chains: int = 1
    exe_file: Path | None = None
    cmdstan: Path | None = None
    _variables: dict[str, int] | None = field(default=None, repr=False)
    name = "cmdstan"

    # -- once per study, in the main process ---------------------------------------------------
    def prepare(self, progress: bool = True) -> None:
        from sbc.cmdstan import cmdstan_version, ensure_cmdstan

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
                self._compile(folder, exe, progress)
        self.exe_file = exe
        self._variables = _read_variables(self.stan_file, folder)

    def _compile(self, folder: Path, exe: Path, progress: bool) -> None:
        import sys

        import cmdstanpy

        staging = folder / f".build-{os.getpid()}"
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

    def manifest(self) -> dict[str, Any]:
        from sbc.cmdstan import cmdstan_version

        return {
            "type": self.name,
            "stan_file": str(self.stan_file),
            "exe_file": str(self.exe_file),
            "cmdstan": str(self.cmdstan),
            "cmdstan_version": cmdstan_version(self.cmdstan) if self.cmdstan else None,
        }

    # -- once per simulation, in a worker ---------------------------------------------------------
    def fit(self, data: dict[str, Any], seed: int, workdir: Path) -> Any:
        import cmdstanpy

        model = _model(str(self.exe_file), str(self.cmdstan))
        data_file = workdir / "data.json"
        cmdstanpy.write_stan_json(str(data_file), data)
        try:
            return model.sample(
                data=str(data_file),
                chains=self.chains,
                parallel_chains=self.parallel_chains,
                seed=seed,
                iter_warmup=self.warmup,
                iter_sampling=self.draws_per_chain,
                adapt_delta=self.adapt_delta,
                max_treedepth=self.max_treedepth,
                output_dir=str(workdir),
                show_progress=False,
                show_console=False,
                timeout=self.timeout or None,
            )
        except TimeoutError:
            raise RuntimeError(f"fit exceeded the timeout of {self.timeout:g} s; killed") from None
        except RuntimeError as exc:
            raise RuntimeError(_cmdstan_failure(str(exc))) from None

    def draws(self, fit: Any) -> dict[str, np.ndarray]:
        chains = fit.chains
        out = {}
        for name in fit.metadata.stan_vars:
            value = fit.stan_variable(name)
            out[name] = value.reshape(chains, -1, *value.shape[1:])
        return out

    def diagnostics(self, fit: Any) -> dict[str, float]:
        from sbc.convergence import convergence, ebfmi

        cols = list(fit.column_names)
        arr = fit.draws()  # (draws, chains, columns)
        sampler = {c: arr[:, :, cols.index(c)].T for c in SAMPLER_COLUMNS if c in cols}
        params = np.moveaxis(arr[:, :, len(SAMPLER_COLUMNS) :], 2, 0).transpose(0, 2, 1)
        varying = params[np.ptp(params.reshape(len(params), -1), axis=1) > 0]
        diag: dict[str, float] = {
            "divergences": int(sampler["divergent__"].sum()),
            "treedepth_hits": int((sampler["treedepth__"] >= self.max_treedepth).sum()),
            "ebfmi_min": float(np.min(ebfmi(sampler["energy__"]))),
            "stepsize": float(np.mean(sampler["stepsize__"][:, 0])),
            "return_code": int(max(fit.runset._retcodes)),
            "n_draws": int(arr.shape[0] * arr.shape[1]),
        }
        if len(varying) and arr.shape[1] * arr.shape[0] >= 8:
            rhat, ess_bulk, ess_tail = convergence(varying)
            diag["rhat_max"] = float(np.nanmax(rhat))
            diag["ess_bulk_min"] = float(np.nanmin(ess_bulk))
            diag["ess_tail_min"] = float(np.nanmin(ess_tail))
        warm, samp = _elapsed_seconds(fit.runset.csv_files)
        diag["warmup_seconds"], diag["sampling_seconds"] = warm, samp
        return diag


# -- helpers ---------------------------------------------------------------------------------------

_MODELS: dict[tuple[str, str], Any] = {}


def _model(exe_file: str, cmdstan: str) -> Any:
    """One CmdStanModel per worker process (wrapping an existing executable: no compile)."""
    key = (exe_file, cmdstan)
    if key not in _MODELS:
        import cmdstanpy

        quiet_cmdstanpy()
        cmdstanpy.set_cmdstan_path(cmdstan)
        model = cmdstanpy.CmdStanModel(exe_file=exe_file)
        # sample() runs `<exe> info` (a process) on every call; the executable never changes
        info = model.exe_info()
        model.exe_info = lambda: dict(info)
        _MODELS[key] = model
    return _MODELS[key]


def _read_variables(stan_file: Path, folder: Path) -> dict[str, int]:
    """Names and dimensions of parameters and generated quantities (from `stanc --info`)."""
    import json

    cache = folder / "variables.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from cmdstanpy.compilation import CompilerOptions, src_info

    info = src_info(str(stan_file), CompilerOptions())
    out = {
        name: int(v["dimensions"])
        for block in ("parameters", "transformed parameters", "generated quantities")
        for name, v in info.get(block, {}).items()
    }
    tmp = cache.with_suffix(f".{os.getpid()}")
    tmp.write_text(json.dumps(out))
    os.replace(tmp, cache)
    return out


_ELAPSED = re.compile(rb"Elapsed Time:\s*([0-9.eE+-]+) seconds \(Warm-up\)\s*#?\s*([0-9.eE+-]+)")


def _elapsed_seconds(csv_files: list[str]) -> tuple[float, float]:
    """CmdStan's own warmup and sampling seconds, summed over chains (read from CSV tails)."""
    warm = samp = 0.0
    for file in csv_files:
        with open(file, "rb") as fh:
            fh.seek(max(0, os.path.getsize(file) - 400))
            m = _ELAPSED.search(fh.read())
        if m:
            warm += float(m.group(1))
            samp += float(m.group(2))
    return warm, samp


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
