"""sbc: simulation-based calibration for Stan models, through cmdstanpy.

    import sbc
    results = sbc.run("studies/lmm_sbc.toml", sims=100)   # or sbc.run(stan=..., simulator=f)
    results.check(); results.plot_ecdf_diff()             # .simulations, .ranks: DataFrames

The names below are imported when first used (PEP 562), so `import sbc` and `sbc --help`
stay light: nothing imports pandas, scipy or cmdstanpy until a command needs it. (This
module has no import statements for them, so it adds no edge to the layers that
`lint-imports` checks either.)
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
#: The name it is installed under (`sbc` on PyPI is an unrelated package); imported as `sbc`.
DISTRIBUTION = "stan-sbc"

#: Public name -> "module" or "module:attribute" that defines it (imported on first use).
_PUBLIC = {
    "run": "sbc.api",
    "load": "sbc.api",
    "rerank": "sbc.api",
    "Results": "sbc.api",
    "Study": "sbc.study",
    "load_study": "sbc.study",
    "SBCError": "sbc.errors",
    "register_backend": "sbc.backends",
    "check": "sbc.checks",
    "precheck": "sbc.precheck",
    "compare": "sbc.checks",
    "report": "sbc.reports:write_report",
    "plan_power": "sbc.analysis.power:plan",
    "Calibration": "sbc.analysis.verdicts",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    target = _PUBLIC.get(name)
    if target is None:
        raise AttributeError(f"module 'sbc' has no attribute {name!r}")
    module, _, attribute = target.partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
