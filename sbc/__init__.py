"""sbc: simulation-based calibration for Stan models, through cmdstanpy.

    import sbc
    folder = sbc.run("studies/lmm_sbc.toml", sims=100)
    results = sbc.load(folder)        # .simulations, .ranks (pandas DataFrames)
"""

__version__ = "0.1.0"

from sbc.errors import SBCError
from sbc.results import Results, load
from sbc.runner import run
from sbc.study import Study, load_study

__all__ = ["Results", "SBCError", "Study", "__version__", "load", "load_study", "run"]
