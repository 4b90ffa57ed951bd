"""Mixed models from a formula and a design (``[model]`` in a study file): formulae builds X
and one Z per grouping factor; one description gives the Stan program and the simulator.

design.py (the user's table or a generated one), formula.py (the model's structure, names
and labels), priors.py, program.py (the Stan code, centred or non-centred), simulate.py (the
simulator, and `loglik`, a derived test quantity), section.py (the study file's [model]).
"""

from sbc.models.simulate import loglik

__all__ = ["loglik"]
