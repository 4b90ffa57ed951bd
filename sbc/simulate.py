"""Simulators and derived quantities: loading the user code a study names, calling it, and
checking it before a study runs (importable, deterministic, numeric truths the model has).

A study's simulator is an object with the `Simulator` protocol: the runner prepares it
once, ships it to worker processes in each task and calls `simulate(rng)` there; whatever
it is (a Python function, or another kind), its answer is checked the same way
(`call_simulator`). `PythonSimulator` names its function by a spec string
('package.module:function' or '/abs/path/file.py:function'), not a function object, so
that worker processes (or dask workers on other hosts) import the same code by themselves.
`CallableSimulator` holds a function object instead (one defined in a notebook cell, a
closure over a design matrix): it travels to the workers by value, pickled with cloudpickle,
and its fingerprint (`sbc.fingerprint`) stands for the source file in the resume identity.
Derived quantities given as function objects are wrapped the same way (`UserFunction`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from sbc.errors import SBCError, one_line
from sbc.fingerprint import function_fingerprint, function_name
from sbc.ranks import scalar_names
from sbc.seeds import simulation_seeds


@functools.cache
def load_callable(spec: str) -> Callable[..., Any]:
    """The function a spec names; SBCError if it cannot be imported."""
    target, _, name = spec.rpartition(":")
    try:
        if target.endswith(".py"):
            module_name = "sbc_user_" + hashlib.sha1(target.encode()).hexdigest()[:12]
            module = sys.modules.get(module_name)
            if module is None:
                file_spec = importlib.util.spec_from_file_location(module_name, target)
                if file_spec is None or file_spec.loader is None:
                    raise ImportError(f"cannot load {target}")
                module = importlib.util.module_from_spec(file_spec)
                sys.modules[module_name] = module
                try:
                    file_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
        else:
            module = importlib.import_module(target)
    except SBCError:
        raise
    except Exception as exc:  # any error inside user code at import time
        raise SBCError(f"cannot import {target}: {type(exc).__name__}: {exc}", where=spec) from None
    func = getattr(module, name, None)
    if not callable(func):
        raise SBCError(f"{target} has no function {name!r}", where=spec)
    return func


def source_hash(spec: str) -> str | None:
    """Hash of the file that defines a spec's function, to notice a changed simulator."""
    try:
        file = inspect.getsourcefile(load_callable(spec))
        return hashlib.sha256(Path(file).read_bytes()).hexdigest()[:16] if file else None
    except (TypeError, OSError):
        return None


# -- simulators ------------------------------------------------------------------------------------


@runtime_checkable
class Simulator(Protocol):
    """Where a simulation's (truth, data) come from: prepared once, shipped to workers."""

    #: The study-file key that names it, for messages ("[simulator] function").
    key: ClassVar[str]

    def prepare(self, where: str, progress: bool = True) -> None:
        """Expensive one-time work in the main process, before any call (nothing for Python)."""
        ...

    def simulate(self, rng: np.random.Generator) -> Any:
        """One (truth, data) pair, drawing only from `rng`; checked by `call_simulator`."""
        ...

    def describe(self) -> dict[str, Any]:
        """JSON-able settings that, with the study seed, fix every simulated dataset."""
        ...

    def source_hash(self) -> str | None:
        """Hash of the code behind it, to refuse resuming results a changed simulator made."""
        ...

    def check_call(self, where: str) -> None:
        """Refuse, in one line, a simulator that cannot be called at all (before any call)."""
        ...


@dataclass(frozen=True)
class PythonSimulator:
    """``[simulator] function = "module:function"`` with ``args``: f(rng, **args)."""

    function: str  # "package.module:function" or "/abs/path/file.py:function"
    args: dict[str, Any] = field(default_factory=dict)
    key: ClassVar[str] = "[simulator] function"

    def prepare(self, where: str, progress: bool = True) -> None:
        return None

    def simulate(self, rng: np.random.Generator) -> Any:
        return load_callable(self.function)(rng, **self.args)

    def describe(self) -> dict[str, Any]:
        return {"function": self.function, "args": self.args}

    def source_hash(self) -> str | None:
        return source_hash(self.function)

    def check_call(self, where: str) -> None:
        try:
            func = load_callable(self.function)
        except SBCError as exc:
            raise SBCError(f"{self.key}: {exc}", where=where) from None
        _check_signature(func, self.args, self.function, self.key, where, "[simulator] args")

    def __str__(self) -> str:
        return self.function


