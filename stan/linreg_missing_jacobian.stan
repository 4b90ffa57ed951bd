// DELIBERATELY BROKEN: a missing Jacobian. Do not use for inference.
//
// stan/linreg.stan with sigma declared through its logarithm: the parameter is log_sigma
// (unconstrained), sigma = exp(log_sigma), and the prior is put on sigma without the
// Jacobian of that change of variables, `target += log_sigma`. The implied prior on sigma
// is exponential(1) / sigma instead of exponential(1) (what the simulator draws:
// studies/linreg_simulator.py), a mistake that likelihood-dominated posteriors hide from
// SBC (~20 observations per dataset) and that `sbc precheck` sees at once.
data {
  int<lower=0> N;
  int<lower=1> K;
  matrix[N, K] X;
  vector[N] y;
}
parameters {
  real alpha;
  vector[K] beta;
  real log_sigma;
}
transformed parameters {
  real<lower=0> sigma = exp(log_sigma);
}
model {
  alpha ~ normal(0, 2);
  beta ~ normal(0, 1);
  sigma ~ exponential(1);  // WRONG ON PURPOSE: needs target += log_sigma
  y ~ normal_id_glm(X, alpha, beta, sigma);
}
