"""The public names at the top level, imported on first use: `sbc --help` stays light."""

from __future__ import annotations

import subprocess
import sys

import sbc


def test_public_names_resolve_to_their_modules():
    from sbc.errors import SBCError
    from sbc.execution.run import run
    from sbc.results import Results, load
    from sbc.study import Study

    assert (sbc.run, sbc.load, sbc.Results, sbc.Study, sbc.SBCError) == (
        run, load, Results, Study, SBCError,
    )  # fmt: skip
    assert {"run", "load", "Study", "Results", "SBCError", "register_backend"} <= set(dir(sbc))


def test_help_imports_neither_pandas_nor_scipy_nor_cmdstanpy():
    code = (
        "import sys, contextlib, io, sbc, sbc.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    sbc.cli.main(['--help'])\n"
        "print(sorted(m for m in ('pandas', 'scipy', 'cmdstanpy', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
