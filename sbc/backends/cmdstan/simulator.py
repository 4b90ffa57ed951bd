"""A simulator written in Stan: ``[simulator] stan = "simulator.stan"``.

The program draws the parameters and a dataset in its generated quantities. sbc runs it
with CmdStan's fixed_param sampler, one draw per simulation, with a CmdStan seed drawn from
the simulation's own random numbers (so fixed by the study seed and the simulation index).
The study file maps its outputs explicitly:

* ``truth``: the generated quantities that are the truth, named as the fitted model's
  variables (a list of names, or a table ``model name = "simulator name"``);
* ``data``: the fitted model's data computed by the simulator (``y = "y_sim"``);
* ``args``: the simulator program's data (a table, or a JSON data file), given unchanged to
  the fitted model as well: the design (N, J, X, Z, g).

It is prepared (compiled, cached by source hash) in the main process like a backend's
program, `StanProgram`, and reaches a dask worker on another host the same way
(`remote.py`: the Stan source travels with it and is compiled there once if missing).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sbc.backends.cmdstan.program import StanProgram, cmdstan_failure, dimensions, stanc_info
from sbc.errors import SBCError

Simulation = tuple[dict[str, Any], dict[str, Any]]


@dataclass
class StanSimulator:
    """``[simulator] stan`` with its ``truth``, ``data`` and ``args`` (see the module)."""

    stan_file: Path
    truth: dict[str, str]  # fitted model's variable -> simulator's generated quantity
    data: dict[str, str] = field(default_factory=dict)  # fitted model's data -> generated qty
    args: dict[str, Any] = field(default_factory=dict)  # the simulator's data; passed on too
    program: StanProgram | None = field(default=None, repr=False, compare=False)
    shipment: Any = field(default=None, repr=False, compare=False)  # for other hosts
    key: ClassVar[str] = "[simulator] stan"

    def prepare(self, where: str, progress: bool = True) -> None:
        from sbc.backends.cmdstan.remote import shipment

        program = StanProgram(stan_file=Path(self.stan_file))
        try:
            info = stanc_info(Path(self.stan_file))
        except SBCError as exc:
            raise SBCError(f"{self.key}: {exc}", where=where) from None
        self._check(info, where)  # before a compile
        try:
            program.prepare(progress)
        except SBCError as exc:
            raise SBCError(f"{self.key}: {exc}", where=where) from None
        self.program, self.shipment = program, shipment(program)

    def _check(self, info: dict[str, Any], where: str) -> None:
        """The mapping names generated quantities of a program that can be a simulator."""
        name = Path(self.stan_file).name
        outputs = dimensions(info, ("generated quantities",))
        parameters = dimensions(info, ("parameters",))
        if not outputs:
            raise SBCError(
                f"{self.key}: {name} has no generated quantities: a simulator program draws "
                "the parameters and the data there",
                where=where,
            )
        if parameters:
            raise SBCError(
                f"{self.key}: {name} declares parameters ({', '.join(parameters)}); a "
                "simulator program draws everything in generated quantities (it runs with "
                "fixed_param)",
                where=where,
            )
        for table, mapping in (("truth", self.truth), ("data", self.data)):
            for source in mapping.values():
                if source not in outputs:
                    raise SBCError(
                        f"[simulator] {table}: {source!r} is not a generated quantity of "
                        f"{name} (it has: {', '.join(sorted(outputs))})",
                        where=where,
                    )
        missing = sorted(set(dimensions(info, ("inputs",))) - set(self.args))
        if missing:
            raise SBCError(
                f"[simulator] args: {name} needs the data {', '.join(missing)}", where=where
            )

    def simulate(self, rng: np.random.Generator) -> Simulation:
        return self.simulate_many(rng, 1)[0]

    def simulate_many(self, rng: np.random.Generator, n: int) -> list[Simulation]:
        """`n` independent simulations from one CmdStan run (what `sbc precheck` draws)."""
        from sbc.backends.cmdstan.at_truth import write_json

        program = self._here()
        seed = int(rng.integers(0, 2**31 - 1))
        wanted = sorted(set(self.truth.values()) | set(self.data.values()))
        with tempfile.TemporaryDirectory(prefix="sbc-simulator-") as tmp:
            try:
                fit = program.model().sample(
                    data=str(write_json(Path(tmp) / "args.json", self.args)),
                    fixed_param=True,
                    chains=1,
                    iter_sampling=n,
                    seed=seed,
                    sig_figs=18,  # full double precision, not CmdStan's default 6 digits
                    output_dir=tmp,
                    show_progress=False,
                    show_console=False,
                )
            except RuntimeError as exc:
                raise RuntimeError(cmdstan_failure(str(exc))) from None
            values = {name: fit.stan_variable(name) for name in wanted}
        ints = program.integer_quantities()
        out = []
        for i in range(n):
            truth = {target: values[source][i] for target, source in self.truth.items()}
            data = dict(self.args)
            for target, source in self.data.items():
                value = values[source][i]
                data[target] = np.rint(value).astype(int) if source in ints else value
            out.append((truth, data))
        return out

    def _here(self) -> StanProgram:
        """The compiled program, usable on this host (compiled here once if it is another)."""
        from sbc.backends.cmdstan.remote import for_this_host

        if self.program is None:
            self.prepare(str(self.stan_file), progress=False)
        assert self.program is not None
        return for_this_host(self.program, self.shipment)

    def describe(self) -> dict[str, Any]:
        return {"stan": str(self.stan_file), "truth": self.truth, "data": self.data,
                "args": _plain(self.args)}  # fmt: skip

    def source_hash(self) -> str | None:
        return hashlib.sha256(Path(self.stan_file).read_bytes()).hexdigest()[:16]

    def check_call(self, where: str) -> None:
        if self.program is None:
            self.prepare(where, progress=False)

    def __str__(self) -> str:
        return Path(self.stan_file).name


def _plain(value: Any) -> Any:
    """JSON-able values (the args as the study file gave them)."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
