"""The seed's linear mixed-effects model, y = Xβ + Zb + ε, as a simulator for SBC.

Generative process (the same priors as `stan/lmm_centered.stan` and
`stan/lmm_noncentered.stan`, so ranks are uniform when a fit is exact)::

    β_k ~ N(0, beta_scale)          σ ~ N⁺(0, sigma_scale)
    τ_q ~ N⁺(0, tau_scale)          R ~ LKJcorr(lkj_eta)
    b_j ~ MVN(0, Σ),  Σ = diag(τ) R diag(τ)       (j = 1..J)
    y = Xβ + Z_block vec(b) + ε,    ε_n ~ N(0, σ²)

Default design (the seed's ``y ~ 1 + x + (x | group)``): ten groups, x = 1..10
inside each group, X = Z = [1, x], so K = Q = 2.

Block-diagonal Z, as in the seed: ``Z_block`` is N × (J·Q); a row of group j
holds that row's random-effect covariates in columns j·Q .. j·Q + Q - 1 and
zeros elsewhere. It multiplies ``vec(b) = b.ravel()`` (row-major), i.e. the
interleaved vector (b₁₁, b₁₂, b₂₁, b₂₂, ...) = (α₁, β₁, α₂, β₂, ...): group by
group, intercept then slope. Stan gets the compact equivalent instead: Z (N × Q,
the non-zero part of each row) and g (1-based group of each row), because the
block form is mostly zeros. ``block_diagonal`` rebuilds one from the other.

Designs with K or Q other than 2: column k (k = 0, 1, 2, ...) of the
polynomial design is x^k / s^(k-1) with s = max|x| (1, x, x²/s, x³/s², ...).
The first two columns are exactly [1, x]; the scaling keeps every column's
largest value at s, so higher powers do not dwarf the rest. X takes the first K
columns, Z the first Q.

Common random numbers: every call draws the same sequence from `rng` (β, σ, τ,
the LKJ draw, standard normals for b, standard normals for ε), whatever `truth`
says, and then applies fixed values. So the same seed with ``truth={"sigma": 2}``
keeps β, τ, R and the standardised b and ε of the prior draw: runs that differ
only in a fixed value are paired, not independent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
from scipy import sparse

from sbc.errors import SBCError

WHERE = "simulator lmm"

#: Names (and, by construction, shapes) shared with the Stan programs.
TRUTH_KEYS = ("beta", "sigma", "tau", "R", "rho", "b")

#: The seed's worked example (K = Q = 2): σ_α = 3, σ_β = 2, ρ = 0.7.
SEED_TRUTH: dict[str, Any] = {"beta": [6.0, 4.0], "sigma": 1.0, "tau": [3.0, 2.0], "rho": [0.7]}

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------- LKJ


def lkj_corr_cholesky(
    rng: np.random.Generator, Q: int, eta: float, size: int | tuple[int, ...] | None = None
) -> np.ndarray:
    """Exact draws of the Cholesky factor of R ~ LKJcorr(eta), by the onion method.

    Lewandowski, Kurowicka & Joe (2009), section 3.2, in Cholesky form: row i
    (0-based, i ≥ 1) is w = sqrt(y)·u with y ~ Beta(i/2, eta + (Q-2)/2 - (i-1)/2)
    and u uniform on the unit sphere in R^i, and diagonal sqrt(1 - y). Vectorised
    over `size` so tests can check the distribution on many draws cheaply.
    Returns shape ``size + (Q, Q)``, lower triangular.
    """
    shape = () if size is None else ((size,) if isinstance(size, Integral) else tuple(size))
    L = np.zeros((*shape, Q, Q))
    L[..., 0, 0] = 1.0
    for i in range(1, Q):
        y = rng.beta(i / 2.0, eta + (Q - 2) / 2.0 - (i - 1) / 2.0, size=shape)
        u = rng.standard_normal((*shape, i))
        u /= np.linalg.norm(u, axis=-1, keepdims=True)
        L[..., i, :i] = np.sqrt(y)[..., None] * u
        L[..., i, i] = np.sqrt(1.0 - y)
    return L


def lkj_corr(
    rng: np.random.Generator, Q: int, eta: float, size: int | tuple[int, ...] | None = None
) -> np.ndarray:
    """Exact draws of a Q × Q correlation matrix R ~ LKJcorr(eta) (see `lkj_corr_cholesky`)."""
    L = lkj_corr_cholesky(rng, Q, eta, size)
    return _corr_from_cholesky(L)


def _corr_from_cholesky(L: np.ndarray) -> np.ndarray:
    """L Lᵀ made exactly symmetric with an exact unit diagonal (rounding would break both)."""
    R = L @ np.swapaxes(L, -1, -2)
    R = 0.5 * (R + np.swapaxes(R, -1, -2))
    idx = np.arange(R.shape[-1])
    R[..., idx, idx] = 1.0
    return R


def rho_from_R(R: np.ndarray) -> np.ndarray:
    """Strictly-lower-triangle entries of R in column-major order (the Stan programs' `rho`)."""
    Q = R.shape[-1]
    rows, cols = _lower_pairs(Q)
    return R[..., rows, cols]


def R_from_rho(rho: np.ndarray, Q: int) -> np.ndarray:
    """Inverse of `rho_from_R`: the symmetric unit-diagonal matrix with those off-diagonals."""
    rho = np.asarray(rho, dtype=float)
    rows, cols = _lower_pairs(Q)
    R = np.zeros((*rho.shape[:-1], Q, Q))
    R[..., rows, cols] = rho
    R[..., cols, rows] = rho
    idx = np.arange(Q)
    R[..., idx, idx] = 1.0
    return R


def _lower_pairs(Q: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the strict lower triangle, column by column: (2,1), (3,1), ..., (Q,Q-1)."""
    pairs = [(r, c) for c in range(Q) for r in range(c + 1, Q)]
    rows = np.array([p[0] for p in pairs], dtype=int)
    cols = np.array([p[1] for p in pairs], dtype=int)
    return rows, cols


# ------------------------------------------------------------------------ design


def design(
    *,
    groups: int | None = None,
    group_sizes: Sequence[int] | None = None,
    x: Sequence[float] | None = None,
    K: int = 2,
    Q: int = 2,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The design matrices X, Z, the 0-based group of each row and J, validated.

    Rules for x: with no group_sizes, x (default 1..10) is repeated in every
    group. With group_sizes, group j gets 1..n_j, or x itself if it has one
    value per row (length sum(group_sizes)), or x repeated if every group has
    len(x) rows.
    """
    K = _whole("K", K, 1)
    Q = _whole("Q", Q, 1)
    if group_sizes is None:
        J = 10 if groups is None else _whole("groups", groups, 1)
        if x is None:
            x_group = np.arange(1.0, 11.0)
        else:
            x_group = _float_vector("x", x)
            if x_group.size == 0:
                raise SBCError("x must hold at least one value", where=WHERE)
        sizes = np.full(J, x_group.size)
        x_all = np.tile(x_group, J)
    else:
        if isinstance(group_sizes, str | bytes | Mapping) or not hasattr(group_sizes, "__iter__"):
            raise SBCError("group_sizes must be a list of whole numbers", where=WHERE)
        sizes = np.array([_whole("group_sizes entry", n, 0) for n in group_sizes], dtype=int)
        if sizes.size == 0:
            raise SBCError("group_sizes must not be empty", where=WHERE)
        J = sizes.size
        if groups is not None and _whole("groups", groups, 1) != J:
            raise SBCError(
                f"group_sizes has {J} entries but groups = {groups}; give one size per group",
                where=WHERE,
            )
        if sizes.sum() < 1:
            raise SBCError("group_sizes must add up to at least 1 observation", where=WHERE)
        if x is None:
            x_all = np.concatenate([np.arange(1.0, n + 1.0) for n in sizes])
        else:
            xv = _float_vector("x", x)
            if xv.size == sizes.sum():
                x_all = xv
            elif np.all(sizes == xv.size):
                x_all = np.tile(xv, J)
            else:
                raise SBCError(
                    f"x has {xv.size} values; with group_sizes it needs one per row "
                    f"({int(sizes.sum())}) or one per row of a group when all groups are that size",
                    where=WHERE,
                )
    g0 = np.repeat(np.arange(J), sizes)
    P = polynomial_design(x_all, max(K, Q))
    return P[:, :K].copy(), P[:, :Q].copy(), g0, int(J)


def polynomial_design(x: np.ndarray, columns: int) -> np.ndarray:
    """Columns 1, x, x²/s, x³/s², ... with s = max|x|: [1, x] exactly for two columns."""
    x = np.asarray(x, dtype=float)
    s = float(np.max(np.abs(x))) if x.size else 1.0
    s = s if s > 0 else 1.0
    P = np.empty((x.size, columns))
    for k in range(columns):
        P[:, k] = 1.0 if k == 0 else x**k / s ** (k - 1)
    return P


def block_diagonal(Z: np.ndarray, g: np.ndarray, J: int) -> sparse.csr_matrix:
    """The seed's N × (J·Q) random-effects design from the compact (Z, 0-based g) form.

    Row n carries Z[n] in columns g[n]·Q .. g[n]·Q + Q - 1, so it multiplies
    b.ravel() (group by group, interleaved intercept/slope). Sparse because it
    is mostly zeros once there are many groups.
    """
    Z = np.asarray(Z, dtype=float)
    g = np.asarray(g, dtype=int)
    N, Q = Z.shape
    cols = (g[:, None] * Q + np.arange(Q)[None, :]).ravel()
    indptr = np.arange(0, N * Q + 1, Q)
    return sparse.csr_matrix((Z.ravel(), cols, indptr), shape=(N, J * Q))


# ----------------------------------------------------------------------- simulate


def simulate(
    rng: np.random.Generator,
    *,
    groups: int | None = None,
    group_sizes: Sequence[int] | None = None,
    x: Sequence[float] | None = None,
    truth: str | Mapping[str, Any] = "prior",
    beta_scale: float = 10.0,
    sigma_scale: float = 5.0,
    tau_scale: float = 5.0,
    lkj_eta: float = 2.0,
    K: int = 2,
    Q: int = 2,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One data set from the LMM, and the values that generated it.

    groups: number of groups J (default 10; or len(group_sizes)).
    group_sizes: rows per group, for unequal groups. x: see `design`.
    truth: "prior" draws every value from the prior (what SBC needs);
        "seed" uses the seed's worked example β = (6, 4), τ = (3, 2), ρ = 0.7,
        σ = 1 (K = Q = 2 only) with b still drawn from MVN(0, Σ); a dict fixes
        any of beta, sigma, tau, R, rho, b on top of the prior, or on top of the
        seed's values with ``"base": "seed"``. Fixed values make a recovery
        study, not SBC.
    beta_scale, sigma_scale, tau_scale, lkj_eta: prior parameters. The defaults
        are the Stan programs' priors; other values make the simulator disagree
        with them (on purpose, to show a check has power).

    Returns (truth, data): truth has beta (K,), sigma (float), tau (Q,), R (Q, Q),
    rho (Q(Q-1)/2,; absent when Q = 1, as in CmdStan's output), b (J, Q); data
    is the Stan data dict N, K, Q, J, X, Z, g (1-based), y. R's diagonal is
    exactly 1 here, while CmdStan's draws of it can differ from 1 by rounding.
    """
    if not isinstance(rng, np.random.Generator):
        raise SBCError("rng must be a numpy.random.Generator", where=WHERE)
    beta_scale = _positive("beta_scale", beta_scale)
    sigma_scale = _positive("sigma_scale", sigma_scale)
    tau_scale = _positive("tau_scale", tau_scale)
    lkj_eta = _positive("lkj_eta", lkj_eta)
    X, Z, g0, J = design(groups=groups, group_sizes=group_sizes, x=x, K=K, Q=Q)
    N, K = X.shape
    Q = Z.shape[1]
    base, fixed = _parse_truth(truth, K, Q, J)

    # The same draws in the same order every time (see "Common random numbers").
    beta = rng.normal(0.0, beta_scale, size=K)
    sigma = abs(float(rng.normal(0.0, sigma_scale)))
    tau = np.abs(rng.normal(0.0, tau_scale, size=Q))
    L = lkj_corr_cholesky(rng, Q, lkj_eta)
    z = rng.standard_normal((J, Q))
    eps = rng.standard_normal(N)
    R = _corr_from_cholesky(L)

    if base == "seed":
        beta = np.array(SEED_TRUTH["beta"])
        sigma = float(SEED_TRUTH["sigma"])
        tau = np.array(SEED_TRUTH["tau"])
        R = R_from_rho(np.array(SEED_TRUTH["rho"]), 2)
    beta = fixed.get("beta", beta)
    sigma = float(fixed.get("sigma", sigma))
    tau = fixed.get("tau", tau)
    if "R" in fixed:
        R = fixed["R"]
    if base == "seed" or "R" in fixed:
        L = np.linalg.cholesky(R)
    # row j of (z Lᵀ) diag(τ) is diag(τ) L z_j ~ MVN(0, diag(τ) R diag(τ))
    b = fixed["b"] if "b" in fixed else (z @ L.T) * tau

    Z_block = block_diagonal(Z, g0, J)
    y = X @ beta + Z_block @ b.ravel() + sigma * eps

    truth_out = {
        "beta": np.array(beta, dtype=float),
        "sigma": np.float64(sigma),
        "tau": np.array(tau, dtype=float),
        "R": np.array(R, dtype=float),
        "rho": rho_from_R(np.asarray(R, dtype=float)),
        "b": np.array(b, dtype=float),
    }
    if Q == 1:
        del truth_out["rho"]  # Stan writes no columns for a size-0 vector: no such variable
    data = {"N": N, "K": K, "Q": Q, "J": J, "X": X, "Z": Z, "g": g0 + 1, "y": y}
    return truth_out, data


def _parse_truth(
    truth: str | Mapping[str, Any], K: int, Q: int, J: int
) -> tuple[str, dict[str, Any]]:
    """("prior" | "seed", validated fixed values) from the `truth` argument."""
    if isinstance(truth, str):
        base, given = truth, {}
    elif isinstance(truth, Mapping):
        given = dict(truth)
        base = given.pop("base", "prior")
    else:
        raise SBCError('truth must be "prior", "seed" or a table of fixed values', where=WHERE)
    if base not in ("prior", "seed"):
        raise SBCError(f'truth must be "prior" or "seed" (or a table), got {base!r}', where=WHERE)
    if base == "seed" and (K != 2 or Q != 2):
        raise SBCError(f'truth "seed" needs K = Q = 2 (got K = {K}, Q = {Q})', where=WHERE)
    unknown = sorted(set(given) - set(TRUTH_KEYS))
    if unknown:
        raise SBCError(
            f"unknown truth key(s) {', '.join(map(repr, unknown))}; "
            f"allowed: base, {', '.join(TRUTH_KEYS)}",
            where=WHERE,
        )
    shapes = {"beta": (K,), "sigma": (), "tau": (Q,), "R": (Q, Q), "rho": (Q * (Q - 1) // 2,),
              "b": (J, Q)}  # fmt: skip
    fixed = {k: _array(f"truth.{k}", v, shapes[k]) for k, v in given.items()}
    if "sigma" in fixed and not fixed["sigma"] > 0:
        raise SBCError("truth.sigma must be positive", where=WHERE)
    if "tau" in fixed and np.any(fixed["tau"] < 0):
        raise SBCError("truth.tau must not be negative", where=WHERE)
    if "rho" in fixed:
        if np.any(np.abs(fixed["rho"]) >= 1):
            raise SBCError("truth.rho values must lie strictly between -1 and 1", where=WHERE)
        from_rho = R_from_rho(fixed.pop("rho"), Q)
        if "R" in fixed and not np.allclose(fixed["R"], from_rho, atol=1e-8):
            raise SBCError("truth.R and truth.rho disagree; give one of them", where=WHERE)
        fixed["R"] = from_rho
    if "R" in fixed:
        R = fixed["R"]
        if not np.allclose(R, R.T, atol=1e-8) or not np.allclose(np.diag(R), 1.0, atol=1e-8):
            raise SBCError("truth.R must be symmetric with a unit diagonal", where=WHERE)
        try:
            np.linalg.cholesky(R)
        except np.linalg.LinAlgError:
            raise SBCError("truth.R (or rho) is not positive definite", where=WHERE) from None
        R = 0.5 * (R + R.T)
        np.fill_diagonal(R, 1.0)
        fixed["R"] = R
    return base, fixed


# ------------------------------------------------------------------------ loglik


def loglik(params: Mapping[str, Any], data: Mapping[str, Any]) -> np.ndarray:
    """Σ_n log N(y_n | X_n β + Z_n · b[g_n], σ) for many parameter sets at once.

    A data-dependent SBC test quantity (Modrák et al. 2023): it catches
    problems that the parameters' own ranks miss. params: beta (..., K),
    sigma (...), b (..., J, Q) with any common leading shape (e.g. S draws;
    none for a single set such as the simulator's truth). Returns shape (...).
    """
    missing = [k for k in ("beta", "sigma", "b") if k not in params]
    missing += [k for k in ("N", "K", "Q", "J", "X", "Z", "g", "y") if k not in data]
    if missing:
        raise SBCError(f"loglik needs {', '.join(missing)}", where="lmm loglik")
    N, K, Q, J = (int(data[k]) for k in ("N", "K", "Q", "J"))
    X = np.asarray(data["X"], dtype=float).reshape(N, K)
    Z = np.asarray(data["Z"], dtype=float).reshape(N, Q)
    g0 = np.asarray(data["g"], dtype=int).reshape(N) - 1
    y = np.asarray(data["y"], dtype=float).reshape(N)
    sigma = np.asarray(params["sigma"], dtype=float)
    lead = sigma.shape
    beta = np.asarray(params["beta"], dtype=float)
    b = np.asarray(params["b"], dtype=float)
    if beta.shape != (*lead, K) or b.shape != (*lead, J, Q):
        raise SBCError(
            f"loglik shapes: sigma {lead}, beta {beta.shape}, b {b.shape}; "
            f"expected beta {(*lead, K)} and b {(*lead, J, Q)}",
            where="lmm loglik",
        )
    S = math.prod(lead)
    beta = beta.reshape(S, K)
    b = b.reshape(S, J, Q)
    sigma = sigma.reshape(S)
    mu = beta @ X.T  # (S, N)
    for q in range(Q):  # Σ_q Z[n, q] b[s, g[n], q]; a loop over Q beats a gathered (S, N, Q)
        mu += Z[:, q] * b[:, g0, q]
    r = (y - mu) / sigma[:, None]
    ll = -0.5 * np.einsum("sn,sn->s", r, r) - N * np.log(sigma) - 0.5 * N * _LOG_2PI
    return ll.reshape(lead)


def noncentered_parameters(truth: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of stan/lmm_noncentered.stan at a truth of `simulate`: L_R = chol(R) and
    z with b' = diag(τ) L_R z (``[precheck] parameters``: the precheck needs every parameter).

    `simulate` draws b as (z Lᵀ) diag(τ) from standard normals z: these are exactly them.
    """
    L = np.linalg.cholesky(np.asarray(truth["R"], dtype=float))
    scaled = np.asarray(truth["tau"], dtype=float)[:, None] * L
    return {"L_R": L, "z": np.linalg.solve(scaled, np.asarray(truth["b"], dtype=float).T)}


# ---------------------------------------------------------------------- checks


def _whole(name: str, value: Any, minimum: int) -> int:
    """An int ≥ minimum (whole floats such as 10.0 accepted, booleans not)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise SBCError(f"{name} must be a whole number, got {value!r}", where=WHERE)
    if not isinstance(value, Integral) and not float(value).is_integer():
        raise SBCError(f"{name} must be a whole number, got {value!r}", where=WHERE)
    if value < minimum:
        raise SBCError(f"{name} must be at least {minimum}, got {value!r}", where=WHERE)
    return int(value)


def _positive(name: str, value: Any) -> float:
    """A finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise SBCError(f"{name} must be a finite number, got {value!r}", where=WHERE)
    if value <= 0:
        raise SBCError(f"{name} must be positive, got {value!r}", where=WHERE)
    return float(value)


def _float_vector(name: str, value: Any) -> np.ndarray:
    """A 1-d array of finite floats."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise SBCError(f"{name} must be a list of numbers", where=WHERE) from None
    if arr.ndim != 1 or not np.all(np.isfinite(arr)):
        raise SBCError(f"{name} must be a flat list of finite numbers", where=WHERE)
    return arr


def _array(name: str, value: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A finite float array of exactly `shape` (a scalar is accepted for a length-1 vector)."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise SBCError(f"{name} must be numeric", where=WHERE) from None
    if arr.shape != shape:
        if len(shape) <= 1 and arr.ndim <= 1 and arr.size == math.prod(shape):
            arr = arr.reshape(shape)
        else:
            raise SBCError(f"{name} must have shape {shape}, got {arr.shape}", where=WHERE)
    if not np.all(np.isfinite(arr)):
        raise SBCError(f"{name} must be finite", where=WHERE)
    return arr
