"""sbc: simulation-based calibration for Stan models, through cmdstanpy.

    import sbc
    folder = sbc.run("studies/lmm_sbc.toml", sims=100)
    results = sbc.load(folder)        # .simulations, .ranks (pandas DataFrames)
"""

__version__ = "0.1.0"

from sbc.errors import SBCError  # noqa: E402
from sbc.results import Results, load  # noqa: E402
from sbc.runner import run  # noqa: E402
from sbc.study import Study, load_study  # noqa: E402

__all__ = ["Results", "SBCError", "Study", "__version__", "load", "load_study", "run"]
