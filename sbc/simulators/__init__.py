"""Generative models in Python: each is a callable `simulate(rng, **args) -> (truth, data)`.

`truth` maps Stan variable names to numpy arrays in the shapes the matching Stan
program uses, `data` is that program's data dict. A simulator draws only from
the `rng` it is given, so a (study seed, simulation index) pair reproduces a
data set exactly.
"""
