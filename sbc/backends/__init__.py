"""How a dataset becomes posterior draws: the `Backend` protocol and the registry of backends.

A backend is one module plus an entry point. The class declares, in one place:

* `name` (``[backend] type = ...`` in a study file), its `Options` (a frozen dataclass
  read from the rest of ``[backend]``, or from ``[backend.<name>]``) and, if it reads sbc
  0.1's ``[sampler]`` table as a table of its own, its `Sampler` settings (the exact
  backends; the CmdStan ones map ``[sampler]`` onto their `Options` by field metadata
  instead, see `sbc.options`). ``[sampler] thin`` is generic: `thin_ranks`. Values are
  checked by their declared types where they enter (`sbc.options.read_options`), and by
  the dataclass's own ``check(section, where)`` for more;
* `diagnostics`: what `diagnose` returns, with the rule that flags a fit
  (`sbc.store.Diagnostic`); they become the store's columns, and a key it returns
  without declaring it stops the study (a bug in the backend);
* `identity()`: what, beside its options, must not change for stored results to be
  resumed (the CmdStan backend: the hash of the Stan source); `settings_identity(spec)`:
  how its settings enter the study's identity (`BackendBase`: as sbc 0.1 hashed them);
* `remote_payload()` / `on_host(payload)`: how it gets ready on a dask worker host;
* `describe()`: what the results manifest and the report say about it;
* optionally `check_truth(truth, data, where)`: refuse before the study runs a simulation
  the model cannot take (for CmdStan: a truth whose sizes differ from the model's), and
  `quantities_at_truth(truth, data, names, workdir)`: the model's own quantities evaluated
  at the truth (``[quantities] stan``; for CmdStan: generated quantities and ``lp__``),
  to be ranked among the same quantities of the draws.

The runner calls `prepare` once in the main process, then ships the prepared backend to
worker processes, which call `fit`, `draws`, `diagnose` and `close` once per simulation;
it never looks inside a fit otherwise. `BackendBase` gives every optional part a default.

Backends are found by name: first those registered in this process with
`register_backend(name, cls)`, then the entry-point group ``sbc.backends`` of installed
distributions (sbc's own are declared in its pyproject.toml), e.g.::

    [project.entry-points."sbc.backends"]
    mymethod = "mypackage.sbc_backend:MyBackend"
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from sbc.errors import SBCError, one_line
from sbc.store import Diagnostic

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendBase",
    "BackendSpec",
    "Diagnostic",
    "NoOptions",
    "backend_class",
    "known_backends",
    "register_backend",
]

ENTRY_POINT_GROUP = "sbc.backends"


@dataclass(frozen=True)
class NoOptions:
    """The options of a backend that takes none."""


@dataclass(frozen=True)
class BackendSpec:
    """What a study says about its backend, checked by the backend's declarations."""

    type: str = "cmdstan"
    options: Any = field(default_factory=NoOptions)  # the backend's `Options`
    sampler: Any = None  # the backend's `Sampler` settings, if it has a [sampler] table
    table: Mapping[str, Any] = field(default_factory=dict)  # its settings as written


