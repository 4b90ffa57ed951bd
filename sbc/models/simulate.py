"""The simulator of a formula model: exactly the seed's matrix form for every factor,
y = X beta + sum_f Z_f b_f + eps, drawn from the same `Priors` the Stan program states.

Random numbers are drawn in the seed simulator's order (`sbc.simulators.lmm`): beta, sigma,
then per factor tau_f, the LKJ Cholesky factor of its correlated block (the same onion
sampler) and standard normals z_f, then eps. With one factor whose terms are all correlated
that is exactly lmm's order and arithmetic, so the formula ``y ~ 1 + x + (x | group)`` on the
seed's design gives bit-identical truths and datasets to ``sbc.simulators.lmm`` on one seed.

Fixed values (``[simulator] truth``) are applied after every draw, as in lmm (common random
numbers). When the fitted formula differs from the simulated one, the truth is what the
fitted model's quantities mean in the simulated model (matched by the term names of the
formula), and quantities without a counterpart there have no truth and are not ranked.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from sbc.errors import SBCError
from sbc.models.formula import Factor, FormulaModel
from sbc.models.priors import Priors
from sbc.simulators.lmm import R_from_rho, _corr_from_cholesky, lkj_corr_cholesky


@dataclass(frozen=True)
class FormulaSimulator:
    """``[model]`` (and ``[simulator] formula``): the `Simulator` of a formula model."""

    model: FormulaModel  # what simulates the data
    priors: Priors
    source: dict[str, Any]  # what fixes the datasets (formula, design, priors, truth)
    fitted: FormulaModel | None = None  # the fitted model, when it is another formula
    truth: dict[str, np.ndarray] = field(default_factory=dict)  # fixed values
    key: ClassVar[str] = "[model]"

    def prepare(self, where: str, progress: bool = True) -> None:
        return None

    def check_call(self, where: str) -> None:
        return None  # everything was checked where the study file was read

    def describe(self) -> dict[str, Any]:
        return self.source

    def source_hash(self) -> str | None:
        """The simulating code and the design matrices formulae built (a formulae upgrade that
        codes a predictor differently changes the datasets, so it must refuse a resume)."""
        h = hashlib.sha256()
        for module in (__file__, lkj_corr_cholesky.__code__.co_filename):
            h.update(Path(module).read_bytes())
        for m in (self.model, self.fitted or self.model):
            h.update(np.ascontiguousarray(m.X).tobytes())
            for f in m.factors:
                h.update(f.index.tobytes() + np.ascontiguousarray(f.Z).tobytes())
        return h.hexdigest()[:16]

    def __str__(self) -> str:
        return f"formula {self.model.formula!r}"

    def variables(self) -> list[str]:
        """The variables its truth has, in the fitted model's order (beta, sigma, tau, rho, b)."""
        fit = self.fitted or self.model
        if self.fitted is None:
            return list(fit.variables())
        truth, _, corr = draw(self.model, self.priors, np.random.default_rng(0), self.truth)
        have = project(truth, corr, self.model, fit)
        return [v for v in fit.variables() if v in have]

    def simulate(self, rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, Any]]:
        truth, y, corr = draw(self.model, self.priors, rng, self.truth)
        if self.fitted is None:
            return truth, self.model.data(y)
        return project(truth, corr, self.model, self.fitted), self.fitted.data(y)


def draw(
    model: FormulaModel,
    priors: Priors,
    rng: np.random.Generator,
    fixed: Mapping[str, np.ndarray] | None = None,
) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray]]:
    """(truth, y, the full correlation matrix of each factor) of one simulation."""
    fixed = fixed or {}
    beta = _beta(priors, rng, model.K)
    sigma = float(priors.sigma.draw(rng, positive=True))
    draws = []
    for f in model.factors:
        tau = priors.tau[f.name].draw(rng, size=f.Q, positive=True)
        q = 0 if f.block is None else f.block[1] - f.block[0]
        L = lkj_corr_cholesky(rng, q, priors.lkj[f.name]) if q else np.zeros((0, 0))
        z = rng.standard_normal((f.J, f.Q))
        draws.append((f, tau, L, z))
    eps = rng.standard_normal(model.N)

    beta = fixed.get("beta", beta)
    sigma = float(fixed.get("sigma", sigma))
    truth: dict[str, Any] = {"beta": np.array(beta, dtype=float)} if model.K else {}
    truth["sigma"] = np.float64(sigma)
    mu = model.X @ beta if model.K else np.zeros(model.N)
    corr: dict[str, np.ndarray] = {}
    for f, tau, L, z in draws:
        tau = fixed.get(f"tau_{f.name}", tau)
        R = _corr_from_cholesky(L) if L.size else L
        if f"rho_{f.name}" in fixed:
            R = R_from_rho(np.atleast_1d(fixed[f"rho_{f.name}"]), len(L))
            L = np.linalg.cholesky(R)
        full_L, full_R = _full(f, L), _full(f, R)
        # row j of (z L') diag(tau) is diag(tau) L z_j ~ MVN(0, diag(tau) R diag(tau))
        b = fixed.get(f"b_{f.name}", (z @ full_L.T) * tau)
        mu = mu + f.block_diagonal() @ b.ravel()
        truth[f"tau_{f.name}"] = np.array(tau, dtype=float)
        pairs = f.pairs()
        if pairs:
            rho = np.array([full_R[r, c] for r, c in pairs])
            truth[f"rho_{f.name}"] = np.float64(rho[0]) if len(pairs) == 1 else rho
        truth[f"b_{f.name}"] = np.array(b, dtype=float)
        corr[f.label] = full_R
    y = mu + sigma * eps
    return truth, y, corr


