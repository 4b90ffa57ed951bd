// K independent normal means with known noise: mu_k ~ N(0, prior_sd), y_ik ~ N(mu_k, sigma)
// (sbc.simulators.normal). The posterior is normal and factorises over k, so ADVI's meanfield
// and fullrank families both contain it exactly: what they get wrong is optimisation error.
data {
  int<lower=1> N;
  int<lower=1> K;
  matrix[N, K] y;
  real<lower=0> prior_sd;
  real<lower=0> sigma;
}
parameters {
  vector[K] mu;
}
model {
  mu ~ normal(0, prior_sd);
  for (k in 1:K) {
    y[:, k] ~ normal(mu[k], sigma);
  }
}