class UserFunction:
    """A function object of the user's (a notebook cell's), shipped to workers by value.

    Pickled with cloudpickle whatever pickler the pool uses, so a function defined in
    `__main__` (a notebook, a script) or a closure reaches worker processes and dask workers
    alike; `describe()` names it with its fingerprint, so the resume identity changes when
    its code or the values it reads change.
    """

    def __init__(self, func: Callable[..., Any]):
        if not callable(func):
            raise TypeError(f"expected a function, got {type(func).__name__}")
        self.func = func
        self.fingerprint = function_fingerprint(func)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.func(*args, **kwargs)

    def describe(self) -> str:
        return f"{function_name(self.func)} (code {self.fingerprint})"

    def __reduce__(self) -> tuple[Any, ...]:
        import cloudpickle

        return (_unpickle_function, (cloudpickle.dumps(self.func), self.fingerprint))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UserFunction) and other.fingerprint == self.fingerprint

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __str__(self) -> str:
        return function_name(self.func)


def _unpickle_function(blob: bytes, fingerprint: str) -> UserFunction:
    import cloudpickle

    out = UserFunction.__new__(UserFunction)
    out.func, out.fingerprint = cloudpickle.loads(blob), fingerprint
    return out


FunctionSpec = str | UserFunction


def resolve_function(spec: FunctionSpec) -> Callable[..., Any]:
    """The function behind a spec string or a function object (in a worker or here)."""
    return load_callable(spec) if isinstance(spec, str) else spec.func


def describe_function(spec: FunctionSpec) -> str:
    """What a manifest and the resume identity record: the spec string as written (so the
    identity of studies written before stays the same), or a function's name and code."""
    return spec if isinstance(spec, str) else spec.describe()


@dataclass(frozen=True)
class CallableSimulator:
    """``sbc.run(simulator=f)``: a function object f(rng, **args), shipped by cloudpickle."""

    function: UserFunction
    args: dict[str, Any] = field(default_factory=dict)
    key: ClassVar[str] = "simulator"

    def prepare(self, where: str, progress: bool = True) -> None:
        return None

    def simulate(self, rng: np.random.Generator) -> Any:
        return self.function(rng, **self.args)

    def describe(self) -> dict[str, Any]:
        return {"function": function_name(self.function.func), "args": self.args, "kind": "object"}

    def source_hash(self) -> str | None:
        return self.function.fingerprint

    def check_call(self, where: str) -> None:
        _check_signature(self.function.func, self.args, str(self), self.key, where, "args")

    def __str__(self) -> str:
        return function_name(self.function.func)


def _check_signature(
    func: Callable[..., Any], args: Mapping[str, Any], name: str, key: str, where: str, label: str
) -> None:
    """f(rng, **args) must be a valid call (checked before any call is made)."""
    try:
        inspect.signature(func).bind(None, **args)
    except TypeError as exc:
        raise SBCError(
            f"{key}: {name} cannot be called as f(rng, **args) with {label} = {args}: {exc}",
            where=where,
        ) from None
    except ValueError:  # no signature to check (a builtin): the test calls will tell
        pass


