// An independently written centred LMM for checking sbc's verdicts: random intercepts u0
// and slopes u1 by group, correlated through a 2 x 2 covariance built from its entries,
// data in long format. Same model as the seed's, written without looking at
// stan/lmm_centered.stan, so a shared bug is unlikely.
data {
  int<lower=1> n_obs;
  int<lower=1> n_groups;
  array[n_obs] int<lower=1, upper=n_groups> group;
  vector[n_obs] x;
  vector[n_obs] y;
}
parameters {
  real alpha;                 // population intercept
  real slope;                 // population slope
  real<lower=0> sigma_e;      // residual sd
  real<lower=0> sd_int;       // sd of group intercepts
  real<lower=0> sd_slope;     // sd of group slopes
  real<lower=-1, upper=1> r;  // their correlation
  vector[n_groups] u0;
  vector[n_groups] u1;
}
model {
  matrix[2, 2] V;
  V[1, 1] = square(sd_int);
  V[2, 2] = square(sd_slope);
  V[1, 2] = r * sd_int * sd_slope;
  V[2, 1] = V[1, 2];
  alpha ~ normal(0, 10);
  slope ~ normal(0, 10);
  sigma_e ~ normal(0, 5);
  sd_int ~ normal(0, 5);
  sd_slope ~ normal(0, 5);
  // LKJ(2) on a 2 x 2 correlation matrix: density ∝ (1 - r^2)^(2 - 1)
  target += log1m(square(r));
  for (j in 1:n_groups) {
    [u0[j], u1[j]]' ~ multi_normal([0, 0]', V);
  }
  for (i in 1:n_obs) {
    y[i] ~ normal(alpha + u0[group[i]] + (slope + u1[group[i]]) * x[i], sigma_e);
  }
}
