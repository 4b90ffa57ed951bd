"""A Stan program compiled by CmdStan: what every CmdStan-based backend shares.

`StanProgram` is the part of a backend that knows its program: compiling it once per host
(cached by the hash of the Stan source and the CmdStan version and folder, in
`~/.cache/sbc/models/<hash>/`, under a file lock), what `stanc --info` says it declares
(its data inputs, parameters and generated quantities), its resume identity, what the
manifest records, how it gets ready on a dask worker host (`remote.py`), a fit's data
file and initial values, and the resume identity of CmdStan settings. A backend (NUTS in
`sample.py`, ADVI in `variational.py`) subclasses it and adds its settings (a dataclass
under cmdstanpy's names) and `fit`/`draws`/`diagnose`. Workers get the executable's path and
never compile.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sbc.backends import BackendBase, BackendSpec
from sbc.errors import SBCError

#: The blocks of `stanc --info` whose variables a fit produces.
OUTPUT_BLOCKS = ("parameters", "transformed parameters", "generated quantities")


def quiet_cmdstanpy() -> None:
    """cmdstanpy logs every chain start and stop; a study shows its own progress instead."""
    from cmdstanpy.utils import get_logger

    get_logger().disabled = True


@dataclass
class StanProgram(BackendBase):
    """A backend's Stan program: compiled once per host by `prepare`, shipped by path."""

    stan_file: Path
    exe_file: Path | None = None
    cmdstan: Path | None = None
    _info: dict[str, Any] | None = field(default=None, repr=False)
    needs_stan = True
    method: ClassVar[str] = ""  # the inference method in words, for the manifest and report

    @classmethod
    def settings_identity(cls, spec: BackendSpec) -> tuple[dict[str, Any], dict[str, Any]]:
        """The settings' part of the resume identity, canonical whatever their spelling.

        Settings sbc 0.1 had (fields with a ``"sampler"`` name) are hashed as it hashed its
        ``[sampler]`` table: under those names, every one with its value; every other
        setting only when it is not at its default, under cmdstanpy's name. So a study file
        keeps its identity when it moves from ``[sampler] warmup`` to ``[backend]
        iter_warmup``, and settings added later change no existing identity.
        """
        options = spec.options
        sampler: dict[str, Any] = {}
        rest: dict[str, Any] = {}
        for f in dataclasses.fields(options):
            value = getattr(options, f.name)
            if "sampler" in f.metadata:
                sampler[f.metadata["sampler"]] = value
            elif value != f.default:
                rest[f.name] = value
        return sampler, rest

    # -- once per study, in the main process ---------------------------------------------------
    def prepare(self, progress: bool = True) -> None:
        self.cmdstan, self.exe_file, self._info = compile_program(Path(self.stan_file), progress)

    def variables(self) -> dict[str, int] | None:
        """Parameters, transformed parameters and generated quantities, with their dimensions."""
        return None if self._info is None else dimensions(self._info, OUTPUT_BLOCKS)

    def inputs(self) -> dict[str, int] | None:
        """The program's data block: input names with their number of dimensions."""
        return None if self._info is None else dimensions(self._info, ("inputs",))

    def parameters(self) -> dict[str, int]:
        """The parameters block (what a point of the program is), with dimensions."""
        return dimensions(self._info or {}, ("parameters",))

    def generated_quantities(self) -> dict[str, int]:
        return dimensions(self._info or {}, ("generated quantities",))

    def integer_quantities(self) -> set[str]:
        """Generated quantities declared int (CmdStan's output has them as numbers)."""
        block = (self._info or {}).get("generated quantities") or {}
        return {name for name, v in block.items() if v.get("type") == "int"}

    def identity(self) -> dict[str, str]:
        return {"stan_source": hashlib.sha256(Path(self.stan_file).read_bytes()).hexdigest()}

    def describe(self) -> dict[str, Any]:
        from sbc.backends.cmdstan.install import cmdstan_version

        settings = getattr(self, "settings", None)
        return {
            "type": self.name,
            "method": self.method,
            "settings": dataclasses.asdict(settings) if settings is not None else {},
            "stan_file": str(self.stan_file),
            "exe_file": str(self.exe_file),
            "cmdstan": str(self.cmdstan),
            "cmdstan_version": cmdstan_version(self.cmdstan) if self.cmdstan else None,
        }

    # -- on a dask worker host ------------------------------------------------------------------
    def remote_payload(self) -> Any:
        from sbc.backends.cmdstan.remote import shipment

        return shipment(self) if self.exe_file is not None else None

    def on_host(self, payload: Any) -> StanProgram:
        from sbc.backends.cmdstan.remote import for_this_host

        return for_this_host(self, payload) if payload is not None else self

    def with_paths(self, stan_file: Path) -> StanProgram:
        """This backend for another copy of its Stan program, not yet prepared."""
        return dataclasses.replace(self, stan_file=stan_file, exe_file=None, cmdstan=None)

    # -- in a worker ----------------------------------------------------------------------------
    def model(self) -> Any:
        """cmdstanpy's model of the compiled program, one per worker process (no compile)."""
        return cmdstanpy_model(str(self.exe_file), str(self.cmdstan))

    # -- the program at given parameter values (at_truth.py) --------------------------------
    #: Whether `draws` holds ``lp__`` (NUTS: the log density of each draw), so that it can be
    #: ranked: ``[quantities] stan = ["lp__"]``.
    lp_in_draws: ClassVar[bool] = False

    def point(self, truth: Mapping[str, Any], what: str) -> dict[str, Any]:
        """The truth's values of every parameter: a point where the program can be evaluated."""
        params = self.parameters()
        missing = sorted(set(params) - set(truth))
        if missing:
            raise SBCError(
                f"{what} needs the truth of every parameter of {Path(self.stan_file).name}; "
                f"the simulator's truth lacks {', '.join(missing)}"
            )
        return {k: truth[k] for k in params}

    def evaluate(self, what: str, *args: Any) -> Any:
        """`at_truth.<what>(model, *args)`, a failed CmdStan run as one SBCError line."""
        from sbc.backends.cmdstan import at_truth

        try:
            return getattr(at_truth, what)(self.model(), *args)
        except RuntimeError as exc:
            raise SBCError(cmdstan_failure(str(exc))) from None

    def quantities_at_truth(
        self, truth: Mapping[str, Any], data: Mapping[str, Any], names: Sequence[str],
        workdir: Path,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """Generated quantities (and ``lp__``) at the truth: ``[quantities] stan``."""
        from sbc.backends.cmdstan.at_truth import write_json

        known = self.generated_quantities()
        for name in names:
            if name == "lp__" and not self.lp_in_draws:
                raise SBCError(f"lp__ is not ranked with the {self.name} backend: its draws have "
                               "no log density")  # fmt: skip
            if name != "lp__" and name not in known:
                raise SBCError(
                    f"{name!r} is not a generated quantity of {Path(self.stan_file).name} "
                    f"(its generated quantities: {', '.join(sorted(known)) or 'none'}; or lp__)"
                )
        inits = self.point(truth, "evaluating them at the truth")
        data_file = write_json(workdir / "truth_data.json", data)
        out: dict[str, np.ndarray] = {}
        if any(n != "lp__" for n in names):
            values = self.evaluate("outputs_at", inits, data_file, workdir)
            out.update({n: np.asarray(values[n], dtype=float) for n in names if n != "lp__"})
        if "lp__" in names:
            out["lp__"] = np.asarray(self.evaluate("density_at", inits, data_file, workdir).lp)
        return out

    def check_truth(self, truth: Mapping[str, Any], data: Mapping[str, Any], where: str) -> None:
        """Every truth has the shape of the program's variable (sizes too, which `stanc
        --info` cannot say) and the program takes the truth's parameters: one fixed_param
        draw from a random point, one from the truth. Data the program rejects (a bad seed
        of the simulator) is left to that simulation's fit to record."""
        import tempfile

        from sbc.backends.cmdstan.at_truth import write_json

        name = Path(self.stan_file).name
        params = self.parameters()
        with tempfile.TemporaryDirectory(prefix="sbc-check-") as tmp:
            data_file = write_json(Path(tmp) / "data.json", data)
            try:
                values = self.evaluate("outputs_at", {}, data_file, Path(tmp))
            except SBCError:
                return
            for var, value in truth.items():
                if var in values and np.shape(values[var]) != np.shape(value):
                    raise SBCError(
                        f"truth {var!r} has shape {np.shape(value)} but the model's {var} has "
                        f"shape {np.shape(values[var])} (on the simulator's first dataset)",
                        where=where,
                    )
            try:
                self.evaluate("outputs_at", {k: v for k, v in truth.items() if k in params},
                              data_file, Path(tmp))  # fmt: skip
            except SBCError as exc:
                raise SBCError(f"{name} rejects the simulator's first truth: {exc}",
                               where=where) from None  # fmt: skip

    @staticmethod
    def write_data(data: Mapping[str, Any], workdir: Path) -> Path:
        """The fit's data as CmdStan JSON in its scratch folder."""
        import cmdstanpy

        data_file = workdir / "data.json"
        cmdstanpy.write_stan_json(str(data_file), data)
        return data_file


def initial_values(
    inits: float | str | None, seed: int, data: Mapping[str, Any], chains: int
) -> float | dict[str, Any] | list[dict[str, Any]] | None:
    """cmdstanpy's ``inits`` of one fit from a setting ``inits``.

    None (CmdStan's default, uniform on (-2, 2) on the unconstrained scale) and a number x
    (uniform on (-x, x)) pass through. A 'module:function' or 'file.py:function' spec is
    called as ``inits(rng, data)`` once per chain, with the rng `sbc.seeds.inits_rng(seed)`
    (a function of the study seed and the simulation index, like every random number of a
    simulation), and must return a dict of parameter values; one chain gets a dict.
    """
    if inits is None or isinstance(inits, int | float):
        return inits
    from sbc.seeds import inits_rng
    from sbc.simulate import load_callable

    function = load_callable(inits)
    rng = inits_rng(seed)
    values = []
    for _ in range(chains):
        value = function(rng, data)
        if not isinstance(value, Mapping):
            raise SBCError(
                f"inits {inits}: returned {type(value).__name__}, expected a dict of "
                "parameter values"
            )
        values.append(dict(value))
    return values[0] if chains == 1 else values


def compile_program(stan_file: Path, progress: bool) -> tuple[Path, Path, dict[str, Any]]:
    """(CmdStan folder, executable, `stanc --info`) of a program, compiling it if not cached.

    The executable links CmdStan's TBB by path, so a different CmdStan (version or folder)
    is a different model. One compile per host, however many processes ask.
    """
    from sbc.backends.cmdstan.install import cmdstan_version, ensure_cmdstan, model_cache_dir

    quiet_cmdstanpy()
    cmdstan = ensure_cmdstan(progress=progress)
    source = stan_file.read_bytes()
    toolchain = f"{cmdstan_version(cmdstan)}\0{cmdstan}".encode()
    digest = hashlib.sha256(source + b"\0" + toolchain).hexdigest()[:16]
    folder = model_cache_dir() / digest
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / stan_file.stem
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not exe.is_file():
            _compile(stan_file, exe, progress)
        info = _stanc_info(stan_file, exe)
    return cmdstan, exe, info


def _compile(stan_file: Path, exe: Path, progress: bool) -> None:
    import cmdstanpy

    staging = exe.parent / f".build-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    stan_copy = staging / stan_file.name
    shutil.copyfile(stan_file, stan_copy)
    if progress:
        print(f"sbc: compiling {stan_file} (once; cached by source hash)", file=sys.stderr)
    try:
        model = cmdstanpy.CmdStanModel(stan_file=stan_copy)
        os.replace(model.exe_file, exe)  # atomic: a half-written executable is never used
    except (ValueError, RuntimeError) as exc:
        raise SBCError(stanc_message(str(exc)), where=str(stan_file)) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stanc_info(stan_file: Path, exe: Path) -> dict[str, Any]:
    """`stanc --info` of the program (its blocks' variables), cached beside the executable."""
    cache = exe.parent / "stanc_info.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    info = stanc_info(stan_file)
    tmp = cache.with_suffix(f".{os.getpid()}")
    tmp.write_text(json.dumps(info))
    os.replace(tmp, cache)
    return info


def stanc_info(stan_file: Path) -> dict[str, Any]:
    """What `stanc --info` says a program declares, without compiling it (about 0.5 s).

    (cmdstanpy runs the same command in `CmdStanModel.src_info`, which needs a model object
    whose constructor compiles.)"""
    import subprocess

    from sbc.backends.cmdstan.install import ensure_cmdstan

    stanc = Path(ensure_cmdstan(progress=False)) / "bin" / "stanc"
    proc = subprocess.run([str(stanc), "--info", str(stan_file)], capture_output=True,
                          text=True, check=False)  # fmt: skip
    if proc.returncode:
        raise SBCError(stanc_message(proc.stderr + proc.stdout), where=str(stan_file))
    return json.loads(proc.stdout)


def dimensions(info: dict[str, Any], blocks: tuple[str, ...]) -> dict[str, int]:
    """The variables of `stanc --info` blocks, with their number of dimensions."""
    return {
        name: int(v["dimensions"])
        for block in blocks
        for name, v in (info.get(block) or {}).items()
    }


_MODELS: dict[tuple[str, str], Any] = {}


def cmdstanpy_model(exe_file: str, cmdstan: str) -> Any:
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


def stanc_message(text: str) -> str:
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


def cmdstan_failure(text: str) -> str:
    """One line out of cmdstanpy's multi-line error of a failed CmdStan run.

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