def call_simulator(
    simulator: Simulator, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Run a simulator and check the shape of its answer: (truth dict, Stan data dict)."""
    where = f"simulator {simulator}"
    out = simulator.simulate(rng)
    if not (isinstance(out, tuple) and len(out) == 2):
        raise SBCError(f"must return a tuple (truth, data), got {type(out).__name__}", where=where)
    truth, data = out
    if not isinstance(truth, Mapping) or not isinstance(data, Mapping):
        raise SBCError("must return (truth: dict, data: dict)", where=where)
    if not truth:
        raise SBCError("returned an empty truth dict: nothing to rank", where=where)
    clean: dict[str, np.ndarray] = {}
    for key, value in truth.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise SBCError(f"truth key {key!r} is not a Stan variable name", where=where)
        try:
            arr = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            raise SBCError(f"truth[{key!r}] is not numeric", where=where) from None
        if not np.all(np.isfinite(arr)):
            raise SBCError(f"truth[{key!r}] has non-finite values", where=where)
        clean[key] = arr
    return clean, dict(data)


def check_deterministic(simulator: Simulator, seed: int) -> None:
    """A simulator must use only the rng it is given: two calls with one seed must agree."""
    outs = [call_simulator(simulator, np.random.default_rng(seed)) for _ in range(2)]
    (t1, d1), (t2, d2) = outs
    same_truth = t1.keys() == t2.keys() and all(np.array_equal(t1[k], t2[k]) for k in t1)
    if not (same_truth and _json(d1) == _json(d2)):
        raise SBCError(
            "gives different results for the same rng seed: it must use only the rng it is "
            "given (no np.random.*, random.*, or time-dependent values)",
            where=f"simulator {simulator}",
        )


def _json(data: Mapping[str, Any]) -> str:
    return json.dumps(data, sort_keys=True, default=lambda v: np.asarray(v).tolist())


# -- before a study runs ---------------------------------------------------------------------------


def check_simulator(
    simulator: Simulator, seed: int, sims: int, where: str, tries: int = 5
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The simulator can be called, uses only its rng and returns numeric truths: its first
    (truth, data).

    A simulator may fail for a few seeds (recorded per simulation later), so the study is
    refused only if it fails on each of the first `tries` simulations.
    """
    simulator.check_call(where)
    first: Exception | None = None
    for i in range(min(tries, sims)):
        try:
            check_deterministic(simulator, seed + i)
            return call_simulator(simulator, simulation_seeds(seed, i)[0])
        except SBCError as exc:
            raise SBCError(f"{simulator.key}: {exc}", where=where) from None
        except Exception as exc:  # the user's code failed; try the next seed
            first = first or exc
    assert first is not None
    raise SBCError(
        f"{simulator.key}: {simulator} fails on each of {min(tries, sims)} test calls "
        f"({one_line(first)})",
        where=where,
    )


def check_truth_against_model(
    truth: Mapping[str, np.ndarray], produced: Mapping[str, int], model: str, where: str
) -> None:
    """Every truth is a variable the model produces, with as many dimensions."""
    for name, value in truth.items():
        if name not in produced:
            raise SBCError(
                f"the simulator's truth has {name!r}, which {model} does not produce "
                f"(it has: {', '.join(sorted(produced))})",
                where=where,
            )
        if produced[name] != np.ndim(value):
            raise SBCError(
                f"truth {name!r} has {np.ndim(value)} dimensions but the model's {name} "
                f"has {produced[name]}",
                where=where,
            )


def check_data_against_program(
    data: Mapping[str, Any], inputs: Mapping[str, int], model: str, where: str
) -> None:
    """The simulator's data has every input the program's data block declares, each with as
    many dimensions (`stanc --info`): otherwise every fit would fail, one by one.

    Sizes are not checked (they are expressions of other data); extra entries are allowed
    (CmdStan ignores them). A value whose dimensions numpy cannot tell (a ragged list) is
    left for CmdStan to judge.
    """
    missing = [name for name in inputs if name not in data]
    if missing:
        raise SBCError(
            f"the simulator's data lacks {', '.join(map(repr, missing))}, which {model} "
            f"declares in its data block (it declares: {', '.join(inputs)})",
            where=where,
        )
    for name, declared in inputs.items():
        try:
            given = np.ndim(data[name])
        except (TypeError, ValueError):
            continue
        if given != declared:
            raise SBCError(
                f"data {name!r} has {given} dimensions but {model} declares {name} with {declared}",
                where=where,
            )


def scalar_quantities(truth: Mapping[str, np.ndarray]) -> list[str]:
    """The scalar names of every truth, as CmdStan names them, variables in sorted order."""
    return [s for var, v in sorted(truth.items()) for s in scalar_names(var, np.shape(v))]


def select_quantities(include: Sequence[str], available: list[str], where: str) -> list[str]:
    """Scalar names to rank: all, or those named (a variable name selects all its components)."""
    if not include:
        return available
    chosen: list[str] = []
    for name in include:
        matches = [a for a in available if a == name or a.startswith(name + "[")]
        if not matches:
            raise SBCError(
                f"[quantities] include: {name!r} is not among the ranked quantities "
                f"(the simulator's truth and derived quantities)",
                where=where,
            )
        chosen += [m for m in matches if m not in chosen]
    return chosen


def check_pool(pool: Sequence[str], quantities: Sequence[str], where: str) -> None:
    """`[quantities] pool` names ranked variables with components (pooled over index 1)."""
    for name in pool:
        components = [q for q in quantities if q.startswith(name + "[")]
        if not components:
            scalar = " (a scalar: nothing to pool)" if name in quantities else ""
            variables = sorted({q.split("[")[0] for q in quantities if "[" in q})
            raise SBCError(
                f"[quantities] pool: {name!r} is not a ranked vector or array{scalar} "
                f"(ranked ones: {', '.join(variables) or 'none'})",
                where=where,
            )
