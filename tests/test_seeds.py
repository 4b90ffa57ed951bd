"""A simulation's random numbers come from (study seed, simulation index) alone."""

from __future__ import annotations

import numpy as np

from sbc.seeds import simulation_seeds


def test_seeds_depend_only_on_master_seed_and_index():
    a = simulation_seeds(5, 3)
    b = simulation_seeds(5, 3)
    assert a[1] == b[1]
    assert np.array_equal(a[0].normal(size=4), b[0].normal(size=4))
    assert simulation_seeds(5, 4)[1] != a[1]
    assert simulation_seeds(6, 3)[1] != a[1]
    assert 0 <= a[1] < 2**31
