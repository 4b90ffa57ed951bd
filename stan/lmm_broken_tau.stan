// DELIBERATELY BROKEN: do not use for inference.
//
// This is lmm_centered.stan with ONE change: the prior on tau is half-normal
// with scale 1 instead of 5, while the simulator (sbc.simulators.lmm, like the
// two correct programs) draws tau from half-normal(0, 5). The fitted model
// therefore disagrees with the process that generated the data and its
// posteriors are miscalibrated (tau pulled towards zero when the groups are
// weakly informative, the group effects shrunk too much). It exists so that
// `sbc check` and `sbc compare` can prove they flag a wrong model: a harness
// that passes this program has no power.
//
// Same data, same exposed quantities (beta, sigma, tau, R, rho, b) as
// lmm_centered.stan, so it can be swapped into any study that uses that one.
data {
  int<lower=1> N;
  int<lower=1> K;
  int<lower=1> Q;
  int<lower=1> J;
  matrix[N, K] X;
  matrix[N, Q] Z;
  array[N] int<lower=1, upper=J> g;
  vector[N] y;
}
parameters {
  vector[K] beta;
  real<lower=0> sigma;
  vector<lower=0>[Q] tau;
  corr_matrix[Q] R;
  matrix[J, Q] b;
}
model {
  // one array of rows so multi_normal factorises Sigma once, not J times
  array[J] row_vector[Q] b_rows;
  for (j in 1:J) {
    b_rows[j] = b[j];
  }
  beta ~ normal(0, 10);
  sigma ~ normal(0, 5);  // half-normal through the lower bound
  tau ~ normal(0, 1);    // WRONG ON PURPOSE: the simulator uses scale 5
  R ~ lkj_corr(2);
  b_rows ~ multi_normal(rep_row_vector(0, Q), quad_form_diag(R, tau));
  y ~ normal(X * beta + rows_dot_product(Z, b[g]), sigma);
}
generated quantities {
  // the log-likelihood of the data, constants included: a data-dependent SBC test
  // quantity (`[quantities] stan = ["log_lik_sum"]`; sbc.simulators.lmm:loglik in Python)
  real log_lik_sum = normal_lpdf(y | X * beta + rows_dot_product(Z, b[g]), sigma);
  vector[(Q * (Q - 1)) %/% 2] rho;
  {
    int k = 1;
    for (c in 1:(Q - 1)) {
      for (r in (c + 1):Q) {
        rho[k] = R[r, c];
        k += 1;
      }
    }
  }
}
