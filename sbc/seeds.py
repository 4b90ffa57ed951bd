"""Every random number of a simulation comes from (study seed, simulation index) alone.

So results do not depend on the number of workers, the pool, the order of completion,
or interruptions and resumption.
"""

from __future__ import annotations

import numpy as np


def simulation_seeds(master: int, sim: int) -> tuple[np.random.Generator, int, np.random.Generator]:
    """(simulator rng, inference seed, tie-breaking rng) for one simulation: a pure function."""
    seq = np.random.SeedSequence(master, spawn_key=(sim,))
    sim_seq, rank_seq = seq.spawn(2)
    fit_seed = int(seq.generate_state(1, dtype=np.uint32)[0] >> 1)  # CmdStan wants < 2**31
    return np.random.default_rng(sim_seq), fit_seed, np.random.default_rng(rank_seq)


#: The spawn key of a fit's initial values: a stream apart from the three above.
_INITS = 0x1A175


def inits_rng(fit_seed: int) -> np.random.Generator:
    """The rng a fit's `inits(rng, data)` gets: from its inference seed (a function of the
    study seed and the simulation index), independent of the simulator's and the ranks'
    streams, which stay as they were (existing ranks are unchanged)."""
    return np.random.default_rng(np.random.SeedSequence(fit_seed, spawn_key=(_INITS,)))
