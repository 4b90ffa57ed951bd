"""Priors of a formula model, from ``[model.priors]``: one statement that both the Stan program
and the simulator read, so they cannot disagree. Defaults are the seed's.

    beta  = "normal(0, 10)"     every coefficient; or a table by column of X:
                                { Intercept = "normal(500, 100)", "cond[b]" = "normal(0, 20)" }
    sigma = "normal(0, 5)"      half-normal (sigma > 0)
    tau   = "normal(0, 5)"      every factor's sds; tau_<factor> = "..." for one factor
    lkj   = 2                   every correlation matrix's eta; lkj_<factor> = ... for one

Families: normal(mu, s) and student_t(nu, mu, s) for beta; for the positive sigma and tau
their half forms (mu = 0) and exponential(rate).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sbc.errors import SBCError
from sbc.models.formula import FormulaModel

_ARITY = {"normal": 2, "student_t": 3, "exponential": 1}
_CALL = re.compile(r"^\s*([a-z_]+)\s*\((.*)\)\s*$")


@dataclass(frozen=True)
class Prior:
    family: str
    args: tuple[float, ...]

    def stan(self) -> str:
        return f"{self.family}({', '.join(number(a) for a in self.args)})"

    def draw(self, rng: np.random.Generator, size: int | None = None, positive: bool = False):
        """Draws in the seed simulator's way (`sbc.simulators.lmm`): ``rng.normal(mu, s, size)``,
        its absolute value for a half-normal, so the same seed gives the same numbers."""
        if self.family == "exponential":
            return rng.exponential(1.0 / self.args[0], size=size)
        if self.family == "normal":
            x = rng.normal(self.args[0], self.args[1], size=size)
        else:
            nu, mu, s = self.args
            x = mu + s * rng.standard_t(nu, size=size)
        return np.abs(x) if positive else x


def number(v: float) -> str:
    """A Stan literal that reads back as the same float: 10, 0.5, 1e-06."""
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else repr(v)


DEFAULT_BETA = Prior("normal", (0.0, 10.0))
DEFAULT_SCALE = Prior("normal", (0.0, 5.0))
DEFAULT_LKJ = 2.0


@dataclass(frozen=True)
class Priors:
    """Every prior of one model: beta by column, sigma, tau and LKJ eta by factor name."""

    beta: tuple[Prior, ...]
    sigma: Prior = DEFAULT_SCALE
    tau: dict[str, Prior] = field(default_factory=dict)
    lkj: dict[str, float] = field(default_factory=dict)

    def describe(self, model: FormulaModel) -> dict[str, Any]:
        return {
            "beta": {c: p.stan() for c, p in zip(model.columns, self.beta, strict=True)},
            "sigma": self.sigma.stan(),
            "tau": {f: p.stan() for f, p in self.tau.items()},
            "lkj": dict(self.lkj),
        }


def parse_priors(raw: Any, model: FormulaModel, key: str, where: str) -> Priors:
    """``[model.priors]`` checked against the model: a prior for a term or factor the formula
    lacks is an error, named."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SBCError(f"{key}: expected a table, got {raw!r}", where=where)
    factors = {f.name: f for f in model.factors}
    correlated = {f.name for f in model.factors if f.block is not None}
    known = {"beta", "sigma", "tau", "lkj"}
    for name in raw:
        if name in known:
            continue
        kind, _, factor = name.partition("_")
        if kind in ("tau", "lkj") and factor:
            if factor not in factors:
                raise SBCError(
                    f"{key}.{name}: the formula has no grouping factor {factor!r} (it has: "
                    f"{', '.join(factors) or 'none'})",
                    where=where,
                )
            if kind == "lkj" and factor not in correlated:
                raise SBCError(
                    f"{key}.{name}: {factor!r} has no correlated terms in the formula, so no "
                    "correlation matrix to put a prior on",
                    where=where,
                )
            continue
        raise SBCError(
            f"{key}.{name}: unknown prior (known: beta, sigma, tau, lkj, tau_<factor>, "
            "lkj_<factor>)",
            where=where,
        )
    beta = _beta(raw.get("beta"), model, f"{key}.beta", where)
    sigma = _prior(raw.get("sigma"), DEFAULT_SCALE, f"{key}.sigma", where, positive=True)
    tau_all = _prior(raw.get("tau"), DEFAULT_SCALE, f"{key}.tau", where, positive=True)
    lkj_all = _eta(raw.get("lkj", DEFAULT_LKJ), f"{key}.lkj", where)
    tau = {
        f: _prior(raw.get(f"tau_{f}"), tau_all, f"{key}.tau_{f}", where, positive=True)
        for f in factors
    }
    lkj = {f: _eta(raw.get(f"lkj_{f}", lkj_all), f"{key}.lkj_{f}", where) for f in correlated}
    return Priors(beta, sigma, tau, lkj)


def _beta(value: Any, model: FormulaModel, key: str, where: str) -> tuple[Prior, ...]:
    if value is None or isinstance(value, str):
        one = _prior(value, DEFAULT_BETA, key, where, positive=False)
        return tuple(one for _ in model.columns)
    if not isinstance(value, Mapping):
        raise SBCError(f"{key}: expected a prior or a table of them by column of X", where)
    unknown = [c for c in value if c not in model.columns]
    if unknown:
        raise SBCError(
            f"{key}.{unknown[0]}: the formula has no such term (columns of X: "
            f"{', '.join(model.columns) or 'none'})",
            where=where,
        )
    return tuple(
        _prior(value.get(c), DEFAULT_BETA, f"{key}.{c}", where, positive=False)
        for c in model.columns
    )


def _prior(value: Any, default: Prior, key: str, where: str, positive: bool) -> Prior:
    if value is None:
        return default
    m = _CALL.match(value) if isinstance(value, str) else None
    if m is None or m.group(1) not in _ARITY:
        raise SBCError(
            f'{key}: expected a prior such as "normal(0, 5)" (families: '
            f"{', '.join(_ARITY)}), got {value!r}",
            where=where,
        )
    family = m.group(1)
    try:
        args = tuple(float(a) for a in m.group(2).split(","))
    except ValueError:
        raise SBCError(f"{key}: the arguments of {value!r} must be numbers", where) from None
    if len(args) != _ARITY[family] or not all(math.isfinite(a) for a in args):
        raise SBCError(
            f"{key}: {family} takes {_ARITY[family]} finite number(s), got {value!r}", where
        )
    scale_ok = {"normal": args[-1] > 0, "student_t": args[0] > 0 and args[-1] > 0,
                "exponential": args[0] > 0}[family]  # fmt: skip
    if not scale_ok:
        raise SBCError(f"{key}: {value!r} needs positive scale (and degrees of freedom)", where)
    if family == "exponential" and not positive:
        raise SBCError(f"{key}: exponential is for positive parameters (sigma, tau)", where)
    if positive and family != "exponential" and args[-2] != 0:
        raise SBCError(
            f"{key}: {value!r} on a positive parameter must be centred at 0 (a half-"
            f'{family}), e.g. "{family}({"3, " if family == "student_t" else ""}0, 5)"',
            where=where,
        )
    return Prior(family, args)


def _eta(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise SBCError(f"{key}: expected the LKJ shape eta, a number > 0, got {value!r}", where)
    if not math.isfinite(value):
        raise SBCError(f"{key}: expected a finite number, got {value!r}", where=where)
    return float(value)