def _beta(priors: Priors, rng: np.random.Generator, K: int) -> np.ndarray:
    """One vector draw when every coefficient has the same prior (the seed's call)."""
    if K == 0:
        return np.zeros(0)
    if len(set(priors.beta)) == 1:
        return np.asarray(priors.beta[0].draw(rng, size=K), dtype=float)
    return np.array([float(p.draw(rng)) for p in priors.beta])


def _full(f: Factor, block: np.ndarray) -> np.ndarray:
    """A factor's Q x Q matrix: `block` on its correlated columns, the identity elsewhere."""
    if f.block is not None and f.block == (0, f.Q):
        return block
    out = np.eye(f.Q)
    if f.block is not None:
        lo, hi = f.block
        out[lo:hi, lo:hi] = block
    return out


def project(
    truth: Mapping[str, Any],
    corr: Mapping[str, np.ndarray],
    sim: FormulaModel,
    fit: FormulaModel,
) -> dict[str, Any]:
    """The truth of each quantity of the fitted model that the simulated model has: matched
    by column and factor names; a variable with a component that has none is left out."""
    out: dict[str, Any] = {"sigma": truth["sigma"]}
    if fit.K and all(c in sim.columns for c in fit.columns):
        out["beta"] = np.asarray(truth["beta"])[[sim.columns.index(c) for c in fit.columns]]
    for f in fit.factors:
        s = next((g for g in sim.factors if g.label == f.label), None)
        if s is None or s.levels != f.levels or not set(f.columns) <= set(s.columns):
            continue
        cols = [s.columns.index(c) for c in f.columns]
        out[f"tau_{f.name}"] = np.asarray(truth[f"tau_{s.name}"])[cols]
        out[f"b_{f.name}"] = np.asarray(truth[f"b_{s.name}"])[:, cols]
        pairs = f.pairs()
        if pairs:
            R = corr[s.label]
            rho = np.array([R[cols[r], cols[c]] for r, c in pairs])
            out[f"rho_{f.name}"] = np.float64(rho[0]) if len(pairs) == 1 else rho
    return out


def fixed_truth(value: Any, model: FormulaModel, key: str, where: str) -> dict[str, np.ndarray]:
    """``[simulator] truth``: fixed values of the simulated model's variables, checked."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SBCError(f"{key}: expected a table of fixed values, got {value!r}", where=where)
    shapes = model.variables()
    out: dict[str, np.ndarray] = {}
    for name, v in value.items():
        if name not in shapes:
            raise SBCError(
                f"{key}.{name}: the model has no such variable (it has: {', '.join(shapes)})",
                where=where,
            )
        try:
            arr = np.asarray(v, dtype=float)
        except (TypeError, ValueError):
            raise SBCError(f"{key}.{name}: expected numbers, got {v!r}", where=where) from None
        shape = shapes[name]
        if arr.shape != shape and arr.size == math.prod(shape) and arr.ndim <= 1:
            arr = arr.reshape(shape)
        if arr.shape != shape or not np.all(np.isfinite(arr)):
            raise SBCError(
                f"{key}.{name}: expected finite numbers of shape {shape}, got {v!r}", where=where
            )
        if name == "sigma" and not arr > 0:
            raise SBCError(f"{key}.sigma: must be positive, got {v!r}", where=where)
        if name.startswith("tau_") and np.any(arr < 0):
            raise SBCError(f"{key}.{name}: must not be negative, got {v!r}", where=where)
        if name.startswith("rho_"):
            f = model.factor(name.removeprefix("rho_"))
            assert f is not None and f.block is not None
            R = R_from_rho(np.atleast_1d(arr), f.block[1] - f.block[0])
            if np.any(np.abs(arr) >= 1) or np.any(np.linalg.eigvalsh(R) <= 0):
                raise SBCError(
                    f"{key}.{name}: not the correlations of a positive definite matrix: {v!r}",
                    where=where,
                )
        out[name] = arr
    return out


# -- a derived test quantity -----------------------------------------------------------------------


def loglik(params: Mapping[str, Any], data: Mapping[str, Any]) -> np.ndarray:
    """Σ_n log N(y_n | X_n beta + Σ_f Z_f[n] · b_f[g_f[n]], sigma), for many draws at once:
    the formula models' data-dependent test quantity (``derived = { loglik =
    "sbc.models:loglik" }``). Factors are the data's ``g_<f>`` with a parameter ``b_<f>``."""
    sigma = np.asarray(params["sigma"], dtype=float)
    lead = sigma.shape
    S = math.prod(lead)
    y = np.asarray(data["y"], dtype=float)
    N = y.size
    mu = np.zeros((S, N))
    if "X" in data and "beta" in params:
        X = np.asarray(data["X"], dtype=float).reshape(N, -1)
        mu += np.asarray(params["beta"], dtype=float).reshape(S, X.shape[1]) @ X.T
    for key in data:
        name = key.removeprefix("g_")
        if key == name or f"b_{name}" not in params:
            continue
        g0 = np.asarray(data[key], dtype=int).reshape(N) - 1
        Z = np.asarray(data[f"Z_{name}"], dtype=float).reshape(N, -1)
        b = np.asarray(params[f"b_{name}"], dtype=float).reshape(S, -1, Z.shape[1])
        for q in range(Z.shape[1]):
            mu += Z[:, q] * b[:, g0, q]
    s = sigma.reshape(S)
    r = (y - mu) / s[:, None]
    ll = -0.5 * np.einsum("sn,sn->s", r, r) - N * np.log(s) - 0.5 * N * math.log(2 * math.pi)
    return ll.reshape(lead)
