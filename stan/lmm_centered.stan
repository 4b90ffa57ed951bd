// Linear mixed-effects model y = X * beta + Z b + eps, CENTRED parameterisation.
//
// This is the seed's model (`y ~ 1 + x + (x | group)` when X = Z = [1, x]),
// generalised to K fixed effects, Q random effects and J groups. The group
// effects b[j] are drawn directly from multi_normal(0, Sigma) with
// Sigma = diag(tau) * R * diag(tau) and an LKJ(2) prior on the correlation
// matrix R, exactly as in the seed (no Cholesky factorisation).
//
// The random-effect design is passed compactly: row n of Z holds the
// random-effect covariates of observation n and g[n] its group, which is the
// seed's block-diagonal N x (J*Q) design without the zeros.
//
// Exposed quantities (identical names and shapes in lmm_noncentered.stan):
// beta[K], sigma, tau[Q], R[Q, Q], rho[Q*(Q-1)/2] (strictly lower triangle of
// R in column-major order; rho[1] = R[2, 1] when Q = 2), b[J, Q] and log_lik_sum.
// Written for CmdStan 2.27 and current releases alike (no newer features).
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
  tau ~ normal(0, 5);    // half-normal through the lower bound
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