@runtime_checkable
class Backend(Protocol):
    """One inference method, prepared once per study and shipped to worker processes."""

    name: ClassVar[str]
    Options: ClassVar[type]
    Sampler: ClassVar[type | None]
    diagnostics: ClassVar[tuple[Diagnostic, ...]]
    needs_stan: ClassVar[bool]  # the study must name a Stan program (`stan = ...`)

    @classmethod
    def create(cls, spec: BackendSpec, stan: Path | None, cores: int) -> Backend:
        """The backend of a study; `cores`: CPU cores one fit may use."""
        ...

    def prepare(self, progress: bool = True) -> None:
        """Expensive one-time work in the main process (compiling), before workers start."""
        ...

    def variables(self) -> dict[str, int] | None:
        """Variable names the model produces with their number of dimensions, if known."""
        ...

    def inputs(self) -> dict[str, int] | None:
        """Data names the model needs with their number of dimensions, if known (optional:
        the runner checks a simulator's data against it before any fit)."""
        ...

    def identity(self) -> dict[str, str]:
        """What must not change, beside the study's settings, for stored results to resume."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the results manifest (and the report) records about this backend."""
        ...

    def remote_payload(self) -> Any:
        """What a worker on another host needs to get ready (picklable), or None."""
        ...

    def on_host(self, payload: Any) -> Backend:
        """This backend, usable on the host it is on now (a dask worker); may raise SBCError."""
        ...

    def fit(self, data: dict[str, Any], seed: int, workdir: Path) -> Any:
        """Run inference on one dataset; raise on failure (the runner records the reason)."""
        ...

    def draws(self, fit: Any) -> dict[str, np.ndarray]:
        """Posterior draws per variable, shaped (chains, draws, *variable shape)."""
        ...

    def diagnose(self, fit: Any) -> dict[str, float]:
        """How inference went: one value per declared diagnostic (missing ones are NULL)."""
        ...

    def close(self, fit: Any) -> None:
        """Release what a fit holds on disk once its results are stored."""
        ...

    def check_truth(self, truth: Mapping[str, Any], data: Mapping[str, Any], where: str) -> None:
        """Refuse in one line, before the study runs, a simulation the model cannot take."""
        ...

    def quantities_at_truth(
        self, truth: Mapping[str, Any], data: Mapping[str, Any], names: Sequence[str],
        workdir: Path,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        """The model's own quantities `names` at the truth (ranked among their draws)."""
        ...


class BackendBase:
    """Defaults for the optional parts of `Backend`: no options, nothing to prepare or ship."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    Sampler: ClassVar[type | None] = None
    diagnostics: ClassVar[tuple[Diagnostic, ...]] = ()
    needs_stan: ClassVar[bool] = False

    @classmethod
    def settings_identity(cls, spec: BackendSpec) -> tuple[dict[str, Any], dict[str, Any]]:
        """(sampler, options) parts of the study's resume identity, as sbc 0.1 hashed them:
        the `Sampler` settings with their defaults, and the options table as written."""
        sampler = dataclasses.asdict(spec.sampler) if spec.sampler is not None else {}
        return sampler, dict(spec.table)

    def prepare(self, progress: bool = True) -> None:
        return None

    def variables(self) -> dict[str, int] | None:
        return None

    def inputs(self) -> dict[str, int] | None:
        return None

    def identity(self) -> dict[str, str]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"type": self.name}

    def remote_payload(self) -> Any:
        return None

    def on_host(self, payload: Any) -> Backend:
        return self  # type: ignore[return-value]

    def close(self, fit: Any) -> None:
        return None

    def check_truth(self, truth: Mapping[str, Any], data: Mapping[str, Any], where: str) -> None:
        return None

    def quantities_at_truth(
        self, truth: Mapping[str, Any], data: Mapping[str, Any], names: Sequence[str],
        workdir: Path,
    ) -> dict[str, np.ndarray]:  # fmt: skip
        raise SBCError(f"the {self.name} backend has no program to evaluate at the truth")


# -- the registry ----------------------------------------------------------------------------------

_REGISTERED: dict[str, type] = {}


def register_backend(name: str, cls: type) -> None:
    """Make `cls` the backend of ``[backend] type = name`` in this process.

    The programmatic twin of an entry point in the group ``sbc.backends`` (for a notebook,
    or a test); it takes precedence over an entry point of the same name. Worker
    processes receive the prepared backend itself, so they need not register it.
    """
    missing = [
        attr
        for attr in ("create", "fit", "draws", "diagnose", "Options", "diagnostics")
        if not hasattr(cls, attr)
    ]
    if missing:
        raise TypeError(f"backend {name!r}: {cls.__name__} lacks {', '.join(missing)}")
    _REGISTERED[name] = cls


def known_backends() -> list[str]:
    """Names of every backend a study file may use: registered here or by entry points."""
    return sorted(set(_REGISTERED) | {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)})


def backend_class(name: str, where: str | None = None) -> type:
    """The class of a backend name; SBCError naming the known ones if there is none."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name == name]
    if not found:
        known = known_backends()
        hint = (
            f"known: {', '.join(known)}"
            if known
            else "none is registered: is sbc installed (pip install -e .)?"
        )
        raise SBCError(f"[backend] type: unknown backend {name!r} ({hint})", where=where)
    try:
        return found[0].load()
    except Exception as exc:  # a plugin that fails to import is the user's to fix
        raise SBCError(
            f"[backend] type: cannot load backend {name!r} from {found[0].value}: {one_line(exc)}",
            where=where,
        ) from None
