// Linear mixed-effects model y = X * beta + Z b + eps, NON-CENTRED (Cholesky)
// parameterisation.
//
// Same model, same data and the same exposed quantities as lmm_centered.stan:
// b = (diag(tau) * L_R * z)' with z ~ std_normal() and L_R the Cholesky factor
// of R ~ LKJ(2), so b[j] ~ multi_normal(0, diag(tau) R diag(tau)). Which of the
// two forms samples better depends on how informative each group is; this
// pair exists so SBC can show it with evidence.
//
// Exposed quantities (identical names and shapes in lmm_centered.stan):
// beta[K], sigma, tau[Q], R[Q, Q], rho[Q*(Q-1)/2] (strictly lower triangle of
// R in column-major order; rho[1] = R[2, 1] when Q = 2), b[J, Q] and log_lik_sum.
// L_R and z are sampler internals; they have no counterpart in the simulator's
// truth and are not ranked.
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
  cholesky_factor_corr[Q] L_R;
  matrix[Q, J] z;
}
transformed parameters {
  matrix[J, Q] b = (diag_pre_multiply(tau, L_R) * z)';
}
model {
  beta ~ normal(0, 10);
  sigma ~ normal(0, 5);  // half-normal through the lower bound
  tau ~ normal(0, 5);    // half-normal through the lower bound
  L_R ~ lkj_corr_cholesky(2);
  to_vector(z) ~ std_normal();
  y ~ normal(X * beta + rows_dot_product(Z, b[g]), sigma);
}
generated quantities {
  matrix[Q, Q] R = multiply_lower_tri_self_transpose(L_R);
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
