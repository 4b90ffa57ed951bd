"""The parameter stan/linreg_missing_jacobian.stan declares instead of sigma: its logarithm.

`sbc precheck` evaluates the program at every simulated truth, so it needs the value of each
of the program's parameters (``[precheck] parameters`` in linreg_missing_jacobian.toml).
"""

import numpy as np


def parameters(truth, data):
    return {"log_sigma": np.log(truth["sigma"])}
