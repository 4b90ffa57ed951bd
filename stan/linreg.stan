// Normal linear regression: the runner's proof that it is not tied to the mixed model.
// y ~ normal(alpha + X * beta, sigma), with the same priors the simulator draws from
// (studies/linreg_simulator.py).
data {
  int<lower=0> N;
  int<lower=1> K;
  matrix[N, K] X;
  vector[N] y;
}
parameters {
  real alpha;
  vector[K] beta;
  real<lower=0> sigma;
}
model {
  alpha ~ normal(0, 2);
  beta ~ normal(0, 1);
  sigma ~ exponential(1);
  y ~ normal_id_glm(X, alpha, beta, sigma);
}
