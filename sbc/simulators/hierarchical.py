"""A conjugate hierarchical normal model with known scales: exact posteriors with dependent ranks.

    μ ~ N(0, prior_sd²),   θ_j ~ N(μ, tau²),   y_ij ~ N(θ_j, sigma²)   (j = 1..J, i = 1..n_j)

Why: the group effects θ_j of one fit share that fit's data and μ, so their ranks are
dependent within a simulation even though the posterior is exact, as the group effects of
a mixed model are. The posterior is normal in closed form, so null studies with realistic
dependence cost no MCMC.

How strong the dependence is: given y, the PITs of θ_1..θ_J form a Gaussian copula whose
correlation is the posterior correlation of the θ_j (`posterior_correlation`). It is near 0
when tau ≫ sigma/√n (each group identified by its own data) and near 1 when tau ≪ sigma/√n
(every θ_j is essentially μ).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sbc.errors import SBCError

WHERE = "simulator hierarchical"


def simulate(
    rng: np.random.Generator,
    *,
    J: int = 10,
    n: int = 5,
    tau: float = 1.0,
    sigma: float = 1.0,
    prior_sd: float = 2.0,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Truth {mu, theta[J]} and Stan-style data (long format: y[N] with group g[N], 1-based)."""
    if J < 1 or n < 1:
        raise SBCError("J and n must be at least 1", where=WHERE)
    if min(tau, sigma, prior_sd) <= 0:
        raise SBCError("tau, sigma and prior_sd must be positive", where=WHERE)
    mu = rng.normal(0.0, prior_sd)
    theta = rng.normal(mu, tau, size=J)
    g = np.repeat(np.arange(1, J + 1), n)
    y = rng.normal(theta[g - 1], sigma)
    data = {"N": J * n, "J": J, "g": g, "y": y, "tau": tau, "sigma": sigma, "prior_sd": prior_sd}
    return {"mu": np.array(mu), "theta": theta}, data


def posterior(data: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Mean (J + 1,) and covariance (J + 1, J + 1) of (μ, θ_1..θ_J) given the data."""
    J, tau, sigma = int(data["J"]), float(data["tau"]), float(data["sigma"])
    g = np.asarray(data["g"], dtype=np.int64) - 1
    y = np.asarray(data["y"], dtype=float)
    n_j = np.bincount(g, minlength=J).astype(float)
    sum_j = np.bincount(g, weights=y, minlength=J)
    # precision of (μ, θ): prior μ, θ_j | μ, then the likelihood of each group's mean
    P = np.zeros((J + 1, J + 1))
    P[0, 0] = 1 / float(data["prior_sd"]) ** 2 + J / tau**2
    P[0, 1:] = P[1:, 0] = -1 / tau**2
    P[1:, 1:] = np.diag(1 / tau**2 + n_j / sigma**2)
    b = np.concatenate([[0.0], sum_j / sigma**2])
    cov = np.linalg.inv(P)
    return cov @ b, cov


def posterior_correlation(J: int, n: int, tau: float, sigma: float, prior_sd: float) -> float:
    """Posterior correlation of two group effects θ_j, θ_k (equal group sizes): the
    within-simulation correlation of their PITs (it does not depend on the data)."""
    data = {"J": J, "g": np.repeat(np.arange(1, J + 1), n), "y": np.zeros(J * n), "tau": tau,
            "sigma": sigma, "prior_sd": prior_sd}  # fmt: skip
    _, cov = posterior(data)
    if J < 2:
        return 1.0
    return float(cov[1, 2] / np.sqrt(cov[1, 1] * cov[2, 2]))


def posterior_draws(
    data: dict[str, Any], rng: np.random.Generator, size: tuple[int, ...]
) -> dict[str, np.ndarray]:
    """Exact iid posterior draws, shaped (*size,) for mu and (*size, J) for theta."""
    mean, cov = posterior(data)
    chol = np.linalg.cholesky(cov)
    z = rng.standard_normal((*size, mean.size))
    x = mean + z @ chol.T
    return {"mu": x[..., 0], "theta": x[..., 1:]}


def unknown_scales_scores(
    rng: np.random.Generator,
    draws: int,
    *,
    J: int = 8,
    n: int = 5,
    scale: float = 5.0,
    model_tau_scale: float | None = None,
    jacobian: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(u, ∇_u log p) at `draws` joint draws of a hierarchical model with unknown scales:

        μ ~ N(0, s²),  τ ~ N⁺(0, s²),  σ ~ N⁺(0, s²),  θ_j ~ N(μ, τ²),  y_ij ~ N(θ_j, σ²)

    on the unconstrained scale u = (μ, log τ, log σ, θ_1..θ_J), log p with its Jacobian
    (log τ + log σ), the score in closed form. Small τ or σ make the scores heavy-tailed
    (infinite variance), as in a mixed model: what `sbc.analysis.score` must stay valid on,
    without CmdStan. The model may disagree with the draws on purpose: its prior scale of τ
    (`model_tau_scale`) or a missing Jacobian of σ (`jacobian=False`).
    """
    mu = rng.normal(0.0, scale, draws)
    tau = np.abs(rng.normal(0.0, scale, draws))
    sigma = np.abs(rng.normal(0.0, scale, draws))
    theta = mu[:, None] + tau[:, None] * rng.standard_normal((draws, J))
    y = theta[:, :, None] + sigma[:, None, None] * rng.standard_normal((draws, J, n))
    d, r = theta - mu[:, None], y - theta[:, :, None]
    tau_scale = scale if model_tau_scale is None else model_tau_scale
    g_mu = -mu / scale**2 + d.sum(axis=1) / tau**2
    g_tau = -(tau**2) / tau_scale**2 + 1 - J + (d**2).sum(axis=1) / tau**2
    g_sigma = -(sigma**2) / scale**2 + float(jacobian) - J * n + (r**2).sum(axis=(1, 2)) / sigma**2
    g_theta = -d / tau[:, None] ** 2 + r.sum(axis=2) / sigma[:, None] ** 2
    u = np.column_stack([mu, np.log(tau), np.log(sigma), theta])
    return u, np.column_stack([g_mu, g_tau, g_sigma, g_theta])
