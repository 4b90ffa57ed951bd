"""A correct simulator (the normal model), here to be named wrongly by a study file."""
from sbc.simulators.normal import simulate

not_a_function = 42
