"""The public names at the top level, imported on first use: `sbc --help` stays light."""

from __future__ import annotations

import subprocess
import sys

import sbc


def test_public_names_resolve_to_their_modules():
    from sbc.api import Results, load, rerank, run
    from sbc.errors import SBCError
    from sbc.results import StoredResults
    from sbc.study import Study

    assert (sbc.run, sbc.load, sbc.rerank, sbc.Results, sbc.Study, sbc.SBCError) == (
        run, load, rerank, Results, Study, SBCError,
    )  # fmt: skip
    assert issubclass(sbc.Results, StoredResults)  # whatever reads stored results reads these
    names = {"run", "load", "rerank", "Study", "Results", "SBCError", "register_backend"}
    assert names <= set(dir(sbc))


def test_help_imports_neither_pandas_nor_scipy_nor_cmdstanpy():
    code = (
        "import sys, contextlib, io, sbc, sbc.cli\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    sbc.cli.main(['--help'])\n"
        "print(sorted(m for m in ('pandas', 'scipy', 'cmdstanpy', 'numpy') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
