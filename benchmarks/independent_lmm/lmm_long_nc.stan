// lmm_long.stan, non-centred: the same model and priors, group effects from standard normals.
data {
  int<lower=1> n_obs;
  int<lower=1> n_groups;
  array[n_obs] int<lower=1, upper=n_groups> group;
  vector[n_obs] x;
  vector[n_obs] y;
}
parameters {
  real alpha;
  real slope;
  real<lower=0> sigma_e;
  real<lower=0> sd_int;
  real<lower=0> sd_slope;
  real<lower=-1, upper=1> r;
  vector[n_groups] z0;
  vector[n_groups] z1;
}
transformed parameters {
  vector[n_groups] u0 = sd_int * z0;
  vector[n_groups] u1 = sd_slope * (r * z0 + sqrt(1 - square(r)) * z1);
}
model {
  alpha ~ normal(0, 10);
  slope ~ normal(0, 10);
  sigma_e ~ normal(0, 5);
  sd_int ~ normal(0, 5);
  sd_slope ~ normal(0, 5);
  target += log1m(square(r));
  z0 ~ std_normal();
  z1 ~ std_normal();
  y ~ normal(alpha + u0[group] + (slope + u1[group]) .* x, sigma_e);
}
