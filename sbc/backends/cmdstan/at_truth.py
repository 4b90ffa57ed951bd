"""A compiled Stan program evaluated at given parameter values, with CmdStan 2.27's methods.

* `outputs_at`: every output variable (transformed parameters, generated quantities) at
  given constrained parameter values: a `fixed_param` run of one draw started there.
  CmdStan's standalone `generate_quantities` computes the same block on the same values
  (both read the constrained values, unconstrain them and call the program's `write_array`)
  but needs a Stan CSV of an earlier fit to read them from; a fixed_param run needs only
  the values as inits, in one process (about 20 ms).
* `density_at`: the log density that NUTS writes as ``lp__`` (the Jacobian of the
  constraining transforms included, the constants of ``~`` statements dropped), the
  unconstrained coordinates and the gradient there: CmdStan's ``diagnose`` method. Its
  "Log probability" and a draw's ``lp__`` are the same function (`log_prob` with
  propto and Jacobian), which `tests/backends/test_at_truth.py` checks on real draws.
  cmdstanpy's `CmdStanModel.diagnose` returns the table but drops that line, so the
  executable is run here directly, with the same arguments.
* `unconstrained_names`: CmdStan's names of the unconstrained coordinates (the header of a
  sampler's diagnostic file: ``beta.1``, ``sigma``, ``R.1``, ``b.1.2``), in brackets.

A failed CmdStan run raises RuntimeError with CmdStan's text (`StanProgram` makes it one
line); cmdstanpy is imported only when one runs.
"""

from __future__ import annotations

import io
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Density:
    """The program's log density at one point: ``lp__`` there, u and d lp / du."""

    lp: float
    unconstrained: np.ndarray
    gradient: np.ndarray


def write_json(path: Path, values: Mapping[str, Any]) -> Path:
    import cmdstanpy

    cmdstanpy.write_stan_json(str(path), dict(values))
    return path


def outputs_at(
    model: Any, inits: Mapping[str, Any], data_file: Path, workdir: Path
) -> dict[str, np.ndarray]:
    """Every variable the program writes (parameters, transformed parameters, generated
    quantities), evaluated at the constrained parameter values `inits`."""
    init_file = write_json(workdir / "at_truth_inits.json", inits)
    fit = model.sample(
        data=str(data_file),
        inits=str(init_file),
        fixed_param=True,
        chains=1,
        iter_sampling=1,
        seed=1,  # only generated quantities that call _rng functions use it
        sig_figs=18,  # the truth's values at full precision, not CmdStan's default 6 digits
        output_dir=str(workdir),
        show_progress=False,
        show_console=False,
    )
    return {name: fit.stan_variable(name)[0] for name in fit.metadata.stan_vars}


def density_at(model: Any, inits: Mapping[str, Any], data_file: Path, workdir: Path) -> Density:
    """``lp__``, the unconstrained values and the gradient at constrained values `inits`."""
    init_file = write_json(workdir / "density_inits.json", inits)
    output = workdir / "diagnose.csv"
    output.unlink(missing_ok=True)  # never read an earlier call's answer
    cmd = [str(model.exe_file), "diagnose", "test=gradient", "data", f"file={data_file}",
           f"init={init_file}", "output", f"file={output}"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    text = output.read_text() if output.is_file() else ""
    lp = re.search(r"Log probability=(\S+)", text)
    if lp is None:  # CmdStan returns 1 also when finite differences disagree: that is fine
        raise RuntimeError(proc.stdout + proc.stderr)
    *_, table = re.split(r"#\s*\n", text)
    rows = np.loadtxt(io.StringIO(re.sub(r"^#\s*", "", table, flags=re.M)), skiprows=1, ndmin=2)
    return Density(lp=float(lp.group(1)), unconstrained=rows[:, 1], gradient=rows[:, 2])


def unconstrained_names(
    model: Any, inits: Mapping[str, Any], data_file: Path, workdir: Path
) -> list[str]:
    """Names of the unconstrained coordinates, as CmdStan's diagnostic file has them."""
    init_file = write_json(workdir / "names_inits.json", inits)
    fit = model.sample(
        data=str(data_file),
        inits=str(init_file),
        chains=1,
        iter_warmup=0,
        iter_sampling=1,
        adapt_engaged=False,
        seed=1,
        save_diagnostics=True,
        output_dir=str(workdir),
        show_progress=False,
        show_console=False,
    )
    with open(fit.runset.diagnostic_files[0]) as fh:
        header = next(line for line in fh if not line.startswith("#"))
    names = [n for n in header.strip().split(",") if not n.endswith("__")]
    names = names[: len(names) // 3]  # then p_<name> (momenta) and g_<name> (gradients)
    return [_bracketed(n) for n in names]


def _bracketed(name: str) -> str:
    """CmdStan's ``b.1.2`` as ``b[1,2]``."""
    var, *idx = name.split(".")
    return f"{var}[{','.join(idx)}]" if idx else var
