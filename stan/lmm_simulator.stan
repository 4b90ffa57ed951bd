// The seed's linear mixed-effects model y = X * beta + Z b + eps as a SIMULATOR written in
// Stan: it draws every parameter from the priors of lmm_centered.stan (and
// lmm_noncentered.stan) and then a dataset, all in `generated quantities`.
//
// sbc runs it with the fixed_param sampler, one draw per simulation
// (studies/lmm_sbc_stan_simulator.toml maps its outputs to the fitted model's variables and
// data); the same process as sbc.simulators.lmm:simulate, with Stan's random numbers:
//
//   beta_k ~ N(0, 10)      sigma ~ N+(0, 5)      tau_q ~ N+(0, 5)      R ~ LKJcorr(2)
//   b_j ~ MVN(0, diag(tau) R diag(tau))          y_sim ~ N(X beta + Z_n . b[g_n], sigma)
//
// The design (N, K, Q, J, X, Z, g) is its data, passed on unchanged to the fitted model.
// Written for CmdStan 2.27 and current releases alike (no newer features).
data {
  int<lower=1> N;
  int<lower=1> K;
  int<lower=1> Q;
  int<lower=1> J;
  matrix[N, K] X;
  matrix[N, Q] Z;
  array[N] int<lower=1, upper=J> g;
}
generated quantities {
  vector[K] beta;
  real<lower=0> sigma;
  vector<lower=0>[Q] tau;
  corr_matrix[Q] R;
  vector[(Q * (Q - 1)) %/% 2] rho;
  matrix[J, Q] b;
  vector[N] y_sim;
  for (k in 1:K) {
    beta[k] = normal_rng(0, 10);
  }
  sigma = abs(normal_rng(0, 5));  // half-normal
  for (q in 1:Q) {
    tau[q] = abs(normal_rng(0, 5));
  }
  R = lkj_corr_rng(Q, 2);
  {
    matrix[Q, Q] Sigma = quad_form_diag(R, tau);
    for (j in 1:J) {
      b[j] = multi_normal_rng(rep_vector(0, Q), Sigma)';
    }
  }
  {
    int k = 1;
    for (c in 1:(Q - 1)) {
      for (r in (c + 1):Q) {
        rho[k] = R[r, c];
        k += 1;
      }
    }
  }
  {
    vector[N] mu = X * beta + rows_dot_product(Z, b[g]);
    for (n in 1:N) {
      y_sim[n] = normal_rng(mu[n], sigma);
    }
  }
}
