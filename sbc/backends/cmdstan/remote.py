"""The CmdStan backend on a dask worker host, whose paths need not be the submitting host's.

The submitting host ships the Stan source with each task (`Shipment`). A worker host that
has the executable and CmdStan at the submitted paths (the same host, or a shared home
folder) uses them; any other finds its own CmdStan, and the model by source hash in its
`~/.cache/sbc/models/<hash>/`, compiling it there once if missing (under the same file
lock as `StanProgram.prepare`: concurrent workers on one host wait for one compile).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from pathlib import Path
from typing import Any

from sbc.backends.cmdstan import install
from sbc.errors import SBCError

StanProgram = Any  # sbc.backends.cmdstan.program.StanProgram, which imports this module


@dataclasses.dataclass(frozen=True)
class Shipment:
    """What a worker on another host needs to build the model: the Stan source itself."""

    stan_name: str
    stan_source: bytes
    cmdstan_version: str | None

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.stan_source).hexdigest()[:16]


def shipment(backend: StanProgram) -> Shipment:
    stan_file = Path(backend.stan_file)
    return Shipment(
        stan_name=stan_file.name,
        stan_source=stan_file.read_bytes(),
        cmdstan_version=install.cmdstan_version(backend.cmdstan) if backend.cmdstan else None,
    )


_LOCAL: dict[tuple[str, str], StanProgram] = {}
_LOCAL_LOCK = threading.Lock()


def for_this_host(backend: StanProgram, shipment: Shipment) -> StanProgram:
    """`backend` if its paths work here, else one prepared here (once per worker process)."""
    if _usable_here(backend):
        return backend
    with _LOCAL_LOCK:  # one compile per worker process; prepare()'s file lock: per host
        key = (str(backend.exe_file), shipment.digest)
        if key not in _LOCAL:
            _LOCAL[key] = prepare_here(backend, shipment)
        return _LOCAL[key]


def _usable_here(backend: StanProgram) -> bool:
    exe, cmdstan = backend.exe_file, backend.cmdstan
    return (
        exe is not None and Path(exe).is_file() and cmdstan is not None and Path(cmdstan).is_dir()
    )


def prepare_here(backend: StanProgram, shipment: Shipment) -> StanProgram:
    """Find CmdStan on this host and the model by source hash; compile it once if missing."""
    cmdstan = install.find_cmdstan()
    if cmdstan is None:
        raise SBCError("no CmdStan here: run `sbc setup` on every worker host (or set $CMDSTAN)")
    here = install.cmdstan_version(cmdstan)
    if shipment.cmdstan_version and here != shipment.cmdstan_version:
        raise SBCError(
            f"CmdStan {here} here but the study runs {shipment.cmdstan_version}: "
            "install the same CmdStan version on every worker host"
        )
    stan_file = Path(backend.stan_file)
    if not (stan_file.is_file() and stan_file.read_bytes() == shipment.stan_source):
        folder = install.model_cache_dir() / "sources" / shipment.digest
        folder.mkdir(parents=True, exist_ok=True)
        stan_file = folder / shipment.stan_name
        if not stan_file.is_file():
            staging = folder / f".{shipment.stan_name}.{os.getpid()}.{threading.get_ident()}"
            staging.write_bytes(shipment.stan_source)
            os.replace(staging, stan_file)
    local = backend.with_paths(stan_file)
    local.prepare(progress=False)  # compiles only if ~/.cache/sbc/models/<hash>/ lacks it
    return local
